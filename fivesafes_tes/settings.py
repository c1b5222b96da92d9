"""Configuration: one pydantic-settings model per process, read from ``FIVESAFES_*`` variables.

Defaults are the embedded development stack's; every one is safe (loopback, no public
issuer trusted, nothing unauthenticated beyond service-info and health).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from fivesafes_tes.egress.store import StoreSettings
from fivesafes_tes.tes.caps import DEFAULT_CAPS, TaskCaps

SYSTEM_DATA_DIR = Path("/var/lib/fivesafes-tes")


def default_data_dir() -> Path:
    """~/.local/share/fivesafes-tes; for root, /var/lib/fivesafes-tes: root's home is host state the
    sandbox never mounts into a task, and the agent's work directories are mounted into every task."""
    if os.geteuid() == 0:
        return SYSTEM_DATA_DIR
    return Path.home() / ".local" / "share" / "fivesafes-tes"


# A nested group's fields are read from PREFIX + GROUP + "_" + FIELD (FIVESAFES_RESULTS_BUCKET): split
# once after the group's name, so field names keep their underscores.
_NESTED = SettingsConfigDict(env_nested_delimiter="_", env_nested_max_split=1)


class ResultsStoreSettings(StoreSettings):
    """The gateway's results store: where released files are kept for researchers to download."""

    bucket: str = Field(default="results", description="Bucket of released files.")


class AirlockStoreSettings(StoreSettings):
    """A TRE's airlock: where outputs are held until they are checked and released."""

    bucket: str = Field(default="airlock", description="Bucket holding outputs until they are released.")


class KubernetesExecutorSettings(BaseModel):
    """The Kubernetes executor (`FIVESAFES_AGENT_KUBERNETES_*`): where task Jobs run and how each run's
    volume is filled and emptied by our filer."""

    namespace: str = Field(
        default="fivesafes-tasks",
        description="Namespace of task Jobs, their volumes and Secrets; the agent may act only there.",
    )
    filer_image: str = Field(
        default="",
        description="Our own image (this agent's), which stages each run's inputs in and outputs out. "
        "Required with the kubernetes executor.",
    )
    storage_class: str = Field(
        default="", description="StorageClass of each run's volume; empty: the cluster's default."
    )
    ttl_after_finished_s: int = Field(
        default=3600, ge=0, description="Seconds the cluster keeps an ended Job before removing it."
    )
    tmp_medium: Literal["", "Memory"] = Field(
        default="",
        description="Backing of each task's /tmp: empty (node disk, counted as ephemeral storage) or "
        "`Memory` (counted as memory).",
    )
    capability_ttl_s: int = Field(
        default=900,
        ge=60,
        le=86400,
        description="Seconds the upload capability the stage-out filer gets (for one run's staging prefix "
        "only) stays valid; also the stage-out Job's deadline.",
    )
    airlock_port: int = Field(
        default=443,
        ge=1,
        le=65535,
        description="TCP port of the airlock's S3 endpoint: the only port (with DNS) stage-out pods may "
        "reach.",
    )
    status_snapshot_s: float = Field(
        default=1.0,
        ge=0,
        description="Oldest listing of the task namespace a status pass may answer from (one listing per "
        "kind for every run, instead of three requests per run); 0 reads each run directly.",
    )


class TesRelaySettings(BaseModel):
    """The TRE's own TES server, for the relay executor (`FIVESAFES_AGENT_EXECUTOR=tes`): each task is
    sent to it, its outputs directed to the airlock's staging area (`executors/tes.py`)."""

    url: str | None = Field(
        default=None, description="Base URL of the TRE's TES server (required by the tes executor)."
    )
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token for the TRE's TES server (a secret: give it through the environment).",
    )
    token_file: Path | None = Field(
        default=None, description="File holding that token, re-read on every request (for rotated tokens)."
    )
    timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Timeout of one request to the TES server."
    )
    poll_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="Least time between two requests for the state of one run (the agent checks more often).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Tags added to every task sent (JSON), for what the TES server needs, e.g. which of its "
        "backends runs it.",
    )


