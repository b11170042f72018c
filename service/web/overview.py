"""The overview page's numbers and their plots, drawn as plain SVG on the server.

The pages run no script (CSP `script-src 'none'`), so the plots are SVG elements laid out
here (coordinates in a fixed viewBox) and written by the template, labels autoescaped.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Job, JobState, OutboxItem, OutboxState

#: Jobs read for the latency percentiles and the class mix (the newest finished ones).
RECENT_JOBS = 1000
#: Hours shown in the throughput plot.
HOURS = 24

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 12, 40


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    colour: str
    title: str


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass
class Plot:
    """One SVG bar plot: bars, y gridlines with labels, x labels; `empty` when no data."""

    title: str
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_labels: list[Tick] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    empty: bool = True
    width: int = WIDTH
    height: int = HEIGHT
    unit: str = ""


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _nice_step(top: float, ticks: int = 4) -> float:
    """A round tick step (1, 2, 5 × 10^n) so that about `ticks` steps cover `top`."""
    raw = max(top, 1e-9) / ticks
    exp = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if raw <= step * exp:
            return float(step * exp)
    return float(10 * exp)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def grouped_bars(
    title: str,
    groups: list[str],
    series: list[tuple[str, str, list[float]]],
    unit: str = "",
    label_every: int = 1,
) -> Plot:
    """Bars per group, one per series (name, colour, values), on a shared 0-based y axis."""
    plot = Plot(title=title, unit=unit, legend=[(name, colour) for name, colour, _ in series])
    top = max((v for _, _, values in series for v in values), default=0.0)
    if not groups or top <= 0:
        return plot
    plot.empty = False
    step = _nice_step(top)
    steps = math.ceil(top / step - 1e-9)
    ymax = step * steps
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / len(groups)
    bar_w = min(slot * 0.8 / len(series), 48.0)
    pad = (slot - bar_w * len(series)) / 2
    for i, group in enumerate(groups):
        for j, (name, colour, values) in enumerate(series):
            h = inner_h * values[i] / ymax
            x = LEFT + i * slot + pad + j * bar_w
            suffix = f" {unit}" if unit else ""
            plot.bars.append(
                Bar(
                    round(x, 1),
                    round(TOP + inner_h - h, 1),
                    round(max(bar_w - 1, 1), 1),
                    round(h, 1),
                    colour,
                    f"{group} · {name}: {_fmt(values[i])}{suffix}",
                )
            )
        if i % label_every == 0:
            plot.x_labels.append(Tick(round(LEFT + (i + 0.5) * slot, 1), group))
    for k in range(steps + 1):
        plot.y_ticks.append(Tick(round(TOP + inner_h - inner_h * k / steps, 1), _fmt(step * k)))
    return plot


@dataclass
class Overview:
    throughput: Plot
    latency: Plot
    classes: Plot
    failures: Plot
    latency_table: list[tuple[str, int, float, float]]  # stage, n, p50, p95
    class_counts: dict[str, int]
    failure_counts: list[tuple[str, int]]
    jobs_total: int


def build_overview(session: Session, now: datetime) -> Overview:
    """Throughput per hour (last 24 h), stage latency p50/p95, class mix and failures."""
    since = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    hours = [since + timedelta(hours=h) for h in range(HOURS)]
    done, failed = [0.0] * HOURS, [0.0] * HOURS
    for state, finished in session.execute(
        select(Job.state, Job.finished_at).where(
            Job.finished_at >= since, Job.state.in_([JobState.DONE, JobState.FAILED])
        )
    ):
        index = int((finished - since).total_seconds() // 3600)
        if 0 <= index < HOURS:
            (done if state == JobState.DONE else failed)[index] += 1
    throughput = grouped_bars(
        f"Jobs finished per hour (last {HOURS} h, UTC)",
        [h.strftime("%H:00") for h in hours],
        [("done", "#15803d", done), ("failed", "#b91c1c", failed)],
        label_every=3,
    )

    recent = session.execute(
        select(Job.stage_seconds, Job.predicted_class)
        .where(Job.state == JobState.DONE)
        .order_by(Job.finished_at.desc(), Job.id.desc())
        .limit(RECENT_JOBS)
    ).all()
    stages: dict[str, list[float]] = {}
    for stage_seconds, _ in recent:
        for stage, seconds in (stage_seconds or {}).items():
            if isinstance(seconds, int | float) and math.isfinite(seconds):
                stages.setdefault(stage, []).append(float(seconds))
    table = [(s, len(v), percentile(v, 50), percentile(v, 95)) for s, v in stages.items()]
    latency = grouped_bars(
        f"Stage latency (s), newest {RECENT_JOBS} done jobs",
        [s for s, *_ in table],
        [("p50", "#1f4e79", [r[2] for r in table]), ("p95", "#b45309", [r[3] for r in table])],
        unit="s",
    )

    mix = Counter(c for _, c in recent if c)
    order = ["normal", "benign", "malignant"]
    names = [c for c in order if c in mix] + sorted(set(mix) - set(order))
    colours = {"normal": "#15803d", "benign": "#b45309", "malignant": "#b91c1c"}
    classes = grouped_bars(
        "Class mix of the newest done jobs",
        names,
        [("jobs", "#1f4e79", [float(mix[c]) for c in names])],
    )
    classes.legend = []  # one series, coloured per class: the x labels say it
    classes.bars = [
        Bar(b.x, b.y, b.w, b.h, colours.get(names[i], "#1f4e79"), b.title)
        for i, b in enumerate(classes.bars)
    ]

    failure_counts: Counter[str] = Counter()
    for code, n in session.execute(
        select(Job.error_code, func.count(Job.id))
        .where(Job.state == JobState.FAILED)
        .group_by(Job.error_code)
    ):
        failure_counts[f"job: {code or 'unknown'}"] += n
    for destination, n in session.execute(
        select(OutboxItem.destination, func.count(OutboxItem.id))
        .where(OutboxItem.state == OutboxState.FAILED)
        .group_by(OutboxItem.destination)
    ):
        failure_counts[f"delivery: {destination}"] += n
    top_failures = failure_counts.most_common(8)
    failures = grouped_bars(
        "Failures: jobs by error code, deliveries by destination",
        [name for name, _ in top_failures],
        [("count", "#b91c1c", [float(n) for _, n in top_failures])],
    )
    failures.legend = []
    total = session.scalar(select(func.count(Job.id))) or 0
    return Overview(throughput, latency, classes, failures, table, dict(mix), top_failures, total)
