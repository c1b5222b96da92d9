"""The output checkers' pages at their sizes (issue 13): the review queue with 1,000 children waiting,
and the review page of a child holding a 50 MB CSV, each timed over HTTP against a real agent's pages.

The pages are the agent's admin app (`create_admin_app` with `site_for`, as an agent serves them on
`FIVESAFES_AGENT_ADMIN_LISTEN`) in a process of its own (`bench/server.py pages`, uvicorn, one worker),
on the agent's database (SQLite, and PostgreSQL when configured, as the read benchmarks do) and with its
airlock on moto's S3, also in a process of its own. The held files come the agent's way: each child's
outputs are held by `agent.holding.hold` (uploaded to the airlock, hashed, the default disclosure rules
run on them, a `HeldFileRecord` with the rules' findings recorded), from files made on disk; the 50 MB
CSV is written to disk deterministically and streamed to the airlock as any held file is (a multipart
upload read from the file), its first rows carrying small cells the `small_cell` rule flags.

The checker is signed in by a session cookie minted with the pages' own `SessionCookies` (the key and
name the server uses), so every timed request passes the pages' real session and role checks; the bench
first makes sure a request without it is refused. Requests come from `bench/loadgen.py` in another
process, one at a time over keep-alive: what is timed is the response as a client on loopback sees it,
from send to the last byte. The server also times each request inside its process (a thin ASGI wrapper
around the app, from the request's arrival to its last byte sent) and counts the bytes of every
GetObject answer from the airlock, so the page of the 50 MB file shows how much of it was read.

    python -m bench.pages_bench s3      # moto's S3 for the airlock: its URL on stdout, until stdin closes
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.common import ROOT, free_port, ms_summary

if TYPE_CHECKING:
    from bench import dataset
    from fivesafes_tes.db import Database
    from fivesafes_tes.egress.store import ObjectStore
    from fivesafes_tes.settings import AgentSettings

TRE = "bench-tre"
PROJECTS = ("alpha", "beta", "gamma")
ISSUER = "https://idp.bench.example"  # the checker's issuer, as their session names it
CHECKER = "bench-checker"
S3_KEYS = ("bench", "bench-secret", "us-east-1")
BIG = "big-csv"  # the child holding the large CSV
MB = 1_000_000
#: The table every child holds (every third with a small cell the rules flag), and its stdout.
TABLE = b"region,sex,n\nnorth,F,120\nnorth,M,131\nsouth,F,45\nsouth,M,52\n"
FLAGGED_TABLE = b"region,sex,n\nnorth,F,120\nnorth,M,3\nsouth,F,45\nsouth,M,52\n"
STDOUT = b"wrote /outputs/table.csv\n"
#: Rows of the large CSV (1-based data rows, as the rules count them) with a count below 10.
SMALL_ROWS = (2, 7, 19, 33)
STAT_PATH = "/_bench/stats"


def missing() -> list[str]:
    """What this benchmark needs that is not installed: moto's S3 server."""
    import importlib.util

    return [name for name in ("moto",) if importlib.util.find_spec(name) is None]


class PagesBenchError(RuntimeError):
    """The bench could not measure: a page was not what a checker would get, or a server failed."""


# --- the airlock ------------------------------------------------------------------------------


