"""Named users of the dashboard, their roles and passwords.

Roles are cumulative: an analyst works cases; a supervisor also approves rules and lists and
resolves escalated cases; an admin also manages users. Passwords are hashed with argon2id
(argon2-cffi's defaults, rehashed on login when those change); a password is never stored,
logged or compared in clear. Users are disabled, never deleted. Every change is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pandas as pd
import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from fraudstream.store import audit
from fraudstream.store.db import frame

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "Role",
    "User",
    "UserError",
    "active_user",
    "authenticate",
    "create_user",
    "disable_user",
    "has_role",
    "list_users",
    "record_login",
    "set_password",
    "set_role",
    "user_count",
]

Role = Literal["analyst", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("analyst", "supervisor", "admin")
MIN_PASSWORD_LENGTH = 12
_HASHER = PasswordHasher()
# Verified against when the user is unknown, so that a wrong name takes as long as a wrong
# password (no way to learn who exists from the time a login takes).
_DECOY = _HASHER.hash("fraudstream-decoy-password")


class UserError(ValueError):
    """A user change that cannot be made; the message says why."""


@dataclass(frozen=True)
class User:
    username: str
    role: Role

    def can(self, role: Role) -> bool:
        return has_role(self.role, role)


def has_role(held: str, needed: Role) -> bool:
    """Whether ``held`` includes the rights of ``needed`` (roles are cumulative)."""
    return held in ROLES and ROLES.index(held) >= ROLES.index(needed)


def _check_password(password: str) -> None:
    if not password or not password.strip():
        raise UserError("an empty password is refused")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")


def user_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM app_users WHERE disabled_at IS NULL").fetchone()
    return int(str(row[0])) if row else 0


def create_user(
    conn: psycopg.Connection[Any], username: str, role: str, password: str, *, by: str, at: datetime
) -> User:
    _check_role(role)
    _check_password(password)
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO app_users (username, role, password_hash, created_at, created_by) "
                "VALUES (%s, %s, %s, %s, %s)",
                (username, role, _HASHER.hash(password), at, by),
            )
            audit.record(
                conn, at=at, actor=by, action="user.create", object_type="user",
                object_id=username, detail={"role": role},
            )  # fmt: skip
    except psycopg.errors.UniqueViolation:
        raise UserError(f"user {username!r} already exists") from None
    except psycopg.errors.CheckViolation:
        raise UserError(
            f"user name {username!r}: 2–40 characters, lower-case letters, digits, '_', '.' or "
            "'-', starting with a letter"
        ) from None
    return User(username, role)  # type: ignore[arg-type]


def _change(
    conn: psycopg.Connection[Any], username: str, assignment: str, value: Any, *,
    action: str, detail: dict[str, Any], by: str, at: datetime,
) -> None:  # fmt: skip
    with conn.transaction():
        changed = conn.execute(
            f"UPDATE app_users SET {assignment} WHERE username = %s AND disabled_at IS NULL",  # noqa: S608
            (value, username),
        ).rowcount
        if not changed:
            raise UserError(f"no active user {username!r}")
        audit.record(
            conn, at=at, actor=by, action=action, object_type="user", object_id=username,
            detail=detail,
        )  # fmt: skip


def set_role(
    conn: psycopg.Connection[Any], username: str, role: str, *, by: str, at: datetime
) -> None:
    _check_role(role)
    _change(
        conn, username, "role = %s", role, action="user.role", detail={"role": role},
        by=by, at=at,
    )  # fmt: skip


def set_password(
    conn: psycopg.Connection[Any], username: str, password: str, *, by: str, at: datetime
) -> None:
    _check_password(password)
    _change(
        conn, username, "password_hash = %s", _HASHER.hash(password), action="user.password",
        detail={}, by=by, at=at,
    )  # fmt: skip


def disable_user(conn: psycopg.Connection[Any], username: str, *, by: str, at: datetime) -> None:
    if username == by:
        raise UserError("you cannot disable yourself")
    _change(conn, username, "disabled_at = %s", at, action="user.disable", detail={}, by=by, at=at)


def authenticate(conn: psycopg.Connection[Any], username: str, password: str) -> User | None:
    """The active user with this name and password, else None (an empty password never
    matches). Upgrades the stored hash when the hasher's parameters changed."""
    if not password:
        return None
    row = conn.execute(
        "SELECT role, password_hash FROM app_users WHERE username = %s AND disabled_at IS NULL",
        (username,),
    ).fetchone()
    stored = str(row[1]) if row else _DECOY
    try:
        _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _HASHER.check_needs_rehash(stored):
        conn.execute(
            "UPDATE app_users SET password_hash = %s WHERE username = %s",
            (_HASHER.hash(password), username),
        )
    return User(username, str(row[0]))  # type: ignore[arg-type]


def active_user(conn: psycopg.Connection[Any], username: str) -> User | None:
    """The user as stored now: a role change applies at once, a disabled user is out."""
    row = conn.execute(
        "SELECT role FROM app_users WHERE username = %s AND disabled_at IS NULL", (username,)
    ).fetchone()
    return None if row is None else User(username, str(row[0]))  # type: ignore[arg-type]


def record_login(conn: psycopg.Connection[Any], user: User, *, at: datetime) -> None:
    with conn.transaction():
        audit.record(
            conn, at=at, actor=user.username, action="user.login", object_type="user",
            object_id=user.username,
        )  # fmt: skip


def list_users(conn: psycopg.Connection[Any]) -> pd.DataFrame:
    return frame(
        conn,
        "SELECT username, role, created_at, created_by, disabled_at FROM app_users "
        "ORDER BY disabled_at IS NOT NULL, username",
    )
