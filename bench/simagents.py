"""Simulated TRE agents for the fan-out benchmark, in their own process: one thread per TRE.

Each thread speaks the agent protocol through the real `GatewayClient`: it long-polls for leases,
reports `staging` then `running` for every child it is granted (no approval, no container), and
acknowledges cancellations. That is the least an agent can do, so the time a fanned-out task takes
to reach RUNNING is the gateway's own.

Reads one JSON line on stdin: {"base_url", "wait_s", "agents": [{"tre", "token"}, ...]}. Writes JSON
lines on stdout: ``ready`` once every agent has made its first lease call, then per child
``running`` (with the wall-clock times its lease came back and its running event was accepted) and
per cancellation ``ack``. Exits when stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from fivesafes_tes.agent.client import GatewayClient

_out = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _out:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def serve(client: GatewayClient, tre: str, wait_s: float, ready: threading.Barrier) -> None:
    first = True
    while True:
        try:
            answer = client.lease(0 if first else wait_s)
        except ConnectionError:
            return  # closed: the bench is over
        leased_at = time.time()
        if first:
            first = False
            ready.wait()
        for cancel in answer["cancel"]:
            client.cancel_ack(cancel["child_id"])
            emit("ack", tre=tre, child_id=cancel["child_id"])
        for grant in answer["leases"]:
            child, attempt = grant["child_id"], grant["attempt"]
            client.event(child, attempt, 0, "staging", None, None)
            client.event(child, attempt, 1, "running", None, None)
            emit("running", tre=tre, task_id=grant["task_id"], leased_at=leased_at, running_at=time.time())


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    agents = spec["agents"]
    ready = threading.Barrier(len(agents) + 1)
    clients = []
    for agent in agents:
        client = GatewayClient(spec["base_url"], lambda token=agent["token"]: token, timeout_s=30)
        clients.append(client)
        threading.Thread(
            target=serve, args=(client, agent["tre"], spec["wait_s"], ready), name=agent["tre"], daemon=True
        ).start()
    ready.wait(timeout=60)
    emit("ready")
    sys.stdin.read()  # until the bench closes our stdin
    for client in clients:
        client.close()


if __name__ == "__main__":
    main()