def serve_s3() -> None:
    """moto's S3 on loopback, its URL on the first line of stdout, until stdin closes."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print(json.dumps({"url": f"http://127.0.0.1:{port}"}), flush=True)
    sys.stdin.read()
    server.stop()


@contextmanager
def airlock_server() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.pages_bench", "s3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if not line:
            raise PagesBenchError("moto's S3 did not start")
        yield str(json.loads(line)["url"])
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def store_of(s3_url: str, bucket: str) -> ObjectStore:
    from fivesafes_tes.egress.store import ObjectStore

    return ObjectStore(s3_url, bucket, *S3_KEYS)


# --- the agent's pages, as the server process builds them ----------------------------------------


def agent_settings(folder: Path, database_url: str) -> AgentSettings:
    """The agent's settings for its pages: the session key is kept in `folder` (made on first use), so
    that the server and the bench sign and read the same cookies."""
    import secrets

    from pydantic import SecretStr

    from fivesafes_tes.settings import AgentSettings

    key_file = folder / "session-key"
    if not key_file.exists():
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_hex(32))
    return AgentSettings(
        tre=TRE,
        data_dir=folder,
        database_url=database_url,
        admin_listen="127.0.0.1:9",  # only names the pages' public URL; the server picks its port
        oidc_issuer=ISSUER,
        web_session_key=SecretStr(key_file.read_text()),
    )


def _validator(folder: Path) -> Any:
    from fivesafes_tes.auth import DevIssuer, StaticJwks, TokenValidator

    issuer = DevIssuer(folder / "idp", ISSUER)
    return TokenValidator(issuer.issuer_url, "fivesafes-tre", StaticJwks(issuer.jwks()), ["RS256"])


def pages_app(database_url: str, s3_url: str, bucket: str, folder: Path) -> Any:
    """The agent's admin app with its pages, as an agent builds it, on `database_url` and the airlock's
    `bucket`; wrapped to time each request inside the process and to count the bytes read from the
    airlock, which `STAT_PATH` reports (and resets)."""
    from fivesafes_tes.agent.admin_api import create_admin_app
    from fivesafes_tes.agent.loop import open_database
    from fivesafes_tes.agent.pages import site_for
    from fivesafes_tes.agent.policy import TrePolicy

    settings = agent_settings(folder, database_url)
    db = open_database(settings)
    validator = _validator(folder)
    store = store_of(s3_url, bucket)
    stats: dict[str, Any] = {"app_s": [], "get_objects": 0, "bytes": 0, "largest": 0}

    def counted(parsed: dict[str, Any] | None = None, **_: Any) -> None:
        size = int((parsed or {}).get("ContentLength") or 0)
        stats["get_objects"] += 1
        stats["bytes"] += size
        stats["largest"] = max(stats["largest"], size)

    store._client.meta.events.register("after-call.s3.GetObject", counted)
    app = create_admin_app(
        db,
        TRE,
        validator,
        site=site_for(settings, validator, db),
        policy=TrePolicy(allowed_images=["fivesafes/*"]),
        store=store,
    )

    @app.get(STAT_PATH, include_in_schema=False)
    def report() -> dict[str, Any]:
        answer = dict(stats)
        stats.update(app_s=[], get_objects=0, bytes=0, largest=0)
        return answer

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == STAT_PATH:
            await app(scope, receive, send)
            return
        began = time.perf_counter()

        async def sent(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                stats["app_s"].append(time.perf_counter() - began)

        await app(scope, receive, sent)

    return timed


def serve(port: int, database_url: str, s3_url: str, bucket: str, folder: str) -> None:
    """The pages' server process (`bench/server.py pages`): uvicorn, one worker, no access log."""
    import uvicorn

    app = pages_app(database_url, s3_url, bucket, Path(folder))
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False)


# --- what the checker's queue holds -----------------------------------------------------------


def write_csv(path: Path, size: int, seed: int = 13) -> int:
    """A deterministic count table of at least `size` bytes at `path`, written in chunks (never held
    whole): region, age band, sex, year and a count, the counts of `SMALL_ROWS` below 10. Its size."""
    rng = random.Random(seed)
    regions = ["north", "south", "east", "west", "midlands", "wales", "scotland", "ni"]
    bands = ["0-17", "18-39", "40-64", "65+"]
    written, row = 0, 0
    with path.open("w", newline="") as handle:
        handle.write("region,age_band,sex,year,n\n")
        written = handle.tell()
        while written < size:
            buffer = io.StringIO()
            out = csv.writer(buffer, lineterminator="\n")
            for _ in range(10_000):
                row += 1
                count = rng.randint(1, 9) if row in SMALL_ROWS else rng.randint(10, 50_000)
                out.writerow(
                    [rng.choice(regions), rng.choice(bands), rng.choice("FM"), 2000 + row % 25, count]
                )
            handle.write(buffer.getvalue())
            written = handle.tell()
    return written


