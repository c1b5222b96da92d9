"""The orchestrator of `make bench`: databases, servers, load generators, report.

Every server under test runs in its own process (``bench.server``: uvicorn, one worker) and
every load generator in another (``bench.loadgen``: httpx async), so client and server never
share an interpreter. See docs/benchmarks.md for what is measured and why.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bench import (
    checks_bench,
    crates,
    dataset,
    federation,
    kubernetes_bench,
    pages_bench,
    provenance,
    report,
    targets,
)
from bench.common import (
    CREATOR,
    DOCS,
    OTHER_USERS,
    RESULTS,
    ROOT,
    SCRATCH,
    SPARSE_USER,
    STATE,
    TASK,
    TES,
    USER,
    cpu_seconds,
    free_port,
    settings,
)
from bench.loadgen import summarise
from fivesafes_tes.auth import DevIssuer
from fivesafes_tes.gateway.app import dev_issuer_url
from fivesafes_tes.submission.ids import decode_page_token

PG_ENV = ("FIVESAFES_BENCH_PG_URL", "FIVESAFES_TEST_PG_URL")
PARTS = ("create", "read", "e2e", "fanout", "idle", "checks", "crates", "kubernetes", "pages")
#: ``--quick``: a smoke run of every part in a few minutes; its figures are not the targets'.
QUICK: dict[str, Any] = {
    "create_requests": 200, "create_warmup": 20, "rounds": 2, "list_requests": 20, "list_warmup": 5,
    "max_seconds": 5, "get_requests": 100, "get_warmup": 20, "large": 10_000, "e2e_runs": 3,
    "e2e_warmup": 1, "e2e_pause": 0.5, "fanout_tres": 5, "fanout_runs": 2, "idle_seconds": 10, "pickups": 3,
    "checks_sizes": "10,20", "crates_mb": 64, "crates_rounds": 2, "k8s_leases": 5, "k8s_children": 20,
    "k8s_passes": 2, "pages_children": 60, "pages_csv_mb": 2, "pages_requests": 20, "pages_warmup": 3,
}  # fmt: skip


class BenchError(RuntimeError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients for create (default 16)")
    p.add_argument("--create-requests", type=int, default=2000, help="timed creates per app (default 2000)")
    p.add_argument("--create-warmup", type=int, default=200, help="untimed creates first (default 200)")
    p.add_argument("--rounds", type=int, default=4, help="alternating ceiling/gateway rounds (default 4)")
    p.add_argument("--list-requests", type=int, default=200, help="timed GET /tasks per case (default 200)")
    p.add_argument("--list-warmup", type=int, default=20)
    p.add_argument(
        "--max-seconds",
        type=float,
        default=10,
        help="cap on the timed part of each read case (default 10 s; "
        "a slow case then reports fewer requests, at least 5)",
    )
    p.add_argument("--get-requests", type=int, default=2000, help="timed GET /tasks/{id} (default 2000)")
    p.add_argument("--get-warmup", type=int, default=200)
    p.add_argument(
        "--small", type=int, default=1_000, help="tasks of the user, small database (default 10^3)"
    )
    p.add_argument(
        "--large", type=int, default=1_000_000, help="tasks of the user, large database (default 10^6)"
    )
    p.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable): create, read (list and get), e2e, fanout, idle, "
        "checks (disclosure rules), crates (crate intake), kubernetes (the Kubernetes executor under "
        "one agent), pages (the output checkers' review queue and review page)",
    )
    p.add_argument("--e2e-runs", type=int, default=20, help="timed end-to-end runs (default 20)")
    p.add_argument("--e2e-warmup", type=int, default=2, help="untimed end-to-end runs first (default 2)")
    p.add_argument("--e2e-pause", type=float, default=1.0, help="seconds between end-to-end runs (default 1)")
    p.add_argument(
        "--e2e-granularity-s",
        type=float,
        default=0.0,
        help="the agents' reporting granularity in the end-to-end runs (default 0: the system's own delay; "
        "a TRE's setting adds up to that much to each stage change after the run starts, by design)",
    )
    p.add_argument(
        "--fanout-tres", type=int, default=20, help="simulated TREs of the fan-out task (default 20)"
    )
    p.add_argument("--fanout-runs", type=int, default=10, help="timed fan-out runs per database (default 10)")
    p.add_argument("--fanout-warmup", type=int, default=1)
    p.add_argument("--idle-seconds", type=float, default=60, help="idle agent window (default 60 s)")
    p.add_argument("--pickups", type=int, default=10, help="pick-ups timed per idle agent (default 10)")
    p.add_argument(
        "--checks-sizes",
        default="100,1000",
        help="CSV sizes in MB for the disclosure rules (default 100,1000)",
    )
    p.add_argument(
        "--crates-mb", type=int, default=1024, help="payload of the large crate in MiB (default 1024)"
    )
    p.add_argument("--crates-rounds", type=int, default=3, help="intake runs per crate (default 3)")
    p.add_argument(
        "--k8s-leases", type=int, default=50, help="leases timed to their Job, one at a time (default 50)"
    )
    p.add_argument(
        "--k8s-children", type=int, default=200, help="children one agent runs at once (default 200)"
    )
    p.add_argument(
        "--k8s-passes", type=int, default=3, help="status passes timed over those children (default 3)"
    )
    p.add_argument(
        "--pages-children", type=int, default=1000, help="children waiting in the review queue (default 1000)"
    )
    p.add_argument(
        "--pages-csv-mb", type=int, default=50, help="the CSV on the timed review page, in MB (default 50)"
    )
    p.add_argument("--pages-requests", type=int, default=50, help="timed requests per page (default 50)")
    p.add_argument("--pages-warmup", type=int, default=5, help="untimed requests per page first (default 5)")
    p.add_argument("--no-postgres", action="store_true", help="SQLite only, even if PostgreSQL is configured")
    p.add_argument(
        "--before",
        type=Path,
        metavar="FILE.json",
        help="an earlier run's JSON (docs/benchmarks/*.json): the page gets a before column for each target",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run of every part (small sizes, few requests); its page goes to "
        "bench/results/quick/, not docs/",
    )
    p.add_argument("--no-docs", action="store_true", help="write only bench/results/latest.json")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**QUICK)  # options given explicitly still win
    args = p.parse_args(argv)
    try:
        args.checks_sizes_mb = [int(size) for size in args.checks_sizes.split(",")]
    except ValueError:
        p.error(f"--checks-sizes: comma-separated whole megabytes, not {args.checks_sizes!r}")
    return args


# --- processes -------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen
    base_url: str
    log_path: str


@contextlib.contextmanager
def serve(kind: str, url: str, *extra: str) -> Iterator[Server]:
    """Start ``bench.server`` in its own process and wait until it answers /healthz."""
    port = free_port()
    log_path = SCRATCH / f"server-{kind}-{port}.log"
    env = {**os.environ, "BENCH_DATABASE_URL": url}  # not argv: the URL may hold a password
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.server", kind, "-", str(port), *extra],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", str(log_path))
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise BenchError(f"the {kind} server exited ({proc.returncode}):\n{_tail(log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.base_url + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"the {kind} server did not answer within 60 s:\n{_tail(log_path)}")
            time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Any, lines: int = 30) -> str:
    with open(path) as handle:
        return "".join(handle.readlines()[-lines:])


def loadgen(
    spec: dict[str, Any], server: Server, on_progress: Callable[[str, int, int], None]
) -> dict[str, Any]:
    """Run ``bench.loadgen`` on ``spec``; add the server's CPU time over the timed part."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        result: dict[str, Any] | None = None
        failure = ""
        cpu_started = 0.0
        try:
            for line in proc.stdout:
                event = json.loads(line)
                kind = event.pop("event")
                if kind == "progress":
                    on_progress(event["phase"], event["done"], event["total"])
                elif kind == "measure_start":
                    cpu_started = cpu_seconds(server.proc.pid)
                elif kind == "result":
                    event["server_cpu_s"] = cpu_seconds(server.proc.pid) - cpu_started
                    result = event
                elif kind == "error":
                    failure = event["message"]
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if result is None:
            errors.seek(0)
            raise BenchError(
                f"load generator failed: {failure or errors.read()[-2000:]}\n"
                f"server log:\n{_tail(server.log_path)}"
            )
    result["server_cpu_pct"] = 100 * result["server_cpu_s"] / result["elapsed_s"]
    result["server_cpu_ms_per_request"] = 1000 * result["server_cpu_s"] / result["requests"]
    return result


