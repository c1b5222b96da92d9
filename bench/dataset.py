"""Databases for the bench: fresh ones, and bulk-loaded ones with 10^3 and 10^6 tasks for one user.

Bulk rows bypass the API (SQLite ``executemany`` in one transaction, PostgreSQL ``COPY``) but hold
what CreateTask writes: a time-ordered UUIDv7 id, the document as ``create_task`` stores it, the
task's project, two tags, and one child per TRE of the project (in a stage matching the task's
state). Users and the federation (TREs, projects, memberships) are set up through the ORM.

The requesting user owns ``n`` tasks; four other users own ``n / 4`` more between them, in their
own projects, shuffled in time with hers, so a query that forgot its scope, or used the wrong
index, would show. The large database also holds a sparse user with 10^3 tasks among all those.
It is cached (SQLite file under bench/results/, PostgreSQL database on the server), keyed by
the migration files, and rebuilt when missing.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from bench.common import (
    OTHER_USERS,
    PROJECT_OF,
    RESULTS,
    SCRATCH,
    SPARSE_USER,
    TRES,
    USER,
    schema_key,
    settings,
    task_body,
)
from fivesafes_tes.auth import Claims, provision
from fivesafes_tes.auth.tables import User
from fivesafes_tes.db import Database
from fivesafes_tes.gateway.app import dev_issuer_url
from fivesafes_tes.submission.ids import encode_page_token
from fivesafes_tes.submission.stages import Stage
from fivesafes_tes.submission.tables import Child, Membership, Project, ProjectTre, Task, TaskTag, Tre
from fivesafes_tes.tes import TaskRequest

LOADER_VERSION = "2"  # bump when the rows below change, to invalidate cached databases
NAMES = (
    "diabetes-cancer-prevalence",
    "asthma-admissions-by-season",
    "statin-adherence",
    "covid-long-follow-up",
    "hba1c-trajectories",
    "sepsis-readmission",
    "copd-exacerbations",
    "maternal-outcomes-linkage",
)
# Mostly finished tasks, as in a long-lived deployment; each state with the stage its children are in.
STATES = (
    ("COMPLETE", 0.80, Stage.RELEASED),
    ("EXECUTOR_ERROR", 0.08, Stage.EXECUTOR_FAILED),
    ("CANCELED", 0.04, Stage.CANCELED),
    ("SYSTEM_ERROR", 0.03, Stage.SYSTEM_FAILED),
    ("RUNNING", 0.03, Stage.RUNNING),
    ("QUEUED", 0.02, Stage.RECEIVED),
)
STEP_MS = 997  # about one task a second, all in the past
SPARSE_TASKS = 1_000
Progress = Callable[[int, int], None]


class SchemaChanged(RuntimeError):
    """The schema grew a required column the loader does not fill."""


@dataclass
class Scope:
    """One user as the bench sees them in a database."""

    username: str
    user_id: int
    project_id: int
    tasks: int
    sample_ids: list[str] = field(default_factory=list)
    deep_token: str = ""


@dataclass
class Loaded:
    url: str
    all_tasks: int
    users: dict[str, Scope]
    cached: bool = False
    load_s: float | None = None


def population(n: int, *, sparse: bool) -> dict[str, int]:
    """Tasks per user: ``n`` for the requesting user, ``n / 4`` more for the others."""
    others = n // 4
    counts = {USER: n}
    for i, name in enumerate(OTHER_USERS):
        counts[name] = others // len(OTHER_USERS) + (1 if i < others % len(OTHER_USERS) else 0)
    if sparse:
        counts[SPARSE_USER] = SPARSE_TASKS
    return counts


# --- backends --------------------------------------------------------------------------------


class Backend:
    name: str

    def fresh(self, label: str) -> str:
        """URL of a new, empty, migrated database."""
        raise NotImplementedError

    def drop(self, url: str) -> None:
        raise NotImplementedError

    def empty(self, label: str) -> str:
        """URL of a new database with no tables, for another schema (the agent's) to migrate."""
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def cached(self, n: int, progress: Progress) -> Loaded:
        """The large database: reused when a complete one for this schema exists, else built."""
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"

    def fresh(self, label: str) -> str:
        path = SCRATCH / f"{label}.db"
        _remove_sqlite(path)
        url = f"sqlite:///{path}"
        _migrate(url)
        return url

    def drop(self, url: str) -> None:
        _remove_sqlite(Path(url.split("///", 1)[1]))

    def empty(self, label: str) -> str:
        path = SCRATCH / f"{label}.db"
        _remove_sqlite(path)
        return f"sqlite:///{path}"

    def version(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL)"

    def cached(self, n: int, progress: Progress) -> Loaded:
        path = RESULTS / f"list-{n}-{schema_key()}-v{LOADER_VERSION}.db"
        for stale in RESULTS.glob(f"list-{n}-*.db*"):
            if stale != path:
                stale.unlink()
        counts = population(n, sparse=True)
        url = f"sqlite:///{path}"
        if path.exists():
            return describe(url, counts, cached=True)
        building = path.with_name(path.name + ".building")
        _remove_sqlite(building)
        started = time.perf_counter()
        _migrate(f"sqlite:///{building}")
        load(f"sqlite:///{building}", counts, progress)
        building.rename(path)
        return describe(url, counts, cached=False, load_s=time.perf_counter() - started)


class PostgresBackend(Backend):
    name = "postgresql"
    PREFIX = "fivesafes_bench_"

    def __init__(self, server_url: str) -> None:
        self.server = make_url(server_url)
        self.admin = create_engine(self.server.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def _url(self, database: str) -> str:
        return self.server.set(database=database).render_as_string(hide_password=False)

    def fresh(self, label: str) -> str:
        url = self.empty(label)
        _migrate(url)
        return url

    def empty(self, label: str) -> str:
        name = f"{self.PREFIX}{label.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return self._url(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def version(self) -> str:
        with self.admin.connect() as conn:
            return "PostgreSQL " + conn.execute(text("SHOW server_version")).scalar_one().split()[0]

    def cached(self, n: int, progress: Progress) -> Loaded:
        key = f"{schema_key()}-v{LOADER_VERSION}"
        name = f"{self.PREFIX}list_{n}_{key}".replace("-", "_").lower()
        with self.admin.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname "
                    "LIKE :p"
                ),
                {"p": f"{self.PREFIX}list_{n}_%"},
            ).all()
        complete = False
        for datname, comment in rows:
            if datname == name and comment == f"complete {key}":
                complete = True
            else:  # a stale schema, or a load that was interrupted
                self.drop(self._url(datname))
        counts = population(n, sparse=True)
        url = self._url(name)
        if complete:
            return describe(url, counts, cached=True)
        started = time.perf_counter()
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        _migrate(url)
        load(url, counts, progress)
        with self.admin.connect() as conn:
            conn.execute(text(f"COMMENT ON DATABASE \"{name}\" IS 'complete {key}'"))
        return describe(url, counts, cached=False, load_s=time.perf_counter() - started)

    def close(self) -> None:
        self.admin.dispose()


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _migrate(url: str) -> None:
    db = Database(url)
    try:
        db.upgrade()
    finally:
        db.dispose()