def _task(outputs: list[str]) -> dict[str, Any]:
    return {
        "executors": [{"image": "fivesafes/stats:1", "command": ["python", "count.py"]}],
        "outputs": [{"path": p, "url": f"s3://results{p}", "type": "FILE"} for p in outputs],
    }


def hold_children(
    db: Database,
    store: ObjectStore,
    folder: Path,
    count: int,
    on_held: Callable[[str, int, int], None] | None = None,
) -> None:
    """`count` children of the bench's projects awaiting review, each holding a table (every third
    one the rules flag) and a step's stdout; created a minute apart, the last the oldest.

    Each is held as `agent.holding.hold` holds a run's outputs (the files its outputs claim, held in the
    airlock by `airlock.hold_outputs`, the rules run by `agent.checks.run`, a `HeldFileRecord` each),
    except that the rules run once per distinct file (name and bytes) and their findings are reused
    for the same file in every other child: each rule runs in a check process of its own, some 2 s a
    child, and the same bytes give the same findings."""
    from fivesafes_tes.agent import checks, staging
    from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild
    from fivesafes_tes.egress import airlock
    from fivesafes_tes.egress.checks.config import ChecksConfig
    from fivesafes_tes.executors import Collected

    files = {}
    for name, data in (("table.csv", TABLE), ("flagged.csv", FLAGGED_TABLE), ("stdout", STDOUT)):
        files[name] = folder / name
        files[name].write_bytes(data)
    config = ChecksConfig()
    found: dict[tuple[str, str, str], tuple[str, list[dict[str, Any]]]] = {}
    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    task = _task(["/outputs/table.csv"])
    outcome = {"outcome": "complete", "message": "", "steps": [{"exit_code": 0}]}

    def child_of(n: int) -> LocalChild:
        return LocalChild(
            child_id=f"child-{n:05d}",
            task_id=f"task-{n:05d}",
            attempt=1,
            stage="awaiting_review",
            project=PROJECTS[n % len(PROJECTS)],
            username=f"researcher-{n % 7}",
            task=task,
            result={"outcome": outcome},
            created_at=epoch + timedelta(minutes=count - n),
        )

    def held(n: int) -> Any:
        table = files["flagged.csv" if n % 3 == 0 else "table.csv"]
        collected = Collected(files={"/outputs/table.csv": table}, logs={(0, "stdout"): files["stdout"]})
        return airlock.hold_outputs(store, f"child-{n:05d}", 1, staging.claimed(task, collected, 1))

    # The airlock's round trips, a few per child, overlap on 8 threads; the rules and the rows do not.
    with ThreadPoolExecutor(8) as pool:
        for n, manifest in enumerate(pool.map(held, range(count))):
            child = child_of(n)
            for file in manifest.files:
                seen = (file.name, file.sha256, child.project)
                if seen not in found:
                    found[seen] = checks.run([file], config, child.project)[file.key]
            with db.write() as session:
                session.add(child)
                for file in manifest.files:
                    verdict, results = found[(file.name, file.sha256, child.project)]
                    key = airlock.held_key(child.child_id, file.key)
                    session.add(HeldFileRecord.of(file, child.child_id, key, verdict, results))
            if on_held:
                on_held("hold", n + 1, count)


