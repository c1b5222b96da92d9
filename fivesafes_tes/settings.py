"""Configuration: one pydantic-settings model per process, read from ``FIVESAFES_*`` variables.

Defaults are the embedded development stack's; every one is safe (loopback, no public
issuer trusted, nothing unauthenticated beyond service-info and health).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "fivesafes-tes"


class GatewaySettings(BaseSettings):
    """Settings of the gateway process (TES API, admin API, agent API, results)."""

    model_config = SettingsConfigDict(env_prefix="FIVESAFES_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Where the embedded defaults keep state.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Default: SQLite (WAL) at DATA_DIR/gateway.db. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    public_url: str = Field(default="http://127.0.0.1:8000", description="Base URL clients use to reach us.")

    # Identity
    oidc_issuer: str | None = Field(default=None, description="Expected `iss` of bearer tokens.")
    oidc_audience: str = Field(default="fivesafes-tes", description="Expected `aud` of bearer tokens.")
    oidc_jwks_url: str | None = Field(
        default=None, description="JWKS URL; default is discovered from the issuer's openid-configuration."
    )
    oidc_algorithms: list[str] = Field(default=["RS256", "ES256"], description="Accepted JWS algorithms.")
    roles_claim: str = Field(default="roles", description="Claim holding roles; dotted for nested (realm_access.roles).")
    dev_issuer: bool = Field(default=False, description="Serve and trust the embedded development token issuer.")

    # TES service-info
    service_id: str = Field(default="org.fivesafes.tes", description="service-info `id` (reverse domain).")
    service_name: str = Field(default="Five Safes TES", description="service-info `name`.")
    organization_name: str = Field(default="Five Safes TES federation", description="service-info `organization.name`.")
    organization_url: str = Field(
        default="https://example.org/fivesafes-tes", description="service-info `organization.url`."
    )
    environment: str = Field(default="dev", description="service-info `environment` (dev, test, prod).")
    storage: list[str] = Field(default_factory=list, description="Storage locations listed in service-info.")
    backend_parameters: list[str] = Field(
        default=["tre", "project"],
        description="tesResources.backend_parameters keys this gateway understands (case-insensitive).",
    )

    # Submission policy
    allowed_images: list[str] = Field(
        default_factory=list,
        description="Container images tasks may name (fnmatch patterns, e.g. `registry.tre.org/*`). "
        "Empty refuses every task: set it. Each TRE applies its own list again.",
    )
    lease_ttl_s: int = Field(default=60, ge=5, description="How long an agent's lease lasts without a heartbeat.")
    paused_for_review: bool = Field(
        default=False,
        description="Show children awaiting output review as TES PAUSED instead of RUNNING "
        "(py-tes 0.4.x, used by the Snakemake and Toil plugins, breaks on PAUSED).",
    )

    # Limits
    max_body_bytes: int = Field(default=4 * 1024 * 1024, description="Largest request body accepted.")
    max_content_bytes: int = Field(default=1024 * 1024, description="Largest tesInput.content accepted.")

    metrics_token: SecretStr | None = Field(
        default=None, description="Static bearer token Prometheus may use for /metrics instead of a JWT."
    )

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'gateway.db'}"

    @property
    def dev_issuer_dir(self) -> Path:
        return self.data_dir / "dev-issuer"
