"""`wecare user add|list` and `wecare token create|revoke`: what an admin types on the server."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from service.cli import app
from storage.db import make_engine, session_scope
from storage.models import ApiToken, AuditEvent
from storage.users import authenticate, find_token

runner = CliRunner()
PASSWORD = "correct horse battery staple"


@pytest.fixture()
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WECARE_STORAGE__DATA_DIR", str(tmp_path / "d"))
    return tmp_path / "d"


def _engine(data: Path) -> Engine:
    return make_engine(f"sqlite:///{data / 'wecare.db'}")


def test_user_add_password_stdin_creates_user_who_can_log_in(data: Path) -> None:
    result = runner.invoke(
        app,
        ["user", "add", "alice", "--role", "operator", "--password-stdin"],
        input=PASSWORD + "\n",
    )

    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    engine = _engine(data)
    with session_scope(engine) as session:
        user = authenticate(session, "alice", PASSWORD)
        assert user is not None and user.role == "operator"
        event = session.scalars(select(AuditEvent)).one()
        assert (event.actor, event.action, event.target) == ("cli", "user_created", "alice")
    listed = runner.invoke(app, ["user", "list"])
    assert listed.exit_code == 0 and listed.output.startswith("alice\toperator\tactive")
    engine.dispose()


def test_user_add_prompt_asks_twice(data: Path) -> None:
    result = runner.invoke(app, ["user", "add", "bob"], input=f"{PASSWORD}\n{PASSWORD}\n")

    assert result.exit_code == 0, result.output
    assert "role viewer" in result.output


@pytest.mark.parametrize(
    ("args", "password", "message"),
    [
        (["user", "add", "carl", "--role", "root"], PASSWORD, "role must be one of"),
        (["user", "add", "carl"], "short", "at least 12"),
        (["user", "add", "bad name"], PASSWORD, "name must be"),
    ],
)
def test_user_add_bad_input_exit_2_with_reason(
    data: Path, args: list[str], password: str, message: str
) -> None:
    result = runner.invoke(app, [*args, "--password-stdin"], input=password + "\n")

    assert result.exit_code == 2
    assert message in result.output


def test_token_create_prints_token_once_and_revoke_stops_it(data: Path) -> None:
    runner.invoke(app, ["user", "add", "alice", "--password-stdin"], input=PASSWORD + "\n")

    created = runner.invoke(app, ["token", "create", "nightly", "--user", "alice"])

    assert created.exit_code == 0
    token = created.output.strip()
    engine = _engine(data)
    with session_scope(engine) as session:
        assert find_token(session, token) is not None
        assert token not in session.scalars(select(ApiToken)).one().token_hash
    assert runner.invoke(app, ["token", "revoke", "nightly"]).exit_code == 0
    with session_scope(engine) as session:
        assert find_token(session, token) is None
    engine.dispose()


def test_token_create_unknown_user_exit_2(data: Path) -> None:
    result = runner.invoke(app, ["token", "create", "x", "--user", "ghost"])

    assert result.exit_code == 2
    assert "no user named ghost" in result.output


def test_user_password_sets_new_password_and_disable_blocks_log_in(data: Path) -> None:
    runner.invoke(app, ["user", "add", "alice", "--password-stdin"], input=PASSWORD + "\n")
    new = "another long password"

    changed = runner.invoke(
        app, ["user", "password", "alice", "--password-stdin"], input=new + "\n"
    )
    engine = _engine(data)
    with session_scope(engine) as session:
        assert changed.exit_code == 0
        assert authenticate(session, "alice", PASSWORD) is None
        assert authenticate(session, "alice", new) is not None
    disabled = runner.invoke(app, ["user", "disable", "alice"])
    with session_scope(engine) as session:
        assert disabled.exit_code == 0
        assert authenticate(session, "alice", new) is None
    assert "disabled" in runner.invoke(app, ["user", "list"]).output
    assert runner.invoke(app, ["user", "disable", "ghost"]).exit_code == 2
    engine.dispose()
