"""`fivesafes-tes filer`: the Kubernetes executor's own step, run in pods of our image (never by hand).

Everything comes from the pod: folders and the capability file by environment variables the executor
sets, the capability itself from a mounted Secret, so no secret is ever on a command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.markup import escape

from fivesafes_tes.cli import _output

app = typer.Typer(
    help="The Kubernetes executor's filer: moves a run's files in and out of its volume.",
    no_args_is_help=True,
)

INPUTS = "FIVESAFES_FILER_INPUTS"  # the mounted inputs Secret
VOLUME = "FIVESAFES_FILER_VOLUME"  # the run's volume
CAPABILITY = "FIVESAFES_FILER_CAPABILITY"  # the file of the mounted stage-out Secret


def _path(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        _output.err.print(f"[red]Cannot stage:[/] {variable} is not set (the executor sets it in the pod)")
        raise typer.Exit(2)
    return Path(value)


@app.command("stage-in")
def stage_in() -> None:
    """Write the run's inputs into its volume, read-only, and make its writable folders."""
    from fivesafes_tes.executors.filer import FilerError
    from fivesafes_tes.executors.filer import stage_in as run

    try:
        count = run(_path(INPUTS), _path(VOLUME))
    except (FilerError, OSError, ValueError, KeyError) as exc:
        _output.err.print(f"[red]Cannot stage the inputs in:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    _output.err.print(f"staged {count} input(s) in")


@app.command("stage-out")
def stage_out() -> None:
    """Upload the files the run left in its writable folders to its staging area, then the manifest."""
    from fivesafes_tes.executors.filer import FilerError
    from fivesafes_tes.executors.filer import stage_out as run

    try:
        capability = json.loads(_path(CAPABILITY).read_text())
        staged = run(_path(VOLUME), capability)
    except (FilerError, OSError, ValueError, KeyError) as exc:
        _output.err.print(f"[red]Cannot stage the outputs out:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    _output.err.print(f"staged {len(staged)} file(s) out")
