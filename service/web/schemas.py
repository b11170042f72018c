"""API response models, kept apart from the tables (storage/models.py).

Built from rows with `job_public` / `job_detail`; the dashboard templates use the same objects,
so the JSON API and the pages always agree.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from storage.models import Job, JobState, OutboxItem, Output

#: Preview files the pipeline writes: `<image index>_<frame number>_{mask,cam}.png`.
PREVIEW_NAME_RE = re.compile(r"^[0-9]{3}_[0-9]{4}_(mask|cam)\.png$")


def is_preview_name(name: str) -> bool:
    """True when `name` is a preview file name (nothing else is ever served from disk)."""
    return bool(PREVIEW_NAME_RE.fullmatch(name))


#: Stages in the order a job passes through them, with the column that stamps each start.
STAGES: tuple[tuple[str, str], ...] = (
    ("waiting", "created_at"),
    ("queued", "queued_at"),
    ("running", "running_at"),
    ("exporting", "exporting_at"),
)


class StageTimesPublic(BaseModel):
    """Seconds spent in each stage; the current stage counts up to now, unreached ones are null."""

    waiting: float | None = Field(None, description="Receiving instances until queued (s)")
    queued: float | None = Field(None, description="Queued until a worker claimed it (s)")
    running: float | None = Field(None, description="Decoding, inference, building SEG/SR (s)")
    exporting: float | None = Field(None, description="Sending outputs to every destination (s)")
    total: float | None = Field(None, description="First instance to done/failed, or to now (s)")


class OutboxPublic(BaseModel):
    """Delivery of one output to one destination."""

    destination: str = Field(description="Destination name from the configuration")
    state: str = Field(description="pending | sent | failed")
    attempts: int = Field(description="C-STORE tries so far")
    next_try_at: datetime | None = Field(None, description="When the exporter tries again (UTC)")
    last_status: int | None = Field(None, description="Peer's last DIMSE status, e.g. 0 = Success")
    last_error: str | None = Field(None, description="Why the last try did not succeed")
    sent_at: datetime | None = Field(None, description="When the peer answered Success (UTC)")


class OutputPublic(BaseModel):
    """A DICOM object we created for the job (SEG or SR) and its delivery rows."""

    id: int
    kind: str = Field(description="seg | sr")
    sop_instance_uid: str
    series_instance_uid: str
    created_at: datetime
    outbox: list[OutboxPublic] = Field(default_factory=list)


class ImageResultPublic(BaseModel):
    """Model output for one frame of one image (as the pipeline stored it in Job.results)."""

    model_config = ConfigDict(extra="ignore")

    image: int | None = Field(None, description="1-based image number within the study")
    frame: int | None = Field(None, description="1-based frame number within the image")
    sop_instance_uid: str | None = None
    predicted_class: str | None = None
    probabilities: dict[str, float] | None = Field(None, description="Calibrated, sum to 1")
    lesion_area_px: int | None = None
    lesion_area_mm2: float | None = Field(None, description="Null: no calibrated US region")
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    descriptors: dict[str, Any] | None = Field(
        None,
        description="BI-RADS descriptors of the lesion (shape, orientation, margin, "
        "margin_detail, echo_pattern, posterior, sizes in mm); null: no lesion",
    )
    mask_png: str | None = Field(None, description="Preview name: image with the mask outline")
    cam_png: str | None = Field(None, description="Preview name: Grad-CAM heat map")
    mask_url: str | None = Field(None, description="URL of the mask preview PNG")
    cam_url: str | None = Field(None, description="URL of the Grad-CAM preview PNG")


class JobPublic(BaseModel):
    """One processing of one study, as listed on the dashboard."""

    id: int
    study_instance_uid: str
    patient_name: str | None = Field(
        None, description="Patient's name as received (DICOM PN, '^' between name parts)"
    )
    accession_number: str | None = None
    state: str = Field(description="waiting | queued | running | exporting | done | failed")
    created_at: datetime = Field(description="First instance of the study seen (UTC)")
    queued_at: datetime | None = None
    running_at: datetime | None = None
    exporting_at: datetime | None = None
    finished_at: datetime | None = None
    durations: StageTimesPublic
    attempts: int = Field(description="Processing tries (a manual retry resets it)")
    forced: bool = Field(False, description="Queued by 'process now' before the study was quiet")
    error: str | None = None
    error_code: str | None = Field(None, description="Stable error code, e.g. no_us_region")
    model_version: str | None = None
    model_status: str | None = Field(None, description="'final', or why the model is not final")
    image_count: int | None = None
    predicted_class: str | None = Field(None, description="normal | benign | malignant")
    probabilities: dict[str, float] | None = Field(None, description="Calibrated, per class")


class JobDetailPublic(JobPublic):
    """A job with its per-image results, pipeline timings and outputs."""

    stage_seconds: dict[str, float] | None = Field(
        None, description="Seconds per pipeline step, e.g. decode, inference"
    )
    results: list[ImageResultPublic] = Field(default_factory=list)
    outputs: list[OutputPublic] = Field(default_factory=list)


class JobsPublic(BaseModel):
    """A page of jobs, newest first; `count` is the number matching the filter."""

    data: list[JobPublic]
    count: int


class JobActionPublic(BaseModel):
    """What a dashboard action did."""

    action: Literal["queued", "requeued", "exports_retried", "sent_now"]
    affected: int = Field(description="Jobs or outbox rows changed")
    job: JobDetailPublic


class ErrorPublic(BaseModel):
    """Body of every domain error."""

    detail: str
    code: str


def stage_durations(job: Job, now: datetime) -> StageTimesPublic:
    """Seconds per stage from the job's stamps (see STAGES).

    A retried job keeps older stamps of later stages; those are ignored because a stage counts
    only once the job has reached it in its current pass (its start is not before the previous
    stage's start).
    """
    state = job.state
    order = [name for name, _ in STAGES]
    current = order.index(state) if state in order else len(order)
    starts = [getattr(job, column) for _, column in STAGES]
    out: dict[str, float | None] = {}
    for i, name in enumerate(order):
        start = starts[i]
        if (
            start is None
            or i > current
            or (i > 0 and starts[i - 1] is not None and start < starts[i - 1])
        ):
            out[name] = None
            continue
        if i == current:
            end: datetime | None = now
        else:
            later = [
                s
                for s in (*starts[i + 1 : current + 1], job.finished_at)
                if s is not None and s >= start
            ]
            end = min(later) if later else None
        # max(0, …): another node's clock may run slightly ahead of ours.
        out[name] = None if end is None else round(max((end - start).total_seconds(), 0.0), 1)
    terminal = state in (JobState.DONE, JobState.FAILED)
    end_total = job.finished_at if terminal else now
    out["total"] = (
        round(max((end_total - job.created_at).total_seconds(), 0.0), 1)
        if end_total is not None and job.created_at is not None
        else None
    )
    return StageTimesPublic(**out)


def _outbox_public(item: OutboxItem) -> OutboxPublic:
    return OutboxPublic(
        destination=item.destination,
        state=item.state,
        attempts=item.attempts,
        next_try_at=item.next_try_at,
        last_status=item.last_status,
        last_error=item.last_error,
        sent_at=item.sent_at,
    )


def _output_public(output: Output) -> OutputPublic:
    return OutputPublic(
        id=output.id,
        kind=output.kind,
        sop_instance_uid=output.sop_instance_uid,
        series_instance_uid=output.series_instance_uid,
        created_at=output.created_at,
        outbox=[_outbox_public(i) for i in sorted(output.outbox, key=lambda i: i.destination)],
    )


def _job_fields(job: Job, now: datetime) -> dict[str, Any]:
    return {
        "id": job.id,
        "study_instance_uid": job.study.study_instance_uid,
        "patient_name": job.study.patient_name,
        "accession_number": job.study.accession_number,
        "state": job.state,
        "created_at": job.created_at,
        "queued_at": job.queued_at,
        "running_at": job.running_at,
        "exporting_at": job.exporting_at,
        "finished_at": job.finished_at,
        "durations": stage_durations(job, now),
        "attempts": job.attempts,
        "forced": bool(job.forced),
        "error": job.error,
        "error_code": job.error_code,
        "model_version": job.model_version,
        "model_status": job.model_status,
        "image_count": job.image_count,
        "predicted_class": job.predicted_class,
        "probabilities": job.probabilities,
    }


def job_public(job: Job, now: datetime) -> JobPublic:
    """The list view of a job (reads `job.study`)."""
    return JobPublic(**_job_fields(job, now))


def _result_public(job_id: int, row: dict[str, Any]) -> ImageResultPublic:
    result = ImageResultPublic.model_validate(row)
    # Only names the preview route would serve become links.
    if result.mask_png and is_preview_name(result.mask_png):
        result.mask_url = f"/jobs/{job_id}/preview/{result.mask_png}"
    if result.cam_png and is_preview_name(result.cam_png):
        result.cam_url = f"/jobs/{job_id}/preview/{result.cam_png}"
    return result


def job_detail(job: Job, now: datetime) -> JobDetailPublic:
    """The detail view of a job (reads `job.study`, `job.outputs` and their outbox rows)."""
    results = [_result_public(job.id, r) for r in (job.results or []) if isinstance(r, dict)]
    return JobDetailPublic(
        **_job_fields(job, now),
        stage_seconds=job.stage_seconds,
        results=results,
        outputs=[_output_public(o) for o in sorted(job.outputs, key=lambda o: o.id)],
    )
