"""Study completion: a waiting job is queued once its study has been quiet for stable_seconds.

The same loop returns jobs whose worker lease expired (the worker died) to the queue.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from sqlalchemy import Engine

from storage.db import session_scope
from storage.models import utcnow
from storage.queue import queue_stable_studies, requeue_expired

log = logging.getLogger(__name__)


def stability_once(
    engine: Engine, stable_seconds: float, listening_since: datetime | None = None
) -> tuple[list[int], list[int]]:
    with session_scope(engine) as session:
        queued = queue_stable_studies(session, stable_seconds, listening_since=listening_since)
        requeued = requeue_expired(session)
    for job_id in queued:
        log.info("job %d queued: study stable for %.0f s", job_id, stable_seconds)
    for job_id in requeued:
        log.warning("job %d re-queued: its worker's lease expired", job_id)
    return queued, requeued


def run_stability(
    engine: Engine, stable_seconds: float, stop: threading.Event, poll_seconds: float = 1.0
) -> None:
    # Started with the listener: a study is quiet only after stable_seconds of listening.
    listening_since = utcnow()
    while not stop.is_set():
        try:
            stability_once(engine, stable_seconds, listening_since)
        except Exception:
            log.exception("stability check failed")
        stop.wait(poll_seconds)