# --- users and the federation ----------------------------------------------------------------


def claims_of(username: str) -> Claims:
    """The claims the gateway sees in a dev-issuer token for ``username`` with role researcher."""
    return Claims(
        issuer=dev_issuer_url(settings("sqlite://")),
        subject=username,
        username=username,
        email=None,
        roles=frozenset({"researcher"}),
        tre=None,
        raw={},
    )


def setup_federation(url: str, usernames: list[str]) -> dict[str, tuple[int, int]]:
    """Users as the gateway provisions them; the TREs; each user's project (their default) on
    every TRE. Returns username -> (user id, project id)."""
    db = Database(url)
    try:
        with db.write() as session:
            tres = [Tre(name=name, title=name) for name in TRES]
            session.add_all(tres)
            projects: dict[str, Project] = {}
            for name in dict.fromkeys(PROJECT_OF[u] for u in usernames):
                projects[name] = Project(name=name, title=name)
            session.add_all(projects.values())
            session.flush()
            session.add_all(ProjectTre(project_id=p.id, tre_id=t.id) for p in projects.values() for t in tres)
            out = {}
            for username in usernames:
                project = projects[PROJECT_OF[username]]
                user_id = provision(session, claims_of(username)).id
                session.add(
                    Membership(project_id=project.id, username=username, user_id=user_id, is_default=True)
                )
                out[username] = (user_id, project.id)
            session.flush()
            return out
    finally:
        db.dispose()


