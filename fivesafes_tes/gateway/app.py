"""The gateway's FastAPI application: wiring only. Routes live in their own modules."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.staticfiles import StaticFiles

from fivesafes_tes import __version__
from fivesafes_tes.auth import (
    DevIssuer,
    RemoteJwks,
    StaticJwks,
    TokenValidator,
    discover_jwks_url,
)
from fivesafes_tes.db import Database
from fivesafes_tes.egress.store import ObjectStore
from fivesafes_tes.gateway import admin_api, agent_api, crates_api, errors, ops, pages, results_api, tes_api
from fivesafes_tes.gateway.context import GatewayContext, app_context, attach
from fivesafes_tes.gateway.dev_issuer import router as dev_issuer_router
from fivesafes_tes.gateway.limits import BodyLimit, NulFreeUrl
from fivesafes_tes.settings import GatewaySettings
from fivesafes_tes.submission import deliveries
from fivesafes_tes.submission.tasks import SubmissionPolicy
from fivesafes_tes.tes import Organization, ServiceInfo, ServiceType, TaskCaps
from fivesafes_tes.tes.models import NUL_FREE
from fivesafes_tes.web import STATIC

TES_PREFIXES = ("/ga4gh/tes/v1", "/v1")


class ConfigurationError(RuntimeError):
    """The gateway cannot start safely with these settings; the message names the fix."""


def _validator(settings: GatewaySettings) -> tuple[TokenValidator, DevIssuer | None]:
    if settings.dev_issuer:
        issuer = DevIssuer(settings.dev_issuer_dir, dev_issuer_url(settings))
        jwks = StaticJwks(issuer.jwks())
        return TokenValidator(
            issuer.issuer_url, settings.oidc_audience, jwks, ["RS256"], settings.roles_claim
        ), issuer
    if not settings.oidc_issuer:
        raise ConfigurationError(
            "no token issuer configured: set FIVESAFES_OIDC_ISSUER (and FIVESAFES_OIDC_AUDIENCE) to your "
            "OIDC provider, or FIVESAFES_DEV_ISSUER=true for local development only"
        )
    url = settings.oidc_jwks_url or discover_jwks_url(settings.oidc_issuer)
    validator = TokenValidator(
        settings.oidc_issuer,
        settings.oidc_audience,
        RemoteJwks(url),
        settings.oidc_algorithms,
        settings.roles_claim,
    )
    return validator, None


# Released files stream to disk with their SHA-256 checked; they are not held in memory. So do request
# crates, under their own cap.
RELEASE_UPLOADS = re.compile(r"^/agent/v1/children/[^/]+/files$")
STREAMED_UPLOADS = re.compile(f"{RELEASE_UPLOADS.pattern}|{crates_api.CRATE_UPLOADS.pattern}")


def _results_store(settings: GatewaySettings) -> ObjectStore | None:
    store = settings.results
    if not store.endpoint_url and not store.access_key:
        return None
    return ObjectStore.from_settings(store)


def _deliverer(
    settings: GatewaySettings, db: Database, store: ObjectStore | None
) -> deliveries.Deliverer | None:
    folder = settings.file_output_root
    if folder is not None and not (folder.is_absolute() and folder.is_dir() and os.access(folder, os.W_OK)):
        raise ConfigurationError(
            f"FIVESAFES_FILE_OUTPUT_ROOT={folder} must be an absolute path to a folder "
            "this gateway can write "
            "(create it, or unset the setting to refuse file:// outputs)"
        )
    where = deliveries.Destinations(frozenset(settings.delivery_buckets), str(folder) if folder else None)
    if store is None or not where:
        return None
    schedule = deliveries.Schedule(
        attempts=settings.delivery_attempts,
        retry_s=settings.delivery_retry_s,
        claim_s=settings.delivery_claim_s,
        retry_cap_s=settings.delivery_retry_cap_s,
        poll_s=settings.delivery_poll_s,
    )
    return deliveries.Deliverer(db, store, where, schedule)


def dev_issuer_url(settings: GatewaySettings) -> str:
    return settings.public_url.rstrip("/") + "/dev-issuer"


def service_info(settings: GatewaySettings) -> ServiceInfo:
    return ServiceInfo(
        id=settings.service_id,
        name=settings.service_name,
        type=ServiceType(),
        description="GA4GH TES 1.1 gateway to federated Trusted Research Environments under the Five Safes.",
        organization=Organization(name=settings.organization_name, url=settings.organization_url),
        environment=settings.environment,
        version=__version__,
        storage=list(settings.storage),
        tesResources_backend_parameters=list(settings.backend_parameters),
    )


def create_app(settings: GatewaySettings | None = None, *, db: Database | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    validator, issuer = _validator(settings)
    db = db or Database(settings.effective_database_url)
    policy = SubmissionPolicy(
        supported_backend_parameters=frozenset(settings.backend_parameters),
        max_content_bytes=settings.max_content_bytes,
        allowed_images=tuple(settings.allowed_images),
        caps=settings.task_caps,
        file_output_root=str(settings.file_output_root) if settings.file_output_root else None,
    )
    results_store = _results_store(settings)
    ctx = GatewayContext(
        settings=settings,
        db=db,
        validator=validator,
        service_info=service_info(settings),
        policy=policy,
        metrics=ops.Metrics(),
        dev_issuer=issuer,
        results_store=results_store,
        deliverer=_deliverer(settings, db, results_store),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Deliveries that fell due: retries, and those owed by a gateway that died before making them.
        loop = deliveries.DeliveryLoop(ctx.deliverer) if ctx.deliverer is not None else None
        if loop is not None:
            loop.start()
            ctx.deliveries = loop
        try:
            yield
        finally:
            if loop is not None:
                ctx.deliveries = None
                await asyncio.to_thread(loop.stop)

    app = FastAPI(
        lifespan=lifespan,
        title="Five Safes TES",
        version=__version__,
        description="GA4GH Task Execution Service 1.1 for federated Trusted Research Environments.",
        docs_url="/docs",
        redoc_url=None,
    )
    attach(app, ctx)
    errors.install(app)
    app.add_middleware(ops.MeasureRequests, metrics=ctx.metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, streamed_paths=STREAMED_UPLOADS)
    app.add_middleware(NulFreeUrl)
    app.include_router(tes_api.router, prefix=TES_PREFIXES[0])
    for alias in TES_PREFIXES[1:]:
        app.include_router(tes_api.router, prefix=alias, include_in_schema=False)
    app.include_router(agent_api.router)
    app.include_router(results_api.router)
    app.include_router(crates_api.router)
    app.include_router(admin_api.router)
    app.include_router(ops.router)
    if issuer is not None:
        app.include_router(dev_issuer_router)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if settings.web_pages:
        site = pages.site_for(settings, validator, db)
        site.install(app)
        app.include_router(pages.router(site, db))
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, minus the 422 it adds by default: we answer invalid input with 400."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
            for parameter in operation.get("parameters", []):
                # An absent query parameter is how TES says "no filter"; there is no null in a URL.
                options = parameter.get("schema", {}).get("anyOf")
                if options and {"type": "null"} in options and len(options) == 2:
                    parameter["schema"] = {
                        **next(o for o in options if o != {"type": "null"}),
                        **{k: v for k, v in parameter["schema"].items() if k != "anyOf"},
                    }
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    _publish_caps(schema["components"]["schemas"], app_context(app).policy.caps)
    _publish_nul_free(schema["paths"])
    _publish_nul_free(schema["components"]["schemas"])
    app.openapi_schema = schema
    return schema


def _publish_caps(schemas: dict[str, Any], caps: TaskCaps) -> None:
    """This gateway's per-task caps in the document clients read, so they can know them before sending."""
    limits = {
        ("TaskRequest", "executors"): ("maxItems", caps.executors),
        ("TaskRequest", "inputs"): ("maxItems", caps.inputs),
        ("TaskRequest", "outputs"): ("maxItems", caps.outputs),
        ("TaskRequest", "volumes"): ("maxItems", caps.volumes),
        ("TaskRequest", "tags"): ("maxProperties", caps.tags),
        ("ExecutorRequest", "env"): ("maxProperties", caps.env_vars),
    }
    for (model, name), (keyword, cap) in limits.items():
        field = schemas[model]["properties"][name]
        for option in field.get("anyOf", [field]):
            if option.get("type") in ("array", "object"):
                option[keyword] = cap


def _publish_nul_free(node: Any) -> None:
    """No string the gateway accepts may hold a NUL character (NulFree bodies, NulFreeUrl): say so on
    every string and map key that has no pattern of its own, so clients and fuzzers know."""
    if isinstance(node, dict):
        if node.get("type") == "string" and not {"pattern", "enum", "format", "const"} & node.keys():
            node["pattern"] = NUL_FREE
        if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            node.setdefault("propertyNames", {}).setdefault("pattern", NUL_FREE)
        for child in node.values():
            _publish_nul_free(child)
    elif isinstance(node, list):
        for child in node:
            _publish_nul_free(child)
