"""`fivesafes-tes build-runner-image`: the image workflows run in, built in this machine's Docker."""

from __future__ import annotations

import time

import typer
from rich.markup import escape

from fivesafes_tes.cli import _output

app = typer.Typer()


@app.command("build-runner-image")
def build_runner_image() -> None:
    """Build the workflow runner image in this machine's Docker engine (debootstrap and PyPI; once
    per recipe). A TRE's policy must allow it for workflows to run there."""
    import docker

    from fivesafes_tes.devimages import ensure_runner_image

    started = time.monotonic()
    try:
        client = docker.from_env()
        image = ensure_runner_image(client, log=lambda line: _output.err.print(line, highlight=False))
    except (RuntimeError, docker.errors.DockerException) as exc:
        _output.err.print(f"[red]Cannot build the runner image:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    _output.err.print(f"{image} is ready ({time.monotonic() - started:.0f} s)")
    typer.echo(image)
