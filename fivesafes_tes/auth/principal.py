"""Who is calling: the authenticated user as route handlers and domain code see them."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """Roles the gateway understands; a token may carry others, which grant nothing."""

    RESEARCHER = "researcher"
    FEDERATION_ADMIN = "federation-admin"
    TRE_ADMIN = "tre-admin"
    OUTPUT_CHECKER = "output-checker"
    TRE_AGENT = "tre-agent"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller, built from a validated token and its provisioned user row.

    ``tre`` is the TRE the token names (agent tokens carry one); it is only a claim, and
    authorisation decides what it is worth for which role.
    """

    user_id: int
    issuer: str
    subject: str
    username: str
    roles: frozenset[str]
    tre: str | None = None

    def has_role(self, *roles: str) -> bool:
        """True if the caller holds at least one of ``roles`` (so ``has_role()`` is False)."""
        return not self.roles.isdisjoint(roles)


@dataclass(frozen=True, slots=True)
class Person:
    """Someone as their token's issuer knows them. ``(issuer, subject)`` is who they are; ``name`` (the
    token's preferred_username) is for display only, since some identity providers let users change it."""

    issuer: str
    subject: str
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.issuer, self.subject)

    @property
    def qualified(self) -> str:
        """The subject qualified by its issuer, as decisions record who took them."""
        return f"{self.issuer}#{self.subject}"


def name_key(username: str) -> str:
    """How usernames compare: Unicode-normalised and casefolded, so "Alice" and "alice" are one name."""
    return unicodedata.normalize("NFKC", username).casefold()
