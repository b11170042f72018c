"""The exporter: drains the outbox, one association or STOW-RS request per destination."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from pathlib import Path

from sqlalchemy import Engine

from service.config import Destination, Settings, StowRsDestination
from service.senders import SendResult, send
from storage import audit
from storage.audit import AuditAction
from storage.db import session_scope
from storage.models import OutboxItem
from storage.outbox import RetryPolicy, claim_due, record_attempt, release_claims

log = logging.getLogger(__name__)


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        base_seconds=settings.export.base_backoff_seconds,
        max_seconds=settings.export.max_backoff_seconds,
        max_attempts=settings.export.max_attempts,
    )


def destination_label(destination: Destination) -> str:
    """'PACS (10.0.0.5:104)' or 'web (https://pacs/dicom-web)': errors say where IT must look."""
    if isinstance(destination, StowRsDestination):
        return f"{destination.name} ({destination.url})"
    return f"{destination.name} ({destination.host}:{destination.port})"


def export_once(settings: Settings, engine: Engine) -> int:
    """Send every due outbox row once; returns how many rows were tried."""
    destinations = {d.name: d for d in settings.destinations}
    policy = retry_policy(settings)
    claim_seconds = settings.export.timeout_seconds * 4 + 30
    with session_scope(engine) as session:
        items = claim_due(session, claim_seconds=claim_seconds)
        work = [(i.id, i.destination, i.output.path) for i in items]
    if not work:
        return 0
    by_destination: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for item_id, name, path in work:
        by_destination[name].append((item_id, Path(path)))
    for name, rows in by_destination.items():
        destination = destinations.get(name)
        if destination is None:
            results = [
                SendResult(p, None, f"destination {name!r} is not configured") for _, p in rows
            ]
        else:
            results = send(
                destination,
                [p for _, p in rows],
                calling_ae_title=settings.dicom.ae_title,
                timeout_seconds=settings.export.timeout_seconds,
            )
        by_path = {r.path: r for r in results}
        with session_scope(engine) as session:
            for item_id, path in rows:
                result = by_path[path]
                item = session.get(OutboxItem, item_id)
                if item is None:
                    continue
                record_attempt(
                    session,
                    item,
                    delivered=result.delivered,
                    status=result.status,
                    error=result.error,
                    policy=policy,
                    where=destination_label(destination) if destination else name,
                )
                # The audit trail says what left WeCare, to whom, in the same transaction.
                outcome = "delivered" if result.delivered else f"not delivered ({result.error})"
                audit.record(
                    session,
                    AuditAction.EXPORT,
                    actor="exporter",
                    target=f"job:{item.output.job_id}",
                    detail=f"{item.output.kind} to {name}: {outcome}",
                )
        sent = sum(1 for r in results if r.delivered)
        log.info("export to %s: %d of %d delivered", name, sent, len(rows))
    return len(work)


_WAKE = threading.Event()
#: How soon an idle exporter notices `stop` (it sleeps on the wake-up event, not on `stop`).
_STOP_CHECK_SECONDS = 0.25


def wake_exporter() -> None:
    """Tell this process's exporter that outbox rows were committed: it looks now, not at its
    next poll (a worker in the same process, as in `wecare serve`, calls this once a job's
    outputs are recorded; an exporter in another process still finds them by polling)."""
    _WAKE.set()


def _idle(stop: threading.Event, seconds: float) -> None:
    """Sleep up to `seconds`, less when woken (:func:`wake_exporter`) or stopped."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if _WAKE.wait(min(left, _STOP_CHECK_SECONDS)):
            _WAKE.clear()
            return


def run_exporter(settings: Settings, engine: Engine, stop: threading.Event) -> None:
    """Loop until `stop`: export what is due, then sleep a poll interval (or until woken).

    First, rows a killed process had claimed (mid-send) are made due again at once."""
    try:
        with session_scope(engine) as session:
            released = release_claims(session)
        if released:
            log.info("outbox: %d pending row(s) due now after start-up", released)
    except Exception:
        log.exception("could not release outbox claims at start-up")
    while not stop.is_set():
        try:
            tried = export_once(settings, engine)
        except Exception:
            log.exception("exporter round failed")
            tried = 0
        if not tried:
            _idle(stop, settings.export.poll_seconds)
