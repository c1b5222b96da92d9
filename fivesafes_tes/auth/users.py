"""Users provisioned from token claims on first use, and the cache that keeps that off the hot path."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fivesafes_tes.auth.principal import Principal
from fivesafes_tes.auth.tables import User
from fivesafes_tes.auth.tokens import Claims, TokenValidator
from fivesafes_tes.db import Database, utcnow

#: ``last_seen_at`` is refreshed at most this often, so polling clients do not write on every call.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)

_CacheKey = tuple[str, str, str, str | None, frozenset[str]]

#: Called in the provisioning transaction with the user and whether their username is new to us
#: (a first login or a changed preferred_username): the gateway binds memberships added by name.
OnProvision = Callable[[Session, User, bool], None]


def provision(
    session: Session, claims: Claims, *, now: datetime | None = None, on_provision: OnProvision | None = None
) -> User:
    """The user row for ``claims``: created on first use, then kept in line with the token.

    Concurrent first requests of one user are safe: the insert runs in a savepoint, and the
    loser of the race falls back to the winner's row through the (issuer, subject) constraint.
    """
    now = now or utcnow()
    user = _find(session, claims)
    if user is None:
        user, renamed = _create(session, claims, now), True
    else:
        renamed = user.username != claims.username
        _update(user, claims, now)
    if on_provision is not None:
        on_provision(session, user, renamed)
    return user


def _create(session: Session, claims: Claims, now: datetime) -> User:
    user = User(
        issuer=claims.issuer,
        subject=claims.subject,
        username=claims.username,
        email=claims.email,
        roles=sorted(claims.roles),
        created_at=now,
        last_seen_at=now,
    )
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        winner = _find(session, claims)
        if winner is None:
            raise
        _update(winner, claims, now)
        return winner
    return user


def _find(session: Session, claims: Claims) -> User | None:
    query = select(User).where(User.issuer == claims.issuer, User.subject == claims.subject)
    return session.scalars(query).one_or_none()


def _update(user: User, claims: Claims, now: datetime) -> None:
    """Copy changed claims; assign only what differs so an unchanged user costs no UPDATE."""
    roles = sorted(claims.roles)
    changed = False
    if user.username != claims.username:
        user.username = claims.username
        changed = True
    if user.email != claims.email:
        user.email = claims.email
        changed = True
    if list(user.roles or []) != roles:
        user.roles = roles
        changed = True
    if changed or now - _aware(user.last_seen_at) >= LAST_SEEN_RESOLUTION:
        user.last_seen_at = now


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; we only ever store UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class UserCache:
    """Thread-safe LRU of recently provisioned users (claims → user id), entries expiring after ``ttl_s``.

    The key holds everything provisioning copies from the token, so a changed role, name or
    email misses the cache and reaches the database on the next request.
    """

    def __init__(
        self, maxsize: int = 10_000, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._maxsize = maxsize
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[_CacheKey, tuple[int, float]] = OrderedDict()

    def get(self, claims: Claims) -> int | None:
        key = _cache_key(claims)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            user_id, expires = entry
            if self._clock() >= expires:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return user_id

    def put(self, claims: Claims, user_id: int) -> None:
        key = _cache_key(claims)
        with self._lock:
            self._entries[key] = (user_id, self._clock() + self._ttl_s)
            self._entries.move_to_end(key)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _cache_key(claims: Claims) -> _CacheKey:
    return (claims.issuer, claims.subject, claims.username, claims.email, claims.roles)


def authenticate(
    db: Database,
    validator: TokenValidator,
    token: str,
    cache: UserCache,
    *,
    on_provision: OnProvision | None = None,
) -> Principal:
    """Validate ``token`` and return its caller, provisioning the user when the cache does not know them.

    Raises AuthError for a token to refuse (401) and JwksUnavailable when keys cannot be fetched (503).
    """
    claims = validator.validate(token)
    user_id = cache.get(claims)
    if user_id is None:
        with db.write() as session:
            user_id = provision(session, claims, on_provision=on_provision).id
        cache.put(claims, user_id)
    return Principal(
        user_id=user_id,
        issuer=claims.issuer,
        subject=claims.subject,
        username=claims.username,
        roles=claims.roles,
        tre=claims.tre,
    )
