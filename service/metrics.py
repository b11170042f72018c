"""Process-wide Prometheus metrics that code observes as it runs (not read from the database).

Kept out of the global prometheus_client registry: each web app registers these collectors
into its own registry (service/web/routes/metrics.py), next to the gauges it computes from the
database at scrape time. They count what happened in this process: a worker running in its
own process (not under `wecare serve`) keeps its own figures.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from prometheus_client import Counter, Histogram

# 10 ms to 10 min: a stage of a one-image study is tens of ms, a 200-frame clip minutes.
STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

STAGE_SECONDS = Histogram(
    "wecare_stage_seconds",
    "Seconds a processed job spent in each pipeline stage (decode, inference, build, store...)",
    ["stage"],
    buckets=STAGE_BUCKETS,
    registry=None,
)
EXPORT_SECONDS = Histogram(
    "wecare_export_seconds",
    "Seconds one send round to a destination took (an association or STOW-RS requests)",
    ["destination"],
    buckets=STAGE_BUCKETS,
    registry=None,
)
INGESTED = Counter(
    "wecare_ingest_instances",
    "Instances offered by C-STORE or upload, by outcome (stored, already_stored, or the "
    "failure status: out_of_resources, cannot_understand, dataset_does_not_match_sop_class)",
    ["outcome"],
    registry=None,
)

COLLECTORS = (STAGE_SECONDS, EXPORT_SECONDS, INGESTED)


def observe_stages(stage_seconds: Mapping[str, float] | None) -> None:
    """Record a processed job's seconds per stage (its `stage_seconds`)."""
    for stage, seconds in (stage_seconds or {}).items():
        STAGE_SECONDS.labels(stage=stage).observe(max(float(seconds), 0.0))


def ingest_outcome(outcome: Any) -> str:
    """`stored`, `already_stored`, or the failure status in lower case, of a StoreOutcome."""
    status = getattr(outcome, "status", None)
    if getattr(outcome, "ok", False):
        return "stored" if getattr(outcome, "created", False) else "already_stored"
    name = getattr(status, "name", None)
    return str(name).lower() if name else "unknown"


P = ParamSpec("P")
R = TypeVar("R")


def counts_ingest(store: Callable[P, R]) -> Callable[P, R]:
    """Decorate the store function: each StoreOutcome it returns is counted by outcome."""

    @functools.wraps(store)
    def counted(*args: P.args, **kwargs: P.kwargs) -> R:
        outcome = store(*args, **kwargs)
        INGESTED.labels(outcome=ingest_outcome(outcome)).inc()
        return outcome

    return counted
