"""The `wecare` command: each command loads Settings, sets up logging and calls one run_*()."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from service.config import ConfigError, Settings, load_settings, masked

app = typer.Typer(
    help="WeCare: breast-ultrasound AI for the PACS.", no_args_is_help=True, add_completion=False
)
db_app = typer.Typer(help="Database commands.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration commands.", no_args_is_help=True)
user_app = typer.Typer(help="Dashboard and API users.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for scripts.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file; env WECARE_<SECTION>__<KEY> overrides"),
]


def _settings(config: Path | None) -> Settings:
    """Load settings or exit 2 with the bad keys named."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"wecare: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the DICOM listener, workers, exporter and dashboard until SIGTERM or Ctrl-C."""
    from service.runtime import serve as run_serve

    run_serve(_settings(config))


# The parts of `serve` as processes of their own (deploy/README.md): several workers on
# PostgreSQL, sharing the data directory with the listener.
@app.command()
def listener(config: ConfigOption = None) -> None:
    """Run the DICOM listener and study-stability loop only, until SIGTERM or Ctrl-C."""
    from service.runtime import run_role

    run_role(_settings(config), "listener")


app.command("scp", hidden=True, help="Same as `listener`.")(listener)


@app.command()
def worker(config: ConfigOption = None) -> None:
    """Run inference workers only (worker.count threads); SIGTERM finishes the job in hand."""
    from service.runtime import run_role

    run_role(_settings(config), "worker")


@app.command()
def exporter(config: ConfigOption = None) -> None:
    """Run the outbox exporter only (one per installation), until SIGTERM or Ctrl-C."""
    from service.runtime import run_role

    run_role(_settings(config), "exporter")


@app.command()
def web(config: ConfigOption = None) -> None:
    """Run the dashboard and API only, until SIGTERM or Ctrl-C."""
    from service.runtime import run_role

    run_role(_settings(config), "web")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply database migrations up to the newest."""
    from storage.db import upgrade

    settings = _settings(config)
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.storage.resolved_database_url())
    typer.echo("database is at the newest migration")


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration (secrets masked) as JSON."""
    typer.echo(json.dumps(masked(_settings(config)), indent=2))


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration and exit 0, or name the bad keys and exit 2."""
    _settings(config)
    typer.echo("configuration is valid")


@contextmanager
def _user_session(settings: Settings) -> Iterator[Any]:
    """One transaction on the migrated database (user commands may run before the first
    `serve`); a UserError becomes `wecare: <message>` and exit status 2."""
    from storage.db import make_engine, session_scope, upgrade
    from storage.users import UserError

    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.storage.resolved_database_url()
    upgrade(url)
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            yield session
    except UserError as exc:
        typer.echo(f"wecare: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, . _ @ -)")],
    role: Annotated[str, typer.Option(help="viewer, radiologist, operator or admin")] = "viewer",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin's first line")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Create a user; the password is prompted for (twice) unless --password-stdin."""
    from storage.audit import AuditAction, record
    from storage.users import create_user

    settings = _settings(config)
    password = _read_password(password_stdin)
    with _user_session(settings) as session:
        create_user(session, name, role, password)
        record(session, AuditAction.USER_CREATED, actor="cli", target=name, detail=role)
    typer.echo(f"user {name} created with role {role}")


