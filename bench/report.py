"""docs/benchmarks.md and its history, rendered from one run's results; the console's table.

Everything on the page comes from the run's JSON (and, with ``--before``, an earlier run's JSON),
so the page can be rebuilt from the JSON alone and nothing on it is written by hand. Targets and
verdicts come from ``bench/targets.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from bench import targets
from bench.federation import E2E_COMMAND, E2E_STAGES, POLL_S, STUCK_S
from bench.loadgen import percentile
from fivesafes_tes.devimages import BUSYBOX_IMAGE

OLD_LOG = "history-to-2026-12-05.md"
TITLES = {
    "create": "Create: POST /tasks against a bare insert",
    "list": "List: GET /tasks at 10^3 and 10^6 tasks",
    "get": "Get: GET /tasks/{id}?view=MINIMAL",
    "e2e": "End to end: submit until the outputs are held, against a bare `docker run`",
    "fanout": "Fan-out: one task to many TREs, until RUNNING",
    "idle": "Idle agent: what it costs, and how soon it picks up work",
    "checks": "Disclosure rules: throughput and memory against a plain read",
    "crates": "Crate intake: verifying a BagIt zip against `sha512sum`, and refusing hostile ones",
    "kubernetes": "Kubernetes executor: lease to Job, and many children on one agent",
    "pages": "Output checkers' pages: the review queue, and a large CSV's review page",
}


# --- where a run goes ------------------------------------------------------------------------


def history_stem(results: dict[str, Any]) -> str:
    """``2026-12-06-1840-4382947a1``: the run's start (UTC) and commit, ``-dirty`` when the tree was."""
    run = results["run"]
    stamp = run["started_at"][:16].replace("T", "-").replace(":", "")
    return f"{stamp}-{run['commit']}{'-dirty' if run.get('dirty') else ''}"


def write(
    results: dict[str, Any], page_path: Path, history: Path, before: dict[str, Any] | None
) -> list[Path]:
    """The page at ``page_path``, and the run's page and JSON under ``history`` named by date and
    commit; returns the paths written."""
    stem = history_stem(results)
    history.mkdir(parents=True, exist_ok=True)
    page_path.parent.mkdir(parents=True, exist_ok=True)
    dated_json = history / f"{stem}.json"
    dated_json.write_text(json.dumps(results, indent=1) + "\n")
    old_log = (history / OLD_LOG).exists()
    page = render(results, before, history=_relative(history, page_path.parent), stem=stem, old_log=old_log)
    dated_page = history / f"{stem}.md"
    dated_page.write_text(render(results, before, history=".", stem=stem, old_log=old_log))
    page_path.write_text(page)
    return [page_path, dated_page, dated_json]


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.relative_to(start))
    except ValueError:
        return str(path)


