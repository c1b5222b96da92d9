"""Logging as every long-running command sets it up: our records at the chosen level, and the HTTP and
S3 libraries kept at WARNING, because at DEBUG botocore logs request signatures and httpx logs URLs."""

from __future__ import annotations

import logging

QUIET = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore", "werkzeug", "docker")


def configure(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
