"""deploy/: the Kubernetes manifests and the compose file, checked offline.

Manifests are validated against the Kubernetes API schemas bundled in `kubernetes-validate`
(strict: an unknown field fails); every WECARE_* variable they set is loaded through the
service's own config loader, so a renamed or retyped Settings key breaks this test; the
autoscaler's metric must be one the app exports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from sqlalchemy import Engine

from service.config import ConfigError, Settings, load_settings
from service.web.routes.metrics import make_registry
from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are meant for
WECARE_SERVICES = ("listener", "worker", "exporter", "web")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in _documents(path)
    ]


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _manifests() if d["kind"] == kind}


def _containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, container, pod spec) of every Deployment and StatefulSet."""
    for _, doc in _manifests():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield doc["metadata"]["name"], container, pod


def _container_env(container: dict[str, Any], pod: dict[str, Any], root: Path) -> dict[str, str]:
    """The container's environment as the pod sees it: ConfigMaps and Secrets resolved from
    the manifests themselves (a reference to a missing one fails), Secret volumes written
    under `root` with paths into them rewritten (Settings checks that TLS files exist)."""
    config_maps = _by_kind("ConfigMap")
    secrets = _by_kind("Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" not in volume:
            continue
        local = root / mount["name"]
        local.mkdir(parents=True)
        for key, value in secrets[volume["secret"]["secretName"]]["stringData"].items():
            (local / key).write_text(value)
        env = {k: v.replace(mount["mountPath"], str(local)) for k, v in env.items()}
    return env


def _settings_value(settings: Settings, name: str) -> Any:
    """The Settings value WECARE_<SECTION>__<KEY> sets, walking the model by field name; an
    unknown field (which pydantic-settings would silently ignore at the top level) fails."""
    value: Any = settings
    for part in name.removeprefix("WECARE_").lower().split("__"):
        assert isinstance(value, BaseModel), f"{name}: {part} is below a plain value"
        assert part in type(value).model_fields, f"{name}: no Settings key {part!r}"
        value = getattr(value, part)
    return value


def _assert_settings_keys(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Load `env`'s WECARE_* variables through service.config and check each one landed."""
    import os

    for name in [n for n in os.environ if n.startswith("WECARE_")]:
        monkeypatch.delenv(name)
    wecare = {k: v for k, v in env.items() if k.startswith("WECARE_")}
    for name, value in wecare.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(None)
    for name, raw in wecare.items():
        loaded = _settings_value(settings, name)
        if isinstance(loaded, list):
            assert len(loaded) == len(json.loads(raw)), name
        elif isinstance(loaded, bool):
            assert loaded is (raw.lower() == "true"), name
        else:
            assert str(loaded) == raw or loaded == type(loaded)(raw), (name, loaded, raw)
    return len(wecare)


def test_k8s_manifests_valid_against_bundled_api_schemas() -> None:
    manifests = _manifests()
    for path, doc in manifests:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    kinds = sorted({d["kind"] for _, d in manifests})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "Secret",
        "Service",
        "StatefulSet",
    ]


def test_k8s_validator_misspelt_field_rejected() -> None:
    """The validator is not a no-op: one wrong field name in a real manifest fails it."""
    (_, worker) = next((p, d) for p, d in _manifests() if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(worker))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


@pytest.mark.parametrize(
    "workload", ["wecare-listener", "wecare-worker", "wecare-exporter", "wecare-web"]
)
def test_k8s_env_every_wecare_variable_is_a_settings_key(
    workload: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ((container, pod),) = [(c, p) for name, c, p in _containers() if name == workload]
    assert container["args"] == [workload.removeprefix("wecare-")]
    env = _container_env(container, pod, tmp_path)
    assert env["WECARE_STORAGE__DATABASE_URL"].startswith("postgresql+psycopg://")
    assert _assert_settings_keys(env, monkeypatch) >= 4


def test_k8s_settings_check_renamed_key_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key check is not a no-op: a key Settings lacks fails, even at the top level where
    pydantic-settings would ignore it."""
    with pytest.raises(ConfigError, match="worker.lease: unknown key"):
        _assert_settings_keys({"WECARE_WORKER__LEASE": "5"}, monkeypatch)
    with pytest.raises(AssertionError, match="no Settings key 'workers'"):
        _assert_settings_keys({"WECARE_WORKERS": "5"}, monkeypatch)


def test_k8s_workers_gpu_and_shared_volume_listener_statefulset() -> None:
    workloads = {**_by_kind("Deployment"), **_by_kind("StatefulSet")}
    assert set(workloads) == {f"wecare-{s}" for s in WECARE_SERVICES}
    assert "wecare-listener" in _by_kind("StatefulSet")
    (pvc,) = _by_kind("PersistentVolumeClaim").values()
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, doc in workloads.items():
        pod = doc["spec"]["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert claims == {"data": pvc["metadata"]["name"]}, name
        assert mounts["data"] == "/data", name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
    worker = workloads["wecare-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    listener = workloads["wecare-listener"]["spec"]["template"]["spec"]
    tls = {v["name"]: v for v in listener["volumes"]}["tls"]["secret"]["secretName"]
    assert _by_kind("Secret")[tls]["type"] == "kubernetes.io/tls"


def test_k8s_autoscaler_metric_is_one_the_app_exports(engine: Engine) -> None:
    (hpa,) = _by_kind("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "wecare-worker"
    (metric,) = hpa["spec"]["metrics"]
    name = metric["external"]["metric"]["name"]
    labels = metric["external"]["metric"]["selector"]["matchLabels"]
    exported = text_string_to_metric_families(generate_latest(make_registry(engine)).decode())
    samples = [s for family in exported for s in family.samples if s.name == name]
    assert samples, f"the app exports no {name}"
    assert any(s.labels == labels for s in samples), (labels, [s.labels for s in samples])


def _compose() -> dict[str, Any]:
    text = (DEPLOY / "compose.yaml").read_text()
    # Compose interpolation, ${VAR:-default} -> default (what runs with no .env).
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    assert "${" not in text, "a variable without a default"
    compose = yaml.safe_load(text)
    assert isinstance(compose, dict)
    return compose


def test_compose_services_images_and_shared_volume() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "orthanc", *WECARE_SERVICES}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["orthanc"]["image"].startswith("orthancteam/orthanc")
    for name in WECARE_SERVICES:
        service = services[name]
        assert service["command"] == [name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["volumes"] == ["wecare-data:/data"]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert services["exporter"]["deploy"]["replicas"] == 1
    # Orthanc forwards to the listener service's name.
    assert '"listener", 11112' in services["orthanc"]["environment"]["ORTHANC__DICOM_MODALITIES"]


@pytest.mark.parametrize("service", WECARE_SERVICES)
def test_compose_env_every_wecare_variable_is_a_settings_key(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: str(v) for k, v in _compose()["services"][service]["environment"].items()}
    postgres = _compose()["services"]["postgres"]["environment"]
    url = env["WECARE_STORAGE__DATABASE_URL"]
    assert url == (
        f"postgresql+psycopg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    assert _assert_settings_keys(env, monkeypatch) >= 3