@user_app.command("password")
def user_password(
    name: Annotated[str, typer.Argument(help="User name")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin's first line")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Set a user's password (e.g. a forgotten one); every session of the user ends."""
    from storage.audit import AuditAction, record
    from storage.users import UserError, get_user, set_password

    settings = _settings(config)
    password = _read_password(password_stdin)
    with _user_session(settings) as session:
        user = get_user(session, name)
        if user is None:
            raise UserError(f"no user named {name}")
        set_password(session, user, password)
        record(session, AuditAction.PASSWORD_CHANGED, actor="cli", target=name)
    typer.echo(f"password of {name} changed")


@user_app.command("disable")
def user_disable(
    name: Annotated[str, typer.Argument(help="User name")], config: ConfigOption = None
) -> None:
    """Disable a user: sessions end and tokens stop working at once (the row stays)."""
    from storage.audit import AuditAction, record
    from storage.users import UserError, get_user, set_active

    with _user_session(_settings(config)) as session:
        user = get_user(session, name)
        if user is None:
            raise UserError(f"no user named {name}")
        set_active(session, user, False)
        record(session, AuditAction.USER_DISABLED, actor="cli", target=name)
    typer.echo(f"user {name} disabled")


@user_app.command("list")
def user_list(config: ConfigOption = None) -> None:
    """List users: name, role, active, last log-in."""
    from storage.users import list_users

    with _user_session(_settings(config)) as session:
        for user in list_users(session):
            last = user.last_login_at.isoformat() if user.last_login_at else "-"
            state = "active" if user.active else "disabled"
            typer.echo(f"{user.name}\t{user.role}\t{state}\t{last}")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Token name, e.g. the script using it")],
    user: Annotated[str, typer.Option("--user", help="The user the token acts as")],
    config: ConfigOption = None,
) -> None:
    """Create an API token and print it once (only its hash is kept)."""
    from storage.audit import AuditAction, record
    from storage.users import UserError, create_token, get_user

    with _user_session(_settings(config)) as session:
        owner = get_user(session, user)
        if owner is None:
            raise UserError(f"no user named {user}")
        _, secret = create_token(session, name, owner)
        record(session, AuditAction.TOKEN_CREATED, actor="cli", target=name, detail=user)
    typer.echo(secret)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="Token name")], config: ConfigOption = None
) -> None:
    """Revoke an API token: it stops working at once."""
    from storage.audit import AuditAction, record
    from storage.users import revoke_token

    with _user_session(_settings(config)) as session:
        revoke_token(session, name)
        record(session, AuditAction.TOKEN_REVOKED, actor="cli", target=name)
    typer.echo(f"token {name} revoked")


@app.command()
def infer(
    files: Annotated[
        list[Path], typer.Argument(help="DICOM, PNG or JPEG files", exists=True, dir_okay=False)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder")],
    weights: Annotated[Path | None, typer.Option(help="Model weights (default: bundled)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto, float32 or bfloat16 (auto: bfloat16 on CPUs with it)")
    ] = "auto",
    explain: Annotated[bool, typer.Option(help="Also write Grad-CAM maps")] = True,
    any_body_part: Annotated[
        bool, typer.Option(help="Analyse DICOM images the routing rules call not breast")
    ] = False,
    scope_check: Annotated[
        bool, typer.Option(help="Refuse images unlike the model's training images (said, "
                           "not guessed); off only to test with generated images",
                           envvar="WECARE_WORKER__SCOPE_CHECK")
    ] = True,
) -> None:
    """Run the models on files without a PACS; print one JSON line per image.

    DICOM input gives SEG and SR files in OUT; PNG/JPEG input gives mask and overlay PNGs.
    """
    from dicom_io.routing import RoutingRules
    from service.infer import run_infer

    code = run_infer(
        files,
        out,
        weights=weights,
        device=None if device == "auto" else device,
        precision=precision,
        explain=explain,
        echo=typer.echo,
        routing=RoutingRules(enabled=False) if any_body_part else None,
        scope_check=scope_check,
    )
    raise typer.Exit(code)


# `train` and `evaluate` hand their arguments to the argparse parsers of inference.train and
# inference.evaluate: one definition of the options and defaults, whichever form is run.
_FORWARD = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=_FORWARD, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """Train the networks: the options and defaults of `python -m inference.train`."""
    from inference.train import TrainConfig, _parser
    from inference.train import train as run_train

    parser = _parser()
    parser.prog = "wecare train"
    best = run_train(TrainConfig(**vars(parser.parse_args(ctx.args))))
    typer.echo(f"best checkpoint: {best}")


@app.command(context_settings=_FORWARD, add_help_option=False)
def evaluate(ctx: typer.Context) -> None:
    """Measure a model on a labelled folder, as `python -m inference.evaluate` does."""
    from inference.evaluate import main as run_evaluate

    raise typer.Exit(run_evaluate(ctx.args, prog="wecare evaluate"))


@app.command()
def describe(
    image: Annotated[Path, typer.Argument(help="B-mode image, PNG or JPEG (skin at the top)")],
    mask: Annotated[Path, typer.Argument(help="Lesion mask, same size (non-zero = lesion)")],
    pixel_size: Annotated[
        float | None,
        typer.Option("--pixel-size", help="mm per pixel (square pixels); without it no sizes"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Only the JSON object (last stdout line either way)")
    ] = False,
) -> None:
    """BI-RADS descriptors of one lesion: shape, orientation, margin, echo pattern, posterior
    features and sizes in mm; the last stdout line is one JSON object."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from inference.descriptors import describe_lesion

    if pixel_size is not None and not pixel_size > 0:
        raise typer.BadParameter("must be a positive number of mm", param_hint="--pixel-size")
    arrays = []
    for label, path in (("image", image), ("mask", mask)):
        if not path.is_file():
            typer.echo(f"wecare: {label} {path} not found", err=True)
            raise typer.Exit(2)
        try:
            with Image.open(path) as picture:
                arrays.append(np.asarray(picture.convert("L")))
        except (UnidentifiedImageError, OSError) as exc:
            typer.echo(f"wecare: {label} {path} is not a PNG/JPEG image ({exc})", err=True)
            raise typer.Exit(2) from None
    pixels, lesion = arrays
    if pixels.shape != lesion.shape:
        typer.echo(
            f"wecare: mask is {lesion.shape[1]}x{lesion.shape[0]} pixels, "
            f"image is {pixels.shape[1]}x{pixels.shape[0]}: they must match",
            err=True,
        )
        raise typer.Exit(2)
    result = describe_lesion(pixels, lesion > 127, pixel_size, pixel_size)
    if result.message:
        typer.echo(f"wecare: {result.message}", err=True)
    if not as_json:
        for key, value in result.as_dict().items():
            shown = ", ".join(value) if isinstance(value, list) else value
            typer.echo(f"{key.replace('_', ' ')}: {'-' if shown is None else shown}")
    sys.stdout.write(json.dumps(result.as_dict()) + "\n")


@app.command("evaluate-descriptors")
def evaluate_descriptors(
    data_dir: Annotated[
        Path,
        typer.Argument(help="BrEaST-Lesions_USG folder (manifest.csv)", file_okay=False),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Last stdout line is one JSON object")
    ] = False,
    with_model: Annotated[
        bool, typer.Option("--model/--no-model", help="Also describe the bundled model's masks")
    ] = True,
    weights: Annotated[Path | None, typer.Option(help="Model weights (default: bundled)")] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the folds and the bootstrap")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for 95% intervals")] = 1000,
    head: Annotated[
        str | None,
        typer.Option(help="Also score a learned head on the same folds: 'logistic'"),
    ] = None,
) -> None:
    """Agreement of the BI-RADS descriptors with the radiologist (docs/experiments/)."""
    from inference.descriptor_eval import evaluate_descriptors as run_evaluation
    from inference.descriptor_eval import render_markdown

    if not (data_dir / "manifest.csv").is_file():
        typer.echo(f"wecare: {data_dir}/manifest.csv not found", err=True)
        raise typer.Exit(2)
    if head not in (None, "logistic"):
        typer.echo(f"wecare: unknown --head {head!r} (known: logistic)", err=True)
        raise typer.Exit(2)
    model = None
    if with_model:
        from inference.model import Model

        model = Model.load(weights, device="cpu")
    result = run_evaluation(data_dir, model, folds=folds, seed=seed, bootstrap=bootstrap, head=head)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        typer.echo(render_markdown(result))


