"""The caution a job's report carries (a scanner the model was not validated on), for its page.

Read back from the job's newest SR (dicom_io.sr.sr_caution), so the dashboard says exactly
what the report sent to the PACS says, whatever model version made it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_io.sr import sr_caution
from storage.models import Output

log = logging.getLogger(__name__)


def job_caution(session: Session, job_id: int) -> str | None:
    """The caution of the job's newest SR; None without an SR, a caution or a readable file."""
    path = session.scalar(
        select(Output.path)
        .where(Output.job_id == job_id, Output.kind == "sr")
        .order_by(Output.id.desc())
        .limit(1)
    )
    if path is None or not Path(path).is_file():
        return None
    try:
        return sr_caution(dcmread(path))
    except Exception as exc:  # noqa: BLE001 - the page shows the job without the caution
        log.warning("job %d: SR not readable for its caution (%s)", job_id, type(exc).__name__)
        return None
