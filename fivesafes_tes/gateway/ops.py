"""Operational routes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text
from starlette.routing import Match

from fivesafes_tes.gateway.security import metrics_reader

router = APIRouter(tags=["Operations"])


class Metrics:
    """Per-app registry, so several apps in one process (tests, the dev stack) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fivesafes_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "fivesafes_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
            registry=self.registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.tasks_created = Counter("fivesafes_tasks_created_total", "Tasks created", registry=self.registry)


def install_middleware(app: FastAPI, metrics: Metrics) -> None:
    @app.middleware("http")
    async def _measure(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        response = await call_next(request)
        route = _route_template(app, request)
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(request.method, route).observe(time.perf_counter() - started)
        return response


def _route_template(app: FastAPI, request: Request) -> str:
    # The template, not the raw path, so task ids do not explode the label set.
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match is Match.FULL:
            return getattr(route, "path", "other")
    return "unmatched"


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz(request: Request, response: Response) -> dict:
    try:
        with request.app.state.ctx.db.read() as session:
            session.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001  any failure means not ready
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return {"status": "unavailable", "database": "unreachable"}
    return {"status": "ok", "database": "ok"}


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_reader)])
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