class GatewaySettings(BaseSettings):
    """Settings of the gateway process (TES API, admin API, agent API, results)."""

    model_config = SettingsConfigDict(env_prefix="FIVESAFES_", extra="ignore", **_NESTED)

    data_dir: Path = Field(
        default_factory=default_data_dir, description="Where the embedded defaults keep state."
    )
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
    roles_claim: str = Field(
        default="roles", description="Claim holding roles; dotted for nested (realm_access.roles)."
    )
    dev_issuer: bool = Field(
        default=False, description="Serve and trust the embedded development token issuer."
    )

    # Pages (docs/web.md)
    web_pages: bool = Field(
        default=False, description="Serve the researchers' pages under PUBLIC_URL/web (docs/web.md)."
    )
    web_client_id: str = Field(
        default="fivesafes-tes",
        description="The pages' OIDC client id at OIDC_ISSUER: their ID tokens' audience. Its access tokens "
        "must be for OIDC_AUDIENCE, as the API's are.",
    )
    web_client_secret: SecretStr | None = Field(
        default=None,
        description="The pages' OIDC client secret, for a confidential client (PKCE is always used).",
    )
    web_session_key: SecretStr | None = Field(
        default=None,
        description="Key (at least 32 characters) signing the pages' session cookies; every replica needs "
        "the same. Unset: a random one per process (logged as a warning), which only one replica can use.",
    )
    web_session_ttl_s: int = Field(
        default=3600, ge=60, le=12 * 3600, description="How long a sign-in to the pages lasts."
    )

    # TES service-info
    service_id: str = Field(default="org.fivesafes.tes", description="service-info `id` (reverse domain).")
    service_name: str = Field(default="Five Safes TES", description="service-info `name`.")
    organization_name: str = Field(
        default="Five Safes TES federation", description="service-info `organization.name`."
    )
    organization_url: str = Field(
        default="https://example.org/fivesafes-tes", description="service-info `organization.url`."
    )
    environment: str = Field(default="dev", description="service-info `environment` (dev, test, prod).")
    storage: list[str] = Field(default_factory=list, description="Storage locations listed in service-info.")
    backend_parameters: list[str] = Field(
        default=["tre", "project"],
        description="tesResources.backend_parameters keys accepted and kept (case-insensitive); they do not "
        "route tasks: tags `project` and `tres` do.",
    )

    # Submission policy
    allowed_images: list[str] = Field(
        default_factory=list,
        description="Container images tasks may name (fnmatch patterns, e.g. `registry.tre.org/*`). "
        "Empty refuses every task: set it. Each TRE applies its own list again.",
    )
    lease_ttl_s: int = Field(
        default=60, ge=5, description="How long an agent's lease lasts without a heartbeat."
    )
    max_lost_leases: int = Field(
        default=3,
        ge=1,
        description="A child whose lease expires this many times while its task is staged, running or "
        "being checked (its agent died or stalled each time) ends system_failed instead of being "
        "offered again.",
    )
    paused_for_review: bool = Field(
        default=False,
        description="Show children awaiting output review as TES PAUSED instead of RUNNING "
        "(py-tes 0.4.x, used by the Snakemake and Toil plugins, breaks on PAUSED).",
    )

    # Limits
    max_body_bytes: int = Field(default=4 * 1024 * 1024, description="Largest request body accepted.")
    max_content_bytes: int = Field(default=1024 * 1024, description="Largest tesInput.content accepted.")
    max_crate_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="Largest request crate (BagIt zip, POST /api/v1/crates) accepted; the body is spooled "
        "to DATA_DIR/crate-spool, never held in memory, and removed once answered.",
    )
    # Per-task caps: what one task may ask of a TRE. Each TRE's policy may set lower ones.
    max_executors: int = Field(
        default=DEFAULT_CAPS.executors, ge=1, description="Most executors (steps) one task may have."
    )
    max_inputs: int = Field(default=DEFAULT_CAPS.inputs, ge=0, description="Most inputs one task may have.")
    max_outputs: int = Field(
        default=DEFAULT_CAPS.outputs, ge=0, description="Most outputs one task may have."
    )
    max_volumes: int = Field(
        default=DEFAULT_CAPS.volumes, ge=0, description="Most volumes one task may have."
    )
    max_env_vars: int = Field(
        default=DEFAULT_CAPS.env_vars, ge=0, description="Most environment variables one executor may set."
    )
    max_tags: int = Field(default=DEFAULT_CAPS.tags, ge=0, description="Most tags one task may carry.")

    # Results: where released files are kept, for researchers to download
    results: ResultsStoreSettings = Field(
        default_factory=ResultsStoreSettings,
        description="The results store (`FIVESAFES_RESULTS_*`); none unless its endpoint or access key is "
        "set.",
    )
    delivery_buckets: list[str] = Field(
        default_factory=list,
        description="Buckets on the results store's endpoint that released outputs may be delivered to, when "
        "a TES output url names them (s3://BUCKET/key). Others are not written to.",
    )
    file_output_root: Path | None = Field(
        default=None,
        description="A folder this gateway may write, where released outputs whose TES output url is "
        "file:///path (a path under this folder) are written. Unset: tasks with file:// outputs are refused.",
    )
    delivery_attempts: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Attempts at delivering a child's outputs before giving up, about half a day with the "
        "default retry (each failure is audited; the files stay downloadable from the gateway).",
    )
    delivery_retry_s: float = Field(
        default=30.0,
        gt=0,
        description="Wait before the first retry of a failed delivery; doubled each time, up to "
        "DELIVERY_RETRY_CAP_S.",
    )
    delivery_claim_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a gateway's hold on a delivery lasts unless renewed (it renews it every third "
        "of this while working) before another replica may take it over.",
    )
    delivery_retry_cap_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86400,
        description="Longest wait between delivery retries: the doubling of DELIVERY_RETRY_S stops here.",
    )
    delivery_poll_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How often each replica looks for deliveries that fell due (retries, and those a gateway "
        "that died still owed), at most; a shorter DELIVERY_RETRY_S is used instead.",
    )
    lease_recheck_s: float = Field(
        default=0.5,
        gt=0,
        le=30,
        description="How often an agent's waiting long-poll re-reads the database for work another replica "
        "queued (work queued on this replica wakes it at once).",
    )
    target_cache_ttl_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How long a replica keeps where a user's tasks go (project, TREs) before reading it "
        "again: a change made on another replica is seen within this.",
    )

    metrics_token: SecretStr | None = Field(
        default=None, description="Static bearer token Prometheus may use for /metrics instead of a JWT."
    )

    @model_validator(mode="after")
    def _retry_cap_not_below_first_retry(self) -> GatewaySettings:
        if self.delivery_retry_cap_s < self.delivery_retry_s:
            raise ValueError("delivery_retry_cap_s must be at least delivery_retry_s")
        return self

    @property
    def task_caps(self) -> TaskCaps:
        return TaskCaps(
            executors=self.max_executors,
            inputs=self.max_inputs,
            outputs=self.max_outputs,
            volumes=self.max_volumes,
            env_vars=self.max_env_vars,
            tags=self.max_tags,
        )

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'gateway.db'}"

    @model_validator(mode="after")
    def _web_session_key_long_enough(self) -> GatewaySettings:
        if self.web_session_key is not None and len(self.web_session_key.get_secret_value()) < 32:
            raise ValueError(
                "web_session_key must be at least 32 characters (make one: openssl rand -hex 32)"
            )
        return self

    @property
    def dev_issuer_dir(self) -> Path:
        return self.data_dir / "dev-issuer"


