"""Users, API tokens and log-in sessions of the dashboard and API.

Passwords are hashed with argon2id (argon2-cffi, its RFC 9106 low-memory profile); API tokens
and session ids are 256-bit random values of which only the sha256 is stored, so a copy of the
database lets nobody in. Functions take a Session and never commit.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, selectinload

from storage.models import ApiToken, Role, User, WebSession, utcnow

_HASHER = PasswordHasher()
#: Verified against when the user does not exist, so a wrong name costs as long as a wrong
#: password (no user enumeration by timing).
_DUMMY_HASH = _HASHER.hash("not a password of anyone")

NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD_LENGTH = 12
TOKEN_PREFIX = "wct_"


class UserError(ValueError):
    """A user or token request that cannot be honoured; the message names why (no secrets)."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    """argon2id PHC string of `password`."""
    return _HASHER.hash(password)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError("name must be 1-64 letters, digits or . _ @ -")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def new_password() -> str:
    """A random password for accounts created by the software (about 190 bits)."""
    return secrets.token_urlsafe(24)


def create_user(session: Session, name: str, role: Role | str, password: str) -> User:
    """Add a user; UserError when the name is taken or the name/password/role is unusable."""
    check_name(name)
    check_password(password)
    try:
        role = Role(role)
    except ValueError:
        raise UserError(f"role must be one of {', '.join(r.value for r in Role)}") from None
    if get_user(session, name) is not None:
        raise UserError(f"user {name} already exists")
    user = User(name=name, role=role.value, password_hash=hash_password(password), active=True)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.name)).all()


def count_users(session: Session) -> int:
    return session.scalar(select(func.count(User.id))) or 0


def authenticate(
    session: Session, name: str, password: str, now: datetime | None = None
) -> User | None:
    """The active user with this name and password, or None (same cost either way)."""
    user = get_user(session, name) if NAME_RE.fullmatch(name or "") else None
    stored = user.password_hash if user is not None else _DUMMY_HASH
    try:
        _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = now or utcnow()
    return user


def set_password(session: Session, user: User, password: str) -> None:
    """New password; every log-in session of the user ends."""
    user.password_hash = hash_password(check_password(password))
    end_sessions(session, user)


def set_active(session: Session, user: User, active: bool) -> None:
    """Disable or enable a user; disabling ends its sessions (its tokens stop working too)."""
    user.active = active
    if not active:
        end_sessions(session, user)


# ---- API tokens --------------------------------------------------------------------------------


def create_token(session: Session, name: str, user: User) -> tuple[ApiToken, str]:
    """A new token for `user`; returns (row, the token itself), the token is never stored."""
    check_name(name)
    if session.scalar(select(ApiToken).where(ApiToken.name == name)) is not None:
        raise UserError(f"token {name} already exists")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, user_id=user.id, token_hash=_digest(secret))
    session.add(row)
    session.flush()
    return row, secret


def find_token(session: Session, secret: str, now: datetime | None = None) -> ApiToken | None:
    """The live token with this value and an active user, or None; stamps `last_used_at`."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    row = session.scalar(
        select(ApiToken)
        .where(ApiToken.token_hash == _digest(secret))
        .options(selectinload(ApiToken.user))
    )
    if row is None or row.revoked_at is not None or not row.user.active:
        return None
    row.last_used_at = now or utcnow()
    return row


def list_tokens(session: Session) -> Sequence[ApiToken]:
    return session.scalars(
        select(ApiToken).options(selectinload(ApiToken.user)).order_by(ApiToken.name)
    ).all()


def revoke_token(session: Session, name: str, now: datetime | None = None) -> ApiToken:
    """Revoke a token by name (it stays listed, revoked); UserError if there is none."""
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise UserError(f"no token named {name}")
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
    return row


# ---- log-in sessions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewSession:
    """A session just opened: `secret` goes into the cookie, `row` into the database."""

    row: WebSession
    secret: str


def open_session(
    session: Session, user: User, lifetime: timedelta, now: datetime | None = None
) -> NewSession:
    """A log-in session for `user` lasting `lifetime`, with its own CSRF token."""
    now = now or utcnow()
    secret = secrets.token_urlsafe(32)
    row = WebSession(
        session_hash=_digest(secret),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(row)
    session.flush()
    return NewSession(row, secret)


def find_session(session: Session, secret: str, now: datetime | None = None) -> WebSession | None:
    """The unexpired session with this secret whose user is active, or None."""
    now = now or utcnow()
    row = session.scalar(
        select(WebSession)
        .where(WebSession.session_hash == _digest(secret))
        .options(selectinload(WebSession.user))
    )
    if row is None or row.expires_at <= now or not row.user.active:
        return None
    return row


def close_session(session: Session, secret: str) -> None:
    session.execute(delete(WebSession).where(WebSession.session_hash == _digest(secret)))


def end_sessions(session: Session, user: User) -> None:
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))


def purge_expired_sessions(session: Session, now: datetime | None = None) -> int:
    result = session.execute(delete(WebSession).where(WebSession.expires_at <= (now or utcnow())))
    return int(getattr(result, "rowcount", 0) or 0)


def same_secret(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two secrets (CSRF tokens); False when either is missing."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())
