"""JSON-line logs carrying `job_id` and `uid_hash`, never patient data.

Log a UID through `uid_hash()` (8 hex of sha256), never a Dataset, name, ID, birth date or
accession number. pynetdicom is held at WARNING so it cannot dump identifiers. Libraries'
own messages can quote a DICOM value (pydicom: ``Invalid value for VR DA: '19010203X'``, a
birth date), so quoted text in any record that is not ours is redacted, and Python warnings
are routed through the same handlers (JSON, redacted) instead of bare stderr.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO

from storage.files import PRIVATE_FILE_MODE, make_private_dirs

_job_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("job_id", default=None)
_uid_hash: contextvars.ContextVar[str | None] = contextvars.ContextVar("uid_hash", default=None)


def uid_hash(uid: str | None) -> str:
    """Short stable pseudonym of a UID for logs: 8 hex digits of its sha256."""
    if not uid:
        return "-"
    return hashlib.sha256(str(uid).encode()).hexdigest()[:8]


@contextmanager
def log_context(job_id: int | None = None, uid: str | None = None) -> Iterator[None]:
    """Attach a job id and/or a hashed UID to every log line inside the block."""
    tokens = []
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(job_id)))
    if uid is not None:
        tokens.append((_uid_hash, _uid_hash.set(uid_hash(uid))))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = _job_id.get()
        record.uid_hash = _uid_hash.get()
        return True


#: Top-level packages whose log messages we write ourselves (UIDs hashed, no values quoted).
OWN_LOGGERS = frozenset({"service", "dicom_io", "storage", "inference"})
# A quoted literal as Python's repr writes it: 'x', "x", b'x' (escaped quotes inside allowed).
_QUOTED = re.compile(r"b?'(?:[^'\\\n]|\\.)*'" + r'|b?"(?:[^"\\\n]|\\.)*"')
REDACTED = "'<redacted>'"


def redact_quoted(text: str) -> str:
    """`text` with every quoted literal replaced: library messages quote the values they got."""
    return _QUOTED.sub(REDACTED, text)


class _RedactForeignValues(logging.Filter):
    """Replace quoted text in third-party records: it may be a patient's name, ID or date."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in OWN_LOGGERS:
            return True
        message = record.getMessage()
        redacted = redact_quoted(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler whose files are the service account's alone (0600): hashed UIDs
    and user names are still not for every local user. The mode is set as the file is
    created (and each one rotation opens); a file left open by an older version is tightened."""

    def _open(self) -> IO[str]:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, PRIVATE_FILE_MODE)
            return os.fdopen(fd, self.mode, encoding=self.encoding, errors=self.errors)
        except BaseException:
            os.close(fd)
            raise


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("job_id", "uid_hash"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(
    level: str = "INFO", json_format: bool = True, log_dir: Path | None = None
) -> None:
    """Configure the root logger once per process: stderr, and a rotating file when asked."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter: logging.Formatter = (
        JsonFormatter()
        if json_format
        else logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [job=%(job_id)s uid=%(uid_hash)s] %(message)s"
        )
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None:
        make_private_dirs(log_dir)
        handlers.append(
            PrivateRotatingFileHandler(log_dir / "wecare.log", maxBytes=20_000_000, backupCount=5)
        )
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_ContextFilter())
        handler.addFilter(_RedactForeignValues())
        root.addHandler(handler)
    logging.captureWarnings(True)  # warnings -> logger "py.warnings" -> these handlers
    root.setLevel(level)
    for noisy in ("pynetdicom", "highdicom", "uvicorn.access", "alembic", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