# --- the bench -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, console: Console, progress: Progress) -> None:
        self.args = args
        self.console = console
        self.progress = progress
        self.overall = progress.add_task("[bold]make bench", total=None)
        self.step = progress.add_task("", total=None, visible=False)
        gateway = settings("sqlite://")
        self.issuer = DevIssuer(gateway.dev_issuer_dir, dev_issuer_url(gateway))
        self.audience = gateway.oidc_audience
        self.caps = {
            "max_seconds": args.max_seconds,
            "min_requests": 5,
            "warmup_max_seconds": args.max_seconds / 4,
        }
        self.results: dict[str, Any] = {
            "create": [], "list": [], "get": [], "datasets": [], "databases": {}, "e2e": None, "fanout": [],
            "idle": [],
        }  # fmt: skip

    def token(self, user: str) -> str:
        return self.issuer.issue(user, ["researcher"], audience=self.audience, ttl_s=6 * 3600)

    def log(self, message: str) -> None:
        self.console.log(message)

    def begin(self, description: str, total: int | None = None) -> None:
        self.progress.update(self.step, description=description, total=total, completed=0, visible=True)

    def advance_overall(self) -> None:
        self.progress.advance(self.overall)

    def on_progress(self, label: str) -> Callable[[str, int, int], None]:
        def update(phase: str, done: int, total: int) -> None:
            what = f"{label} [dim]({phase})" if phase == "warmup" else label
            self.progress.update(self.step, description=what, completed=done, total=total)

        return update

    def run_load(
        self, label: str, server: Server, spec: dict[str, Any], advance: bool = True
    ) -> dict[str, Any]:
        self.begin(label, spec["warmup"] + spec["requests"])
        result = loadgen({"base_url": server.base_url, **spec}, server, self.on_progress(label))
        if advance:
            self.advance_overall()
        return result

    def interleaved(
        self, title: str, subjects: dict[str, tuple[Server, dict[str, Any]]]
    ) -> dict[str, dict[str, Any]]:
        """Subject and ceiling measured in alternating rounds (the order reversed every other round),
        each spec's requests split between the rounds and its warm-up run in the first, so that
        drifting background load on the machine hits all of them alike. One merged figure each."""
        rounds = max(1, self.args.rounds)
        names = list(subjects)
        parts: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                server, spec = subjects[name]
                this_round = {
                    **spec,
                    "warmup": spec["warmup"] if r == 0 else 0,
                    "requests": max(1, spec["requests"] // rounds),
                    "raw": True,
                }
                if "max_seconds" in spec:
                    this_round["max_seconds"] = spec["max_seconds"] / rounds
                label = f"{title}, {name}, round {r + 1} of {rounds}"
                parts[name].append(self.run_load(label, server, this_round, advance=False))
            self.advance_overall()
        return {name: _merge(results) for name, results in parts.items()}

    # -- 1. create ------------------------------------------------------------------------------

    def create(self, backend: dataset.Backend) -> None:
        """Ceiling and gateway served side by side on one fresh database, loaded in alternating
        rounds, so that drifting background load on the machine affects both alike."""
        a = self.args
        url = backend.fresh("create")
        rounds = max(1, a.rounds)
        per_round = max(1, a.create_requests // rounds)  # as interleaved() splits them
        try:
            owner_id, project_id = dataset.setup_federation(url, [CREATOR])[CREATOR]
            tres = ",".join(str(t) for t in dataset.tre_ids(url))
            headers = {"authorization": f"Bearer {self.token(CREATOR)}"}
            with (
                serve("ceiling", url, str(owner_id), str(project_id), tres) as ceiling,
                serve("gateway", url) as gateway,
            ):
                spec = {
                    "headers": headers,
                    "concurrency": a.concurrency,
                    "warmup": a.create_warmup,
                    "requests": a.create_requests,
                    "max_seconds": 120 * rounds,
                }
                post = {"method": "POST", "json": TASK}
                ceiling_spec = {**spec, "items": [{**post, "path": "/tasks"}]}
                gateway_spec = {**spec, "items": [{**post, "path": f"{TES}/tasks"}]}
                merged = self.interleaved(
                    f"{backend.name}: create",
                    {"ceiling": (ceiling, ceiling_spec), "gateway": (gateway, gateway_spec)},
                )
            for app, result in merged.items():
                self.results["create"].append(
                    {"backend": backend.name, "app": app, "rounds": rounds, **result}
                )
                self.log(
                    f"{backend.name} create via {app}: {result['throughput_rps']:.0f} req/s, "
                    f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                    f"server CPU {result['server_cpu_pct']:.0f}%"
                )
            tasks, children = _count_rows(url)
            expected = 2 * (a.create_warmup + rounds * per_round)
            if tasks != expected or children != 2 * expected:
                raise BenchError(
                    f"{backend.name}: {tasks} tasks and {children} children stored after the create bench, "
                    f"expected {expected} and {2 * expected}"
                )
        finally:
            backend.drop(url)

    # -- 2. and 3. list and get -------------------------------------------------------------------

    def read(self, backend: dataset.Backend) -> None:
        a = self.args
        counts = dataset.population(a.small, sparse=False)
        self.begin(f"{backend.name}: loading the {a.small:,}-task database", sum(counts.values()))
        small_url = backend.fresh(f"list-{a.small}")
        try:
            started = time.perf_counter()
            dataset.load(small_url, counts, self._load_progress)
            small = dataset.describe(small_url, counts, cached=False, load_s=time.perf_counter() - started)
            self.advance_overall()
            total = sum(dataset.population(a.large, sparse=True).values())
            self.begin(
                f"{backend.name}: the {a.large:,}-task database (cached while the schema holds)", total
            )
            large = backend.cached(a.large, self._load_progress)
            self.advance_overall()
            for loaded in (small, large):
                self.results["datasets"].append(
                    {
                        "backend": backend.name,
                        "all_tasks": loaded.all_tasks,
                        "users": {s.username: s.tasks for s in loaded.users.values()},
                        "cached": loaded.cached,
                        "load_s": loaded.load_s,
                        "file_bytes": dataset.file_size(loaded.url),
                    }
                )
                how = "reused from cache" if loaded.cached else f"loaded in {loaded.load_s:.1f} s"
                self.log(f"{backend.name}: database of {loaded.all_tasks:,} tasks {how}")
            self.read_cases(backend, small, large)
        finally:
            backend.drop(small_url)

    def _load_progress(self, done: int, total: int) -> None:
        self.progress.update(self.step, completed=done, total=total)

    def read_cases(self, backend: dataset.Backend, small: dataset.Loaded, large: dataset.Loaded) -> None:
        """The small and the large database served side by side, the cases of each list query
        measured in alternating rounds: the large cases are judged against the small one."""
        a = self.args
        cases = {"small": (small, USER), "large": (large, USER), "sparse": (large, SPARSE_USER)}
        with serve("gateway", small.url) as small_server, serve("gateway", large.url) as large_server:
            servers = {"small": small_server, "large": large_server, "sparse": large_server}
            auths: dict[str, dict[str, str]] = {}
            scopes: dict[str, dataset.Scope] = {}
            other = {"authorization": f"Bearer {self.token(OTHER_USERS[0])}"}
            for name, (loaded, username) in cases.items():
                scope = scopes[name] = loaded.users[username]
                dataset.prepare_queries(loaded.url, scope, a.get_requests)
                auths[name] = {"authorization": f"Bearer {self.token(scope.username)}"}
                check_pages(servers[name].base_url, auths[name], other, scope)

            def common(name: str) -> dict[str, Any]:
                loaded = cases[name][0]
                return {"backend": backend.name, "case": name, "user_tasks": scopes[name].tasks,
                        "all_tasks": loaded.all_tasks}  # fmt: skip

            for view in ("MINIMAL", "BASIC"):
                for page in ("first", "deep"):
                    subjects = {}
                    for name in cases:
                        path = f"{TES}/tasks?view={view}"
                        if page == "deep":
                            path += f"&page_token={scopes[name].deep_token}"
                        spec = {
                            "headers": auths[name],
                            "concurrency": 1,
                            "warmup": a.list_warmup,
                            "requests": a.list_requests,
                            **self.caps,
                            "items": [{"method": "GET", "path": path}],
                        }
                        subjects[name] = (servers[name], spec)
                    merged = self.interleaved(f"{backend.name}: GET /tasks {view} {page} page", subjects)
                    for name, result in merged.items():
                        self.results["list"].append({**common(name), "view": view, "page": page, **result})
            for name in cases:
                what = f"{scopes[name].tasks:,} of {cases[name][0].all_tasks:,} tasks"
                items = [
                    {"method": "GET", "path": f"{TES}/tasks/{task_id}?view=MINIMAL"}
                    for task_id in scopes[name].sample_ids
                ]
                spec = {
                    "headers": auths[name],
                    "concurrency": 1,
                    "warmup": a.get_warmup,
                    "requests": a.get_requests,
                    **self.caps,
                    "items": items,
                }
                label = f"{backend.name}: GET /tasks/{{id}} MINIMAL, {what}"
                result = self.run_load(label, servers[name], spec)
                self.results["get"].append({**common(name), **result})
        self.log(f"{backend.name}: reads done")

    # -- 6. disclosure rules ---------------------------------------------------------------------

    def checks(self) -> None:
        """The disclosure rules against a plain read of the same file (``bench/checks_bench.py``)."""
        sizes = self.args.checks_sizes_mb
        self.begin("disclosure rules: generating the first file", len(sizes) * len(checks_bench.RULES))

        def on_step(what: str) -> None:
            self.progress.update(self.step, description=f"disclosure rules: {what}")
            self.progress.advance(self.step)

        self.results["checks"] = checks_bench.run(sizes, on_step=on_step)
        self.log(f"disclosure rules measured on {', '.join(f'{s} MB' for s in sizes)} files")
        self.advance_overall()

    # -- 7. crate intake ---------------------------------------------------------------------------

    def crates(self) -> None:
        """Crate intake against `sha512sum`, and hostile crates refused (``bench/crates.py``)."""
        self.begin("crate intake", None)

        def on_step(what: str) -> None:
            self.progress.update(self.step, description=f"crate intake: {what}")

        self.results["crates"] = crates.run(self.args.crates_mb, self.args.crates_rounds, on_step=on_step)
        self.log(f"crate intake measured at {self.args.crates_mb:,} MiB")
        self.advance_overall()

    # -- 8. the Kubernetes executor ----------------------------------------------------------------

    def kubernetes(self) -> None:
        """One agent driving the Kubernetes backend against kmock's emulator
        (``bench/kubernetes_bench.py``)."""
        self.begin("kubernetes executor", None)

        def on_step(what: str) -> None:
            self.progress.update(self.step, description=f"kubernetes executor: {what}")

        a = self.args
        self.results["kubernetes"] = kubernetes_bench.run(
            a.k8s_leases, a.k8s_children, a.k8s_passes, on_step=on_step
        )
        self.log(f"kubernetes executor measured: {a.k8s_leases} leases, {a.k8s_children} children at once")
        self.advance_overall()

    # -- 9. the output checkers' pages -------------------------------------------------------------

    def pages(self, backends: list[dataset.Backend]) -> None:
        """The review queue and a large CSV's review page of a real agent's pages
        (``bench/pages_bench.py``), on each database."""
        self.begin("review pages", None)

        def on_step(what: str) -> None:
            self.progress.update(self.step, description=f"review pages: {what}", total=None, completed=0)

        def on_progress(what: str, done: int, total: int) -> None:
            self.progress.update(self.step, description=f"review pages: {what}", completed=done, total=total)

        a = self.args
        self.results["pages"] = pages_bench.run(
            backends, a.pages_children, a.pages_csv_mb, a.pages_requests, a.pages_warmup, on_step, on_progress
        )
        for case in self.results["pages"]["cases"]:
            self.log(
                f"{case['backend']} {case['page']} page: p50 {case['p50_ms']:.1f} ms, "
                f"p95 {case['p95_ms']:.1f} ms, max {case['max_ms']:.1f} ms"
            )
        self.advance_overall()


def check_pages(base_url: str, auth: dict[str, str], other: dict[str, str], scope: dataset.Scope) -> None:
    """Before timing anything: the pages are what a client would get, and scoped to their owner."""
    expected = min(256, scope.tasks)
    with httpx.Client(base_url=base_url, timeout=60) as client:
        first = _ok(client.get(f"{TES}/tasks", params={"view": "BASIC"}, headers=auth))
        tasks = first["tasks"]
        if len(tasks) != expected or (scope.tasks > 256) != ("next_page_token" in first):
            raise BenchError(f"{scope.username}'s first page has {len(tasks)} tasks, expected {expected}")
        if not all(t.get("tags", {}).get("project") and t.get("executors") for t in tasks):
            raise BenchError("BASIC page lacks tags or executors")
        deep = _ok(client.get(f"{TES}/tasks", params={"page_token": scope.deep_token}, headers=auth))["tasks"]
        bound = decode_page_token(scope.deep_token)
        if len(deep) != min(256, scope.tasks - scope.tasks // 2) or not all(t["id"] < bound for t in deep):
            raise BenchError("the deep page is not the page after its token")
        theirs = _ok(client.get(f"{TES}/tasks", headers=other))["tasks"]
        if not theirs or {t["id"] for t in theirs} & {t["id"] for t in tasks}:
            raise BenchError("another user's page is empty or shares tasks with the requesting user's")
        one = _ok(client.get(f"{TES}/tasks/{scope.sample_ids[0]}", headers=auth))
        if set(one) != {"id", "state"}:
            raise BenchError(f"GET /tasks/{{id}} MINIMAL answered {one}")
        if client.get(f"{TES}/tasks/{theirs[0]['id']}", headers=auth).status_code != 404:
            raise BenchError("a user can read another user's task")


def _ok(response: httpx.Response) -> Any:
    if response.status_code != 200:
        raise BenchError(
            f"{response.request.method} {response.request.url} answered {response.status_code}: "
            f"{response.text[:300]}"
        )
    return response.json()


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure from several rounds: all latencies, total requests over total time."""
    latencies = [v for p in parts for v in p["latencies_s"]]
    elapsed = sum(p["elapsed_s"] for p in parts)
    server_cpu = sum(p["server_cpu_s"] for p in parts)
    return {
        **summarise(latencies, elapsed),
        "concurrency": parts[0]["concurrency"],
        "client_cpu_s": sum(p["client_cpu_s"] for p in parts),
        "server_cpu_s": server_cpu,
        "server_cpu_pct": 100 * server_cpu / elapsed,
        "server_cpu_ms_per_request": 1000 * server_cpu / len(latencies),
        "round_throughputs_rps": [p["throughput_rps"] for p in parts],
        "capped": any(p.get("capped") for p in parts),
    }


def _count_rows(url: str) -> tuple[int, int]:
    from sqlalchemy import func, select

    from fivesafes_tes.db import Database
    from fivesafes_tes.submission.tables import Child, Task

    db = Database(url)
    try:
        with db.read() as session:
            tasks = session.scalar(select(func.count()).select_from(Task)) or 0
            children = session.scalar(select(func.count()).select_from(Child)) or 0
            return tasks, children
    finally:
        db.dispose()


def backends(args: argparse.Namespace, console: Console) -> list[dataset.Backend]:
    out: list[dataset.Backend] = [dataset.SqliteBackend()]
    pg_url = next((os.environ[name] for name in PG_ENV if os.environ.get(name)), "")
    if args.no_postgres:
        console.log("PostgreSQL skipped (--no-postgres)")
    elif not pg_url:
        console.log("PostgreSQL skipped: set FIVESAFES_TEST_PG_URL (scripts/services.sh does) to include it")
    else:
        out.append(dataset.PostgresBackend(pg_url))
    return out


def _docker_available(console: Console) -> bool:
    try:
        import docker

        client = docker.from_env()
        client.ping()
        from fivesafes_tes.devimages import ensure_busybox_image

        ensure_busybox_image(client)
        client.close()
    except Exception as exc:  # noqa: BLE001  any failure means no engine to run on
        console.log(
            f"end-to-end and idle-agent benchmarks skipped: no Docker engine ({type(exc).__name__}); "
            'start one with `eval "$(scripts/services.sh --with-docker)"`'
        )
        return False
    return True


class LoadSampler:
    """The 1-minute load average every 5 s, per part of the bench: other work on the machine shows."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.part = "start"
        self.samples: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append((self.part, float(Path("/proc/loadavg").read_text().split()[0])))

    def stop(self) -> None:
        self._stop.set()

    def summary(self) -> dict[str, Any]:
        by_part: dict[str, list[float]] = {}
        for part, value in self.samples:
            by_part.setdefault(part, []).append(value)
        return {part: {"mean": round(sum(v) / len(v), 2), "max": max(v)} for part, v in by_part.items()}


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # so that `finally` blocks stop our servers and drop our databases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    console = Console()
    if not console.is_terminal:  # make's output piped to a log: do not wrap the table at 80 columns
        console = Console(width=150)
    try:
        before = report.load(args.before) if args.before else None
    except (ValueError, TypeError) as exc:
        console.print(f"[red]bench:[/] {exc}")
        return 2
    for directory in (RESULTS, SCRATCH, STATE):
        directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    run_info: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "date": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "quick": args.quick,
        **provenance.commit(),
        "load_before": provenance.load_average(),
    }
    if float(run_info["load_before"].split()[0]) > 0.5:
        busy = run_info["load_before"]
        console.log(f"[yellow]load average {busy}: other work on this machine will skew the figures")
    parts = set(args.only or PARTS)
    chosen = backends(args, console)
    docker_ok = _docker_available(console) if parts & {"e2e", "idle"} else False
    if not docker_ok:
        parts -= {"e2e", "idle"}
    if "kubernetes" in parts and kubernetes_bench.missing():
        console.log(
            f"kubernetes executor benchmark skipped: {', '.join(kubernetes_bench.missing())} not installed "
            "(pip install -e '.[dev]')"
        )
        parts -= {"kubernetes"}
    if "pages" in parts and pages_bench.missing():
        console.log(
            f"review pages benchmark skipped: {', '.join(pages_bench.missing())} not installed "
            "(pip install -e '.[dev]')"
        )
        parts -= {"pages"}
    rounds = max(1, args.rounds)
    steps = len(chosen) * (
        (rounds if "create" in parts else 0)
        + (2 + 4 * rounds + 3 if "read" in parts else 0)
        + (1 if "fanout" in parts else 0)
    ) + len(parts & {"e2e", "idle", "checks", "crates", "kubernetes", "pages"})
    load = LoadSampler()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            bench = Bench(args, console, progress)
            progress.update(bench.overall, total=steps)
            dataset.check_columns()
            for backend in chosen:
                bench.results["databases"][backend.name] = backend.version()
            if "create" in parts:
                for backend in chosen:
                    load.part = "create"
                    bench.create(backend)
            if "read" in parts:
                for backend in chosen:
                    load.part = "read"
                    bench.read(backend)
            if "e2e" in parts:
                load.part = "e2e"
                federation.e2e(bench)
            if "fanout" in parts:
                for backend in chosen:
                    load.part = "fanout"
                    federation.fanout(bench, backend)
            if "idle" in parts:
                load.part = "idle"
                federation.idle(bench)
            if "checks" in parts:
                load.part = "checks"
                bench.checks()
            if "crates" in parts:
                load.part = "crates"
                bench.crates()
            if "kubernetes" in parts:
                load.part = "kubernetes"
                bench.kubernetes()
            if "pages" in parts:
                load.part = "pages"
                bench.pages(chosen)
            progress.update(bench.step, visible=False)
    except (
        BenchError,
        dataset.SchemaChanged,
        federation.FederationError,
        kubernetes_bench.KubernetesBenchError,
        pages_bench.PagesBenchError,
    ) as exc:
        console.print(f"[red]bench failed:[/] {exc}")
        return 1
    finally:
        load.stop()
        for backend in chosen:
            if isinstance(backend, dataset.PostgresBackend):
                backend.close()
    results = bench.results
    results["run"] = {
        **run_info,
        "load_after": provenance.load_average(),
        "load_during": load.summary(),
        "duration_s": time.perf_counter() - started,
    }
    results["machine"] = provenance.machine()
    results["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results["verdicts"] = targets.judge(results)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    console.print(report.table(results))
    if not args.no_docs:
        out = RESULTS / "quick" if args.quick else DOCS.parent
        page = out / DOCS.name
        written = report.write(results, page, out / "benchmarks", before)
        console.print("written: " + ", ".join(str(p.relative_to(ROOT)) for p in written))
    console.print(f"{report.summary(results['verdicts'])} in {results['run']['duration_s']:.0f} s")
    return 0
