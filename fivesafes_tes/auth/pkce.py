"""PKCE (RFC 7636) with the S256 method, the only one this project sends or accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac


def pkce_challenge(verifier: str) -> str:
    """base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def pkce_matches(verifier: str, challenge: str) -> bool:
    """Whether `verifier` is the one `challenge` was made from (compared in constant time). A verifier
    outside RFC 7636's 43 to 128 characters never matches."""
    if not 43 <= len(verifier) <= 128 or not verifier.isascii():
        return False
    return hmac.compare_digest(pkce_challenge(verifier).encode(), challenge.encode())
