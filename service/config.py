"""Settings: one TOML file, every key overridable by `WECARE_<SECTION>__<KEY>`, checked at start.

Defaults run with no config at all (SQLite and files under ./wecare-data, DICOM port 11112,
dashboard on 127.0.0.1:8000, no destinations). A bad key stops start-up with its path named.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dicom_io.routing import (
    DEFAULT_BREAST_KEYWORDS,
    DEFAULT_DESCRIPTION_FIELDS,
    DEFAULT_OTHER_KEYWORDS,
    RoutingRules,
)

_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")


def _check_ae_title(value: str) -> str:
    value = value.strip()
    if not _AE_RE.match(value) or "\\" in value:
        raise ValueError("AE title must be 1-16 printable ASCII characters without backslash")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsSettings(_Section):
    """DICOM over TLS (PS3.15 B.1). When enabled the listener speaks TLS only."""

    enabled: bool = Field(False, description="Listen with TLS; plain-text peers are refused")
    cert_file: Path | None = Field(None, description="Our certificate (PEM)")
    key_file: Path | None = Field(None, description="Our private key (PEM)")
    ca_file: Path | None = Field(
        None, description="CA bundle (PEM) that client certificates must chain to"
    )
    require_client_cert: bool = Field(False, description="Refuse peers without a valid cert")

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TlsSettings:
        if self.enabled and not (self.cert_file and self.key_file):
            raise ValueError("cert_file and key_file are required when TLS is enabled")
        if self.require_client_cert and not self.ca_file:
            raise ValueError("ca_file is required when require_client_cert is true")
        for name in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, name)
            if self.enabled and path is not None and not Path(path).is_file():
                raise ValueError(f"{name} not found: {path}")
        return self


class AllowedPeer(_Section):
    """A calling AE title allowed to associate, optionally only from given addresses."""

    ae_title: str
    hosts: list[str] = Field(
        default_factory=list, description="IP addresses or CIDR networks; empty = any address"
    )

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("hosts")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for host in value:
            ipaddress.ip_network(host, strict=False)  # raises ValueError naming the bad value
        return value


class DicomSettings(_Section):
    ae_title: str = Field("WECARE", description="Our AE title, the Called AE the PACS uses")
    host: str = Field(
        "127.0.0.1",
        description="Address the DICOM listener binds; 0.0.0.0 to accept a PACS on another host",
    )
    port: int = Field(11112, ge=1, le=65535, description="DICOM listener port")
    max_pdu_bytes: int = Field(0, ge=0, description="Maximum PDU size we accept (0 = unlimited)")
    network_timeout_seconds: float = Field(60, gt=0, description="Idle association timeout")
    require_called_ae_title: bool = Field(
        True, description="Reject associations whose Called AE title is not ours"
    )
    max_associations: int = Field(
        64, ge=1, le=1000, description="Concurrent associations before new ones are refused"
    )
    max_connections_per_address: int = Field(
        16,
        ge=1,
        le=1000,
        description="Open connections one IP address may hold; more are refused at connect",
    )
    association_setup_timeout_seconds: float = Field(
        10,
        gt=0,
        le=300,
        description="A connection without an established association after this is closed",
    )
    allowed_peers: list[AllowedPeer] = Field(
        default_factory=list,
        description="Calling AE titles (and addresses) allowed to associate; empty = anyone",
    )
    max_inflated_mb: int = Field(
        256,
        ge=1,
        le=4096,
        description="A deflated object (C-STORE or upload) inflating beyond this is refused "
        "(0xC000 / HTTP 413): deflate bombs",
    )
    tls: TlsSettings = TlsSettings()

    _ae = field_validator("ae_title")(_check_ae_title)


class StorageSettings(_Section):
    data_dir: Path = Field(
        Path("./wecare-data"), description="Data directory (files, SQLite, logs)"
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/wecare.db"
    )
    min_free_mb: int = Field(
        200, ge=0, description="Refuse new C-STOREs (0xA700) when free disk space falls below"
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'wecare.db').resolve()}"


class StudySettings(_Section):
    stable_seconds: float = Field(
        10, ge=0, description="A study becomes a job when no instance arrived for this long"
    )


class WorkerSettings(_Section):
    count: int = Field(1, ge=0, le=16, description="Inference worker threads (0: none)")
    poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks for jobs")
    lease_seconds: float = Field(
        120, gt=0, description="A running job whose worker stops renewing returns to the queue"
    )
    max_attempts: int = Field(3, ge=1, description="Processing tries before a job is failed")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device")
    weights: Path | None = Field(None, description="Model weights; default: the bundled ones")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Inference arithmetic; auto: bfloat16 on CPUs that have it natively"
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the network: about 1.7x faster at batch 1 on CPU after a "
        "warm-up of 30-60 s at start-up; auto: on CPU when a C++ compiler (g++) is installed; "
        "any compile error falls back to the eager network",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="Torch CPU threads (default: torch's)"
    )
    explain: bool = Field(True, description="Compute Grad-CAM maps for the dashboard")
    scope_check: bool = Field(
        True,
        description="Refuse images unlike the breast ultrasound the model was trained on (the "
        "bundle's in-distribution check, scope.npz): no class, no lesion, the reason said. "
        "Off only to test the plumbing with generated images",
    )


class ExportSettings(_Section):
    poll_seconds: float = Field(1.0, gt=0, description="How often the exporter looks for due rows")
    base_backoff_seconds: float = Field(5, gt=0, description="First retry delay; doubles each try")
    max_backoff_seconds: float = Field(600, gt=0, description="Longest delay between tries")
    max_attempts: int = Field(10, ge=1, description="Tries before an output is marked failed")
    timeout_seconds: float = Field(30, gt=0, description="Association and DIMSE timeout")


class WebSettings(_Section):
    enabled: bool = Field(True, description="Run the dashboard and API")
    host: str = Field("127.0.0.1", description="Dashboard bind address")
    port: int = Field(8000, ge=1, le=65535, description="Dashboard port")
    max_upload_mb: int = Field(512, ge=1, description="Largest file the upload API accepts")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description=(
            "IP addresses or CIDR networks of reverse proxies whose X-Forwarded-For and "
            "X-Forwarded-Proto are believed; empty = none (the direct peer is the client)"
        ),
    )
    request_body_timeout_seconds: float = Field(
        60, gt=0, description="A request body must arrive within this long, else 408"
    )
    time_zone: str = Field(
        "UTC",
        description="IANA time zone the radiologist workspace shows times in, e.g. Europe/Paris",
    )

    @field_validator("time_zone")
    @classmethod
    def _known_time_zone(cls, value: str) -> str:
        # Checked at start-up: a typo must not turn every time on the page into UTC silently.
        name = value.strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"web.time_zone {name!r} is not an IANA time zone name (e.g. 'Europe/Paris', "
                "'America/New_York' or 'UTC')"
            ) from None
        return name

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, value: list[str]) -> list[str]:
        # Canonical network strings ("10.0.0.1" -> "10.0.0.1/32"); a bad one raises, named.
        return [str(ipaddress.ip_network(item.strip(), strict=False)) for item in value]


class AuthSettings(_Section):
    """Dashboard and API access: users with roles, API tokens, sessions."""

    enabled: bool = Field(True, description="Require log-in (false only for closed test rigs)")
    session_hours: float = Field(12, gt=0, description="A log-in session lasts this long")
    session_secret: str | None = Field(
        None, description="Cookie signing key; default: generated once into data_dir"
    )
    anonymous_health: bool = Field(True, description="/health without log-in")
    anonymous_metrics: bool = Field(False, description="/metrics without log-in")


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")
    json_format: bool = Field(True, description="JSON lines (False: human-readable)")
    to_file: bool = Field(True, description="Also write <data_dir>/logs/wecare.log")


class DicomDestination(_Section):
    kind: Literal["dicom"] = "dicom"
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str
    port: int = Field(..., ge=1, le=65535)
    tls: bool = Field(False, description="Connect with TLS")
    tls_ca_file: Path | None = Field(None, description="CA bundle to verify the peer (PEM)")
    tls_cert_file: Path | None = Field(None, description="Our client certificate (PEM)")
    tls_key_file: Path | None = Field(None, description="Our client key (PEM)")

    _ae = field_validator("ae_title")(_check_ae_title)


class StowRsDestination(_Section):
    """A DICOMweb store (STOW-RS, PS3.18 10.5): each output POSTed to `<url>/studies`."""

    kind: Literal["stow-rs"]
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = Field(
        ...,
        description="DICOMweb base URL (http or https), e.g. https://pacs.example/dicom-web",
    )
    auth: Literal["none", "basic", "bearer"] = Field("none", description="HTTP authentication")
    username: str | None = Field(None, description="User name for basic authentication")
    password: SecretStr | None = Field(None, description="Password for basic authentication")
    token: SecretStr | None = Field(None, description="Token for bearer authentication")
    tls_ca_file: Path | None = Field(
        None, description="CA bundle (PEM) the server's certificate must chain to; default: system"
    )
    timeout_seconds: float | None = Field(
        None, gt=0, description="Connect/read timeout per request; default export.timeout_seconds"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must not carry credentials, a query or a fragment (use auth keys)")
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _credentials_match_auth(self) -> StowRsDestination:
        if self.auth == "basic" and not (self.username and self.password):
            raise ValueError("username and password are required when auth is basic")
        if self.auth == "bearer" and not self.token:
            raise ValueError("token is required when auth is bearer")
        if self.auth == "none" and (self.username or self.password or self.token):
            raise ValueError("credentials given but auth is none")
        if self.tls_ca_file is not None and not Path(self.tls_ca_file).is_file():
            raise ValueError(f"tls_ca_file not found: {self.tls_ca_file}")
        return self


class RoutingSettings(_Section):
    """Which stored images are analysed (dicom_io.routing): breast ultrasound only by default.

    Every image is stored; one out of scope is listed on "Not processed" with the reason and
    makes no job. Keywords match descriptions as whole words, or as a word's start when 4+
    letters long; Body Part Examined and keywords are compared case-insensitively.
    """

    enabled: bool = Field(True, description="Apply these rules; false analyses every US image")
    modalities: list[str] = Field(
        default_factory=lambda: list(RoutingRules().modalities),
        description="Modality values analysed (an absent Modality is left to the other rules)",
    )
    sop_classes: list[str] = Field(
        default_factory=list,
        description="SOP Class UIDs analysed; empty: every supported ultrasound/SC class",
    )
    breast_body_parts: list[str] = Field(
        default_factory=lambda: list(RoutingRules().breast_body_parts),
        description="Body Part Examined values meaning breast; any other value is skipped",
    )
    breast_keywords: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BREAST_KEYWORDS),
        description="Words in Study/Series/Procedure Description or Protocol Name meaning breast",
    )
    other_keywords: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OTHER_KEYWORDS),
        description="Words naming another body part (cardiac, obstetric, ...): skipped",
    )
    description_fields: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DESCRIPTION_FIELDS),
        description="DICOM keywords of the free-text attributes searched for keywords",
    )
    unlabelled: Literal["analyse", "skip"] = Field(
        "skip",
        description="When neither Body Part Examined nor a keyword says anything: 'skip' "
        "(safe: no breast result on an echo) or 'analyse' (scanners that never label)",
    )

    def rules(self) -> RoutingRules:
        """These settings as the plain rules dicom_io applies."""
        return RoutingRules(
            enabled=self.enabled,
            modalities=tuple(self.modalities),
            sop_classes=tuple(self.sop_classes),
            breast_body_parts=tuple(self.breast_body_parts),
            breast_keywords=tuple(self.breast_keywords),
            other_keywords=tuple(self.other_keywords),
            description_fields=tuple(self.description_fields),
            unlabelled=self.unlabelled,
        )


DESTINATION_KINDS = ("dicom", "stow-rs")


def _destination_kind(value: Any) -> str:
    """`kind` of a destination; a table without one is a C-STORE destination (older configs)."""
    kind = value.get("kind", "dicom") if isinstance(value, dict) else getattr(value, "kind", None)
    return str(kind)


Destination = Annotated[
    Annotated[DicomDestination, Tag("dicom")] | Annotated[StowRsDestination, Tag("stow-rs")],
    Discriminator(
        _destination_kind,
        custom_error_type="destination_kind",
        custom_error_message="kind must be one of: " + ", ".join(DESTINATION_KINDS),
    ),
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WECARE_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    dicom: DicomSettings = DicomSettings()
    storage: StorageSettings = StorageSettings()
    study: StudySettings = StudySettings()
    worker: WorkerSettings = WorkerSettings()
    export: ExportSettings = ExportSettings()
    web: WebSettings = WebSettings()
    auth: AuthSettings = AuthSettings()
    log: LogSettings = LogSettings()
    routing: RoutingSettings = RoutingSettings()
    destinations: list[Destination] = Field(default_factory=list)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        if len(names) != len(set(names)):
            raise ValueError("destination names must be unique")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then environment, then the TOML file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


class ConfigError(Exception):
    """Configuration cannot be used; the message names every bad key."""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read `path` (TOML) and the environment into validated Settings, or raise ConfigError."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    try:
        loaded = _FileSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except ValueError as exc:  # TOML syntax errors and env parsing errors
        raise ConfigError(f"config could not be read: {exc}") from None
    return Settings.model_validate(loaded.model_dump())


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad key, e.g. `dicom.port: Input should be less than or equal to 65535`."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) > 2 and loc[0] == "destinations" and loc[2] in DESTINATION_KINDS:
            del loc[2]  # the union's tag: `destinations.0.url`, not `destinations.0.stow-rs.url`
        if err["type"] == "destination_kind":
            loc.append("kind")
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{key}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def masked(settings: Settings) -> dict[str, Any]:
    """Settings as a dict for `wecare config show`, with secrets in URLs masked."""
    data = settings.model_dump(mode="json")
    if data["auth"].get("session_secret"):
        data["auth"]["session_secret"] = "***"
    url = data["storage"].get("database_url")
    if url:
        data["storage"]["database_url"] = re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", url)
    return data
