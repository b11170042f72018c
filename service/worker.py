"""Workers: claim a job, run the pipeline, record the outcome. One `try` per job lives here."""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from service.config import Settings
from service.errors import JobError
from service.exporter import wake_exporter
from service.logs import log_context, redact_quoted
from service.metrics import observe_stages
from service.pipeline import (
    PriorImage,
    PriorReport,
    SourceImage,
    StudyResult,
    prior_from_summary,
    process_study,
)
from storage.analyses import analysed_before, latest_report, record_analysed
from storage.db import session_scope
from storage.files import DataDir
from storage.instances import note_conflicts, processable_instances
from storage.models import Job, JobState, Study
from storage.outbox import add_output
from storage.queue import claim_next_job, renew_lease, set_state

log = logging.getLogger(__name__)


def node_id() -> str:
    """Prefix of our worker ids; jobs claimed under it are ours to re-queue at start-up."""
    return f"{socket.gethostname()}:"


class ModelProvider:
    """Loads the model once per process, on first use, and serialises access to it."""

    def __init__(
        self,
        weights: Path | None,
        device: str,
        torch_threads: int | None,
        model: Any = None,
        precision: str = "auto",
        compile_mode: str = "off",
        scope_check: bool = True,
    ) -> None:
        self._weights = weights
        self._scope_check = scope_check
        self._precision = precision
        self._compile = compile_mode
        self._device = None if device == "auto" else device
        self._torch_threads = torch_threads
        self._model: Any = model  # given: used as is (tests, or a caller that loaded it)
        self._error: str | None = None
        self.lock = threading.Lock()  # guards loading
        self.predict_lock = threading.Lock()  # one predict at a time across worker threads

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def network(self) -> str | None:
        """How the loaded network runs (``compiled``, ``eager``, ``eager (compile failed: …)``)."""
        return getattr(self._model, "compile_state", None) if self._model is not None else None

    def get(self) -> Any:
        with self.lock:
            if self._model is None:
                try:
                    if self._torch_threads:
                        import torch

                        torch.set_num_threads(self._torch_threads)
                    from inference.model import Model

                    model = Model.load(
                        self._weights,
                        device=self._device,
                        precision=self._precision,
                        compile=self._compile,
                        scope_check=self._scope_check,
                    )
                    # Compile before the first job (tens of seconds), not inside it; a compile
                    # failure leaves the model running eager, and says so.
                    warm_up_s = model.warm_up()
                    self._model = model
                    self._error = None
                    log.info(
                        "model loaded: %s (%s, %s, %s, warm-up %.1f s)",
                        model.version,
                        model.status,
                        model.precision,
                        model.compile_state,
                        warm_up_s,
                    )
                except Exception as exc:
                    self._error = f"{type(exc).__name__}: {exc}"
                    raise JobError(
                        "model_unavailable", f"model could not be loaded: {exc}", retryable=True
                    ) from exc
            return self._model


class _LockedModel:
    """The shared model, one predict at a time (Grad-CAM hooks are not thread-safe)."""

    def __init__(self, model: Any, lock: threading.Lock) -> None:
        self._model, self._lock = model, lock
        self.version: str = model.version
        self.status: str = model.status
        # model.json: the pipeline reads validated_devices from it (the SR's device caution).
        self.meta: dict[str, Any] = getattr(model, "meta", None) or {}

    def predict(self, images: Any, with_cam: bool = False) -> list[Any]:
        with self._lock:
            return self._model.predict(images, with_cam=with_cam)


