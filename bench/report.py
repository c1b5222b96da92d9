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
from bench.federation import E2E_COMMAND, E2E_STAGES, POLL_S, STUCK_S
from bench.loadgen import percentile
from fivesafes_tes.devimages import BUSYBOX_IMAGE

END_MARK = (
    "<!-- bench:end — everything above is rewritten by `make bench`; notes below this line are kept -->"
)
CREATE_RATIO = 0.5  # create throughput >= 50% of the ceiling's
LIST_RATIO = 2.0  # list p50 at the large size within 2x of the small size
GET_P50_MS = 5.0  # GET /tasks/{id} MINIMAL p50 under 5 ms
E2E_GAP_S = 1.0  # submit → outputs held at most 1 s more than a bare `docker run`
PICKUP_S = 1.0  # an idle agent picks up new work within 1 s
BASELINE = Path(__file__).resolve().parent / "baseline-7f9af53.json"
BEFORE = "before (commit 7f9af53-era code)"


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
    """HEAD, marked when fivesafes_tes/ has uncommitted changes; for a run from an exported tree (no .git),
    what $FIVESAFES_BENCH_COMMIT says it is."""
    if os.environ.get("FIVESAFES_BENCH_COMMIT"):
        return os.environ["FIVESAFES_BENCH_COMMIT"]
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
    e2e = results.get("e2e")
    if e2e:
        sm = e2e["summary"]
        out.append({
            "target": f"submit → outputs held (`awaiting_review`), `{E2E_COMMAND}`, 1 TRE: p50 over {sm['runs']} "
                      "vs bare `docker run` p50",
            "backend": "sqlite (devstack)",
            "figure": f"{sm['e2e_p50_s']:.2f} s (p90 {sm['e2e_p90_s']:.2f}) vs {sm['bare_p50_s']:.2f} s "
                      f"({sm['bare_reference'].upper()}) = {sm['gap_s']:+.2f} s",
            "goal": f"<= +{E2E_GAP_S:g} s", "value": sm["gap_s"], "pass": sm["gap_s"] <= E2E_GAP_S,
        })  # fmt: skip
    for r in results.get("fanout") or []:
        runs = len(r["runs"])
        stuck = r.get("stuck", 0)
        figure = (
            f"p50 {r['p50_s']:.2f} s, p90 {r['p90_s']:.2f} s" if r.get("reached", runs) else "never RUNNING"
        )
        if stuck:
            example = r["stuck_examples"][0]
            figure += f"; {stuck} of {runs} runs stuck at {example['state']} with every child `running`"
        out.append({
            "target": f"one task to {r['tres']} simulated TREs: submit → parent RUNNING, p50 over {runs}",
            "backend": r["backend"],
            "figure": figure,
            "goal": "reaches RUNNING once every child runs (no time target set)", "value": r["p50_s"],
            "pass": stuck == 0,
        })  # fmt: skip
    for r in results.get("idle") or []:
        out.append({
            "target": f"idle agent ({r['config']} settings): submit → child `leased`, {len(r['pickups'])} pick-ups",
            "backend": "sqlite (devstack)",
            "figure": f"p50 {r['pickup_p50_s'] * 1000:.0f} ms, max {r['pickup_max_s'] * 1000:.0f} ms",
            "goal": f"every pick-up < {PICKUP_S:g} s", "value": r["pickup_max_s"], "pass": r["pickup_max_s"] < PICKUP_S,
        })  # fmt: skip
        out.append({
            "target": f"idle agent ({r['config']} settings): cost of one idle minute",
            "backend": "sqlite (devstack)",
            "figure": f"{r['requests_per_min_total']:.1f} requests/min, {r['agent_cpu_s_per_min']:.2f} CPU s/min",
            "goal": "none set (reported)", "value": r["requests_per_min_total"], "pass": None,
        })  # fmt: skip
    return out


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else "PASS" if ok else "MISS"


def table(results: dict[str, Any]) -> Table:
    t = Table(title="Benchmark targets", title_justify="left")
    for name in ("Target", "Database", "Figure", "Goal", "Result"):
        t.add_column(name)
    for r in results["targets"]:
        verdict = "—" if r["pass"] is None else "[green]PASS" if r["pass"] else "[red]MISS"
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


