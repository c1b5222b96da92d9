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
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

log = logging.getLogger(__name__)

KEY_FILE = "signing-key.pem"
ALGORITHM = "RS256"
CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "preferred_username", "email", "roles", "tre")


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

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self._public_jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}

    def openid_configuration(self) -> dict[str, Any]:
        """The discovery document; it lists only what this issuer does (no login endpoints)."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": self.issuer_url + "/jwks.json",
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
