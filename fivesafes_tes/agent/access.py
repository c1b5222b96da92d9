"""Who may use this TRE's own API and pages: one rule for both, so a page never lets in someone the
API would refuse."""

from __future__ import annotations

from collections.abc import Set

from fivesafes_tes.auth.principal import Role


def refusal(
    roles: Set[str], token_tre: str | None, role: Role, tre: str, require_tre_claim: bool
) -> str | None:
    """Why a person with `roles` and `token_tre` (their token's `tre` claim) may not act as `role` in TRE
    `tre`; None if they may.

    A token naming no TRE is refused unless its issuer serves this TRE alone (`require_tre_claim` False):
    where TREs share an issuer, a checker of one would otherwise decide on another's outputs."""
    if role not in roles:
        return f"this is for this TRE's {role.value}s (role {role.value})"
    if token_tre and token_tre != tre:
        return f"this token is for TRE {token_tre!r}, not {tre!r}"
    if not token_tre and require_tre_claim:
        return f"this token names no TRE; this TRE needs one whose `tre` claim is {tre!r}"
    return None