class AgentSettings(BaseSettings):
    """Settings of one TRE's agent (`fivesafes-tes agent`). It only ever connects out: to the gateway,
    to the TRE's own S3 airlock and to its container engine."""

    model_config = SettingsConfigDict(env_prefix="FIVESAFES_AGENT_", extra="ignore", **_NESTED)

    tre: str = Field(
        description="This TRE's name, as registered at the gateway and named in the agent token."
    )
    gateway_url: str = Field(default="http://127.0.0.1:8000", description="The gateway's base URL.")
    token: SecretStr | None = Field(
        default=None, description="Agent bearer token (role tre-agent, claim tre)."
    )
    token_file: Path | None = Field(
        default=None, description="File holding the token, re-read on every request (for rotated tokens)."
    )
    data_dir: Path = Field(
        default_factory=lambda: default_data_dir() / "agent", description="Local state and work."
    )
    database_url: str | None = Field(
        default=None, description="Agent's own database; default SQLite in DATA_DIR."
    )
    executor: str = Field(
        default="docker",
        description="docker, kubernetes (a Job per task, KUBERNETES_*), tes (a relay to the TRE's own TES "
        "server, TES_*), or local (development only: no sandbox).",
    )
    policy_file: Path | None = Field(
        default=None, description="YAML/JSON TRE policy: allowed images, limits, datasets and grants."
    )
    airlock: AirlockStoreSettings = Field(
        default_factory=AirlockStoreSettings, description="The TRE's airlock (`FIVESAFES_AGENT_AIRLOCK_*`)."
    )
    kubernetes: KubernetesExecutorSettings = Field(
        default_factory=KubernetesExecutorSettings,
        description="The kubernetes executor (`FIVESAFES_AGENT_KUBERNETES_*`).",
    )
    tes: TesRelaySettings = Field(
        default_factory=TesRelaySettings,
        description="The TRE's TES server, for the tes executor (`FIVESAFES_AGENT_TES_*`).",
    )
    poll_wait_s: float = Field(default=20.0, ge=0, le=30, description="Long-poll wait for new work.")
    heartbeat_s: float = Field(default=15.0, gt=0, description="Heartbeat interval for held leases.")
    sync_s: float = Field(default=30.0, gt=0, description="How often projects and members are re-read.")
    tick_s: float = Field(default=0.5, gt=0, description="How often running work is checked.")
    report_granularity_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="Stage changes whose timing a task controls (the end of the run, the checks, the end "
        "after review) reach the gateway only at multiples of this many seconds after the run started, so "
        "a researcher learns about log2(runtime / this) bits per change from timing "
        "(docs/researcher-view.md). 0 reports at once: for tests only.",
    )
    collect_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="Longest the agent waits, after a run ended, for its backend to hand over what it left "
        "(a Kubernetes stage-out Job, a relayed TES server's delivery) before it ends the child "
        "`system_failed`.",
    )
    max_child_errors: int = Field(
        default=5,
        ge=1,
        le=50,
        description="Unexpected errors in a row one child's handling may hit at one stage before the agent "
        "ends that child system_failed (cleaning up its run and emptying its airlock).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=50,
        description="Attempts one child may take while its task is staged, run or checked: a lease the "
        "gateway offers again there means this agent died or stalled with the task. Past this many the agent "
        "ends the child system_failed (its run removed, audited child.give_up) instead of trying again.",
    )
    child_retry_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Wait before a child whose handling hit an unexpected error is tried again; doubled "
        "after each further error, up to RETRY_CAP_S. Other children are not held up meanwhile.",
    )
    event_retry_s: float = Field(
        default=1.0,
        gt=0,
        le=300,
        description="Wait before an event the gateway refused is sent again; doubled after each further "
        "refusal, up to RETRY_CAP_S. Only that child's later events wait with it.",
    )
    retry_cap_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="Longest wait between retries of a refused event or of a child that hit an error.",
    )
    lease_refused_wait_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Wait before asking for work again after the gateway refused the request (4xx: a "
        "token or registration problem, logged).",
    )
    work_error_wait_s: float = Field(
        default=1.0,
        gt=0,
        le=300,
        description="Wait before the work loop goes on after an unexpected error (logged).",
    )
    worker_stall_s: float = Field(
        default=900.0,
        gt=0,
        le=86400,
        description="The agent is unhealthy (its /healthz answers 503, so its liveness probe restarts it) "
        "once its work loop has not started a pass for this long. Keep it above the slowest single step: "
        "an upload of a released file (GATEWAY_UPLOAD_TIMEOUT_S), an image pull.",
    )
    gateway_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Timeout of one request to the gateway (a long-poll for work adds its wait; an upload "
        "has its own, GATEWAY_UPLOAD_TIMEOUT_S).",
    )
    gateway_max_backoff_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest wait between retries of a request the gateway did not answer or answered "
        "5xx/429.",
    )
    gateway_upload_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        description="Timeout of one released file's upload to the gateway (raise it for large files on a "
        "slow link).",
    )
    run_as: str = Field(default="65534:65534", description="uid:gid tasks run as; never root.")
    admin_listen: str | None = Field(
        default=None,
        description="host:port for the TRE-admin and review APIs (inside the TRE only). Unset: no listening "
        "socket at all.",
    )
    oidc_issuer: str | None = Field(
        default=None, description="Issuer of TRE admins' and output checkers' tokens (for those APIs)."
    )
    oidc_audience: str = Field(default="fivesafes-tre", description="Audience of TRE admins' tokens.")
    oidc_jwks_url: str | None = Field(
        default=None, description="JWKS URL; default discovered from the issuer."
    )
    roles_claim: str = Field(default="roles", description="Claim holding roles; dotted for nested.")
    require_tre_claim: bool = Field(
        default=True,
        description="Admins' and output checkers' tokens must name this TRE in their `tre` claim. Set false "
        "only where the issuer serves this TRE alone.",
    )

    web_pages: bool = Field(
        default=True,
        description="Serve the TRE's pages (docs/web.md) beside the admin and review APIs on ADMIN_LISTEN.",
    )
    web_public_url: str | None = Field(
        default=None,
        description="The pages' base URL as browsers reach them (the sign-in's redirect URI is this plus "
        "/auth/callback; https makes the session cookie Secure). Default: http://ADMIN_LISTEN.",
    )
    web_client_id: str = Field(
        default="fivesafes-tre",
        description="The pages' OIDC client id at OIDC_ISSUER: their ID tokens' audience. Its access tokens "
        "must be for OIDC_AUDIENCE, as the API's are.",
    )
    web_client_secret: SecretStr | None = Field(
        default=None,
        description="The pages' OIDC client secret, for a confidential client (PKCE is always used).",
    )
    web_session_key: SecretStr | None = Field(
        default=None,
        description="Key (at least 32 characters) signing the pages' session cookies. Unset: a random one "
        "per start, so every session ends when the agent restarts (logged as a warning).",
    )
    web_session_ttl_s: int = Field(
        default=3600, ge=60, le=12 * 3600, description="How long a sign-in to the pages lasts."
    )

    @model_validator(mode="after")
    def _retry_cap_not_below_first_retries(self) -> AgentSettings:
        if self.retry_cap_s < max(self.child_retry_s, self.event_retry_s):
            raise ValueError("retry_cap_s must be at least child_retry_s and event_retry_s")
        return self

    @model_validator(mode="after")
    def _session_key_long_enough(self) -> AgentSettings:
        if self.web_session_key is not None and len(self.web_session_key.get_secret_value()) < 32:
            raise ValueError(
                "web_session_key must be at least 32 characters (make one: openssl rand -hex 32)"
            )
        return self

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'agent.db'}"


