"""Identity: bearer tokens validated against an OIDC issuer, users provisioned from their claims.

No web framework here; the gateway turns AuthError into 401 and JwksUnavailable into 503.
"""

from fivesafes_tes.auth.issuer import DevIssuer
from fivesafes_tes.auth.principal import Person, Principal, Role, name_key
from fivesafes_tes.auth.tables import User
from fivesafes_tes.auth.tokens import (
    AuthError,
    Claims,
    JwksSource,
    JwksUnavailable,
    RemoteJwks,
    StaticJwks,
    TokenValidator,
    discover_jwks_url,
)
from fivesafes_tes.auth.users import UserCache, authenticate, provision

__all__ = [
    "AuthError",
    "Claims",
    "DevIssuer",
    "JwksSource",
    "JwksUnavailable",
    "Person",
    "Principal",
    "RemoteJwks",
    "Role",
    "StaticJwks",
    "TokenValidator",
    "User",
    "UserCache",
    "authenticate",
    "discover_jwks_url",
    "name_key",
    "provision",
]