@app.command("export-corrections")
def export_corrections(
    out: Annotated[Path, typer.Argument(help="Folder to write (BUSI layout + manifest.csv)")],
    config: ConfigOption = None,
) -> None:
    """Write the radiologists' corrected images and masks as a training set.

    OUT/<label>/<name>.png and <name>_mask.png (0/255) with OUT/manifest.csv (image, mask,
    label, group, source, scanner): `wecare train --data-dir OUT` reads it. The newest review
    of each frame wins; no patient names or IDs are written (group: a keyed hash per patient).
    """
    from service.export_corrections import export_corrections as run_export
    from storage.audit import AuditAction, record
    from storage.db import make_engine, session_scope, upgrade

    settings = _settings(config)
    url = settings.storage.resolved_database_url()
    upgrade(url)
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:

            def progress(done: int, total: int) -> None:
                typer.echo(f"exported {done}/{total} reviewed frames", err=True)

            summary = run_export(session, out, progress=progress)
            record(
                session,
                AuditAction.EXPORT_CORRECTIONS,
                actor="cli",
                target=str(out)[:128],
                detail=f"{len(summary.written)} frames written, {len(summary.skipped)} skipped",
            )
    finally:
        engine.dispose()
    for reason in summary.skipped:
        typer.echo(f"skipped: {reason}", err=True)
    counts = ", ".join(f"{label} {n}" for label, n in sorted(summary.counts().items()))
    typer.echo(f"{len(summary.written)} frames written to {out} ({counts or 'none'})")


if __name__ == "__main__":
    app()