def baseline() -> dict[str, Any] | None:
    """The figures this run is compared with (see BASELINE)."""
    return json.loads(BASELINE.read_text()) if BASELINE.exists() else None


def _load_during(m: dict[str, Any]) -> str:
    during = m.get("load_during") or {}
    return "; ".join(f"{part} {v['mean']:.1f} (max {v['max']:.1f})" for part, v in during.items()) or "—"


def _ms(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    m, cfg = results["machine"], results["config"]
    before = baseline()
    bm = before["machine"] if before else {}
    dbs = "; ".join(results["databases"].values())
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (the `bench/` package, `python -m bench`); raw figures in",
        "`bench/results/latest.json` (git-ignored). *After* is the run described here; *before* is the run",
        f"kept in `bench/{BASELINE.name}`, made on the same machine with the same bench against the gateway",
        "as it was before the create and list fixes (ORM create with the lookups inside the write transaction;",
        "one OR-scoped list query). Both runs shared the machine with other sessions' work: see the load rows.",
        "",
        "## Machine",
        "",
        *_table(
            ["", "after (this run)", BEFORE],
            [
                ["CPUs (`nproc`)", m["nproc"], bm.get("nproc", "—")],
                ["CPU model", m["cpu_model"], bm.get("cpu_model", "—")],
                ["RAM", f"{m['ram_gib']} GiB", f"{bm['ram_gib']} GiB" if bm else "—"],
                ["Python", m["python"], bm.get("python", "—")],
                ["Date", m["date"], bm.get("date", "—")],
                ["Database", dbs, "; ".join(before["databases"].values()) if before else "—"],
                ["Commit", m["commit"], bm.get("commit", "—")],
                [
                    "Load average at start (1, 5, 15 min)",
                    m["load_average_at_start"],
                    bm.get("load_average_at_start", "—"),
                ],
                [
                    "1-min load average during each part: mean (max)",
                    _load_during(m),
                    "not recorded (2.4–3.6 seen)",
                ],
                [
                    "Whole run",
                    f"{results['duration_s']:.0f} s",
                    f"{before['duration_s']:.0f} s" if before else "—",
                ],
            ],
        ),
        "## Targets",
        "",
        *_table(
            ["Target", "Database", "Goal", BEFORE, "After", "Result"],
            [
                [
                    r["target"],
                    r["backend"],
                    r["goal"],
                    _before_target(before, r),
                    r["figure"],
                    f"**{_verdict(r['pass'])}**",
                ]
                for r in results["targets"]
            ],
        ),
    ]
    if results["create"]:
        old = {(r["backend"], r["app"]): r for r in (before or {}).get("create", [])}
        rows = []
        for r in results["create"]:
            for label, row in (("after", r), ("before", old.get((r["backend"], r["app"])))):
                if row is None:
                    continue
                rows.append([
                    r["backend"], r["app"], label, f"{row['throughput_rps']:.0f}", f"{row['p50_ms']:.1f}",
                    f"{row['p90_ms']:.1f}", f"{row['p99_ms']:.1f}", f"{row['server_cpu_pct']:.0f}%",
                    f"{row['server_cpu_ms_per_request']:.2f}", f"{100 * row['client_cpu_s'] / row['elapsed_s']:.0f}%",
                ])  # fmt: skip
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
                "policy, project and TRE lookup, inserts, audit record)."
            ),
            "",
            *_table(
                [
                    "Database",
                    "App",
                    "Code",
                    "req/s",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "server CPU",
                    "server CPU ms/req",
                    "client CPU",
                ],
                rows,
            ),
        ]
    if results["list"]:
        old = {(r["backend"], r["case"], r["view"], r["page"]): r for r in (before or {}).get("list", [])}
        rows = []
        for r in results["list"]:
            b = old.get((r["backend"], r["case"], r["view"], r["page"]))
            rows.append([
                r["backend"], _case(r), r["view"], r["page"], _ms(b and b["p50_ms"]), f"**{r['p50_ms']:.1f}**",
                f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}", _count(r),
                f"{_ms(b and b['server_cpu_ms_per_request'], 2)} → {r['server_cpu_ms_per_request']:.2f}",
            ])  # fmt: skip
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
                    "p50 ms before",
                    "p50 ms after",
                    "p90 ms after",
                    "p99 ms after",
                    "Timed requests after",
                    "server CPU ms/req before → after",
                ],
                rows,
            ),
        ]
    if results["get"]:
        old = {(r["backend"], r["case"]): r for r in (before or {}).get("get", [])}
        rows = []
        for r in results["get"]:
            b = old.get((r["backend"], r["case"]))
            rows.append([
                r["backend"], _case(r), _ms(b and b["p50_ms"], 2), f"**{r['p50_ms']:.2f}**", f"{r['p90_ms']:.2f}",
                f"{r['p99_ms']:.2f}", f"{r['throughput_rps']:.0f}",
                f"{_ms(b and b['server_cpu_ms_per_request'], 2)} → {r['server_cpu_ms_per_request']:.2f}",
            ])  # fmt: skip
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
                    "p50 ms before",
                    "p50 ms after",
                    "p90 ms after",
                    "p99 ms after",
                    "req/s after",
                    "server CPU ms/req before → after",
                ],
                rows,
            ),
        ]
    lines += _e2e_section(results, cfg)
    lines += _fanout_section(results, cfg)
    lines += _idle_section(results, cfg)
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
            "and ceiling (uvloop + httptools, access log off), on 127.0.0.1. `bench/server.py`. The federation "
            "benchmarks run the devstack (`fivesafes_tes.devstack.start`) in its own process too "
            "(`bench/stack.py`), and the polling client in the bench's process."
        ),
        (
            "- Load generator: another process, `httpx.AsyncClient` with keep-alive; latency is measured per request "
            "in the client, from send to the last byte of the response. `bench/loadgen.py`."
        ),
        (
            "- Each create run starts on a freshly created, migrated database (a new SQLite file; a new PostgreSQL "
            "database). The 10^6 database is bulk-loaded with SQL (SQLite `executemany`, PostgreSQL `COPY`) with "
            "the columns CreateTask writes, UUIDv7 ids and two tags per task, and cached under `bench/results/` "
            "(PostgreSQL: as a database on the server) keyed by the newest migration revision and a digest of all "
            "migration files; it is rebuilt when missing or when a migration changes."
        ),
        (
            "- Server CPU is the server process's user + system time over the timed requests (from /proc); with "
            f"{m['nproc']} CPUs shared by client, server and database, a server below ~100% is waiting on something."
        ),
        "- Percentiles are nearest-rank over the timed requests (or runs).",
        (
            "- End to end, fan-out and pick-up are timed by a client that polls the task every ~20 ms "
            f"({int(POLL_S * 1000)} ms between request starts), so each figure carries up to one poll interval "
            "plus one GET of lag; the gateway's audit log (`at` of `task.create`, `child.lease`, `child.stage`) "
            "gives the same moments without that lag."
        ),
        (
            '- The e2e and idle-agent parts need a Docker engine (`eval "$(scripts/services.sh --with-docker)"`); '
            "without one they are skipped with a message."
        ),
        "",
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


