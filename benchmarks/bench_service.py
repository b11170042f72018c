"""Both of issue 31's comparisons in one run: the service against its own model, ingest against
a bare durable handler. Prints each ratio beside its target.

Run: ``python benchmarks/bench_service.py [--quick] [--no-descriptors]``. It runs
``bench_ingest.py`` (100 files over one association, alternating rounds: WeCare / bare
pynetdicom handler that writes, fsyncs and renames) and then ``bench_pipeline.py`` (a
100-image study and a 200-frame cine clip: queued until every output has the destination's
Success, against ``Model.predict`` on the same decoded frames), each in its own process one
after the other on the same machine, and prints one JSON object at the end:
``ingest_over_bare`` (target 0.7), ``study_over_model`` and ``cine_over_model`` (target 0.6),
with the load average around each part (the figures are only as quiet as the machine was).
Give ``--png-dir`` / ``--cine-png`` real breast images: the bundled model's scope check
refuses generated ones (no lesion, no SEG, no descriptors), which would time less work.
``--quick`` runs smaller cases (20 files, 2 rounds; 20 images, 40 frames) to check it works.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {"ingest_over_bare": 0.7, "study_over_model": 0.6, "cine_over_model": 0.6}


def _last_json(output: str) -> dict:
    """The last complete JSON object a benchmark printed (they end with an indented one)."""
    start = output.rfind("\n{")
    start = 0 if start < 0 and output.startswith("{") else start + 1
    return json.loads(output[start:])


def _run(script: str, args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True,
                          text=True, cwd=HERE.parent, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{script} failed with exit code {proc.returncode}")
    return _last_json(proc.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small cases, to check it runs")
    p.add_argument("--no-descriptors", action="store_true",
                   help="pipeline without BI-RADS descriptors (passed to bench_pipeline)")
    p.add_argument("--png-dir", type=Path, default=None,
                   help="real breast US PNGs for the study (e.g. ../shared/datasets/busi/"
                        "malignant): generated images are outside the model's scope, so its "
                        "check would skip the lesions, SEGs and descriptors being timed")
    p.add_argument("--cine-png", type=Path, default=None, help="a real PNG for the cine clip")
    args = p.parse_args()
    ingest_args = ["--files", "20", "--rounds", "2"] if args.quick else []
    pipeline_args = (["--images", "20", "--frames", "40"] if args.quick else [])
    if args.no_descriptors:
        pipeline_args.append("--no-descriptors")
    if args.png_dir is not None:
        pipeline_args += ["--png-dir", str(args.png_dir)]
    if args.cine_png is not None:
        pipeline_args += ["--cine-png", str(args.cine_png)]
    print("ingest: bench_ingest.py " + " ".join(ingest_args), file=sys.stderr, flush=True)
    ingest = _run("bench_ingest.py", ingest_args)
    print("pipeline: bench_pipeline.py " + " ".join(pipeline_args), file=sys.stderr, flush=True)
    pipeline = _run("bench_pipeline.py", pipeline_args)
    study = next(v for k, v in pipeline.items() if k.startswith("study"))
    cine = next(v for k, v in pipeline.items() if k.startswith("cine"))
    ratios = {
        "ingest_over_bare": ingest["wecare_over_bare_median"],
        "study_over_model": study["ratio"],
        "cine_over_model": cine["ratio"],
    }
    print(json.dumps({
        "ratios": ratios,
        "targets": TARGETS,
        "met": {k: ratios[k] >= TARGETS[k] for k in ratios},
        "ingest_files_per_s_median": ingest["median_files_per_s"],
        "study": study,  # every figure bench_pipeline gives: stage seconds, CPU ratio, ...
        "cine": cine,
        "descriptors": pipeline.get("descriptors"),
        "load": {"ingest": [ingest["loadavg_before"], ingest["loadavg_after"]],
                 "pipeline": [pipeline.get("load_before"), pipeline.get("load_after")]},
        "cpus": os.cpu_count(),
    }, indent=1))


if __name__ == "__main__":
    main()
