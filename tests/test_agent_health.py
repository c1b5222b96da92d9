"""The agent's probes, on a real agent serving the TRE's own API: `/healthz` answers 503 once a thread
of the agent has died or its work loop has stalled, `/readyz` until the agent has recovered and
synced with the gateway and while its database does not answer. Neither needs a token, and neither
says anything about a task."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fivesafes_tes import devstack
from fivesafes_tes.agent.health import Probes
from fivesafes_tes.agent.loop import Agent
from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.settings import AgentSettings

# Everything a probe may say: a fixed word, or a duration. No names, ids or counts.
SAYS = re.compile(
    r"ok|unavailable|unreachable|not finished|not synced yet|stopped: [a-z, ]+"
    r"|stuck: no pass started in \d+ s \(limit \d+ s\)|last synced \d+ s ago \(limit \d+ s\)"
)


class Gateway:
    """The gateway client as the agent uses it while idle. `up` false: the gateway does not answer;
    `hang` set: a sync never returns until it is cleared; `die`: the next sync kills the worker."""

    def __init__(self) -> None:
        self.up = False
        self.die = False
        self.hang = threading.Event()
        self.closed = threading.Event()

    def lease(self, wait_s: float) -> dict[str, Any]:
        if self.closed.wait(min(wait_s, 0.05)):
            raise ConnectionError("closed")
        return {"leases": [], "cancel": []}

    def heartbeat(self, held: list[tuple[str, int]]) -> dict[str, str]:
        return {}

    def sync(self) -> dict[str, Any]:
        if self.die:
            raise SystemExit  # not an Exception: the worker thread ends, as on a bug that escapes it
        while self.hang.is_set() and not self.closed.is_set():
            time.sleep(0.02)
        if not self.up:
            raise ConnectionError("the gateway does not answer")
        return {"projects": []}

    def publish_policy(self, admission: dict[str, Any]) -> bool:
        return True

    def push_decisions(self, body: list[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        self.closed.set()


class Executor:
    def sweep(self, keep: set[str]) -> list[str]:
        return []


class Airlock:
    def ensure_bucket(self) -> None:
        pass


@dataclass
class Running:
    agent: Agent
    gateway: Gateway
    url: str
    database: Path

    def probe(self, route: str) -> httpx.Response:
        response = httpx.get(self.url + route, timeout=5)  # no token
        assert set(response.json()) == (
            {"status", "threads", "worker"}
            if route == "/healthz"
            else {"status", "database", "recovery", "gateway"}
        )
        for value in response.json().values():
            assert SAYS.fullmatch(value), value
        return response


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    port = devstack.free_port()
    database = tmp_path / "db"
    settings = AgentSettings(
        tre="uk-tre",
        data_dir=tmp_path / "agent",
        database_url=f"sqlite:///{database / 'agent.db'}",
        admin_listen=f"127.0.0.1:{port}",
        oidc_issuer="https://idp.tre.example",
        oidc_jwks_url="https://idp.tre.example/jwks.json",  # never fetched: no token is presented
        tick_s=0.05,
        sync_s=0.1,
        gateway_timeout_s=0.1,
        heartbeat_s=0.2,
        work_error_wait_s=0.05,
        worker_stall_s=2.0,
    )
    gateway = Gateway()
    agent = Agent(
        settings,
        client=gateway,  # type: ignore[arg-type]
        executor=Executor(),  # type: ignore[arg-type]
        store=Airlock(),  # type: ignore[arg-type]
        policy=TrePolicy(),
    )
    agent.start()
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code > 0
        except httpx.TransportError:
            return False

    until(serving)
    yield Running(agent, gateway, url, database)
    gateway.hang.clear()
    agent.shutdown(timeout=5)
    agent.db.dispose()


def test_an_agent_is_ready_once_it_has_recovered_and_synced_and_not_when_its_syncs_stop(running):
    assert running.probe("/healthz").status_code == 200
    waiting = running.probe("/readyz")
    assert waiting.status_code == 503
    assert waiting.headers["retry-after"]
    assert waiting.json() == {
        "status": "unavailable",
        "database": "ok",
        "recovery": "ok",  # start() recovers before it serves
        "gateway": "not synced yet",
    }
    running.gateway.up = True
    until(lambda: running.probe("/readyz").status_code == 200)
    assert running.probe("/readyz").json() == {
        "status": "ok",
        "database": "ok",
        "recovery": "ok",
        "gateway": "ok",
    }
    running.gateway.up = False  # the gateway goes away: ready until its last sync is old
    until(lambda: running.probe("/readyz").status_code == 503)
    assert running.probe("/readyz").json()["gateway"].startswith("last synced")
    assert running.probe("/healthz").status_code == 200  # waiting for the gateway is not ill health


def test_an_agent_whose_database_does_not_answer_is_not_ready(running, tmp_path):
    running.gateway.up = True
    until(lambda: running.probe("/readyz").status_code == 200)
    shutil.move(running.database, tmp_path / "elsewhere")
    running.agent.db.dispose()  # no connection made before: every new one fails
    gone = running.probe("/readyz")
    assert gone.status_code == 503
    assert gone.json()["database"] == "unreachable"
    shutil.move(tmp_path / "elsewhere", running.database)
    until(lambda: running.probe("/readyz").status_code == 200)


def test_an_agent_whose_work_loop_is_stuck_is_unhealthy_until_it_moves_again(running):
    running.gateway.up = True
    until(lambda: running.probe("/readyz").status_code == 200)
    running.gateway.hang.set()  # the next sync hangs, and the worker with it
    until(lambda: running.probe("/healthz").status_code == 503)
    stuck = running.probe("/healthz").json()
    assert stuck["status"] == "unavailable"
    assert stuck["threads"] == "ok"
    assert stuck["worker"].startswith("stuck: no pass started in ")
    running.gateway.hang.clear()
    until(lambda: running.probe("/healthz").status_code == 200)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # its death, on purpose
def test_an_agent_whose_worker_thread_died_is_unhealthy(running):
    assert running.probe("/healthz").status_code == 200
    running.gateway.die = True
    until(lambda: running.probe("/healthz").status_code == 503)
    assert running.probe("/healthz").json()["threads"] == "stopped: worker"


def test_an_agent_that_has_not_recovered_is_not_ready(tmp_path):
    agent = Agent(
        AgentSettings(tre="uk-tre", data_dir=tmp_path),
        client=Gateway(),  # type: ignore[arg-type]
        executor=Executor(),  # type: ignore[arg-type]
        store=Airlock(),  # type: ignore[arg-type]
        policy=TrePolicy(),
    )
    assert agent.probes.readiness(agent.db) == {
        "status": "unavailable",
        "database": "ok",
        "recovery": "not finished",
        "gateway": "not synced yet",
    }
    agent.recover()
    assert agent.probes.readiness(agent.db)["recovery"] == "ok"
    agent.db.dispose()


def test_an_app_without_an_agent_behind_it_is_never_ready(tmp_path):
    """The TRE's API served on its own (tests, tools) has no threads to watch and has synced nothing."""
    from fastapi.testclient import TestClient

    from fivesafes_tes.agent.admin_api import create_admin_app
    from fivesafes_tes.auth import StaticJwks, TokenValidator
    from fivesafes_tes.db import Database

    db = Database(f"sqlite:///{tmp_path / 'agent.db'}")
    validator = TokenValidator(
        "https://idp.tre.example", "fivesafes-tre", StaticJwks({"keys": []}), ["RS256"]
    )
    client = TestClient(create_admin_app(db, "uk-tre", validator))
    assert client.get("/healthz").json() == {"status": "ok", "threads": "ok", "worker": "ok"}
    assert client.get("/readyz").status_code == 503
    probes = Probes(stall_s=60, sync_stale_s=60)
    probes.mark_recovered()
    probes.mark_synced()
    ready = TestClient(create_admin_app(db, "uk-tre", validator, probes=probes))
    assert ready.get("/readyz").status_code == 200
    db.dispose()