def work_once(
    settings: Settings, engine: Engine, data_dir: DataDir, models: ModelProvider, worker_id: str
) -> int | None:
    """Claim and process one job; returns its id, or None when the queue was empty."""
    if not models.loaded and models.error is None:
        # Load (or wait for the start-up load) before claiming: a load takes seconds to
        # minutes on a busy CPU, and a job claimed meanwhile could outlive its lease.
        try:
            models.get()
        except JobError:
            pass  # the job claimed below records model_unavailable
    with session_scope(engine) as session:
        job = claim_next_job(session, worker_id, settings.worker.lease_seconds)
        if job is None:
            return None
        if _study_busy(session, job):
            return None
        job_id, attempts, study_id = job.id, job.attempts, job.study_id
        study = session.get(Study, job.study_id)
        study_uid = study.study_instance_uid if study else ""
        sources = [
            SourceImage(i.sop_instance_uid, i.series_instance_uid, Path(i.path))
            for i in processable_instances(session, job.study_id)
        ]
    with log_context(job_id=job_id, uid=study_uid):
        log.info("job started (attempt %d, %d images)", attempts, len(sources))
        heartbeat_stop = threading.Event()
        heartbeat = threading.Thread(
            target=_heartbeat,
            args=(engine, job_id, worker_id, settings.worker.lease_seconds, heartbeat_stop),
            daemon=True,
        )
        heartbeat.start()
        started = time.perf_counter()
        try:
            model = _LockedModel(models.get(), models.predict_lock)
            prior, predecessor = _history(engine, job_id, study_id, sources, model.version)
            result = process_study(
                sources,
                model,
                data_dir.outputs / str(job_id),
                explain=settings.worker.explain,
                prior=prior,
                predecessor=predecessor,
            )
        except JobError as exc:
            _fail(engine, job_id, worker_id, exc, attempts, settings.worker.max_attempts)
            return job_id
        except Exception as exc:  # noqa: BLE001 - the one catch-all per job, recorded
            message = crash_message(exc)
            log.error(
                "job crashed: %s\n%s", message, "".join(traceback.format_tb(exc.__traceback__))
            )
            _fail(
                engine,
                job_id,
                worker_id,
                JobError("internal_error", message, retryable=True),
                attempts,
                settings.worker.max_attempts,
            )
            return job_id
        finally:
            heartbeat_stop.set()
        _finish(settings, engine, job_id, worker_id, result, model.version, model.status)
        wake_exporter()  # its outputs are in the outbox: send them now, not at the next poll
        log.info(
            "job processed in %.2f s: %s, %d outputs",
            time.perf_counter() - started,
            result.predicted_class,
            len(result.outputs),
        )
    return job_id


def _study_busy(session: Any, job: Job) -> bool:
    """Another job of the same study is running: give this one back to the queue.

    A late image's job must see what the running job analyses (storage/analyses), or it
    would analyse and segment those images a second time; it waits its turn instead, at the
    back of the queue, without the attempt counting.
    """
    running = session.scalar(
        select(Job.id).where(
            Job.study_id == job.study_id, Job.state == JobState.RUNNING, Job.id != job.id
        )
    )
    if running is None:
        return False
    set_state(session, job, JobState.QUEUED)
    job.attempts -= 1
    log.info("job %d waits: job %d of the same study is running", job.id, running)
    return True


def _history(
    engine: Engine, job_id: int, study_id: int, sources: list[SourceImage], model_version: str
) -> tuple[dict[str, PriorImage], PriorReport | None]:
    """What earlier jobs of the study did with this model version: the images they analysed
    (not analysed again) and their latest SR (the new SR's predecessor)."""
    with session_scope(engine) as session:
        rows = analysed_before(
            session, [s.sop_instance_uid for s in sources], model_version, job_id
        )
        prior = {
            row.sop_instance_uid: prior_from_summary(
                row.summary, Path(row.seg_output.path) if row.seg_output else None
            )
            for row in rows
        }
        latest, count = latest_report(session, study_id, model_version, job_id)
        predecessor = None
        if latest is not None:
            study = session.get(Study, study_id)
            predecessor = PriorReport(
                sop_instance_uid=latest.sop_instance_uid,
                series_instance_uid=latest.series_instance_uid,
                study_instance_uid=study.study_instance_uid if study else "",
                sop_class_uid=latest.sop_class_uid,
                instance_number=count,
                output_id=latest.id,
            )
    if prior:
        log.info(
            "%d image(s) already analysed by this model version: not analysed again", len(prior)
        )
    return prior, predecessor


