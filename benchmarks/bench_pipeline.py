"""Whole-service throughput against the bare model, one run: a 100-image study and a cine clip.

Run: ``python benchmarks/bench_pipeline.py [--images N] [--rows R --columns C]
[--frames F --cine-rows R --cine-columns C] [--threads T] [--syntax S] [--explain]``.

For each case (a study of N single-frame grey US images, default 100 of 600 x 800 JPEG
baseline, about 18 MB; a cine clip of F frames, default 200 of 480 x 640):

- ``model``: the bundled weights' ``Model.predict`` (batches of 8) on the same frames,
  decoded beforehand (``dicom_io.read.iter_frames``): the floor for the service. Timed
  just before and just after the service, the mean is used.
- ``service``: the instances recorded as the listener records them (files in the data
  directory, rows in a migrated SQLite database), the job queued, then the real worker loop
  (``service.worker.run_worker``) and exporter loop (``service.exporter.run_exporter``) in
  this process with the service's settings, delivering to a real dcmtk ``storescp``. Timed
  from queued to the job ``done``, which the exporter sets only once every output has the
  destination's Success.

Both use the same loaded ``Model`` object. Prints the job's ``stage_seconds``, the job
state durations and the ratio model seconds / service seconds per case (``ratio``, wall
clock), with the load average before and after (the machine is shared: the figures are only
as quiet as it was). ``cpu_ratio`` is the same ratio in CPU seconds of this process (every
thread; storescp is apart), less sensitive to other processes' load than the wall clock.
The worker and exporter run with the service's default poll intervals (1 s): the worker
claims the queued job at once, and wakes the exporter when the outputs are in the outbox, as
in `wecare serve`. ``seconds`` is the job's own ``finished_at - queued_at`` from the database;
this script checks the state every 0.2 s with one small query, so its polling takes next to
no CPU from the service.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("WECARE_WORKER__COMPILE", "off")


def _png_pixels(png_dir: Path | None, count: int, rows: int, columns: int) -> list[Any]:
    """`count` (rows, columns) uint8 images from the PNGs in `png_dir` (masks skipped), or []."""
    if png_dir is None:
        return []
    from PIL import Image

    names = sorted(p for p in png_dir.glob("*.png") if not p.stem.endswith("_mask"))
    if not names:
        raise SystemExit(f"no PNG image in {png_dir}")
    import numpy as np

    out = []
    for index in range(count):
        with Image.open(names[index % len(names)]) as image:
            grey = image.convert("L").resize((columns, rows))
        out.append(np.asarray(grey, dtype=np.uint8))
    return out


def _make_study(
    directory: Path, count: int, rows: int, columns: int, syntax: str, png_dir: Path | None
) -> list[Path]:
    """`count` single-frame images of one series, written in `syntax`.

    With `png_dir`, each image's pixels are a real breast ultrasound (resized), so the model
    finds lesions and SEGs are built as on a clinical study; else the synthetic image.
    """
    from pydicom.uid import generate_uid

    from tests.factories import make_us_dataset, write_dataset

    directory.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    real = _png_pixels(png_dir, count, rows, columns)
    paths = []
    for index in range(count):
        ds = make_us_dataset(
            rows=rows,
            columns=columns,
            study_instance_uid=study,
            series_instance_uid=series,
            seed=index,
            lesion=(rows // 2 + (index % 7) * 5, columns // 2),
            lesion_radii=(rows // 10, columns // 9),
        )
        ds.InstanceNumber = index + 1
        if real:
            ds.PixelData = real[index].tobytes()
        paths.append(write_dataset(ds, directory / f"{index + 1:03d}.dcm", syntax))
    return paths


def _make_cine(
    directory: Path, frames: int, rows: int, columns: int, png: Path | None
) -> list[Path]:
    """One multi-frame clip; with `png`, its middle third shows that image (slightly moving)."""
    import numpy as np

    from tests.factories import make_us_dataset, write_dataset

    directory.mkdir(parents=True, exist_ok=True)
    lesion_frames = range(frames // 3, 2 * frames // 3)
    ds = make_us_dataset(
        frames=frames,
        rows=rows,
        columns=columns,
        lesion_frames=lesion_frames,
        lesion_radii=(rows // 10, columns // 9),
    )
    if png is not None:
        from PIL import Image

        with Image.open(png) as image:
            grey = np.asarray(image.convert("L").resize((columns, rows)), dtype=np.uint8)
        pixels = np.frombuffer(ds.PixelData, np.uint8).reshape(frames, rows, columns).copy()
        for k in lesion_frames:
            pixels[k] = np.roll(grey, (k % 5) - 2, axis=1)
        ds.PixelData = pixels.tobytes()
    return [write_dataset(ds, directory / "cine.dcm")]


def _decoded(paths: list[Path]) -> list[Any]:
    from dicom_io.read import iter_frames

    images = []
    for path in paths:
        for _, pixels in iter_frames(path):
            images.extend(pixels[k].copy() for k in range(pixels.shape[0]))
    return images


def _time_model(model: Any, images: list[Any]) -> tuple[float, float]:
    """(wall, CPU) seconds for `Model.predict` over every image, batches of 8 (no Grad-CAM).

    Called from a thread, as the service's worker calls it: torch's OpenMP team belongs to
    the calling thread, and from the main thread the same predictions measured 7-8x slower
    on this loaded 2-core machine (21-27 s against 3.0-3.2 s for 24 frames, alternated).
    """
    spent: list[tuple[float, float]] = []

    def run() -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, len(images), 8):
            model.predict(images[start : start + 8])
        spent.append((time.perf_counter() - t0, time.process_time() - c0))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return spent[0]


def _run_service(
    paths: list[Path], work: Path, model: Any, dest: tuple[str, int], explain: bool
) -> dict[str, Any]:
    """Record `paths` as received, queue the job, run worker + exporter until it is done."""
    from pydicom import dcmread
    from sqlalchemy import select

    from dicom_io.seg import load_standard_tables
    from service.config import load_settings
    from service.exporter import run_exporter
    from service.worker import ModelProvider, run_worker
    from storage.db import make_engine, session_scope, upgrade
    from storage.files import DataDir
    from storage.instances import ReceivedInstance, record_instance
    from storage.models import Job, JobState, OutboxItem
    from storage.queue import process_now

    data_dir = DataDir(work / "data")
    data_dir.create()
    url = f"sqlite:///{data_dir.root / 'wecare.db'}"
    upgrade(url)
    engine = make_engine(url)
    aet, port = dest
    settings = load_settings(
        None,
        storage={"data_dir": str(data_dir.root), "min_free_mb": 0},
        destinations=[{"name": "pacs", "ae_title": aet, "host": "127.0.0.1", "port": port}],
        worker={"explain": explain},
    )
    with session_scope(engine) as session:
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            target = data_dir.incoming_path(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            record_instance(
                session,
                ReceivedInstance(
                    study_instance_uid=str(ds.StudyInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    path=str(target),
                    size_bytes=target.stat().st_size,
                ),
            )
    models = ModelProvider(None, "cpu", None, model=model)
    load_standard_tables()  # as a worker's start-up does (service.runtime), before the job
    stop = threading.Event()
    with session_scope(engine) as session:
        job_id = session.scalars(select(Job.id)).one()
    t0, c0 = time.perf_counter(), time.process_time()
    with session_scope(engine) as session:
        process_now(session, job_id)
    threads = [
        threading.Thread(
            target=run_worker, args=(settings, engine, data_dir, models, stop, "bench:0")
        ),
        threading.Thread(target=run_exporter, args=(settings, engine, stop)),
    ]
    for thread in threads:
        thread.start()
    state_of = select(Job.state).where(Job.id == job_id)
    try:
        while True:
            with engine.connect() as conn:
                state = conn.execute(state_of).scalar_one()
            if state in (JobState.DONE, JobState.FAILED):
                break
            time.sleep(0.2)
        polled, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        sent = session.scalars(select(OutboxItem.state)).all()
        assert job.finished_at is not None and job.queued_at is not None
        elapsed = (job.finished_at - job.queued_at).total_seconds()
        result = {
            "state": job.state,
            "error": job.error_code,
            "seconds": round(elapsed, 2),
            "seconds_polled": round(polled, 2),
            "cpu_seconds": round(cpu, 2),
            "stage_seconds": job.stage_seconds,
            "running_s": round((job.exporting_at - job.running_at).total_seconds(), 2)
            if job.exporting_at and job.running_at
            else None,
            "exporting_s": round((job.finished_at - job.exporting_at).total_seconds(), 2)
            if job.finished_at and job.exporting_at
            else None,
            "outputs_sent": sum(1 for s in sent if s == "sent"),
            "outputs": len(sent),
        }
    engine.dispose()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--columns", type=int, default=800)
    p.add_argument("--syntax", default="jpeg-baseline", help="transfer syntax of the study")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--cine-rows", type=int, default=480)
    p.add_argument("--cine-columns", type=int, default=640)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--explain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="worker.explain as the service's default (Grad-CAM for the dashboard)",
    )
    p.add_argument(
        "--png-dir",
        type=Path,
        default=None,
        help="take the study's pixels from these breast US PNGs (e.g. a BUSI class folder)",
    )
    p.add_argument(
        "--cine-png",
        type=Path,
        default=None,
        help="take the cine clip's lesion frames from this PNG (default: synthetic)",
    )
    p.add_argument(
        "--no-descriptors",
        action="store_true",
        help="skip the BI-RADS descriptors (the SR goes without them): to see what the rest "
        "of the service costs apart from that stage",
    )
    p.add_argument("--skip-cine", action="store_true")
    p.add_argument("--skip-study", action="store_true")
    args = p.parse_args()

    import torch

    from inference.model import Model
    from tests.integration.peers import storescp

    torch.set_num_threads(args.threads)
    if args.no_descriptors:
        import service.pipeline

        service.pipeline.describe_in_box = lambda *args, **kwargs: None  # type: ignore[assignment]
    load_before = os.getloadavg()
    model = Model.load(None, device="cpu")
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "cpu_threads": args.threads,
        "model": model.version,
        "precision": model.precision,
        "load_before": [round(v, 2) for v in load_before],
        "descriptors": not args.no_descriptors,
    }
    with tempfile.TemporaryDirectory(prefix="wecare-bench-") as tmp:
        root = Path(tmp)
        cases = []
        if not args.skip_study:
            cases.append(
                (
                    f"study {args.images} x {args.rows}x{args.columns} {args.syntax}",
                    _make_study(
                        root / "study",
                        args.images,
                        args.rows,
                        args.columns,
                        args.syntax,
                        args.png_dir,
                    ),
                )
            )
        if not args.skip_cine:
            cases.append(
                (
                    f"cine {args.frames} frames {args.cine_rows}x{args.cine_columns}",
                    _make_cine(
                        root / "cine",
                        args.frames,
                        args.cine_rows,
                        args.cine_columns,
                        args.cine_png,
                    ),
                )
            )
        _time_model(model, _decoded(cases[0][1][:8]))  # warm the allocator and oneDNN
        for index, (name, paths) in enumerate(cases):
            size_mb = sum(p.stat().st_size for p in paths) / 1e6
            images = _decoded(paths)
            frames = len(images)
            # The model is timed before and after the service, and the mean taken: a shared
            # machine's load then falls on both sides alike.
            model_before, cpu_before = _time_model(model, images)
            with storescp(root / f"received-{index}") as dest:
                service = _run_service(paths, root / f"work-{index}", model, dest, args.explain)
            model_after, cpu_after = _time_model(model, images)
            model_s = (model_before + model_after) / 2
            model_cpu = (cpu_before + cpu_after) / 2
            del images
            report[name] = {
                "size_mb": round(size_mb, 1),
                "frames": frames,
                "model_s": round(model_s, 2),
                "model_before_after_s": [round(model_before, 2), round(model_after, 2)],
                **service,
                "model_cpu_s": round(model_cpu, 2),
                "ratio": round(model_s / service["seconds"], 3),
                "cpu_ratio": round(model_cpu / service["cpu_seconds"], 3),
            }
            print(json.dumps({name: report[name]}), flush=True)
    report["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
