"""Library messages that quote DICOM values are redacted; warnings become JSON log lines."""

from __future__ import annotations

import json
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.logs import REDACTED, PrivateRotatingFileHandler, setup_logging
from tests.factories import CANARY, make_us_dataset


@pytest.fixture
def service_logging(tmp_path: Path) -> Iterator[Path]:
    """The service's logging set-up, writing to tmp_path/logs; the test process's restored."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("DEBUG", json_format=True, log_dir=tmp_path / "logs")
    try:
        yield tmp_path / "logs" / "wecare.log"
    finally:
        for handler in list(root.handlers):
            handler.close()
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.captureWarnings(False)


def _lines(path: Path) -> list[dict]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_pydicom_value_warning_is_redacted_and_json(service_logging: Path) -> None:
    ds = make_us_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # pydicom validates an assigned value and warns (and logs), quoting it: a birth date.
        ds.PatientBirthDate = CANARY["PatientBirthDate"] + "X"
    lines = _lines(service_logging)
    text = json.dumps(lines)
    assert CANARY["PatientBirthDate"] not in text
    by_logger = {line["logger"] for line in lines if "VR DA" in line["msg"]}
    assert by_logger == {"pydicom", "py.warnings"}  # its log call and its warning, both JSON
    assert all(REDACTED in line["msg"] for line in lines if "VR DA" in line["msg"])


def test_own_messages_are_not_rewritten(service_logging: Path) -> None:
    logging.getLogger("service.worker").warning("setting 'worker.compile' is %s", "'auto'")
    logging.getLogger("highdicom.seg").warning("value %r", CANARY["PatientID"])
    lines = _lines(service_logging)
    assert lines[-2]["msg"] == "setting 'worker.compile' is 'auto'"
    assert lines[-1]["msg"] == f"value {REDACTED}"
    assert CANARY["PatientID"] not in json.dumps(lines)


def test_log_file_and_rotated_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    saved = os.umask(0)
    handler = PrivateRotatingFileHandler(tmp_path / "wecare.log", maxBytes=200, backupCount=2)
    try:
        record = logging.makeLogRecord({"msg": "x" * 150, "levelno": logging.INFO})
        for _ in range(4):  # past maxBytes: rotates
            handler.emit(record)
    finally:
        handler.close()
        os.umask(saved)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["wecare.log", "wecare.log.1", "wecare.log.2"]
    assert {stat.S_IMODE((tmp_path / f).stat().st_mode) for f in files} == {0o600}
