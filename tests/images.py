"""Test fixtures for the Docker engine and the locally built image (see fivesafes_tes.devimages)."""

from __future__ import annotations

import shutil

import pytest

from fivesafes_tes.devimages import BUSYBOX_IMAGE, busybox_rootfs, ensure_busybox_image, ensure_runner_image

__all__ = [
    "BUSYBOX_IMAGE",
    "busybox_image",
    "busybox_rootfs",
    "docker_client",
    "ensure_busybox_image",
    "ensure_runner_image",
    "runner_image",
]


@pytest.fixture(scope="session")
def docker_client():
    """A client of the engine from DOCKER_HOST (scripts/services.sh --with-docker); skip locally,
    fail in CI."""
    from tests.conftest import need_service

    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001  no SDK, no socket, engine down: all mean "no Docker here"
        need_service("Docker", False, f"{exc}; run scripts/services.sh --with-docker")
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client) -> str:
    """The test image's name, built on first use. Needs a `docker_client` fixture (skip/fail if no engine)."""
    return ensure_busybox_image(docker_client)


@pytest.fixture(scope="session")
def runner_image(docker_client) -> str:
    """The workflow runner image, built once per engine and recipe (a minute or two: debootstrap and
    PyPI), then reused by every test that runs a workflow or a CWL crate."""
    from tests.conftest import need_service

    need_service(
        "debootstrap", shutil.which("debootstrap") is not None, "run scripts/services.sh --with-docker"
    )
    return ensure_runner_image(docker_client)