def _before_target(before: dict[str, Any] | None, r: dict[str, Any]) -> str:
    for old in (before or {}).get("targets", []):
        if old["target"] == r["target"] and old["backend"] == r["backend"]:
            return f"{old['figure']} ({_verdict(old['pass'])})"
    return "— (new)" if before else "—"


def _e2e_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    e2e = results.get("e2e")
    if not e2e:
        return []
    sm = e2e["summary"]
    c = sm["container"]
    steps = [
        [f"{s['from']} → {s['to']}", f"{s['p50_s'] * 1000:.0f}", f"{s['p90_s'] * 1000:.0f}"]
        for s in sm["steps"]
    ]
    seen = {}
    for run in e2e["runs"]:
        for stage, at in run["seen"].items():
            seen.setdefault(stage, []).append(at)
    order = {stage: n for n, stage in enumerate(E2E_STAGES)}
    polled = [
        [stage, f"{percentile(sorted(v), 50) * 1000:.0f}", len(v)]
        for stage, v in sorted(seen.items(), key=lambda kv: order.get(kv[0], len(order)))
    ]
    return [
        "## End to end: submit until the outputs are held",
        "",
        (
            f'`devstack.start(dir, agents=True, executor="docker")` in its own process: gateway (SQLite), moto S3 '
            "and the devstack's two agents (poll 10 s, heartbeat 5 s, sync 5 s, tick 0.2 s, reporting granularity "
            f"{cfg.get('e2e_granularity_s', 5.0):g} s: a TRE's granularity G holds each stage change after the run "
            "starts back to the next multiple of G, by design, so a deployment adds up to G). The task is "
            f"`{E2E_COMMAND}` in `{BUSYBOX_IMAGE}` with tag `tres=uk-tre`, so one child in one TRE. "
            f"{sm['runs']} timed runs after {cfg['e2e_warmup']} untimed; each is canceled once held (the agent "
            f"discards it) and the next starts {cfg['e2e_pause']:g} s later. The client polls the BASIC view, "
            "whose `logs[].metadata.stage` is the child's stage, until it reads `awaiting_review`. "
            f"The bare run is `docker run --rm --network none {BUSYBOX_IMAGE} sh -c 'echo hi > /tmp/x'` "
            f"{len(e2e['bare']['sdk'])} times each through the Docker SDK (`containers.run(..., remove=True)`) "
            "and the CLI, on the same engine; the target compares with the faster of the two."
        ),
        "",
        *_table(
            ["", "p50", "p90", "max"],
            [
                [
                    "submit → `awaiting_review` seen (client)",
                    f"{sm['e2e_p50_s']:.3f} s",
                    f"{sm['e2e_p90_s']:.3f} s",
                    f"{sm['e2e_max_s']:.3f} s",
                ],
                [
                    "bare `docker run --rm`, SDK",
                    f"{sm['bare_p50']['sdk']:.3f} s",
                    f"{sm['bare_p90']['sdk']:.3f} s",
                    "",
                ],
                [
                    "bare `docker run --rm`, CLI",
                    f"{sm['bare_p50']['cli']:.3f} s",
                    f"{sm['bare_p90']['cli']:.3f} s",
                    "",
                ],
                [
                    "gap (p50 − bare p50, " + sm["bare_reference"].upper() + ")",
                    f"{sm['gap_s']:+.3f} s",
                    "",
                    "",
                ],
            ],
        ),
        "Where the time goes: each step's duration per run, from the gateway's audit log (the moment each stage",
        "was recorded), the first from the client's send time; percentiles of each step over the runs.",
        "",
        *_table(["Step", "p50 ms", "p90 ms"], steps),
        *(
            [
                "The container itself, as the engine stamped it (StartedAt/FinishedAt, kept by the agent):",
                "",
                *_table(
                    ["", "p50 ms"],
                    [
                        [
                            "`staging` recorded → container started",
                            f"{c['staging_to_started_p50_s'] * 1000:.0f}",
                        ],
                        [
                            "`running` recorded → container started",
                            f"{c['running_to_started_p50_s'] * 1000:.0f}",
                        ],
                        ["container started → exited", f"{c['run_p50_s'] * 1000:.0f}"],
                        [
                            "container exited → `checking` recorded",
                            f"{c['exited_to_checking_p50_s'] * 1000:.0f}",
                        ],
                    ],
                ),
            ]
            if c
            else []
        ),
        "When the polling client first saw each stage (p50 over the runs that saw it; fast stages are often missed):",
        "",
        *_table(["Stage", "first seen p50 ms after submit", "runs that saw it"], polled),
        (
            f"Gateway + agents + S3 process CPU over all {sm['runs'] + cfg['e2e_warmup']} runs: "
            f"{e2e['stack_cpu_s']:.1f} s ({e2e['stack_cpu_s'] / (sm['runs'] + cfg['e2e_warmup']):.2f} s per run, "
            "including the cancel)."
        ),
        "",
    ]


