"""storage.users: password hashes, users, API tokens, log-in sessions (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from storage.db import session_scope
from storage.models import ApiToken, Role, User, WebSession, utcnow
from storage.users import (
    UserError,
    authenticate,
    close_session,
    create_token,
    create_user,
    find_session,
    find_token,
    get_user,
    list_tokens,
    open_session,
    purge_expired_sessions,
    revoke_token,
    same_secret,
    set_active,
    set_password,
)

PASSWORD = "correct horse battery staple"


@pytest.fixture()
def engine(any_engine: Engine) -> Engine:
    return any_engine


def add(engine: Engine, name: str = "alice", role: Role = Role.OPERATOR) -> None:
    with session_scope(engine) as session:
        create_user(session, name, role, PASSWORD)


def test_create_user_stores_argon2id_hash_never_the_password(engine: Engine) -> None:
    add(engine)

    with session_scope(engine) as session:
        user = session.scalars(select(User)).one()
        assert user.password_hash.startswith("$argon2id$")
        assert PASSWORD not in user.password_hash
        assert (user.name, user.role, user.active) == ("alice", "operator", True)


@pytest.mark.parametrize(
    ("name", "role", "password", "message"),
    [
        ("alice", "viewer", PASSWORD, "already exists"),
        ("bob", "viewer", "short", "at least 12"),
        ("bob", "superuser", PASSWORD, "role must be one of"),
        ("bad name!", "viewer", PASSWORD, "name must be"),
        ("", "viewer", PASSWORD, "name must be"),
    ],
)
def test_create_user_bad_input_raises_user_error(
    engine: Engine, name: str, role: str, password: str, message: str
) -> None:
    add(engine)
    with session_scope(engine) as session, pytest.raises(UserError, match=message):
        create_user(session, name, role, password)


@pytest.mark.parametrize(
    ("name", "password", "ok"),
    [("alice", PASSWORD, True), ("alice", PASSWORD + "x", False), ("nobody", PASSWORD, False)],
)
def test_authenticate_right_only_with_right_name_and_password(
    engine: Engine, name: str, password: str, ok: bool
) -> None:
    add(engine)
    with session_scope(engine) as session:
        user = authenticate(session, name, password)
        assert (user is not None) is ok
        if ok:
            assert user is not None and user.last_login_at is not None


def test_authenticate_disabled_user_fails(engine: Engine) -> None:
    add(engine)
    with session_scope(engine) as session:
        set_active(session, get_user(session, "alice"), False)  # type: ignore[arg-type]
    with session_scope(engine) as session:
        assert authenticate(session, "alice", PASSWORD) is None


def test_token_found_by_value_stored_only_as_hash(engine: Engine) -> None:
    add(engine)
    with session_scope(engine) as session:
        _, secret = create_token(session, "script", get_user(session, "alice"))  # type: ignore[arg-type]

    with session_scope(engine) as session:
        row = session.scalars(select(ApiToken)).one()
        assert secret.startswith("wct_") and len(secret) > 40
        assert secret not in row.token_hash
        found = find_token(session, secret)
        assert found is not None and found.user.name == "alice" and found.last_used_at
        assert find_token(session, secret[:-1] + "x") is None
        assert find_token(session, "not-a-token") is None


def test_token_revoked_or_user_disabled_not_found(engine: Engine) -> None:
    add(engine)
    add(engine, "bob")
    with session_scope(engine) as session:
        _, a = create_token(session, "a", get_user(session, "alice"))  # type: ignore[arg-type]
        _, b = create_token(session, "b", get_user(session, "bob"))  # type: ignore[arg-type]
    with session_scope(engine) as session:
        revoke_token(session, "a")
        set_active(session, get_user(session, "bob"), False)  # type: ignore[arg-type]
    with session_scope(engine) as session:
        assert find_token(session, a) is None
        assert find_token(session, b) is None
        assert {t.name for t in list_tokens(session)} == {"a", "b"}  # still listed


def test_token_duplicate_name_or_unknown_revoke_raises(engine: Engine) -> None:
    add(engine)
    with session_scope(engine) as session:
        create_token(session, "a", get_user(session, "alice"))  # type: ignore[arg-type]
        with pytest.raises(UserError, match="already exists"):
            create_token(session, "a", get_user(session, "alice"))  # type: ignore[arg-type]
        with pytest.raises(UserError, match="no token"):
            revoke_token(session, "zzz")


def test_session_found_until_expiry_then_not(engine: Engine) -> None:
    add(engine)
    now = utcnow()
    with session_scope(engine) as session:
        new = open_session(session, get_user(session, "alice"), timedelta(hours=1), now)  # type: ignore[arg-type]
    with session_scope(engine) as session:
        row = find_session(session, new.secret, now + timedelta(minutes=59))
        assert row is not None and row.user.name == "alice" and len(row.csrf_token) > 30
        assert find_session(session, new.secret, now + timedelta(hours=1)) is None
        assert new.secret not in session.scalars(select(WebSession)).one().session_hash
        assert purge_expired_sessions(session, now + timedelta(hours=2)) == 1


def test_session_closed_or_password_changed_ends_it(engine: Engine) -> None:
    add(engine)
    with session_scope(engine) as session:
        user = get_user(session, "alice")
        first = open_session(session, user, timedelta(hours=1))  # type: ignore[arg-type]
        second = open_session(session, user, timedelta(hours=1))  # type: ignore[arg-type]
    with session_scope(engine) as session:
        close_session(session, first.secret)
        assert find_session(session, first.secret) is None
        assert find_session(session, second.secret) is not None
        set_password(session, get_user(session, "alice"), "another long password")  # type: ignore[arg-type]
        assert find_session(session, second.secret) is None
    with session_scope(engine) as session:
        assert authenticate(session, "alice", "another long password") is not None


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [("x1", "x1", True), ("x1", "x2", False), (None, None, False), ("", "", False)],
)
def test_same_secret_missing_never_matches(a: str | None, b: str | None, same: bool) -> None:
    assert same_secret(a, b) is same


@pytest.mark.parametrize(
    ("role", "needed", "ok"),
    [
        (Role.VIEWER, Role.VIEWER, True),
        (Role.VIEWER, Role.OPERATOR, False),
        (Role.OPERATOR, Role.VIEWER, True),
        (Role.OPERATOR, Role.ADMIN, False),
        (Role.ADMIN, Role.OPERATOR, True),
    ],
)
def test_role_allows_its_own_and_lower_roles_only(role: Role, needed: Role, ok: bool) -> None:
    assert role.allows(needed) is ok
