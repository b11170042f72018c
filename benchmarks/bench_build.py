"""Build stage alone: the SEG(s) and SR of one study, as service/pipeline.py ``build`` makes them.

Run: ``python benchmarks/bench_build.py [--images N] [--rows R --columns C] [--repeats K]``.

The study is N single-frame grey US images of one series (default 100 of 600 x 800, as in
``bench_pipeline.py``), each with one lesion (tests/factories.py), written to a temp
directory and read back with ``dicom_io.read.read_header`` as the pipeline reads them
(headers only). Per image: one lesion mask on the full grid and one ``LesionFinding`` with
sizes and BI-RADS descriptors. Timed (wall clock and CPU of this process, ``perf_counter``
and ``process_time``), K times after one untimed warm-up build: ``build_segs`` (one SEG of
N frames) and ``build_sr`` (one lesion group per finding). Prints the median and best of
the K builds per study and per lesion, with the load average before and after (the machine
may be shared: the figures are only as quiet as it was). Measured figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_inputs(directory: Path, images: int, rows: int, columns: int) -> dict[str, Any]:
    """Headers, masks and findings of a study of `images` single-frame images, one lesion each."""
    from pydicom.uid import generate_uid

    from dicom_io.read import read_header
    from dicom_io.seg import AlgorithmInfo, SourceMasks
    from dicom_io.sr import LesionDescription, LesionFinding, StudyClassification
    from tests.factories import lesion_mask, make_us_dataset, write_dataset

    study, series = generate_uid(), generate_uid()
    radii = (rows // 10, columns // 9)
    headers, items, findings = [], [], []
    for index in range(images):
        center = (rows // 2 + (index % 7) * 5, columns // 2)
        ds = make_us_dataset(
            rows=rows,
            columns=columns,
            study_instance_uid=study,
            series_instance_uid=series,
            seed=index,
            lesion=center,
            lesion_radii=radii,
        )
        ds.InstanceNumber = index + 1
        header = read_header(write_dataset(ds, directory / f"{index + 1:03d}.dcm"))
        mask = lesion_mask(rows, columns, center, radii)
        headers.append(header)
        items.append(SourceMasks(header, mask[None], (1,)))
        findings.append(
            LesionFinding(
                source_sop_instance_uid=str(header.SOPInstanceUID),
                frame_number=None,
                area_mm2=round(float(mask.sum()) * 0.01, 2),
                long_axis_mm=2 * radii[1] * 0.1,
                short_axis_mm=2 * radii[0] * 0.1,
                area_px=int(mask.sum()),
                description=LesionDescription(
                    shape="oval",
                    orientation="parallel",
                    margin="not circumscribed",
                    margin_detail=("angular", "indistinct"),
                    echo_pattern="hypoechoic",
                    posterior="shadowing",
                    depth_mm=3.5 + index % 4,
                ),
            )
        )
    return {
        "headers": headers,
        "items": items,
        "findings": findings,
        "algorithm": AlgorithmInfo("wecare-bench", "wecare-bench 2026-12-06 0123abcd"),
        "classification": StudyClassification(
            "malignant", {"normal": 0.1, "benign": 0.2, "malignant": 0.7}
        ),
    }


def _timed(inputs: dict[str, Any]) -> dict[str, float]:
    from dicom_io.seg import build_segs
    from dicom_io.sr import build_sr
    from dicom_io.uids import content_key

    headers = inputs["headers"]
    wall, cpu = time.perf_counter(), time.process_time()
    segs = build_segs(inputs["items"], inputs["algorithm"], 300)
    seg_wall, seg_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    build_sr(
        headers,
        segs,
        inputs["classification"],
        inputs["findings"],
        inputs["algorithm"],
        301,
        uid_source=content_key(
            str(headers[0].StudyInstanceUID), [str(h.SOPInstanceUID) for h in headers]
        ),
    )
    sr_wall, sr_cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "seg_wall_s": seg_wall,
        "seg_cpu_s": seg_cpu,
        "sr_wall_s": sr_wall,
        "sr_cpu_s": sr_cpu,
        "build_wall_s": seg_wall + sr_wall,
        "build_cpu_s": seg_cpu + sr_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--columns", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp), args.images, args.rows, args.columns)
    lesions = len(inputs["findings"])
    load_before = os.getloadavg()
    _timed(inputs)  # warm-up, not counted: imports, highdicom's lazily built tables
    runs = [_timed(inputs) for _ in range(args.repeats)]
    load_after = os.getloadavg()

    figures: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        median, best = statistics.median(values), min(values)
        name = key.removesuffix("_s")
        figures[f"{name}_ms_per_study_median"] = round(1000 * median, 1)
        figures[f"{name}_ms_per_study_best"] = round(1000 * best, 1)
        figures[f"{name}_ms_per_lesion_median"] = round(1000 * median / lesions, 2)
    print(
        json.dumps(
            {
                "images": args.images,
                "rows": args.rows,
                "columns": args.columns,
                "lesions": lesions,
                "repeats": args.repeats,
                **figures,
                "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in load_after],
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
