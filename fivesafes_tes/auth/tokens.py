"""Bearer-token validation against an OIDC issuer's published keys.

Only asymmetric algorithms are ever accepted: the keys come from a public JWKS, so an
HMAC algorithm would let anyone who can read the JWKS forge tokens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import jwt
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
    PyJWTError,
)

from fivesafes_tes.auth.principal import Person

log = logging.getLogger(__name__)

#: Larger bearer tokens are refused before parsing; real ones are a few KiB at most.
MAX_TOKEN_BYTES = 16 * 1024
#: Claims the gateway cannot work without.
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud")
#: Key type each accepted algorithm verifies with.
ASYMMETRIC_ALGORITHMS: Mapping[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
# Lengths the users table can hold; a longer claim would otherwise fail as a database error.
_MAX_SUBJECT = 255
_MAX_EMAIL = 320
_HTTP_TIMEOUT_S = 5.0


class AuthError(Exception):
    """A token was refused. ``reason`` is short, fixed text safe to log and to return to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksUnavailable(Exception):
    """The issuer's keys or metadata cannot be fetched: our side's problem (503), not the caller's (401)."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What the gateway uses from a validated token; ``raw`` keeps the rest for callers that need it."""

    issuer: str
    subject: str
    username: str
    email: str | None
    roles: frozenset[str]
    tre: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def person(self) -> Person:
        return Person(self.issuer, self.subject, self.username)


class JwksSource(Protocol):
    """Where verification keys come from."""

    def get_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key for ``kid`` bound to ``alg``; raises AuthError when there is none."""
        ...


class _KeySet:
    """A parsed JWKS, indexed by (kid, algorithm) so lookups on the hot path are dict reads."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.by_kid: dict[tuple[str, str], jwt.PyJWK] = {}
        self.by_alg: dict[str, list[jwt.PyJWK]] = {}
        keys = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(keys, list):
            raise TypeError("JWKS has no 'keys' list")
        for entry in keys:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            for alg in _algorithms_for(entry):
                try:
                    key = jwt.PyJWK(entry, algorithm=alg)
                except (PyJWTError, ValueError, TypeError, KeyError):
                    log.warning("skipping unusable JWKS key kid=%r alg=%s", entry.get("kid"), alg)
                    continue
                kid = entry.get("kid")
                if isinstance(kid, str):
                    self.by_kid[(kid, alg)] = key
                self.by_alg.setdefault(alg, []).append(key)

    def find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            return self.by_kid.get((kid, alg))
        # Without a kid the choice is only safe when it is unambiguous.
        candidates = self.by_alg.get(alg, [])
        return candidates[0] if len(candidates) == 1 else None


def _algorithms_for(jwk: Mapping[str, Any]) -> Iterable[str]:
    """Algorithms a JWK may verify: its own ``alg`` if it names one, else all its key type allows."""
    kty = jwk.get("kty")
    named = jwk.get("alg")
    if named is not None:
        return [named] if ASYMMETRIC_ALGORITHMS.get(named) == kty and _curve_fits(jwk, named) else []
    return [alg for alg, family in ASYMMETRIC_ALGORITHMS.items() if family == kty and _curve_fits(jwk, alg)]


def _curve_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    if alg in _EC_CURVES:
        return jwk.get("crv") == _EC_CURVES[alg]
    if alg == "EdDSA":
        return jwk.get("crv") == "Ed25519"
    return True


class StaticJwks:
    """A fixed key set: the embedded issuer's, or one pinned in configuration."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = _KeySet(jwks)

    def get_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        key = self._keys.find(kid, alg)
        if key is None:
            raise AuthError("unknown signing key")
        return key


class RemoteJwks:
    """An IdP's JWKS fetched over HTTP, cached for ``ttl_s`` and re-fetched when a new kid shows up.

    Fetches happen at most once per ``min_refresh_interval_s``, so tokens with made-up kids
    cannot make us hammer the IdP and an IdP outage does not stall every request. When the
    cache expires, one thread refreshes while the others go on with the previous keys, which
    also stay in use if the refresh fails.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 300,
        min_refresh_interval_s: float = 10,
        timeout_s: float = _HTTP_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._ttl_s = ttl_s
        self._min_interval_s = min_refresh_interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        # Keys and fetch time are swapped as one object, so readers never mix two fetches.
        self._state: _Fetched | None = None
        self._attempted_at: float | None = None

    def get_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        state = self._state
        if state is None:
            state = self._refresh(None, wait=True)
        elif self._clock() - state.fetched_at >= self._ttl_s:
            state = self._refresh(state, wait=False)
        if state is None:
            raise JwksUnavailable(f"no keys from {self.url}")
        key = state.keys.find(kid, alg)
        if key is None:
            newer = self._refresh(state, wait=True)
            if newer is not None and newer is not state:
                key = newer.keys.find(kid, alg)
        if key is None:
            raise AuthError("unknown signing key")
        return key

    def _refresh(self, seen: _Fetched | None, *, wait: bool) -> _Fetched | None:
        """The key set after fetching, unless another thread fetched since ``seen`` or it is too soon."""
        if not self._lock.acquire(blocking=wait):
            return self._state
        try:
            if self._state is not seen:
                return self._state
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._min_interval_s:
                return self._state
            self._attempted_at = now
            try:
                self._state = _Fetched(_KeySet(_get_json(self.url, self._timeout_s)), now)
            except (JwksUnavailable, TypeError, ValueError) as exc:
                log.warning("JWKS refresh from %s failed: %s", self.url, exc)
            return self._state
        finally:
            self._lock.release()


