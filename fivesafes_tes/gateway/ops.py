"""Operational routes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fivesafes_tes.gateway.context import context
from fivesafes_tes.gateway.security import metrics_reader

router = APIRouter(tags=["Operations"])


class Metrics:
    """Per-app registry, so several apps in one process (tests, the dev stack) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fivesafes_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fivesafes_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.tasks_created = Counter("fivesafes_tasks_created_total", "Tasks created", registry=self.registry)


class MeasureRequests:
    """Pure ASGI middleware counting requests and timing them per route template.

    Labels use the matched route's template, not the raw path, so task ids never become
    label values.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz(request: Request, response: Response) -> dict[str, str]:
    try:
        with context(request).db.read() as session:
            session.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001  any failure means not ready
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return {"status": "unavailable", "database": "unreachable"}
    return {"status": "ok", "database": "ok"}


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_reader)])
def metrics(request: Request) -> Response:
    return Response(generate_latest(context(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
