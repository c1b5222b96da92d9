"""Targets, the rich table, the raw JSON and docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.common import DOCS, RESULTS, ROOT

END_MARK = (
    "<!-- bench:end — everything above is rewritten by `make bench`; notes below this line are kept -->"
)
CREATE_RATIO = 0.5  # create throughput >= 50% of the ceiling's
LIST_RATIO = 2.0  # list p50 at the large size within 2x of the small size
GET_P50_MS = 5.0  # GET /tasks/{id} MINIMAL p50 under 5 ms


def machine(started_at: datetime, load_at_start: str) -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "ram_gib": round(ram_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "load_average_at_start": load_at_start,
    }


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "fivesafes_tes"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes to fivesafes_tes/)" if dirty else "")


def _n(value: int) -> str:
    exponent = len(str(value)) - 1
    return f"10^{exponent}" if value == 10**exponent else f"{value:,}"


def _case(r: dict[str, Any]) -> str:
    """ "10^6 of 1,251,000": the user's tasks, of all tasks stored."""
    return f"{_n(r['user_tasks'])} of {r['all_tasks']:,}"


def _count(r: dict[str, Any]) -> str:
    return f"{r['requests']} (capped at {r['elapsed_s']:.0f} s)" if r.get("capped") else str(r["requests"])


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    by_app = {(r["backend"], r["app"]): r for r in results["create"]}
    for backend in dict.fromkeys(r["backend"] for r in results["create"]):
        gateway, ceiling = by_app.get((backend, "gateway")), by_app.get((backend, "ceiling"))
        if gateway and ceiling:
            ratio = gateway["throughput_rps"] / ceiling["throughput_rps"]
            out.append(
                {
                    "target": "create throughput vs bare insert (16 clients)",
                    "backend": backend,
                    "figure": f"{gateway['throughput_rps']:.0f} vs {ceiling['throughput_rps']:.0f} req/s = {ratio:.0%}",
                    "goal": f">= {CREATE_RATIO:.0%} of ceiling",
                    "value": ratio,
                    "pass": ratio >= CREATE_RATIO,
                }
            )
    index = {(r["backend"], r["case"], r["view"], r["page"]): r for r in results["list"]}
    for (backend, case, view, page), row in index.items():
        base = index.get((backend, "small", view, page))
        if case == "small" or base is None:
            continue
        ratio = row["p50_ms"] / base["p50_ms"]
        out.append({
            "target": f"GET /tasks {view}, {page} page: p50 at {_case(row)} vs {_case(base)}",
            "backend": backend,
            "figure": f"{row['p50_ms']:.1f} vs {base['p50_ms']:.1f} ms = {ratio:.2f}x",
            "goal": f"<= {LIST_RATIO:g}x", "value": ratio, "pass": ratio <= LIST_RATIO,
        })  # fmt: skip
    for r in results["get"]:
        out.append(
            {
                "target": f"GET /tasks/{{id}} MINIMAL p50, {_case(r)}",
                "backend": r["backend"],
                "figure": f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms",
                "goal": f"p50 < {GET_P50_MS:g} ms",
                "value": r["p50_ms"],
                "pass": r["p50_ms"] < GET_P50_MS,
            }
        )
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(results: dict[str, Any]) -> Table:
    t = Table(title="Benchmark targets", title_justify="left")
    for name in ("Target", "Database", "Figure", "Goal", "Result"):
        t.add_column(name)
    for r in results["targets"]:
        verdict = "[green]PASS" if r["pass"] else "[red]MISS"
        t.add_row(r["target"], r["backend"], r["figure"], r["goal"], verdict)
    return t


