"""The `wecare` command as a user runs it (subprocesses where signals and exit codes matter)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from typer.testing import CliRunner

from service.cli import app
from tests.dciodvfy import run_dciodvfy
from tests.factories import make_us_image
from tests.integration.peers import REPO_ROOT, wecare

runner = CliRunner()


def test_config_check_bad_key_exit_2_names_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[dicom]\nportt = 5\n")
    result = runner.invoke(app, ["config", "check", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "dicom.portt: unknown key" in result.output


def test_config_show_defaults_json() -> None:
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0
    shown = json.loads(result.output)
    assert shown["dicom"]["port"] == 11112 and shown["web"]["host"] == "127.0.0.1"


def test_db_upgrade_creates_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WECARE_STORAGE__DATA_DIR", str(tmp_path / "d"))
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "wecare.db").exists()


def test_infer_dicom_writes_valid_seg_and_sr_and_json_lines(tmp_path: Path) -> None:
    src = make_us_image(tmp_path / "us.dcm")
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "infer", str(src), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    image_rows = [r for r in lines if "predicted_class" in r]
    assert len(image_rows) == 1
    row = image_rows[0]
    assert row["predicted_class"] in {"normal", "benign", "malignant"}
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    outputs = {r["output"]: Path(r["path"]) for r in lines if "output" in r}
    assert "sr" in outputs
    for path in outputs.values():
        assert run_dciodvfy(path)[0] == []
        assert dcmread(path).Manufacturer == "WeCare"


def test_infer_png_writes_mask_overlay_and_cam(tmp_path: Path) -> None:
    image = np.zeros((200, 240), dtype=np.uint8) + 40
    image[80:130, 90:160] = 200
    Image.fromarray(image).save(tmp_path / "scan.png")
    result = runner.invoke(
        app, ["infer", str(tmp_path / "scan.png"), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip().splitlines()[-1])
    assert row["file"] == "scan.png" and "lesion_area_px" in row
    mask = np.asarray(Image.open(tmp_path / "out" / "scan_mask.png"))
    assert mask.shape == (200, 240) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "out" / "scan_overlay.png").exists()
    assert (tmp_path / "out" / "scan_cam.png").exists()


def test_infer_unreadable_file_error_line_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "junk.dcm"
    bad.write_bytes(b"not dicom at all" * 10)
    result = runner.invoke(app, ["infer", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "error" in json.loads(result.output.strip().splitlines()[-1])


def test_infer_deflate_bomb_refused_before_inflating(tmp_path: Path) -> None:
    from tests.deflate_bombs import CHUNK, ct_bomb

    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(ct_bomb(1024 * CHUNK))  # 1 GiB inflated
    result = runner.invoke(app, ["infer", str(bomb), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    line = json.loads(result.output.strip().splitlines()[-1])
    assert "inflates beyond 256 MiB" in line["error"]


@pytest.mark.integration
def test_serve_sigterm_stops_cleanly_exit_0(tmp_path: Path) -> None:
    with wecare(tmp_path, {}) as service:
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(30) == 0
    assert '"stopped"' in service.log_text()


def test_train_command_passes_its_options_to_training(tmp_path: Path) -> None:
    from tests.inference.conftest import make_busi

    data = make_busi(tmp_path / "busi")
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--num-threads",
            "1",
            "--arch",
            "cascade",
            "--seed",
            "3",
            "--split-seed",
            "0",
            "--keep-epochs",
            "--val-every",
            "2",
            "--weight-decay",
            "0.02",
            "--elastic-prob",
            "0.5",
            "--detect-weight",
            "0.25",
            "--fade-prob",
            "0.4",
            "--paste-normal-prob",
            "0.6",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best checkpoint:" in result.output
    history = [json.loads(line) for line in (out / "history.jsonl").open()]
    assert [h["val"] != {} for h in history] == [False, True]
    assert sorted(p.name for p in (out / "epochs").glob("ep_*.pt")) == ["ep_000.pt", "ep_001.pt"]
    import torch

    cfg = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert (cfg["arch"], cfg["seed"], cfg["split_seed"], cfg["val_every"]) == ("cascade", 3, 0, 2)
    assert (cfg["weight_decay"], cfg["elastic_prob"], cfg["detect_weight"]) == (0.02, 0.5, 0.25)
    assert (cfg["fade_prob"], cfg["paste_normal_prob"]) == (0.4, 0.6)
    # a second run started from the first one's weights (same split) says so in its config
    again = runner.invoke(
        app,
        [
            "train",
            "--data-dir",
            str(data),
            "--out",
            str(tmp_path / "run2"),
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--num-threads",
            "1",
            "--arch",
            "cascade",
            "--seed",
            "4",
            "--split-seed",
            "0",
            "--init-weights",
            str(out / "last.pt"),
        ],
    )
    assert again.exit_code == 0, again.output
    ck2 = torch.load(tmp_path / "run2" / "last.pt", map_location="cpu", weights_only=False)
    assert ck2["config"]["init_weights"] == str(out / "last.pt")
    assert ck2["init_source"] == str(out / "last.pt")


def test_evaluate_json_on_generated_busi_folder_names_network(tmp_path: Path) -> None:
    from tests.inference.conftest import make_busi

    folder = make_busi(tmp_path / "busi", per_class=2)
    result = runner.invoke(app, ["evaluate", str(folder), "--json", "--bootstrap", "5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["n_images"] == 6 and metrics["layout"] == "busi"
    assert metrics["model_network"] == "eager"  # the CLI default: no compile warm-up
    assert 0.0 <= metrics["accuracy"] <= 1.0


@pytest.mark.parametrize("option,value", [("--compile", "fast"), ("--precision", "fp8")])
def test_evaluate_rejects_unknown_mode_exit_2(tmp_path: Path, option: str, value: str) -> None:
    result = runner.invoke(app, ["evaluate", str(tmp_path), option, value])
    assert result.exit_code == 2
    assert option in result.output and "must be one of" in result.output


def _lesion_files(tmp_path: Path, image_ext: str = "png") -> tuple[Path, Path]:
    """A textured image with a dark wide ellipse and its 0/255 mask, as real files."""
    rng = np.random.default_rng(3)
    image = np.clip(128 + rng.normal(0, 12, (200, 260)), 0, 255)
    yy, xx = np.mgrid[0:200, 0:260]
    mask = ((xx - 130) / 60.0) ** 2 + ((yy - 90) / 25.0) ** 2 <= 1.0
    image[mask] -= 50  # hypoechoic: about 0.6 of the tissue around it
    image_path = tmp_path / f"image.{image_ext}"
    mask_path = tmp_path / "mask.png"
    Image.fromarray(image.astype(np.uint8)).save(image_path)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
    return image_path, mask_path


DESCRIBE_KEYS = {
    "shape",
    "orientation",
    "margin",
    "margin_detail",
    "echo_pattern",
    "posterior",
    "long_axis_mm",
    "short_axis_mm",
    "area_mm2",
    "depth_mm",
}


@pytest.mark.parametrize("image_ext", ["png", "jpg"])
def test_describe_real_files_last_line_json_lexicon_words(tmp_path: Path, image_ext: str) -> None:
    image, mask = _lesion_files(tmp_path, image_ext)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "describe",
            str(image),
            str(mask),
            "--pixel-size",
            "0.1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    described = json.loads(lines[-1])
    assert set(described) == DESCRIBE_KEYS
    assert described["shape"] == "oval"
    assert described["orientation"] == "parallel"
    assert described["echo_pattern"] == "hypoechoic"
    assert described["long_axis_mm"] == pytest.approx(12.1, abs=0.4)  # 2 x 60 px x 0.1 mm
    assert described["depth_mm"] == pytest.approx(6.5, abs=0.3)  # top row 65 x 0.1 mm
    assert "shape: oval" in lines  # the readable lines come first without --json


def test_describe_json_without_pixel_size_gives_null_sizes(tmp_path: Path) -> None:
    image, mask = _lesion_files(tmp_path)
    result = runner.invoke(app, ["describe", str(image), str(mask), "--json"])
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(result.stdout.strip().splitlines()) == 1
    assert described["shape"] == "oval"
    assert all(described[k] is None for k in ("long_axis_mm", "area_mm2", "depth_mm"))


def test_describe_empty_mask_gives_nulls_and_message(tmp_path: Path) -> None:
    image, mask = _lesion_files(tmp_path)
    Image.fromarray(np.zeros((200, 260), np.uint8)).save(mask)
    result = runner.invoke(app, ["describe", str(image), str(mask), "--json"])
    assert result.exit_code == 0
    described = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(described) == DESCRIBE_KEYS and all(v is None for v in described.values())
    assert "no lesion to describe" in result.stderr


@pytest.mark.parametrize("problem", ["missing", "size", "not_image", "pixel_size"])
def test_describe_bad_input_exit_2_clear_message(tmp_path: Path, problem: str) -> None:
    image, mask = _lesion_files(tmp_path)
    args = ["describe", str(image), str(mask)]
    expected = {
        "missing": "not found",
        "size": "must match",
        "not_image": "is not a PNG/JPEG image",
        "pixel_size": "positive",
    }[problem]
    if problem == "missing":
        args[2] = str(tmp_path / "absent.png")
    elif problem == "size":
        Image.fromarray(np.zeros((100, 100), np.uint8)).save(mask)
    elif problem == "not_image":
        mask.write_bytes(b"not a picture")
    else:
        args += ["--pixel-size", "-1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert expected in result.output