def hold_big(db: Database, store: ObjectStore, path: Path) -> dict[str, Any]:
    """The child holding the large CSV at `path` (and a stdout), held by `agent.holding.hold` itself:
    the file streamed to the airlock, the rules run on it; what they found."""
    from sqlalchemy import select

    from fivesafes_tes.agent import holding
    from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild
    from fivesafes_tes.egress.checks.config import ChecksConfig
    from fivesafes_tes.executors import Collected

    stdout = path.with_name("big.stdout")
    stdout.write_bytes(STDOUT)
    child = LocalChild(
        child_id=BIG,
        task_id=f"task-{BIG}",
        attempt=1,
        stage="awaiting_review",
        project=PROJECTS[0],
        username="researcher-0",
        task=_task(["/outputs/big.csv"]),
        result={"outcome": {"outcome": "complete", "message": "", "steps": [{"exit_code": 0}]}},
        created_at=datetime(2027, 1, 1, tzinfo=UTC),  # the newest: last in the queue
    )
    with db.write() as session:
        session.add(child)
    began = time.perf_counter()
    collected = Collected(files={"/outputs/big.csv": path}, logs={(0, "stdout"): stdout})
    if not holding.hold(db, store, ChecksConfig(), child, collected):
        raise PagesBenchError("the airlock was unavailable while holding the large CSV")
    held_s = time.perf_counter() - began
    with db.read() as session:
        record = session.scalars(
            select(HeldFileRecord).where(
                HeldFileRecord.child_id == BIG, HeldFileRecord.name == "/outputs/big.csv"
            )
        ).one()
        findings = [f for r in record.results for f in r.get("findings") or [] if f.get("verdict") != "pass"]
        stored = store.head(record.key)
        return {
            "key": record.key,
            "csv_bytes": path.stat().st_size,
            "stored_bytes": stored.size if stored else 0,
            "verdict": record.verdict,
            "findings": len(findings),
            "flagged_rows": sorted({f["row"] for f in findings if isinstance(f.get("row"), int)})[:20],
            "hold_s": held_s,
        }


# --- the measurement ------------------------------------------------------------------------------


def session_cookie(folder: Path, database_url: str) -> dict[str, str]:
    """The checker's session, signed as the pages sign one (their key and cookie name, from the same
    settings), as a Cookie header: what a browser sends once its person has signed in."""
    from starlette.responses import Response

    from fivesafes_tes.agent.pages import site_for
    from fivesafes_tes.db import Database
    from fivesafes_tes.web import WebSession

    db = Database(database_url)
    try:
        cookies = site_for(agent_settings(folder, database_url), _validator(folder), db).cookies
    finally:
        db.dispose()
    me = WebSession(ISSUER, f"{CHECKER}-sub", CHECKER, frozenset({"output-checker"}), TRE, uuid.uuid4().hex)
    minted = Response()
    cookies.start_session(minted, me)
    value = minted.headers["set-cookie"].split(";", 1)[0]
    return {"cookie": value}


def check_pages(base_url: str, cookie: dict[str, str], children: int) -> None:
    """Before timing anything: the pages are what a checker gets (the whole queue counted, a page of
    it listed, the large table's first rows with its small cells marked), and nobody else gets them."""
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for path in ("/review", f"/review/{BIG}"):
            refused = client.get(path)
            if refused.status_code not in (303, 401, 403):
                raise PagesBenchError(f"GET {path} without a session answered {refused.status_code}")
        queue = client.get("/review", headers=cookie)
        if queue.status_code != 200:
            raise PagesBenchError(f"the queue page answered {queue.status_code}: {queue.text[:300]}")
        waiting = re.search(r"([\d,]+) waiting", queue.text)
        if not waiting or int(waiting.group(1).replace(",", "")) != children:
            raise PagesBenchError(f"the queue page does not count {children} waiting: {waiting}")
        if len(re.findall(r'<a href="/review/child-\d+">', queue.text)) != min(50, children - 1):
            raise PagesBenchError("the queue page does not list a page of children")
        page = client.get(f"/review/{BIG}", headers=cookie)
        if page.status_code != 200:
            raise PagesBenchError(f"the review page answered {page.status_code}: {page.text[:300]}")
        if "The first 50 rows (the first 64 KiB of" not in page.text or 'class="flagged"' not in page.text:
            raise PagesBenchError("the review page lacks the large table's first rows or its flagged cells")