def write_json(results: dict[str, Any]) -> list[Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = results["machine"]["date"].replace(" ", "T").replace(":", "").replace("TUTC", "Z")
    paths = [RESULTS / f"bench-{stamp}.json", RESULTS / "latest.json"]
    for path in paths:
        path.write_text(json.dumps(results, indent=2) + "\n")
    return paths


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def markdown(results: dict[str, Any]) -> str:
    m, cfg = results["machine"], results["config"]
    dbs = "; ".join(results["databases"].values())
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (the `bench/` package, `python -m bench`); raw figures in",
        "`bench/results/latest.json` (git-ignored). Every figure was measured in the one run described here.",
        "",
        "## Machine",
        "",
        *_table(
            ["", ""],
            [
                ["CPUs (`nproc`)", m["nproc"]],
                ["CPU model", m["cpu_model"]],
                ["RAM", f"{m['ram_gib']} GiB"],
                ["Python", m["python"]],
                ["Date", m["date"]],
                ["Database", dbs],
                ["Commit", m["commit"]],
                ["Load average at start (1, 5, 15 min)", m["load_average_at_start"]],
                ["Whole run", f"{results['duration_s']:.0f} s"],
            ],
        ),
        "## Targets",
        "",
        *_table(
            ["Target", "Database", "Figure", "Goal", "Result"],
            [
                [r["target"], r["backend"], r["figure"], r["goal"], f"**{_verdict(r['pass'])}**"]
                for r in results["targets"]
            ],
        ),
    ]
    if results["create"]:
        lines += [
            f"## Create: POST /tasks, {cfg['concurrency']} concurrent clients",
            "",
            (
                f"{cfg['create_requests']} timed requests per app after {cfg['create_warmup']} untimed ones, in "
                f"{cfg['rounds']} alternating rounds with both servers up on one fresh database (so drifting load "
                "on the machine hits both alike). "
                "*Ceiling* is a bare FastAPI route (`bench/ceiling.py`) inserting the same rows (the `tasks` row "
                "with its project, its `task_tags`, one `task_children` row per TRE) through the same `Database`; "
                "*gateway* is `create_app()` with a dev-issuer bearer token (token validation, request model, "
                "policy, project and TRE lookup, ORM, audit record)."
            ),
            "",
            *_table(
                [
                    "Database",
                    "App",
                    "req/s",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "server CPU",
                    "server CPU ms/req",
                    "client CPU",
                ],
                [
                    [
                        r["backend"],
                        r["app"],
                        f"{r['throughput_rps']:.0f}",
                        f"{r['p50_ms']:.1f}",
                        f"{r['p90_ms']:.1f}",
                        f"{r['p99_ms']:.1f}",
                        f"{r['server_cpu_pct']:.0f}%",
                        f"{r['server_cpu_ms_per_request']:.2f}",
                        f"{100 * r['client_cpu_s'] / r['elapsed_s']:.0f}%",
                    ]
                    for r in results["create"]
                ],
            ),
        ]
    if results["list"]:
        lines += [
            "## List: GET /tasks, default page_size (256)",
            "",
            (
                f"One client, one request at a time: {cfg['list_requests']} timed after {cfg['list_warmup']} untimed, "
                "per case. *Deep* is the page whose `page_token` points halfway down the user's tasks. Each user "
                "works in a project of their own; the requesting user's tasks are shuffled in time with other "
                "users' (a quarter as many again), and the large database also holds a sparse user with 10^3 "
                "tasks among all of those. Every task has two tags and two children (one per TRE)."
            ),
            "",
            *_table(
                [
                    "Database",
                    "User's tasks of all",
                    "View",
                    "Page",
                    "Timed requests",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "server CPU ms/req",
                ],
                [
                    [
                        r["backend"],
                        _case(r),
                        r["view"],
                        r["page"],
                        _count(r),
                        f"{r['p50_ms']:.1f}",
                        f"{r['p90_ms']:.1f}",
                        f"{r['p99_ms']:.1f}",
                        f"{r['server_cpu_ms_per_request']:.2f}",
                    ]
                    for r in results["list"]
                ],
            ),
        ]
    if results["get"]:
        lines += [
            "## Get: GET /tasks/{id}?view=MINIMAL",
            "",
            (
                f"One client over HTTP on loopback, {cfg['get_requests']} timed requests after {cfg['get_warmup']} "
                "untimed, each for a random task of the user."
            ),
            "",
            *_table(
                [
                    "Database",
                    "User's tasks of all",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "req/s",
                    "server CPU ms/req",
                ],
                [
                    [
                        r["backend"],
                        _case(r),
                        f"{r['p50_ms']:.2f}",
                        f"{r['p90_ms']:.2f}",
                        f"{r['p99_ms']:.2f}",
                        f"{r['throughput_rps']:.0f}",
                        f"{r['server_cpu_ms_per_request']:.2f}",
                    ]
                    for r in results["get"]
                ],
            ),
        ]
    if results["datasets"]:
        lines += [
            "## Datasets",
            "",
            *_table(
                ["Database", "All tasks", "Tasks per user", "Loaded", "File"],
                [
                    [
                        d["backend"],
                        f"{d['all_tasks']:,}",
                        ", ".join(f"{u} {n:,}" for u, n in d["users"].items()),
                        "from cache" if d["cached"] else f"{d['load_s']:.1f} s",
                        f"{d['file_bytes'] / 2**20:,.0f} MiB" if d["file_bytes"] else "—",
                    ]
                    for d in results["datasets"]
                ],
            ),
        ]
    lines += [
        "## Method",
        "",
        (
            "- Server under test: its own process, uvicorn with one worker, the same uvicorn settings for gateway "
            "and ceiling (uvloop + httptools, access log off), on 127.0.0.1. `bench/server.py`."
        ),
        (
            "- Load generator: another process, `httpx.AsyncClient` with keep-alive; latency is measured per request "
            "in the client, from send to the last byte of the response. `bench/loadgen.py`."
        ),
        (
            "- Each create run starts on a freshly created, migrated database (a new SQLite file; a new PostgreSQL "
            "database). The 10^6 database is bulk-loaded with SQL (SQLite `executemany`, PostgreSQL `COPY`) with "
            "the columns CreateTask writes, UUIDv7 ids and two tags per task, and cached under `bench/results/` "
            "(PostgreSQL: as a database on the server) keyed by the migration files; it is rebuilt when missing."
        ),
        (
            "- Server CPU is the server process's user + system time over the timed requests (from /proc); with "
            f"{m['nproc']} CPUs shared by client, server and database, a server below ~100% is waiting on something."
        ),
        "- Percentiles are nearest-rank over the timed requests.",
        "",
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


def write_markdown(results: dict[str, Any]) -> None:
    kept = ""
    if DOCS.exists():
        previous = DOCS.read_text()
        if END_MARK in previous:
            kept = previous.split(END_MARK, 1)[1].lstrip("\n")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(markdown(results) + ("\n" + kept if kept else ""))
