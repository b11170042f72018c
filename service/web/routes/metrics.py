"""GET /metrics: Prometheus exposition, gauges read from the database at scrape time.

Each app has its own CollectorRegistry (never the global one), so several apps in one process
(tests) do not collide.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from storage.db import session_scope
from storage.models import Job, JobState, OutboxItem, OutboxState

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


class StorageCollector(Collector):
    """Jobs by state and outbox rows by state, counted when Prometheus scrapes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("wecare_jobs", "Jobs by state", labels=["state"])
        outbox = GaugeMetricFamily(
            "wecare_outbox_items", "Outbox rows (output x destination) by state", labels=["state"]
        )
        up = GaugeMetricFamily("wecare_database_up", "1 when the database answered this scrape")
        try:
            with session_scope(self._engine) as session:
                job_counts = dict(
                    session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all()
                )
                outbox_counts = dict(
                    session.execute(
                        select(OutboxItem.state, func.count(OutboxItem.id)).group_by(
                            OutboxItem.state
                        )
                    ).all()
                )
        except Exception:
            log.warning("metrics: database query failed", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        for state in JobState:
            jobs.add_metric([state.value], job_counts.get(state.value, 0))
        for row_state in OutboxState:
            outbox.add_metric([row_state.value], outbox_counts.get(row_state.value, 0))
        up.add_metric([], 1)
        yield jobs
        yield outbox
        yield up


def make_registry(engine: Engine) -> CollectorRegistry:
    """A registry of our own for one app."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StorageCollector(engine))
    return registry


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(request: Request) -> Response:
    """`wecare_jobs{state}`, `wecare_outbox_items{state}`, `wecare_database_up`."""
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