def measure(
    server: Any,
    cookie: dict[str, str],
    path: str,
    requests: int,
    warmup: int,
    on_step: Callable[[str, int, int], None],
) -> dict[str, Any]:
    """`warmup` untimed requests, then `requests` timed by `bench/loadgen.py` one at a time; the
    server's own time on each and what it read from the airlock over the timed ones."""
    from bench.run import loadgen

    with httpx.Client(base_url=server.base_url, headers=cookie, timeout=60) as client:
        for n in range(warmup):
            client.get(path).raise_for_status()
            on_step("warmup", n + 1, warmup)
        client.get(STAT_PATH).raise_for_status()  # resets the server's counts
        spec = {"base_url": server.base_url, "headers": cookie, "concurrency": 1, "warmup": 0,
                "requests": requests, "raw": True, "items": [{"method": "GET", "path": path}]}  # fmt: skip
        result = loadgen(spec, server, on_step)
        stats = client.get(STAT_PATH).json()
    client_ms = ms_summary(result.pop("latencies_s"))
    return {
        "path": path,
        "requests": result["requests"],
        "warmup": warmup,
        **client_ms,
        "mean_ms": result["mean_ms"],
        "server": ms_summary(stats["app_s"]) if stats["app_s"] else {},
        "server_cpu_ms_per_request": result["server_cpu_ms_per_request"],
        "airlock_gets_per_request": stats["get_objects"] / result["requests"],
        "airlock_bytes_per_request": stats["bytes"] / result["requests"],
        "airlock_largest_read": stats["largest"],
    }


def run(
    backends: list[dataset.Backend],
    children: int,
    csv_mb: int,
    requests: int,
    warmup: int,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Both pages on each database in `backends`: a queue of `children` awaiting review (one of them
    the child holding a `csv_mb` MB CSV), and that child's review page."""
    from bench.common import SCRATCH
    from bench.run import serve
    from fivesafes_tes.agent.loop import open_database

    SCRATCH.mkdir(parents=True, exist_ok=True)  # the server's log goes there

    def step(what: str) -> None:
        if on_step:
            on_step(what)

    def progress(label: str) -> Callable[[str, int, int], None]:
        def update(phase: str, done: int, total: int) -> None:
            if on_progress:
                on_progress(f"{label} [dim]({phase})" if phase == "warmup" else label, done, total)

        return update

    quiet = logging.getLogger("fivesafes_tes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    out: dict[str, Any] = {"children": children, "csv_mb": csv_mb, "requests": requests, "warmup": warmup,
                           "cases": [], "seeding": []}  # fmt: skip
    try:
        with (
            tempfile.TemporaryDirectory(prefix="fivesafes-bench-pages-") as tmp,
            airlock_server() as s3_url,
        ):
            bucket = f"airlock-{uuid.uuid4().hex[:8]}"
            store = store_of(s3_url, bucket)
            store.ensure_bucket()
            step(f"writing the {csv_mb} MB CSV")
            big_csv = Path(tmp) / "big.csv"
            write_csv(big_csv, csv_mb * MB)
            for backend in backends:
                folder = Path(tmp) / backend.name
                folder.mkdir()
                url = backend.empty("pages")
                try:
                    db = open_database(agent_settings(folder, url))
                    try:
                        began = time.perf_counter()
                        # The queue holds `children`: the large CSV's child is one of them.
                        held = progress(f"{backend.name}: holding {children:,} children for review")
                        hold_children(db, store, folder, children - 1, held)
                        queue_s = time.perf_counter() - began
                        step(f"{backend.name}: holding the {csv_mb} MB CSV (the rules run on it)")
                        big = hold_big(db, store, big_csv)
                    finally:
                        db.dispose()
                    out["seeding"].append({"backend": backend.name, "children_s": queue_s, **big})
                    cookie = session_cookie(folder, url)
                    with serve("pages", url, s3_url, bucket, str(folder)) as server:
                        check_pages(server.base_url, cookie, children)
                        for page, path in (("queue", "/review"), ("review", f"/review/{BIG}")):
                            label = f"{backend.name}: {page} page"
                            result = measure(server, cookie, path, requests, warmup, progress(label))
                            out["cases"].append({"backend": backend.name, "page": page, **result})
                finally:
                    backend.drop(url)
    finally:
        quiet.setLevel(level)
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["s3"]:
        raise SystemExit("usage: python -m bench.pages_bench s3")
    serve_s3()