def _fanout_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = results.get("fanout") or []
    if not rows:
        return []
    header = [
        "Database", "TREs", "runs RUNNING / stuck", "RUNNING seen p50", "p90", "max", "first leased p50",
        "all leased p50", "last running accepted p50", "gateway CPU per run",
    ]  # fmt: skip
    table = [
        [
            r["backend"],
            r["tres"],
            f"{r.get('reached', len(r['runs']))} / {r.get('stuck', 0)}",
            f"**{r['p50_s']:.3f} s**",
            f"{r['p90_s']:.3f} s",
            f"{r['max_s']:.3f} s",
            f"{r['first_leased_p50_s']:.3f} s",
            f"{r['last_leased_p50_s']:.3f} s",
            f"{r['last_running_p50_s']:.3f} s",
            f"{r['server_cpu_s_per_run']:.2f} s",
        ]
        for r in rows
    ]
    stuck = [
        f"- {r['backend']}: {r['stuck']} of {len(r['runs'])} runs stuck; e.g. task `{x['task_id']}`: parent "
        f"{x['state']}, children {x['children']}"
        for r in rows
        for x in r.get("stuck_examples", [])[:1]
    ]
    return [
        "## Fan-out: one task to many TREs, until RUNNING",
        "",
        (
            f"{rows[0]['tres']} TREs and a project on all of them, registered with `submission.federation`; the "
            "gateway (`bench/server.py`) on a fresh database. "
            f"{rows[0]['tres']} simulated agents (`bench/simagents.py`, one thread each in one process, each with "
            "its own `GatewayClient` and agent token) long-poll for leases and, per child granted, post `staging` "
            "then `running` at once. The client submits one task and polls the MINIMAL view until the parent is "
            f"RUNNING (every child at least `running`). {cfg['fanout_runs']} timed runs after "
            f"{cfg['fanout_warmup']} untimed per database; after each the task is canceled and every agent "
            "acknowledges. *All leased* and *last running* are the agents' own clocks: when the last lease answer "
            "came back and when the last `running` event was accepted. A run whose parent does not show RUNNING "
            f"within {STUCK_S:g} s although every child reads `running` (BASIC view) counts as *stuck* and is "
            "left out of the percentiles."
        ),
        "",
        *_table(header, table),
        *([*stuck, ""] if stuck else []),
    ]