def crash_message(exc: BaseException) -> str:
    """``Type: message`` of an unexpected exception, quoted text redacted.

    Library messages quote the values they reject (``'f' is not a valid
    PatientSexValues``), which may be patient data: neither ``job.error`` nor the log may
    carry them (the log gets the stack without messages).
    """
    return f"{type(exc).__name__}: {redact_quoted(str(exc))}"


def _heartbeat(
    engine: Engine, job_id: int, worker_id: str, lease: float, stop: threading.Event
) -> None:
    while not stop.wait(max(lease / 3, 0.5)):
        try:
            with session_scope(engine) as session:
                if not renew_lease(session, job_id, worker_id, lease):
                    return
        except Exception:  # noqa: BLE001
            log.warning("lease renewal failed; will retry")


def _still_ours(session: Any, job_id: int, worker_id: str) -> Job | None:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.state != JobState.RUNNING or job.claimed_by != worker_id:
        log.warning("job no longer ours (lease lost); result discarded")
        return None
    return job


def _finish(
    settings: Settings,
    engine: Engine,
    job_id: int,
    worker_id: str,
    result: StudyResult,
    model_version: str,
    model_status: str,
) -> None:
    """Record outputs and outbox rows, then hand the job to the exporter, in one transaction."""
    destinations = [d.name for d in settings.destinations]
    with session_scope(engine) as session:
        job = _still_ours(session, job_id, worker_id)
        if job is None:
            return
        recorded = {}
        for output in result.outputs:
            recorded[output.sop_instance_uid] = add_output(
                session,
                job,
                kind=output.kind,
                sop_instance_uid=output.sop_instance_uid,
                series_instance_uid=output.series_instance_uid,
                sop_class_uid=output.sop_class_uid,
                path=str(output.path),
                destinations=destinations,
                model_version=model_version,
                predecessor_id=output.predecessor.output_id if output.predecessor else None,
            )
        for image in result.analysed:
            seg = recorded.get(image.seg_sop_instance_uid or "")
            record_analysed(
                session,
                job,
                sop_instance_uid=image.sop_instance_uid,
                series_instance_uid=image.series_instance_uid,
                model_version=model_version,
                seg_output_id=seg.id if seg is not None else None,
                summary=image.summary,
            )
        job.model_version = model_version
        job.model_status = model_status
        job.predicted_class = result.predicted_class
        job.probabilities = result.probabilities
        job.image_count = result.image_count
        job.stage_seconds = result.stage_seconds
        observe_stages(result.stage_seconds)
        job.results = result.results
        if result.skipped:
            job.error = "; ".join(f"image {s['uid_hash']}: {s['reason']}" for s in result.skipped)
            job.error_code = ("outside_scope" if result.predicted_class is None
                              else "images_skipped")
        # A conflicting copy of one of its instances (same UID, other bytes) was not processed.
        note_conflicts(session, job)
        set_state(session, job, JobState.EXPORTING if destinations else JobState.DONE)


def _fail(
    engine: Engine, job_id: int, worker_id: str, exc: JobError, attempts: int, max_attempts: int
) -> None:
    with session_scope(engine) as session:
        job = _still_ours(session, job_id, worker_id)
        if job is None:
            return
        if exc.retryable and attempts < max_attempts:
            set_state(session, job, JobState.QUEUED, error=str(exc), error_code=exc.code)
            log.warning("job will be retried (%s)", exc.code)
        else:
            set_state(session, job, JobState.FAILED, error=str(exc), error_code=exc.code)
            log.error("job failed (%s)", exc.code)


def run_worker(
    settings: Settings,
    engine: Engine,
    data_dir: DataDir,
    models: ModelProvider,
    stop: threading.Event,
    worker_id: str,
) -> None:
    """Loop until `stop`: finish the job in hand, then exit."""
    while not stop.is_set():
        try:
            job_id = work_once(settings, engine, data_dir, models, worker_id)
        except Exception:
            log.exception("worker loop error")
            job_id = None
        if job_id is None:
            stop.wait(settings.worker.poll_seconds)
