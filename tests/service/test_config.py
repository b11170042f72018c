from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ConfigError, load_settings, masked


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wecare.toml"
    path.write_text(text)
    return path


def test_load_settings_no_file_embedded_defaults() -> None:
    s = load_settings(None)
    assert (s.dicom.ae_title, s.dicom.port, s.web.host, s.web.port) == (
        "WECARE",
        11112,
        "127.0.0.1",
        8000,
    )
    assert s.study.stable_seconds == 10
    assert s.storage.resolved_database_url().endswith("wecare-data/wecare.db")
    assert s.destinations == []


def test_load_settings_toml_file_values_used(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[dicom]
ae_title = "AI1"
port = 11999
[storage]
data_dir = "/tmp/x"
[study]
stable_seconds = 3
[[destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
""",
    )
    s = load_settings(path)
    assert (s.dicom.ae_title, s.dicom.port, s.study.stable_seconds) == ("AI1", 11999, 3)
    assert s.destinations[0].ae_title == "ORTHANC" and s.destinations[0].port == 4242


def test_load_settings_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "[dicom]\nport = 11999\n")
    monkeypatch.setenv("WECARE_DICOM__PORT", "12000")
    monkeypatch.setenv("WECARE_WEB__PORT", "8111")
    s = load_settings(path)
    assert (s.dicom.port, s.web.port) == (12000, 8111)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[dicom]\nprot = 1\n", "dicom.prot: unknown key"),
        ("[dicom]\nport = 70000\n", "dicom.port"),
        ('[dicom]\nae_title = "THIS_IS_WAY_TOO_LONG"\n', "dicom.ae_title"),
        ("[nonsense]\na = 1\n", "nonsense: unknown key"),
        ('[[destinations]]\nname = "p"\nae_title = "X"\nhost = "h"\n', "destinations.0.port"),
        ('[worker]\nprecision = "fp8"\n', "worker.precision"),
    ],
)
def test_load_settings_bad_key_message_names_it(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(_write(tmp_path, text))


def test_load_settings_missing_file_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_masked_database_password_hidden() -> None:
    s = load_settings(
        None,
        storage={"database_url": "postgresql://u:Pw-9f3kQ@db/wecare"},
        auth={"session_secret": "cookie-key-77aa"},
    )
    shown = str(masked(s))
    assert "Pw-9f3kQ" not in shown and "cookie-key-77aa" not in shown
    assert "postgresql://u:***@db/wecare" in shown


def test_load_settings_stow_rs_destination_beside_dicom_secret_masked(tmp_path: Path) -> None:
    text = (
        '[[destinations]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "h"\nport = 4242\n'
        '[[destinations]]\nkind = "stow-rs"\nname = "web"\nurl = "https://pacs.example/dw/"\n'
        'auth = "basic"\nusername = "wecare"\npassword = "pw-123"\n'
    )
    s = load_settings(_write(tmp_path, text))
    dicom, web = s.destinations
    assert (dicom.kind, web.kind, web.url) == ("dicom", "stow-rs", "https://pacs.example/dw")
    assert web.password is not None and web.password.get_secret_value() == "pw-123"
    assert "pw-123" not in str(masked(s))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('kind = "stow-rs"\nname = "w"\n', "destinations.0.url: Field required"),
        ('kind = "stow-rs"\nname = "w"\nurl = "ftp://x"\n', "destinations.0.url"),
        ('kind = "stow-rs"\nname = "w"\nurl = "http://x"\nauth = "bearer"\n', "token is required"),
        (
            'kind = "stow-rs"\nname = "w"\nurl = "http://x"\nport = 1\n',
            "destinations.0.port: unknown",
        ),
        ('kind = "fhir"\nname = "w"\n', "destinations.0.kind: kind must be one of: dicom, stow-rs"),
    ],
)
def test_load_settings_bad_stow_rs_destination_names_its_key(
    tmp_path: Path, entry: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(_write(tmp_path, "[[destinations]]\n" + entry))
