"""GET /metrics: Prometheus exposition, gauges read from the database at scrape time.

Each app has its own CollectorRegistry (never the global one), so several apps in one process
(tests) do not collide. Besides the database gauges it carries this process's histograms and
counters (service/metrics.py): seconds per pipeline stage and per export round, instances
ingested by outcome.

Queue depth for autoscaling: `wecare_queue_depth` (jobs queued, waiting for a worker).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from service.metrics import COLLECTORS
from storage.db import session_scope
from storage.models import Job, JobState, OutboxItem, OutboxState, utcnow

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


class StorageCollector(Collector):
    """Jobs by state, queue depth, outbox rows by state and per destination, at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("wecare_jobs", "Jobs by state", labels=["state"])
        outbox = GaugeMetricFamily(
            "wecare_outbox_items", "Outbox rows (output x destination) by state", labels=["state"]
        )
        depth = GaugeMetricFamily(
            "wecare_queue_depth", "Jobs queued and not yet claimed by a worker (autoscaling)"
        )
        backlog = GaugeMetricFamily(
            "wecare_outbox_backlog",
            "Outbox rows not sent, per destination: pending (to be tried) or failed (given up)",
            labels=["destination", "state"],
        )
        oldest = GaugeMetricFamily(
            "wecare_outbox_oldest_pending_seconds",
            "Age of the oldest pending outbox row per destination",
            labels=["destination"],
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
                per_destination = session.execute(
                    select(
                        OutboxItem.destination,
                        OutboxItem.state,
                        func.count(OutboxItem.id),
                        func.min(OutboxItem.created_at),
                    )
                    .where(OutboxItem.state != OutboxState.SENT)
                    .group_by(OutboxItem.destination, OutboxItem.state)
                ).all()
        except Exception:
            log.warning("metrics: database query failed", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        for state in JobState:
            jobs.add_metric([state.value], job_counts.get(state.value, 0))
        for row_state in OutboxState:
            outbox.add_metric([row_state.value], outbox_counts.get(row_state.value, 0))
        depth.add_metric([], job_counts.get(JobState.QUEUED.value, 0))
        now = utcnow()
        for destination, row_state, count, first in per_destination:
            backlog.add_metric([destination, OutboxState(row_state).value], count)
            if row_state == OutboxState.PENDING and first is not None:
                oldest.add_metric([destination], max((now - first).total_seconds(), 0.0))
        up.add_metric([], 1)
        yield jobs
        yield depth
        yield outbox
        yield backlog
        yield oldest
        yield up


def make_registry(engine: Engine) -> CollectorRegistry:
    """A registry of our own for one app."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StorageCollector(engine))
    for collector in COLLECTORS:
        registry.register(collector)
    return registry


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(request: Request) -> Response:
    """Jobs by state, queue depth, outbox backlog, stage and export histograms, ingest counts.

    `wecare_jobs{state}`, `wecare_queue_depth`, `wecare_outbox_items{state}`,
    `wecare_outbox_backlog{destination,state}`, `wecare_outbox_oldest_pending_seconds`,
    `wecare_stage_seconds{stage}`, `wecare_export_seconds{destination}`,
    `wecare_ingest_instances_total{outcome}`, `wecare_database_up`."""
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
