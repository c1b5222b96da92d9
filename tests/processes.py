"""The gateway and a TRE agent as real processes, for the kill -9 tests.

`GatewayProcess` runs `fivesafes-tes gateway`; `agent_env` and `start_agent` run
`fivesafes-tes agent` with a TRE of their own, and `approve_all` makes its admins' approvals.
Both take extra environment, e.g. `FIVESAFES_FAILPOINTS` (see `fivesafes_tes.failpoints`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml


class GatewayProcess:
    """`fivesafes-tes gateway` as a child process; start() returns once /readyz answers 200."""

    def __init__(
        self,
        *,
        database_url: str,
        data_dir: Path,
        port: int,
        public_url: str,
        log: Path,
        lease_ttl_s: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FIVESAFES_")}
        self.env.update(
            {
                "FIVESAFES_DATABASE_URL": database_url,
                "FIVESAFES_DEV_ISSUER": "true",
                "FIVESAFES_DATA_DIR": str(data_dir),
                "FIVESAFES_PUBLIC_URL": public_url,
                "FIVESAFES_ALLOWED_IMAGES": '["*"]',
                "FIVESAFES_LEASE_TTL_S": str(lease_ttl_s),
                **(env or {}),
            }
        )

    def spawn(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fivesafes_tes.cli", "gateway", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway on {self.url} not ready after {timeout}s:\n{self.tail()}")
            time.sleep(0.05)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def kill9(self) -> None:
        assert self.proc is not None, "the gateway died before the kill"
        assert self.proc.poll() is None, "the gateway died before the kill"
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def agent_env(
    gateway_url: str,
    token: str,
    s3,
    home: Path,
    tre: str = "uk-tre",
    *,
    bucket: str = "uk-airlock",
    policy: dict | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of an agent for `tre` with a synthetic OMOP dataset granted to
    diabetes-cancer; `policy` adds to (or replaces keys of) its policy file."""
    from fivesafes_tes.synthetic import generate

    dataset = home / "omop"
    generate(dataset, tre, 1, n_persons=50)
    policy_file = home / "policy.yaml"
    policy_file.write_text(
        yaml.safe_dump(
            {
                "allowed_images": ["fivesafes/*"],
                "datasets": {"omop": {"path": str(dataset)}},
                "grants": {"diabetes-cancer": ["omop"]},
                **(policy or {}),
            }
        )
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FIVESAFES_")}
    environment.update(
        {
            "FIVESAFES_AGENT_TRE": tre,
            "FIVESAFES_AGENT_GATEWAY_URL": gateway_url,
            "FIVESAFES_AGENT_TOKEN": token,
            "FIVESAFES_AGENT_DATA_DIR": str(home),
            "FIVESAFES_AGENT_POLICY_FILE": str(policy_file),
            "FIVESAFES_AGENT_AIRLOCK_ENDPOINT_URL": s3.url,
            "FIVESAFES_AGENT_AIRLOCK_ACCESS_KEY": s3.access_key,
            "FIVESAFES_AGENT_AIRLOCK_SECRET_KEY": s3.secret_key,
            "FIVESAFES_AGENT_AIRLOCK_BUCKET": bucket,
            "FIVESAFES_AGENT_POLL_WAIT_S": "5",
            "FIVESAFES_AGENT_SYNC_S": "1",
            "FIVESAFES_AGENT_HEARTBEAT_S": "2",
            "FIVESAFES_AGENT_TICK_S": "0.2",
            **(env or {}),
        }
    )
    return environment


def start_agent(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fivesafes_tes.cli", "agent"],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )


def approve_all(env: dict[str, str]) -> None:
    """The TRE admins' approvals of diabetes-cancer and alice, through the domain functions on the
    agent's database: these agents serve no admin API (they open no listening socket)."""
    from sqlalchemy.exc import OperationalError

    from fivesafes_tes.agent import approvals
    from fivesafes_tes.agent.tables import LocalProject
    from fivesafes_tes.auth import Person
    from fivesafes_tes.db import Database

    url = (
        env.get("FIVESAFES_AGENT_DATABASE_URL")
        or f"sqlite:///{Path(env['FIVESAFES_AGENT_DATA_DIR']) / 'agent.db'}"
    )
    db = Database(url)
    admin = Person("https://idp.tre.example", "tre-admin", "tre-admin")
    deadline = time.monotonic() + 30
    try:
        while True:  # until the agent has made its database and synced once
            try:
                with db.read() as session:
                    if session.get(LocalProject, "diabetes-cancer") is not None:
                        break
            except OperationalError:
                pass
            assert time.monotonic() < deadline, "the agent never synced its projects"
            time.sleep(0.3)
        with db.write() as session:
            approvals.decide(session, admin, "diabetes-cancer", "approved")
            approvals.decide(session, admin, "diabetes-cancer", "approved", username="alice")
    finally:
        db.dispose()