def tre_ids(url: str) -> list[int]:
    db = Database(url)
    try:
        with db.read() as session:
            return list(session.scalars(select(Tre.id).where(Tre.name.in_(TRES)).order_by(Tre.name)))
    finally:
        db.dispose()


# --- bulk load -------------------------------------------------------------------------------

TASK_COLUMNS = (
    "id",
    "owner_id",
    "project_id",
    "name",
    "state",
    "created_at",
    "updated_at",
    "document",
    "system_logs",
)
TAG_COLUMNS = ("task_id", "key", "value")
CHILD_COLUMNS = (
    "id",
    "task_id",
    "tre_id",
    "stage",
    "attempt",
    "lease_expires_at",
    "cancel_acknowledged",
    "started_at",
    "ended_at",
    "updated_at",
    "system_logs",
    "report",
)


def check_columns() -> None:
    """Fail clearly when the schema grew a required column the loader does not fill."""
    for table, filled in ((Task, TASK_COLUMNS), (TaskTag, TAG_COLUMNS), (Child, CHILD_COLUMNS)):
        columns = table.__table__.columns
        missing = [
            c.name for c in columns if c.name not in filled and not c.nullable and c.server_default is None
        ]
        unknown = [name for name in filled if name not in columns]
        if missing or unknown:
            raise SchemaChanged(
                f"{table.__tablename__}: the bench loader does not fill {missing} and fills {unknown} which "
                f"are "
                "gone; update bench/dataset.py (and bench/ceiling.py) and bump LOADER_VERSION"
            )


def _documents() -> dict[str, dict]:
    """The stored document for each name, as ``create_task`` stores it."""
    out = {}
    for name in NAMES:
        request = TaskRequest.model_validate(task_body(name))
        out[name] = request.model_dump(mode="json", exclude_none=True, exclude={"tags"})
    return out


@dataclass
class Row:
    task_id: str
    owner_id: int
    project_id: int
    project: str
    name: str
    state: str
    stage: str
    created_ms: int
    study: str
    child_ids: list[str]


def _uuid7(ms: int, getrandbits: Callable[[int], int]) -> str:
    h = f"{ms:012x}"
    b = f"{(0b10 << 62) | getrandbits(62):016x}"
    return f"{h[:8]}-{h[8:]}-7{getrandbits(12):03x}-{b[:4]}-{b[4:]}"


