"""Library messages that quote DICOM values are redacted; warnings become JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.logs import REDACTED, setup_logging
from tests.factories import CANARY, pydicom_writing_validation


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


def _file_with_bad_birth_date() -> io.BytesIO:
    """A real DICOM file whose patient birth date is malformed (pydicom warns, quoting it)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = CANARY["PatientName"]
    buf = io.BytesIO()
    with pydicom_writing_validation(pydicom.config.IGNORE):
        ds.PatientBirthDate = CANARY["PatientBirthDate"] + "X"
        ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return buf


def test_pydicom_value_warning_is_redacted_and_json(service_logging: Path) -> None:
    old = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            ds = pydicom.dcmread(_file_with_bad_birth_date())
            assert str(ds.PatientBirthDate).startswith(CANARY["PatientBirthDate"])  # it warned
    finally:
        pydicom.config.settings.reading_validation_mode = old
    lines = _lines(service_logging)
    text = json.dumps(lines)
    assert CANARY["PatientBirthDate"] not in text
    by_logger = {line["logger"] for line in lines if REDACTED in line["msg"]}
    assert {"pydicom", "py.warnings"} <= by_logger  # its log call and its warning, both JSON


def test_own_messages_are_not_rewritten(service_logging: Path) -> None:
    logging.getLogger("service.worker").warning("setting 'worker.compile' is %s", "'auto'")
    logging.getLogger("highdicom.seg").warning("value %r", CANARY["PatientID"])
    lines = _lines(service_logging)
    assert lines[-2]["msg"] == "setting 'worker.compile' is 'auto'"
    assert lines[-1]["msg"] == f"value {REDACTED}"
    assert CANARY["PatientID"] not in json.dumps(lines)