def _idle_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = results.get("idle") or []
    if not rows:
        return []
    routes = sorted({k for r in rows for k in r["requests_per_min"]})
    return [
        "## Idle agent: what it costs, and how soon it picks up work",
        "",
        (
            "A real agent process (`python -m fivesafes_tes.cli agent`, Docker executor, configured as "
            "`tests/test_tre_e2e.py::_agent_env` does) against a devstack gateway (gateway only, plus S3) in its "
            "own process. Two at once, each with its own gateway so that each gateway's `/metrics` "
            "(`fivesafes_http_requests_total` by route) counts one agent: one with the devstack's agent settings, "
            "one with the agent's defaults. Both are left alone "
            f"{rows[0]['window_s']:.0f} s after start-up; agent CPU is its process's utime + stime from "
            "/proc/<pid>/stat. Then, per agent, "
            f"{len(rows[0]['pickups'])} tasks are submitted 1–2 s apart (random), each timed until its child "
            "reads `leased` (client polling BASIC every ~20 ms), and canceled."
        ),
        "",
        *_table(
            ["", *[f"{r['config']} settings" for r in rows]],
            [
                [
                    "poll wait / heartbeat / sync / tick",
                    *[
                        " / ".join(
                            f"{r['settings'][k]} s"
                            for k in ("POLL_WAIT_S", "HEARTBEAT_S", "SYNC_S", "TICK_S")
                        )
                        for r in rows
                    ],
                ],
                [
                    "requests per minute, all agent routes",
                    *[f"**{r['requests_per_min_total']:.1f}**" for r in rows],
                ],
                *[
                    [f"… `{route}`", *[f"{r['requests_per_min'].get(route, 0):.1f}" for r in rows]]
                    for route in routes
                ],
                ["agent CPU s per minute", *[f"**{r['agent_cpu_s_per_min']:.3f}**" for r in rows]],
                [
                    "gateway (+ idle S3) process CPU s per minute",
                    *[f"{r['gateway_cpu_s_per_min']:.3f}" for r in rows],
                ],
                [
                    "pick-up, client-observed: p50 / max",
                    *[
                        f"**{r['pickup_p50_s'] * 1000:.0f} / {r['pickup_max_s'] * 1000:.0f} ms**"
                        for r in rows
                    ],
                ],
                [
                    "pick-up, audit `task.create` → `child.lease`: p50 / max",
                    *[
                        f"{r['pickup_audit_p50_s'] * 1000:.0f} / {r['pickup_audit_max_s'] * 1000:.0f} ms"
                        for r in rows
                    ],
                ],
            ],
        ),
    ]


def write_markdown(results: dict[str, Any]) -> None:
    kept = ""
    if DOCS.exists():
        previous = DOCS.read_text()
        if END_MARK in previous:
            kept = previous.split(END_MARK, 1)[1].lstrip("\n")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(markdown(results) + ("\n" + kept if kept else ""))