def load(path: Path) -> dict[str, Any]:
    """An earlier run's JSON, for ``--before``; ValueError or TypeError says what is wrong with it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the earlier run {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TypeError(f"{path} is not a bench run's JSON (not an object)")
    return data


# --- the console -----------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else "PASS" if ok else "MISS"


def table(results: dict[str, Any]) -> Table:
    t = Table(title="Benchmark targets", title_justify="left")
    for name in ("Target", "Database", "Measured", "Goal", "Result"):
        t.add_column(name)
    for r in targets.judge(results):
        shown = "—" if r["pass"] is None else "[green]PASS" if r["pass"] else "[red]MISS"
        t.add_row(r["target"], r["backend"], r["figure"], r["goal"], shown)
    return t


# --- the page --------------------------------------------------------------------------------


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def _load_during(run: dict[str, Any]) -> str:
    during = run.get("load_during") or {}
    return "; ".join(f"{part} {v['mean']:.1f} (max {v['max']:.1f})" for part, v in during.items()) or "—"


def summary(verdicts: list[dict[str, Any]]) -> str:
    judged = [v for v in verdicts if v["pass"] is not None]
    missed = [v for v in judged if not v["pass"]]
    return f"{len(judged) - len(missed)} of {len(judged)} targets met" + (
        f"; missed: {len(missed)}" if missed else ""
    )


def _facts(results: dict[str, Any]) -> list[tuple[str, str]]:
    """What a run was made on, as (name, value) rows; a run from before this page was generated
    (its JSON has no "run") gives what it recorded."""
    run, m = results.get("run") or {}, results.get("machine") or {}
    dirty = run.get("dirty")
    commit = run.get("commit") or m.get("commit", "—")
    if dirty:
        commit += " — **dirty**: " + ", ".join(f"`{p}`" for p in run.get("dirty_paths", []))
    elif dirty is None and run:
        commit += " (whether the tree was clean is unknown)"
    duration = run.get("duration_s", results.get("duration_s"))
    return [
        ("Date", run.get("date") or m.get("date", "—")),
        ("Commit", commit),
        ("Whole run", "—" if duration is None else f"{duration:.0f} s"),
        ("CPU", m.get("cpu_model", "—")),
        ("Cores (`nproc`)", str(m.get("nproc", "—"))),
        ("RAM", f"{m['ram_gib']} GiB" if m.get("ram_gib") else "—"),
        ("OS", f"{m['os']} ({m.get('platform', '')})" if m.get("os") else m.get("platform", "—")),
        ("Python", m.get("python", "—")),
        ("Databases", "; ".join((results.get("databases") or {}).values()) or "—"),
        ("Load average before (1, 5, 15 min)", run.get("load_before") or m.get("load_average_at_start", "—")),
        ("Load average after", run.get("load_after", "—")),
        ("1-min load during each part: mean (max)", _load_during(run or m)),
        ("Arguments", f"`{' '.join(run['argv']) or '(defaults)'}`" if "argv" in run else "—"),
    ]


def render(
    results: dict[str, Any],
    before: dict[str, Any] | None = None,
    history: str = "benchmarks",
    stem: str = "",
    old_log: bool = True,
) -> str:
    """The whole page for one run; with ``before``, a column comparing each target with that run.
    ``history`` is the folder of dated runs relative to the page, ``stem`` this run's name there,
    ``old_log`` whether the hand-edited log from before is there to link to."""
    run, m, cfg = results["run"], results["machine"], results.get("config") or {}
    verdicts = targets.judge(results)
    earlier = {(v["target"], v["backend"]): v for v in targets.judge(before)} if before else {}
    lines = [
        "# Benchmarks",
        "",
        "<!-- Written by `make bench` (bench/report.py) from one run. Do not edit by hand: the next run",
        "     overwrites it. Notes belong in the issue or in another document. -->",
        "",
        "Written by `make bench` from one run (`python -m bench`; targets in `bench/targets.py`, this page",
        "by `bench/report.py`). **Nothing here is edited by hand**: the next `make bench` overwrites it.",
        (
            f"Every run is also kept in [`{history}/`]({history}/) as a dated page and its JSON"
            + (f" (this one: `{stem}`)" if stem else "")
            + (
                f"; the hand-edited log kept before this page was generated is [`{history}/{OLD_LOG}`]"
                f"({history}/{OLD_LOG})"
                if old_log
                else ""
            )
            + "."
        ),
        "",
    ]
    if run.get("quick"):
        lines += [
            "**Quick smoke run (`--quick`)**: small sizes and few requests; not figures to judge by.",
            "",
        ]
    facts = _facts(results)
    old_facts = dict(_facts(before)) if before else {}
    lines += [
        "## This run",
        "",
        *_table(
            ["", "this run", *(["before (`--before`)"] if before else [])],
            [[name, value, *([old_facts.get(name, "—")] if before else [])] for name, value in facts],
        ),
        "## Targets",
        "",
        f"**{summary(verdicts)}.** Each comparison against a ceiling (create against a bare insert, a page",
        "at 10^6 tasks against one at 10^3, end to end against a bare `docker run`, a rule against a plain",
        "read) was measured interleaved within this run, subject and ceiling taking turns, so that load on",
        "the machine hit both alike.",
        "",
    ]
    for benchmark in targets.BENCHMARKS:
        rows = [v for v in verdicts if v["benchmark"] == benchmark]
        detail = _DETAILS[benchmark](results, cfg)
        if not rows and not detail:
            continue
        lines += [f"## {TITLES[benchmark]}", ""]
        if rows:
            header = ["Target", "Database", "Goal", "Source", "Measured"]
            header += ["Before", "Result"] if before else ["Result"]
            body = []
            for v in rows:
                cells = [v["target"], v["backend"], v["goal"], v["source"], v["figure"]]
                if before:
                    old = earlier.get((v["target"], v["backend"]))
                    cells.append(f"{old['figure']} ({verdict(old['pass'])})" if old else "—")
                cells.append(f"**{verdict(v['pass'])}**")
                body.append(cells)
            lines += _table(header, body)
        lines += detail
    lines += _method(m)
    return "\n".join(lines) + "\n"


def _ms(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _count(r: dict[str, Any]) -> str:
    return f"{r['requests']} (capped at {r['elapsed_s']:.0f} s)" if r.get("capped") else str(r["requests"])


def _create_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = [
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
            ", ".join(f"{x:.0f}" for x in r.get("round_throughputs_rps", [])),
        ]
        for r in results.get("create") or []
    ]
    if not rows:
        return []
    return [
        (
            f"{cfg.get('concurrency')} concurrent clients; {cfg.get('create_requests')} timed requests per "
            f"app after {cfg.get('create_warmup')} untimed, in {cfg.get('rounds')} alternating rounds with "
            "both servers up on one fresh database. *Ceiling* is a bare FastAPI route (`bench/ceiling.py`) "
            "inserting the same rows (the `tasks` row with its project, its `task_tags`, one `task_children` "
            "row per TRE) through the same `Database`; *gateway* is `create_app()` with a dev-issuer bearer "
            "token (token validation, request model, policy, project and TRE lookup, inserts, audit record)."
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
                "req/s per round",
            ],
            rows,
        ),
    ]


def _list_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["backend"],
            targets.case(r),
            r["view"],
            r["page"],
            f"**{r['p50_ms']:.1f}**",
            f"{r['p90_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            _count(r),
            f"{r['server_cpu_ms_per_request']:.2f}",
        ]
        for r in results.get("list") or []
    ]
    if not rows:
        return []
    return [
        (
            f"Default page size (256). One client, one request at a time: {cfg.get('list_requests')} "
            f"timed after {cfg.get('list_warmup')} untimed per case, the small and the large database served "
            f"side by side and the cases of each query taking turns in {cfg.get('rounds')} rounds. *Deep* is "
            "the page whose `page_token` points halfway down the user's tasks. Each user works in a project "
            "of their own; the requesting user's tasks are shuffled in time with other users' (a quarter as "
            "many again), and the large database also holds a sparse user with 10^3 tasks among all of "
            "those. Every task has two tags and two children (one per TRE)."
        ),
        "",
        *_table(
            [
                "Database",
                "User's tasks of all",
                "View",
                "Page",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "Timed requests",
                "server CPU ms/req",
            ],
            rows,
        ),
        *_datasets(results),
    ]


def _datasets(results: dict[str, Any]) -> list[str]:
    sets = results.get("datasets") or []
    if not sets:
        return []
    return _table(
        ["Database", "All tasks", "Tasks per user", "Loaded", "File"],
        [
            [
                d["backend"],
                f"{d['all_tasks']:,}",
                ", ".join(f"{u} {n:,}" for u, n in d["users"].items()),
                "from cache" if d["cached"] else f"{d['load_s']:.1f} s",
                f"{d['file_bytes'] / 2**20:,.0f} MiB" if d.get("file_bytes") else "—",
            ]
            for d in sets
        ],
    )


def _get_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["backend"],
            targets.case(r),
            f"**{r['p50_ms']:.2f}**",
            f"{r['p90_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['throughput_rps']:.0f}",
            f"{r['server_cpu_ms_per_request']:.2f}",
        ]
        for r in results.get("get") or []
    ]
    if not rows:
        return []
    return [
        (
            f"One client over HTTP on loopback, {cfg.get('get_requests')} timed requests after "
            f"{cfg.get('get_warmup')} untimed, each for a random task of the user."
        ),
        "",
        *_table(
            ["Database", "User's tasks of all", "p50 ms", "p90 ms", "p99 ms", "req/s", "server CPU ms/req"],
            rows,
        ),
    ]


def _checks_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    checks = results.get("checks") or {}
    if not checks.get("files"):
        return []
    rows = []
    for entry in checks["files"]:
        label = f"{entry['size_bytes'] / 1_000_000:,.0f} MB"
        for name, r in entry["runs"].items():
            cold = r.get("cold") or {}
            paired = r.get("paired") or {}
            rows.append(
                [
                    label,
                    name,
                    f"{r['mb_per_s']:,.0f}",
                    f"{paired['plain_lines_mb_per_s']:,.0f} → {r['share_of_lines']:.0%}" if paired else "",
                    f"{cold['mb_per_s']:,.0f}" if cold else "",
                    f"{paired['plain_chunks_cold_mb_per_s']:,.0f} → {r['cold_share_of_chunks']:.0%}"
                    if paired
                    else "",
                    f"{r['peak_rss_bytes'] / 2**20:,.0f}",
                    f"{r['arrow_peak_bytes'] / 2**20:,.0f}" if "arrow_peak_bytes" in r else "",
                    f"{r['python_peak_bytes'] / 2**20:,.0f}" if "python_peak_bytes" in r else "",
                    r.get("verdict", ""),
                ]
            )
    return [
        (
            "`bench/checks_bench.py`: a synthetic 8-column CSV of count tables (with a free-text note "
            f"column) of each size ({', '.join(f'{s} MB' for s in checks.get('sizes_mb', []))}); every run a "
            "fresh process. Each rule is run right after the plain read it is compared with: *warm* (file in "
            "the page cache) against a line-by-line read, *cold* (pages dropped first with "
            "`posix_fadvise(DONTNEED)`) against a 1 MiB chunked read. The plain rows show the median of "
            "their "
            "runs. Rules use the default `checks.threads`."
        ),
        "",
        *_table(
            [
                "File",
                "Run",
                "warm MB/s",
                "paired line read MB/s → share",
                "cold MB/s",
                "paired cold read MB/s → share",
                "peak RSS MiB",
                "Arrow MiB",
                "Python MiB",
                "verdict",
            ],
            rows,
        ),
    ]


def _method(m: dict[str, Any]) -> list[str]:
    return [
        "## Method",
        "",
        (
            "- Server under test: its own process, uvicorn with one worker, the same uvicorn settings for "
            "gateway "
            "and ceiling (uvloop + httptools, access log off), on 127.0.0.1. `bench/server.py`. The "
            "federation "
            "benchmarks run the devstack (`fivesafes_tes.devstack.start`) in its own process too "
            "(`bench/stack.py`), and the polling client in the bench's process."
        ),
        (
            "- Load generator: another process, `httpx.AsyncClient` with keep-alive; latency is measured per "
            "request "
            "in the client, from send to the last byte of the response. `bench/loadgen.py`."
        ),
        (
            "- Interleaving: where a figure is judged against a ceiling, the two are measured in alternating "
            "rounds "
            "(the order reversed every other round) or, for single runs, one right after the other, within "
            "the "
            "same run."
        ),
        (
            "- Each create run starts on a freshly created, migrated database (a new SQLite file; a new "
            "PostgreSQL "
            "database). The large database is bulk-loaded with SQL (SQLite `executemany`, PostgreSQL `COPY`) "
            "with "
            "the columns CreateTask writes, UUIDv7 ids and two tags per task, and cached under "
            "`bench/results/` "
            "(PostgreSQL: as a database on the server) keyed by the newest migration revision and a digest "
            "of all "
            "migration files; it is rebuilt when missing or when a migration changes."
        ),
        (
            "- Server CPU is the server process's user + system time over the timed requests (from /proc); "
            "with "
            f"{m['nproc']} CPUs shared by client, server and database, a server below ~100% is waiting on "
            f"something."
        ),
        "- Percentiles are nearest-rank over the timed requests (or runs).",
        (
            "- End to end, fan-out and pick-up are timed by a client that polls the task every ~20 ms "
            f"({int(POLL_S * 1000)} ms between request starts), so each figure carries up to one poll "
            f"interval "
            "plus one GET of lag; the gateway's audit log (`at` of `task.create`, `child.lease`, "
            "`child.stage`) "
            "gives the same moments without that lag."
        ),
        (
            "- The e2e and idle-agent parts need a Docker engine "
            '(`eval "$(scripts/services.sh --with-docker)"`); '
            "without one they are skipped with a message, and their targets are absent from the page."
        ),
        "",
    ]


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
        (
            '`devstack.start(dir, agents=True, executor="docker")` in its own process: '
            "gateway (SQLite), moto S3 "
            "and the devstack's two agents (poll 10 s, heartbeat 5 s, sync 5 s, tick 0.2 s, reporting "
            "granularity "
            f"{cfg.get('e2e_granularity_s', 5.0):g} s: a TRE's granularity G holds each stage change after "
            f"the run "
            "starts back to the next multiple of G, by design, so a deployment adds up to G). The task is "
            f"`{E2E_COMMAND}` in `{BUSYBOX_IMAGE}` with tag `tres=uk-tre`, so one child in one TRE. "
            f"{sm['runs']} timed runs after {cfg['e2e_warmup']} untimed; each is canceled once held (the "
            f"agent "
            f"discards it) and the next starts {cfg['e2e_pause']:g} s later. The client polls the BASIC "
            f"view, "
            "whose `logs[].metadata.stage` is the child's stage, until it reads `awaiting_review`. "
            f"The bare run is `docker run --rm --network none {BUSYBOX_IMAGE} sh -c 'echo hi > /tmp/x'` "
            "through the Docker SDK (`containers.run(..., remove=True)`) and the CLI, on the same engine, "
            "once "
            "each after every run through the stack (interleaved, so load hits both alike); the target "
            "compares "
            "with the faster of the two."
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
        "Where the time goes: each step's duration per run, from the gateway's audit log (the moment each "
        "stage",
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
        "When the polling client first saw each stage (p50 over the runs that saw it; fast stages are often "
        "missed):",
        "",
        *_table(["Stage", "first seen p50 ms after submit", "runs that saw it"], polled),
        (
            f"Gateway + agents + S3 process CPU over all {sm['runs'] + cfg['e2e_warmup']} runs: "
            f"{e2e['stack_cpu_s']:.1f} s ({e2e['stack_cpu_s'] / (sm['runs'] + cfg['e2e_warmup']):.2f} s per "
            f"run, "
            "from each submit until its bare run starts, including the cancel)."
        ),
        "",
    ]


def _fanout_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = results.get("fanout") or []
    if not rows:
        return []
    header = [
        "Database",
        "TREs",
        "runs RUNNING / stuck",
        "RUNNING seen p50",
        "p90",
        "max",
        "first leased p50",
        "all leased p50",
        "last running accepted p50",
        "gateway CPU per run",
    ]
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
        (
            f"{rows[0]['tres']} TREs and a project on all of them, registered with `submission.federation`; "
            f"the "
            "gateway (`bench/server.py`) on a fresh database. "
            f"{rows[0]['tres']} simulated agents (`bench/simagents.py`, one thread each in one process, each "
            f"with "
            "its own `GatewayClient` and agent token) long-poll for leases and, per child granted, post "
            "`staging` "
            "then `running` at once. The client submits one task and polls the MINIMAL view until the parent "
            "is "
            f"RUNNING (every child at least `running`). {cfg['fanout_runs']} timed runs after "
            f"{cfg['fanout_warmup']} untimed per database; after each the task is canceled and every agent "
            "acknowledges. *All leased* and *last running* are the agents' own clocks: when the last lease "
            "answer "
            "came back and when the last `running` event was accepted. A run whose parent does not show "
            "RUNNING "
            f"within {STUCK_S:g} s although every child reads `running` (BASIC view) counts as *stuck* and "
            f"is "
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
        (
            "A real agent process (`python -m fivesafes_tes.cli agent`, Docker executor, configured as "
            "`tests/test_tre_e2e.py::_agent_env` does) against a devstack gateway (gateway only, plus S3) in "
            "its "
            "own process. Two at once, each with its own gateway so that each gateway's `/metrics` "
            "(`fivesafes_http_requests_total` by route) counts one agent: one with the devstack's agent "
            "settings, "
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


def _crates_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    crates = results.get("crates") or {}
    if not crates.get("verify"):
        return []
    mib = 2**20
    rows = [
        [
            f"{v['crate']}: {v['compression']}",
            f"{v['payload_bytes'] / mib:,.0f}",
            f"{v['zip_bytes'] / mib:,.0f}",
            f"**{v['intake_mb_per_s']:,.0f}**",
            f"{v['sha512sum_mb_per_s']:,.0f}",
            f"{v['share']:.0%}",
            f"{v['cpu_s'] / v['seconds']:.1f}",
            f"{v['rss_growth_bytes'] / mib:,.1f}",
        ]
        for v in crates["verify"]
    ]
    refusals = [
        [
            r["case"],
            r["what"],
            f"{r['zip_bytes'] / mib:,.1f}",
            ", ".join(f"{seconds * 1000:,.0f}" for seconds in r["runs_s"]),
            str(len(r["writes"])),
            (r["message"] or "not refused")[:160],
        ]
        for r in crates["refusals"]
    ]
    return [
        (
            "`bench/crates.py`: crates made with `write_bag`, each intake (`open_bag`: central directory "
            "judged, tag files read, then one pass over the whole zip hashing every member with SHA-512 and "
            "SHA-256 and the zip with SHA-512) in a fresh process right after `sha512sum` on the payload "
            f"file, alternating over {crates.get('rounds')} rounds, files in the page cache; medians shown. "
            "*CPU* is the intake's CPU seconds per wall second (hashing runs on two threads besides the "
            "reader). *RSS growth* is the high-water mark (VmHWM, reset first) above the RSS before intake, "
            "the largest of the rounds. *zip SHA-512 given*: the zip's hash passed to `open_bag`, as when "
            "the gateway hashed the upload while spooling it (a second SHA-512 over the whole file "
            "spared). Refusals run in fresh processes under an audit hook that records "
            "every file opened for writing, created, renamed or removed, in an empty working folder that "
            "is also TMPDIR."
        ),
        "",
        *_table(
            [
                "Crate",
                "payload MiB",
                "zip MiB",
                "intake MiB/s",
                "`sha512sum` MiB/s",
                "share",
                "CPU",
                "RSS growth MiB",
            ],
            rows,
        ),
        *_table(["Refused", "What", "zip MiB", "time of each run, ms", "files written", "message"], refusals),
    ]


def _kubernetes_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    k8s = results.get("kubernetes") or {}
    if not k8s:
        return []
    lease, c = k8s["lease_to_job"], k8s["concurrent"]
    return [
        (
            "`bench/kubernetes_bench.py`: a real agent (the `Agent` class, default settings but events sent "
            f"at once; tick {c['tick_s']} s, SQLite) drives the Kubernetes backend against kmock's "
            "Kubernetes emulator, served in its own process with label selectors honoured as an API server "
            "does; the bench is the Job controller and the kubelet, and the gateway is a stub in the bench's "
            "process "
            "that hands out grants. A Job exists when the backend's `start` has returned (the create call "
            "answered); a run's end is seen when its `poll` first gives a result. *Lease → Job*: one grant "
            "at a time, at a random point of the agent's tick, from the lease answer carrying it. "
            f"*{c['children']} at once*: as many grants in one lease answer; once every Job's pod runs, the "
            "agent's status passes (each polls every running child once) are timed; then every pod and Job "
            "is marked succeeded, one after another, and each child is timed from its Job's completion to "
            "its end seen. *The emulator's own* share of a pass is the time it spent answering the pass's "
            "requests (the agent alone calls it meanwhile): what a faster API server would take off."
        ),
        "",
        *_table(
            ["", "figure"],
            [
                [
                    f"lease → Job created, {lease['leases']} leases: p50 / p95 / max",
                    f"**{lease['p50_ms']:.0f} / {lease['p95_ms']:.0f} / {lease['max_ms']:.0f} ms**",
                ],
                [
                    f"{c['children']} grants in one answer: last Job created after",
                    f"{c['burst_all_created_s']:.2f} s (p50 {c['burst_p50_ms'] / 1000:.2f} s)",
                ],
                [
                    f"status pass over {c['children']} running children: p50 / max",
                    f"**{c['pass_p50_s']:.2f} / {c['pass_max_s']:.2f} s** ({c['passes']} passes)",
                ],
                ["… of which inside `poll` (p50)", f"{c['pass_poll_p50_s']:.2f} s"],
                [
                    "… of which the emulator's own (p50 pass; requests per poll)",
                    f"{c['pass_api_s']:.2f} s ({c['requests_per_poll']:.1f})",
                ],
                ["all runs marked ended, first to last", f"{c['finish_s']:.2f} s"],
                [
                    "each end seen after its Job completed: p50 / p95 / max",
                    f"**{c['lag']['p50_ms'] / 1000:.2f} / {c['lag']['p95_ms'] / 1000:.2f} / "
                    f"{c['lag']['max_ms'] / 1000:.2f} s**",
                ],
                ["last end seen after the last was marked", f"{c['all_seen_after_finish_s']:.2f} s"],
            ],
        ),
    ]


def _pages_section(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    pages = results.get("pages") or {}
    if not pages.get("cases"):
        return []
    rows = []
    for c in pages["cases"]:
        server = c.get("server") or {}
        rows.append(
            [
                c["backend"],
                f"`GET {c['path']}`",
                f"**{c['p50_ms']:.1f} / {c['p95_ms']:.1f} / {c['max_ms']:.1f}**",
                f"{_ms(server.get('p50_ms'))} / {_ms(server.get('p95_ms'))} / {_ms(server.get('max_ms'))}",
                f"{c['server_cpu_ms_per_request']:.1f}",
                f"{c['airlock_gets_per_request']:g}",
                f"{c['airlock_bytes_per_request'] / 1024:,.1f} "
                f"(largest read {c['airlock_largest_read'] / 1024:,.0f})",
            ]
        )
    seeding = [
        [
            s["backend"],
            f"{s['children_s']:.0f} s",
            f"{s['csv_bytes'] / 1_000_000:,.1f} MB ({s['stored_bytes']:,} bytes held)",
            f"{s['hold_s']:.1f} s",
            f"{s['verdict']}: {s['findings']} findings, rows {', '.join(str(r) for r in s['flagged_rows'])}",
        ]
        for s in pages.get("seeding") or []
    ]
    return [
        (
            "`bench/pages_bench.py`: the agent's admin app with its pages (`create_admin_app` with "
            "`site_for`, as an agent serves them) in its own process (`bench/server.py pages`: uvicorn, one "
            "worker, access log off) on the agent's database, with its airlock on moto's S3 in another "
            f"process. The queue holds {pages['children']:,} children awaiting review in three projects, "
            "each holding a small table (every third with a small cell) and a step's stdout, held in the "
            "airlock by `airlock.hold_outputs` and recorded with the default rules' findings as "
            "`agent.holding.hold` records them (the rules run once per distinct file, their findings "
            "reused for the same bytes in the other children; the databases share one airlock bucket, so "
            "on the second each child's hold is found already settled). One of them holds a deterministic "
            f"{pages['csv_mb']} MB CSV, streamed to the airlock and checked by `agent.holding.hold` "
            "itself, small cells in its first rows. The checker's session cookie is signed with the "
            "pages' own key and cookie name, so every request passes the real session and role checks "
            "(a request without it is refused before timing, and each page is checked to show what a "
            f"checker should see). Per page, {pages['warmup']} untimed requests, then {pages['requests']} "
            "timed by `bench/loadgen.py` in another process, one at a time over keep-alive. *Client* is "
            "the response time seen over loopback, send to last byte (what the targets judge); *server* is "
            "the same request timed inside the server process, from its arrival at the app to its last "
            "byte sent (the app sets no `Server-Timing`); *airlock* counts the GetObject answers the server "
            "received and their bytes (`Content-Length`), per page: a preview reads the first 64 KiB "
            "(`ObjectStore.get_head`, a ranged GET)."
        ),
        "",
        *_table(
            [
                "Database",
                "Page",
                "client p50 / p95 / max ms",
                "server p50 / p95 / max ms",
                "server CPU ms/req",
                "airlock GETs per page",
                "airlock KiB per page",
            ],
            rows,
        ),
        *_table(
            [
                "Database",
                f"{pages['children'] - 1:,} children held in",
                "large CSV",
                "held and checked in",
                "its rules found",
            ],
            seeding,
        ),
    ]


_DETAILS = {
    "create": _create_section,
    "list": _list_section,
    "get": _get_section,
    "e2e": _e2e_section,
    "fanout": _fanout_section,
    "idle": _idle_section,
    "checks": _checks_section,
    "crates": _crates_section,
    "kubernetes": _kubernetes_section,
    "pages": _pages_section,
}
