"""The server under test, in its own process: the gateway or the ceiling, one uvicorn worker.

    python -m bench.server gateway DATABASE_URL PORT
    python -m bench.server ceiling DATABASE_URL PORT OWNER_ID PROJECT_ID TRE_ID,TRE_ID
    python -m bench.server pages DATABASE_URL PORT S3_URL BUCKET FOLDER   # an agent's pages, its database

DATABASE_URL ``-`` reads it from $BENCH_DATABASE_URL instead (it may hold a password).

Both apps are served with the same uvicorn settings (uvloop and httptools when installed,
as uvicorn picks them by default; no access log, which would only measure the terminal).
"""

from __future__ import annotations

import os
import sys

import uvicorn

from bench import ceiling
from bench.common import settings
from fivesafes_tes.db import Database
from fivesafes_tes.gateway.app import create_app


def main(argv: list[str]) -> None:
    kind, url, port = argv[0], argv[1], int(argv[2])
    if url == "-":
        url = os.environ["BENCH_DATABASE_URL"]
    if kind == "gateway":
        app = create_app(settings(url))
    elif kind == "ceiling":
        tres = [int(t) for t in argv[5].split(",") if t]
        app = ceiling.create_app(Database(url), owner_id=int(argv[3]), project_id=int(argv[4]), tre_ids=tres)
    elif kind == "pages":
        from bench import pages_bench

        pages_bench.serve(port, url, argv[3], argv[4], argv[5])
        return
    else:
        raise SystemExit(f"unknown app {kind!r}: gateway, ceiling or pages")
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