def _rows(
    counts: dict[str, int], scopes: dict[str, tuple[int, int]], n_tres: int, seed: int = 7
) -> Iterator[Row]:
    """Every task of every user, oldest first, the users' tasks shuffled together in time."""
    rng = random.Random(seed)
    owners = [name for name, count in counts.items() for _ in range(count)]
    rng.shuffle(owners)
    start_ms = int(time.time() * 1000) - (len(owners) + 1000) * STEP_MS
    getrandbits, rand = rng.getrandbits, rng.random
    thresholds, acc = [], 0.0
    for state, weight, stage in STATES:
        acc += weight
        thresholds.append((acc, state, stage.value))
    for i, owner in enumerate(owners):
        ms = start_ms + i * STEP_MS
        r = rand()
        _, state, stage = next((t for t in thresholds if r < t[0]), thresholds[-1])
        user_id, project_id = scopes[owner]
        yield Row(
            task_id=_uuid7(ms, getrandbits),
            owner_id=user_id,
            project_id=project_id,
            project=PROJECT_OF[owner],
            name=NAMES[i % len(NAMES)],
            state=state,
            stage=stage,
            created_ms=ms,
            study=f"study-{i % 50}",
            child_ids=[_uuid7(ms, getrandbits) for _ in range(n_tres)],
        )


def load(url: str, counts: dict[str, int], progress: Progress) -> None:
    """Set up users and federation, then bulk-load the tasks into the migrated, empty database."""
    check_columns()
    scopes = setup_federation(url, list(counts))
    tres = tre_ids(url)
    rows = _rows(counts, scopes, len(tres))
    total = sum(counts.values())
    if url.startswith("sqlite"):
        _load_sqlite(Path(url.split("///", 1)[1]), rows, tres, total, progress)
    else:
        _load_postgres(url, rows, tres, total, progress)


CHUNK = 50_000
FINAL = {s.value for s in Stage if s.is_final}


def _chunks(rows: Iterator[Row]) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _times(row: Row) -> tuple[datetime, datetime | None, datetime | None]:
    created = datetime.fromtimestamp(row.created_ms / 1000, UTC)
    started = (
        None if row.stage == Stage.RECEIVED.value else datetime.fromtimestamp(row.created_ms / 1000 + 60, UTC)
    )
    ended = datetime.fromtimestamp(row.created_ms / 1000 + 600, UTC) if row.stage in FINAL else None
    return created, started, ended


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _load_sqlite(path: Path, rows: Iterator[Row], tres: list[int], total: int, progress: Progress) -> None:
    # Serialise values with SQLAlchemy's own bind processors, so rows read back as the ORM wrote them.
    engine = create_engine("sqlite://")
    dialect = engine.dialect
    columns = Task.__table__.c
    as_datetime = columns.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    as_json = columns.document.type.dialect_impl(dialect).bind_processor(dialect)
    documents = {name: as_json(doc) for name, doc in _documents().items()}
    empty_list, empty_dict = as_json([]), as_json({})
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("PRAGMA cache_size=-1048576")  # 1 GiB: the indexes stay in memory while loading
        con.execute("BEGIN")
        done = 0
        for chunk in _chunks(rows):
            tasks, tags, children = [], [], []
            for row in chunk:
                created, started, ended = (as_datetime(t) if t else None for t in _times(row))
                updated = ended or started or created
                tasks.append(
                    (
                        row.task_id,
                        row.owner_id,
                        row.project_id,
                        row.name,
                        row.state,
                        created,
                        updated,
                        documents[row.name],
                        empty_list,
                    )
                )
                tags.append((row.task_id, "project", row.project))
                tags.append((row.task_id, "study", row.study))
                for child_id, tre_id in zip(row.child_ids, tres, strict=True):
                    children.append(
                        (
                            child_id,
                            row.task_id,
                            tre_id,
                            row.stage,
                            1,
                            None,
                            0,
                            started,
                            ended,
                            updated,
                            empty_list,
                            empty_dict,
                        )
                    )
            con.executemany(_insert("tasks", TASK_COLUMNS), tasks)
            con.executemany(_insert("task_tags", TAG_COLUMNS), tags)
            con.executemany(_insert("task_children", CHILD_COLUMNS), children)
            done += len(chunk)
            progress(done, total)
        con.execute("COMMIT")
        con.execute("PRAGMA journal_mode=WAL")  # as the gateway leaves it
    finally:
        con.close()
    engine.dispose()


