"""The radiologist workspace's JSON (issue 29): one study, every image and frame, editable.

`GET /api/jobs/{job_id}/workspace` answers `WorkspacePublic`; the trial-upload page (no PACS)
builds the same shape with `job_id=None` and `trial=True`, so one viewer script serves both.
Polygon coordinates are pixel-centre (x = column, y = row) of the full-resolution frame, as in
`dicom_io.polygons`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# A frame's latest radiologist review is the review API's own model (review_schemas).
from service.web.review_schemas import ReviewPublic


class StudyInfoPublic(BaseModel):
    """What the radiologist checks before reading: whose study, which breast, which scanner."""

    patient_id: str | None = None
    study_date: str | None = Field(None, description="Study date as YYYY-MM-DD")
    body_part: str | None = Field(None, description="Body Part Examined, e.g. BREAST")
    manufacturer: str | None = None
    model_name: str | None = Field(None, description="Manufacturer's Model Name")
    laterality: str | None = Field(None, description="L, R or B (image or frame laterality)")
    study_instance_uid: str | None = None


class RelatedJobPublic(BaseModel):
    """Another processing of the same study (a retry, a later arrival of more images)."""

    id: int
    state: str
    created: str = Field(description="When the job was created, in the site time zone")
    url: str


class FrameResultPublic(BaseModel):
    """Model output for one analysed frame, with the AI outlines as polygons."""

    frame: int = Field(description="1-based frame number")
    predicted_class: str | None = None
    probabilities: dict[str, float] | None = None
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    descriptors: dict[str, Any] | None = None
    lesions: list[list[list[float]]] = Field(
        default_factory=list, description="AI outline polygons, each [[x, y], ...]"
    )
    review: ReviewPublic | None = Field(
        None, description="Latest radiologist review of this frame (any job of the study)"
    )


class WorkspaceImagePublic(BaseModel):
    """One source image (single frame or cine clip) and its per-frame results."""

    index: int = Field(description="1-based image number within the job")
    sop_instance_uid: str | None = None
    rows: int
    columns: int
    frames: int
    pixel_spacing_mm: list[float] | None = Field(
        None, description="[row, col] mm per pixel from the US region calibration"
    )
    lesion_frames: list[int] = Field(default_factory=list, description="1-based, AI lesion")
    frame_url: str = Field(description="Template with '{frame}': full-resolution PNG")
    cam_url: str | None = Field(None, description="Template with '{frame}': Grad-CAM PNG")
    results: list[FrameResultPublic] = Field(default_factory=list)
    frame_probabilities: list[list[float]] | None = Field(
        None,
        description="Every frame's calibrated [normal, benign, malignant] (its most suspicious "
        "crop box), item k for frame k + 1; null when the job did not record them",
    )


class WorkspacePublic(BaseModel):
    """Everything the viewer and mask editor need for one job (or one trial upload)."""

    job_id: int | None = Field(None, description="None for a trial upload")
    trial: bool = Field(False, description="True: not sent to any PACS")
    study: StudyInfoPublic
    predicted_class: str | None = None
    probabilities: dict[str, float] | None = None
    class_rule: str = Field(description="How the study class was chosen from the frames")
    times: dict[str, str] = Field(default_factory=dict, description="In the site time zone")
    time_zone: str = "UTC"
    related_jobs: list[RelatedJobPublic] = Field(default_factory=list)
    caution: str | None = None
    can_edit: bool = False
    csrf_token: str | None = None
    review_url: str | None = None
    images: list[WorkspaceImagePublic] = Field(default_factory=list)
