"""`wecare train` / `wecare evaluate` against their `python -m` forms, and what evaluate tells
a newcomer: progress, and a warning when the folder holds the model's training images."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import inference.train
from inference.data import discover
from inference.evaluate import build_parser, evaluate, render_table
from inference.evaluate import main as evaluate_main
from inference.export import TRAINING_IMAGES, export_checkpoint
from inference.model import Model
from inference.networks import build_network
from inference.train import TrainConfig, _parser
from service.cli import app

from .conftest import make_busbra, make_busi

runner = CliRunner()

WARNING = "images here were used to train this model: figures on them are not evidence"


def _options(parser: object) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings]  # type: ignore[attr-defined]


def _wecare_train_config(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> TrainConfig:
    """The TrainConfig `wecare train argv` would train with (training itself replaced)."""
    seen: list[TrainConfig] = []

    def fake_train(cfg: TrainConfig) -> Path:
        seen.append(cfg)
        return cfg.out_dir / "best.pt"

    monkeypatch.setattr(inference.train, "train", fake_train)
    result = runner.invoke(app, ["train", *argv])
    assert result.exit_code == 0, result.output
    assert f"best checkpoint: {seen[0].out_dir / 'best.pt'}" in result.stdout
    return seen[0]


@pytest.mark.parametrize("extra", [
    [],
    ["--lr", "5e-4", "--epochs", "7", "--vendor-prob", "0.4", "--balance-sources",
     "--fade-prob", "0.2", "--paste-prob", "0.1", "--paste-normal-prob", "0.3",
     "--detect-weight", "0.5", "--elastic-prob", "0", "--weight-decay", "0.05",
     "--arch", "cascade", "--seg-loss", "tversky", "--split-seed", "2", "--seed", "9",
     "--cache-dir", "c", "--amp", "--no-flip-tta", "--keep-epochs", "--val-every", "5",
     "--busi-share", "0.4", "--max-minutes", "30", "--image-size", "256", "--batch-size", "8",
     "--init-weights", "w/model.pt", "--init-member", "2", "--num-threads", "1", "--resume"],
])
def test_wecare_train_trains_what_python_m_inference_train_would(
    extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--data-dir", str(tmp_path / "a"), "--data-dir", str(tmp_path / "b"),
            "--out", str(tmp_path / "run"), *extra]
    direct = TrainConfig(**vars(_parser().parse_args(argv)))
    assert _wecare_train_config(argv, monkeypatch) == direct
    if not extra:  # the defaults are the dataclass's own
        for f in dataclasses.fields(TrainConfig):
            if f.default is not dataclasses.MISSING:
                assert getattr(direct, f.name) == f.default, f.name


def test_train_parser_defaults_are_the_train_config_defaults() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for action in _parser()._actions:
        if action.dest == "help":
            continue
        assert action.dest in fields, f"{action.dest} is not a TrainConfig field"
        if fields[action.dest] is not dataclasses.MISSING:
            assert action.default == fields[action.dest], action.dest


def test_wecare_train_help_lists_every_option() -> None:
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    assert result.stdout.startswith("usage: wecare train")
    for option in _options(_parser()):
        assert option in result.stdout, option


def test_wecare_train_without_required_options_exit_2() -> None:
    result = runner.invoke(app, ["train", "--lr", "1e-3"])
    assert result.exit_code == 2
    assert "--data-dir" in result.stderr and "--out" in result.stderr


def test_wecare_evaluate_help_lists_every_option() -> None:
    result = runner.invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0
    assert result.stdout.startswith("usage: wecare evaluate")
    options = _options(build_parser())
    assert {"--split", "--seed", "--bootstrap", "--precision", "--compile", "--device",
            "--postprocess", "--num-threads", "--no-progress"} <= set(options)
    for option in options:
        assert option in result.stdout, option


def _bundle(tmp_path: Path) -> Path:
    """Bundled weights (untrained 32 px cascade, float32) with no training-image list."""
    torch.manual_seed(0)
    ck = tmp_path / "ck.pt"
    torch.save({"model": build_network("cascade").state_dict(), "arch": "cascade",
                "image_size": 32, "classes": ["normal", "benign", "malignant"], "epoch": 1,
                "metrics": {}, "config": {"data_dirs": ["gone"], "val_fraction": 0.2,
                                          "seed": 0, "split_seed": 0},
                "saved_at": "2026-12-06T00:00:00+00:00"}, ck)
    return export_checkpoint(ck, tmp_path / "w", "test weights", 1.0, half=False,
                             training_images=False)


def _sha16(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def test_evaluate_warns_when_the_folder_holds_training_images(tmp_path: Path) -> None:
    folder = make_busi(tmp_path / "busi")
    samples = discover(folder)
    pt = _bundle(tmp_path)
    trained = [_sha16(s.image) for s in samples[::3]]  # 4 of the 12 images
    other = hashlib.sha256(b"an image from elsewhere").hexdigest()[:16]
    (pt.parent / TRAINING_IMAGES).write_text("".join(f"{h}\n" for h in sorted([*trained, other])))
    args = [str(folder), "--weights", str(pt), "--bootstrap", "5", "--precision", "float32"]

    result = runner.invoke(app, ["evaluate", *args, "--json"])
    assert result.exit_code == 0, result.output
    assert f"WARNING: 4 of 12 {WARNING}" in result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["seen_in_training"] == 4
    assert metrics["seen_in_training_share"] == pytest.approx(4 / 12)
    assert "lesion_missed_rate" in metrics and "lesion_missed_rate" in metrics["ci95"]

    table = runner.invoke(app, ["evaluate", *args])
    assert table.exit_code == 0, table.output
    assert f"4 of 12 {WARNING}" in table.stdout and f"4 of 12 {WARNING}" in table.stderr
    assert any(line.startswith("lesion_missed_rate") for line in table.stdout.splitlines())


def test_evaluate_python_m_form_gives_the_same_figures(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_busi(tmp_path / "busi", per_class=2)
    pt = _bundle(tmp_path)
    (pt.parent / TRAINING_IMAGES).write_text(f"{_sha16(discover(folder)[0].image)}\n")
    args = [str(folder), "--weights", str(pt), "--bootstrap", "5", "--json"]
    assert evaluate_main(args) == 0
    captured = capsys.readouterr()
    direct = json.loads(captured.out.strip().splitlines()[-1])
    assert f"WARNING: 1 of 6 {WARNING}" in captured.err
    via_cli = runner.invoke(app, ["evaluate", *args])
    assert via_cli.exit_code == 0, via_cli.output
    assert json.loads(via_cli.stdout.strip().splitlines()[-1]) == direct


def test_evaluate_without_a_record_or_without_overlap(tmp_path: Path) -> None:
    folder = make_busi(tmp_path / "busi", per_class=2)
    pt = _bundle(tmp_path)
    args = ["evaluate", str(folder), "--weights", str(pt), "--bootstrap", "0", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["seen_in_training"] is None
    assert "records no training images" in result.stderr and "WARNING" not in result.stderr
    (pt.parent / TRAINING_IMAGES).write_text("0123456789abcdef\n")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert (metrics["seen_in_training"], metrics["seen_in_training_share"]) == (0, 0.0)
    assert "WARNING" not in result.stderr and "records no" not in result.stderr


def test_evaluate_shows_progress_and_missed_lesions_per_scanner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_busbra(tmp_path / "busbra")
    model = Model.load(_bundle(tmp_path), device="cpu", precision="float32")
    metrics = evaluate(folder, model, bootstrap=0, progress=True)
    err = capsys.readouterr().err
    assert "evaluate" in err and f"{metrics['n_images']}/{metrics['n_images']}" in err
    assert len(metrics["by_scanner"]) == 2
    table = render_table(metrics)
    for name, figures in metrics["by_scanner"].items():
        assert "lesion_missed_rate" in figures
        line = next(ln for ln in table.splitlines() if ln.startswith(f"scanner {name}:"))
        assert "lesion_missed_rate" in line
    quiet = evaluate(folder, model, bootstrap=0, progress=False)
    assert capsys.readouterr().err == "" and quiet["n_images"] == metrics["n_images"]
