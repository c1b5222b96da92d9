"""The embedded token issuer for development, demos and tests.

It signs RS256 tokens with a key kept on disk, so tokens stay valid across restarts and
every process sharing the data directory (gateway workers, the CLI) agrees on one key.
Anyone who can read that directory can mint any role: never trust it in production.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from fivesafes_tes.auth.pkce import pkce_matches

log = logging.getLogger(__name__)

KEY_FILE = "signing-key.pem"
ALGORITHM = "RS256"
CLAIMS = (
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "preferred_username",
    "email",
    "roles",
    "tre",
    "nonce",
)
CODE_TTL_S = 60  # from the login page to the client's code exchange
SIGN_IN_TTL_S = 3600  # of the tokens a sign-in gets


class InvalidGrant(Exception):
    """A code exchange is refused (OAuth 2.0 `invalid_grant`); the message says why, for the client."""


@dataclass(frozen=True)
class DevPerson:
    """Someone to sign in as on the development issuer's login page."""

    username: str
    roles: tuple[str, ...]
    tre: str | None = None


@dataclass(frozen=True)
class _Grant:
    person: DevPerson
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    expires: float


class DevIssuer:
    """An RS256 issuer whose private key lives in ``directory/signing-key.pem``.

    The gateway serves it at ``{public_url}/dev-issuer``: ``openid_configuration()`` at
    ``/.well-known/openid-configuration`` and ``jwks()`` at ``/jwks.json`` below that.
    """

    def __init__(self, directory: Path, issuer_url: str) -> None:
        self.directory = Path(directory)
        self.issuer_url = issuer_url.rstrip("/")
        self._private_key = _load_or_create_key(self.directory)
        public = RSAAlgorithm.to_jwk(self._private_key.public_key(), as_dict=True)
        self._public_jwk: dict[str, Any] = {name: public[name] for name in ("kty", "n", "e")}
        self.kid = _thumbprint(self._public_jwk)
        # Codes live in this process only: the development gateway is one process.
        self._grants: dict[str, _Grant] = {}
        self._grants_lock = threading.Lock()

    def issue(
        self,
        username: str,
        roles: list[str],
        *,
        audience: str,
        ttl_s: int = 3600,
        tre: str | None = None,
        email: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """A signed token for ``username``; ``extra`` claims are applied last, so tests can override any."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer_url,
            "sub": username,
            "preferred_username": username,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
            "roles": list(roles),
        }
        if tre is not None:
            claims["tre"] = tre
        if email is not None:
            claims["email"] = email
        claims.update(extra or {})
        return self.sign(claims)

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign ``claims`` exactly as given: for tests that need tokens ``issue`` would not make."""
        return jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def grant(
        self, person: DevPerson, *, client_id: str, redirect_uri: str, code_challenge: str, nonce: str | None
    ) -> str:
        """A one-time authorisation code for `person`, redeemable within CODE_TTL_S by `client_id` at
        `redirect_uri` with the PKCE verifier of `code_challenge` (S256)."""
        code = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._grants_lock:
            self._grants = {c: g for c, g in self._grants.items() if g.expires > now}
            self._grants[code] = _Grant(
                person, client_id, redirect_uri, code_challenge, nonce, now + CODE_TTL_S
            )
        return code

    def redeem(self, code: str, *, client_id: str, redirect_uri: str, code_verifier: str) -> dict[str, Any]:
        """The token response for `code`: an access token and an ID token, both for audience `client_id`.
        A code is spent by its first exchange, even a refused one."""
        with self._grants_lock:
            grant = self._grants.pop(code, None)
        if grant is None or grant.expires <= time.monotonic():
            raise InvalidGrant("unknown, spent or expired code")
        if (client_id, redirect_uri) != (grant.client_id, grant.redirect_uri):
            raise InvalidGrant("the code was issued to another client or redirect_uri")
        if not pkce_matches(code_verifier, grant.challenge):
            raise InvalidGrant("code_verifier does not match the code_challenge (S256)")
        person = grant.person
        access = self.issue(
            person.username, list(person.roles), audience=client_id, ttl_s=SIGN_IN_TTL_S, tre=person.tre
        )
        identity = self.issue(
            person.username,
            list(person.roles),
            audience=client_id,
            ttl_s=SIGN_IN_TTL_S,
            tre=person.tre,
            extra={"nonce": grant.nonce} if grant.nonce else None,
        )
        return {
            "access_token": access,
            "id_token": identity,
            "token_type": "Bearer",
            "expires_in": SIGN_IN_TTL_S,
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self._public_jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}

    def openid_configuration(self) -> dict[str, Any]:
        """The discovery document: keys, and the authorisation-code flow with PKCE (S256) for public
        clients, whose login page lets anyone pick who to be."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.issuer_url + "/jwks.json",
            "authorization_endpoint": self.issuer_url + "/authorize",
            "token_endpoint": self.issuer_url + "/token",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": ["openid", "profile"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "subject_types_supported": ["public"],
            "claims_supported": list(CLAIMS),
        }


def _load_or_create_key(directory: Path) -> rsa.RSAPrivateKey:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / KEY_FILE
    if not path.exists():
        _create_key(path)
    if path.stat().st_mode & 0o077:
        log.warning("tightening permissions of %s to 0600", path)
        path.chmod(0o600)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError(f"{path} does not hold an RSA private key")
    return key


def _create_key(path: Path) -> None:
    """Write a new key under a temporary name, then hard-link it into place.

    ``link`` fails if the name exists, so when two processes start together exactly one key
    wins and the loser reads it; nobody ever sees a half-written file.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".signing-key.", suffix=".tmp")  # mode 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            path.hardlink_to(tmp)
    finally:
        tmp.unlink()


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint: stable for a key, so the kid survives restarts."""
    members = {name: jwk[name] for name in ("e", "kty", "n")}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