@dataclass(frozen=True, slots=True)
class _Fetched:
    keys: _KeySet
    fetched_at: float


def _get_json(url: str, timeout_s: float) -> Any:
    try:
        response = httpx.get(url, timeout=timeout_s, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise JwksUnavailable(f"GET {url}: {type(exc).__name__}") from exc


def discover_jwks_url(issuer: str, *, timeout_s: float = _HTTP_TIMEOUT_S) -> str:
    """The ``jwks_uri`` from the issuer's OpenID configuration.

    The document must name the same issuer (OpenID Connect Discovery 1.0, section 4.3);
    otherwise a misconfigured URL could make us trust another realm's keys.
    """
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    document = _get_json(url, timeout_s)
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise JwksUnavailable(f"{url} does not describe issuer {issuer}")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise JwksUnavailable(f"{url} has no jwks_uri")
    return jwks_uri


_ERRORS: tuple[tuple[type[InvalidTokenError], str], ...] = (
    (ExpiredSignatureError, "token expired"),
    (ImmatureSignatureError, "token not yet valid"),
    (InvalidIssuerError, "wrong issuer"),
    (InvalidAudienceError, "wrong audience"),
    (InvalidSignatureError, "bad signature"),
    (InvalidAlgorithmError, "algorithm not allowed"),
)


class TokenValidator:
    """Validates bearer JWTs from one issuer for one audience and extracts the claims we use."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks: JwksSource,
        algorithms: Iterable[str],
        roles_claim: str = "roles",
        leeway_s: int = 30,
    ) -> None:
        self.algorithms = frozenset(algorithms)
        refused = sorted(a for a in self.algorithms if a not in ASYMMETRIC_ALGORITHMS)
        if refused or not self.algorithms:
            raise ValueError(
                f"algorithms {refused or '[]'} cannot be used with a public JWKS; "
                f"choose from {sorted(ASYMMETRIC_ALGORITHMS)}"
            )
        self.issuer = issuer
        self.audience = audience
        self._jwks = jwks
        self._roles_path = roles_claim.split(".")
        self._leeway_s = leeway_s

    def for_audience(self, audience: str) -> TokenValidator:
        """The same issuer, keys, algorithms and roles claim for another audience: an OIDC client's ID
        tokens are addressed to its client id, not to the API its access tokens are for."""
        return TokenValidator(
            self.issuer, audience, self._jwks, self.algorithms, ".".join(self._roles_path), self._leeway_s
        )

    def validate(self, token: str) -> Claims:
        """Verify signature, issuer, audience and times; raise AuthError on any failure."""
        if not token:
            raise AuthError("no token")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except InvalidTokenError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        # Checked before any key lookup, so `none` and HS* never reach the verifier.
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed token")
        key = self._jwks.get_key(kid, alg)
        if key.algorithm_name != alg:
            raise AuthError("algorithm not allowed")
        try:
            payload = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self._leeway_s,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except MissingRequiredClaimError as exc:
            raise AuthError(f"missing claim {exc.claim}") from None
        except InvalidTokenError as exc:
            raise AuthError(_reason(exc)) from None
        return self._claims(payload)

    def _claims(self, payload: dict[str, Any]) -> Claims:
        subject = payload["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > _MAX_SUBJECT:
            raise AuthError("invalid claim sub")
        username = payload.get("preferred_username") or subject
        if not isinstance(username, str) or len(username) > _MAX_SUBJECT:
            raise AuthError("invalid claim preferred_username")
        email = payload.get("email")
        if email is not None and (not isinstance(email, str) or len(email) > _MAX_EMAIL):
            raise AuthError("invalid claim email")
        tre = payload.get("tre")
        if tre is not None and (not isinstance(tre, str) or not tre):
            raise AuthError("invalid claim tre")
        return Claims(
            issuer=payload["iss"],
            subject=subject,
            username=username,
            email=email,
            roles=self._roles(payload),
            tre=tre,
            raw=payload,
        )

    def _roles(self, payload: dict[str, Any]) -> frozenset[str]:
        value: Any = payload
        for part in self._roles_path:
            if not isinstance(value, dict) or part not in value:
                return frozenset()
            value = value[part]
        if value is None:
            return frozenset()
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list) and all(isinstance(role, str) for role in value):
            return frozenset(value)
        raise AuthError("invalid roles claim")


def _reason(exc: InvalidTokenError) -> str:
    for kind, reason in _ERRORS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"
