"""The load generator, in its own process: httpx (async) with N concurrent workers over keep-alive.

Reads a JSON spec on stdin, writes JSON lines on stdout: ``progress`` events, ``measure_start``
just before the timed requests, and one ``result`` at the end. Every request must answer 2xx.

Spec: {"base_url", "headers", "concurrency", "warmup", "requests",
       "max_seconds"?, "min_requests"?, "warmup_max_seconds"?,   # time caps for slow cases
       "raw"?,                                                   # also return every latency
       "items": [{"method", "path", "json"?}, ...]}   # items are cycled through in order
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

import httpx


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summarise(latencies_s: list[float], elapsed_s: float) -> dict[str, float]:
    ms = sorted(v * 1000 for v in latencies_s)
    return {
        "requests": len(ms),
        "elapsed_s": elapsed_s,
        "throughput_rps": len(ms) / elapsed_s if elapsed_s else float("nan"),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
    }


class Failure(Exception):
    pass


async def drive(
    client: httpx.AsyncClient,
    items: list[dict[str, Any]],
    count: int,
    concurrency: int,
    phase: str,
    max_seconds: float | None = None,
    min_count: int = 1,
) -> list[float]:
    """Send ``count`` requests (stopping early after ``max_seconds``, but not before ``min_count``)."""
    latencies: list[float] = []
    sent = 0
    last_report = 0.0
    deadline = time.perf_counter() + max_seconds if max_seconds else None

    def more() -> bool:
        if sent >= count:
            return False
        return deadline is None or sent < min_count or time.perf_counter() < deadline

    async def worker() -> None:
        nonlocal sent, last_report
        while more():
            item = items[sent % len(items)]
            sent += 1
            started = time.perf_counter()
            response = await client.request(item["method"], item["path"], content=item.get("content"))
            latencies.append(time.perf_counter() - started)
            if not response.is_success:
                raise Failure(
                    f"{item['method']} {item['path']} answered {response.status_code}: {response.text[:300]}"
                )
            now = time.perf_counter()
            if now - last_report >= 0.1 or len(latencies) == count:
                last_report = now
                emit("progress", phase=phase, done=len(latencies), total=count)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    items = []
    for item in spec["items"]:
        content = json.dumps(item["json"]).encode() if "json" in item else None
        items.append({"method": item["method"], "path": item["path"], "content": content})
    headers = {"content-type": "application/json", **spec.get("headers", {})}
    concurrency = spec["concurrency"]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=spec["base_url"], headers=headers, limits=limits, timeout=120
    ) as client:
        if spec["warmup"]:
            await drive(client, items, spec["warmup"], concurrency, "warmup", spec.get("warmup_max_seconds"))
        emit("measure_start")
        cpu_started = time.process_time()
        started = time.perf_counter()
        latencies = await drive(
            client,
            items,
            spec["requests"],
            concurrency,
            "measure",
            spec.get("max_seconds"),
            spec.get("min_requests", 1),
        )
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_started
    return {
        **summarise(latencies, elapsed),
        "concurrency": concurrency,
        "client_cpu_s": client_cpu,
        "planned_requests": spec["requests"],
        "capped": len(latencies) < spec["requests"],
        **({"latencies_s": latencies} if spec.get("raw") else {}),
    }


def main() -> None:
    spec = json.load(sys.stdin)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        result = runner(run(spec))
    except (Failure, httpx.HTTPError) as exc:
        emit("error", message=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None
    emit("result", **result)


if __name__ == "__main__":
    main()
