"""storage.audit: events are recorded in the action's transaction and listed newest first."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select

from storage.audit import AuditAction, recent, record
from storage.db import session_scope
from storage.models import AuditEvent, utcnow


@pytest.fixture()
def engine(any_engine: Engine) -> Engine:
    return any_engine


def test_record_then_recent_lists_newest_first_with_count(engine: Engine) -> None:
    t0 = utcnow()
    with session_scope(engine) as session:
        record(session, AuditAction.LOGIN, actor="alice", target="alice", client="10.0.0.5", at=t0)
        record(session, "view_job", actor="alice", target="job:3", at=t0 + timedelta(seconds=1))
        record(
            session,
            AuditAction.RETRY,
            actor="bob",
            target="job:3",
            token_name="bot",
            at=t0 + timedelta(seconds=2),
        )

    with session_scope(engine) as session:
        rows, count = recent(session, limit=2)
        assert count == 3
        assert [r.action for r in rows] == ["retry", "view_job"]
        assert rows[0].token_name == "bot" and rows[0].at == t0 + timedelta(seconds=2)
        only_alice, n = recent(session, actor="alice")
        assert n == 2 and {r.actor for r in only_alice} == {"alice"}
        logins, n = recent(session, action="login")
        assert n == 1 and logins[0].client == "10.0.0.5"


def test_record_rolled_back_with_its_action(engine: Engine) -> None:
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        record(session, AuditAction.RETRY, actor="alice", target="job:1")
        raise RuntimeError("the action failed")

    with session_scope(engine) as session:
        assert session.scalar(select(func.count(AuditEvent.id))) == 0


def test_record_unknown_action_raises(engine: Engine) -> None:
    with session_scope(engine) as session, pytest.raises(ValueError):
        record(session, "format_disk", actor="mallory")


def test_record_long_values_are_cut_to_their_columns(engine: Engine) -> None:
    with session_scope(engine) as session:
        event = record(session, AuditAction.LOGIN_FAILED, actor="a" * 200, target="t" * 500)
        assert len(event.actor or "") == 64 and len(event.target or "") == 128
