"""The `routing` config section: defaults breast only, keys checked, handed down as rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_io.routing import RoutingRules
from service.config import ConfigError, load_settings


def test_routing_defaults_no_config_breast_only_unlabelled_skipped() -> None:
    rules = load_settings(None).routing.rules()
    assert rules == RoutingRules()
    assert rules.unlabelled == "skip" and rules.breast_body_parts == ("BREAST",)
    assert "MAMMA" in rules.breast_keywords and "ECHOCARDIO" in rules.other_keywords


def test_routing_toml_values_become_rules(tmp_path: Path) -> None:
    path = tmp_path / "wecare.toml"
    path.write_text(
        '[routing]\nunlabelled = "analyse"\nbreast_keywords = ["breast", "pecho"]\n'
        'modalities = ["us"]\n'
    )
    rules = load_settings(path).routing.rules()
    assert rules.unlabelled == "analyse"
    assert rules.breast_keywords == ("BREAST", "PECHO")
    assert rules.modalities == ("US",)


def test_routing_env_override_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WECARE_ROUTING__ENABLED", "false")
    assert load_settings(None).routing.rules().enabled is False


@pytest.mark.parametrize("text", ['unlabelled = "maybe"', "bodypart = 1"])
def test_routing_bad_key_or_value_refused_with_path(tmp_path: Path, text: str) -> None:
    path = tmp_path / "wecare.toml"
    path.write_text(f"[routing]\n{text}\n")
    with pytest.raises(ConfigError, match="routing"):
        load_settings(path)