def _copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _load_postgres(url: str, rows: Iterator[Row], tres: list[int], total: int, progress: Progress) -> None:
    documents = {name: _copy_text(json.dumps(doc)) for name, doc in _documents().items()}
    engine = create_engine(url)
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cur:
            cur.execute("SET session_replication_role = replica")  # no FK triggers: the rows are consistent
            cur.execute("SET synchronous_commit = off")
            done = 0
            for chunk in _chunks(rows):
                tasks, tags, children = [], [], []
                for row in chunk:
                    created, started, ended = (t.isoformat(sep=" ") if t else "\\N" for t in _times(row))
                    updated = ended if ended != "\\N" else started if started != "\\N" else created
                    tasks.append(
                        f"{row.task_id}\t{row.owner_id}\t{row.project_id}\t{row.name}\t{row.state}\t"
                        f"{created}\t{updated}\t{documents[row.name]}\t[]\n"
                    )
                    tags.append(f"{row.task_id}\tproject\t{row.project}\n{row.task_id}\tstudy\t{row.study}\n")
                    for child_id, tre_id in zip(row.child_ids, tres, strict=True):
                        children.append(
                            f"{child_id}\t{row.task_id}\t{tre_id}\t{row.stage}\t1\t\\N\tf\t{started}\t"
                            f"{ended}\t{updated}\t[]\t{{}}\n"
                        )
                for table, columns, lines in (
                    ("tasks", TASK_COLUMNS, tasks),
                    ("task_tags", TAG_COLUMNS, tags),
                    ("task_children", CHILD_COLUMNS, children),
                ):
                    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        copy.write("".join(lines))
                done += len(chunk)
                progress(done, total)
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            for table in ("tasks", "task_tags", "task_children", "users", "memberships", "projects"):
                cur.execute(f"VACUUM (ANALYZE) {table}")  # what autovacuum would have done by now
    finally:
        raw.close()
        engine.dispose()


# --- what the queries need -------------------------------------------------------------------


def describe(url: str, counts: dict[str, int], *, cached: bool, load_s: float | None = None) -> Loaded:
    db = Database(url)
    try:
        with db.read() as session:
            users = dict(
                session.execute(select(User.username, User.id).where(User.username.in_(counts))).all()
            )
            memberships = dict(
                session.execute(
                    select(Membership.username, Membership.project_id).where(Membership.username.in_(counts))
                ).all()
            )
    finally:
        db.dispose()
    scopes = {name: Scope(name, users[name], memberships[name], count) for name, count in counts.items()}
    return Loaded(url=url, all_tasks=sum(counts.values()), users=scopes, cached=cached, load_s=load_s)


def prepare_queries(url: str, scope: Scope, samples: int, seed: int = 11) -> None:
    """Pick ``samples`` random task ids of the user, and the page token of the page halfway down."""
    db = Database(url)
    rng = random.Random(seed)
    mine = Task.owner_id == scope.user_id
    try:
        with db.read() as session:
            lo, hi = session.execute(select(func.min(Task.id), func.max(Task.id)).where(mine)).one()
            lo_ms, hi_ms = int(lo[:8] + lo[9:13], 16), int(hi[:8] + hi[9:13], 16)
            ids = []
            for _ in range(samples):
                h = f"{rng.randint(lo_ms, hi_ms):012x}"
                probe = select(Task.id).where(mine, Task.id >= f"{h[:8]}-{h[8:]}").order_by(Task.id).limit(1)
                ids.append(session.scalar(probe) or hi)
            halfway = (
                select(Task.id).where(mine).order_by(Task.id.desc()).offset(scope.tasks // 2 - 1).limit(1)
            )
            scope.deep_token = encode_page_token(session.scalar(halfway))
        scope.sample_ids = ids
    finally:
        db.dispose()


def file_size(url: str) -> int | None:
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1]
    files = (Path(path + suffix) for suffix in ("", "-wal"))
    return sum(file.stat().st_size for file in files if file.exists())
