"""An embedded federation in its own process, for the federation benchmarks.

    python -m bench.stack DIR [--agents] [--s3] [--report-granularity-s G]

``fivesafes_tes.devstack.start(DIR)``: the gateway (SQLite in DIR) with the embedded federation;
with ``--agents`` also S3 and the devstack's two agents (Docker executor), as `fivesafes-tes dev`
runs them; with ``--s3`` an S3 endpoint for an agent started elsewhere. Prints one JSON line when it
answers (URL, database, S3, a researcher token for alice and an agent token per TRE), then serves
until its stdin closes or it gets SIGTERM. Out of the bench's own process, so that the client that
times it never shares an interpreter with it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

# What `fivesafes-tes dev` has as its main module, and no more: the agents' check runner starts its
# worker processes with multiprocessing (forkserver), and each of them imports the parent's main
# module again, so this import is part of every hold, as it is under the real command.
import fivesafes_tes.cli  # noqa: F401

TTL_S = 6 * 3600


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.stack")
    p.add_argument("dir", type=Path)
    p.add_argument("--agents", action="store_true", help="run the devstack's agents (Docker executor)")
    p.add_argument("--s3", action="store_true", help="serve S3 for an agent in another process")
    p.add_argument(
        "--report-granularity-s", type=float, help="the agents' reporting granularity (default: theirs, 5 s)"
    )
    args = p.parse_args(argv)
    from fivesafes_tes import devstack

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    stack = devstack.start(
        args.dir, agents=args.agents, executor="docker", report_granularity_s=args.report_granularity_s
    )
    moto = None
    s3_url = stack.s3_url
    if args.s3 and s3_url is None:
        from moto.server import ThreadedMotoServer

        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=devstack.free_port(), verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        s3_url = f"http://{host}:{port}"
    audience = stack.settings.oidc_audience
    tres = list(devstack.DEV_FEDERATION["tres"])
    info = {
        "url": stack.url,
        "database_url": stack.settings.effective_database_url,
        "s3_url": s3_url,
        "researcher_token": stack.token("alice", ttl_s=TTL_S),
        "agent_tokens": {
            tre: stack.issuer.issue(f"agent-{tre}", ["tre-agent"], audience=audience, tre=tre, ttl_s=TTL_S)
            for tre in tres
        },
        "agent_databases": {tre: str(args.dir / "tres" / tre / "agent.db") for tre in tres}
        if args.agents
        else {},
    }
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print(json.dumps(info), flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        stack.stop()
        if moto is not None:
            moto.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