class FaultInjectionSettings(BaseSettings):
    """For tests only, never in production: where the crash tests have a process kill itself
    (`fivesafes_tes.failpoints`). Read once, when that module is imported."""

    model_config = SettingsConfigDict(env_prefix="FIVESAFES_", extra="ignore")

    failpoints: str = Field(
        default="",
        description="Test only: comma-separated failpoints, `name` or `name:N`, at which this process dies "
        "with SIGKILL (the N-th time it is reached). Never set it in a deployment.",
    )


def environment_variables(settings: type[BaseSettings]) -> dict[str, FieldInfo]:
    """Every variable `settings` reads, each with its field: a nested group's fields under the group's
    name (`FIVESAFES_RESULTS_BUCKET`). The docs and the secret scrubbing below both list from here."""
    prefix = settings.model_config.get("env_prefix", "")
    out: dict[str, FieldInfo] = {}
    for name, field in settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            for inner, inner_field in group.model_fields.items():
                out[f"{prefix}{name}_{inner}".upper()] = inner_field
        else:
            out[f"{prefix}{name}".upper()] = field
    return out


def drop_secrets_from_environment(settings: BaseSettings) -> list[str]:
    """Remove the variables of `settings`' secret fields (and its database URL, which may carry a
    password) from this process's environment once they are read, so that no process it starts
    (the check processes and their fork server, the container engine's helpers) inherits a token,
    key or password. Returns the names removed."""
    prefix = settings.model_config.get("env_prefix", "")
    removed = []
    for variable, field in environment_variables(type(settings)).items():
        secret = (
            field.annotation in (SecretStr, SecretStr | None) or variable == f"{prefix}DATABASE_URL".upper()
        )
        if secret and os.environ.pop(variable, None) is not None:
            removed.append(variable)
    return removed
