"""A researcher's commands: submit tasks and workflows, follow them, cancel them, fetch their results."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fivesafes_tes.cli import _output
from fivesafes_tes.cli._common import (
    DEFAULT_URL,
    IdempotencyKey,
    Token,
    Url,
    exit_if_refused,
    run_or_exit,
    tes_client,
)

app = typer.Typer()


@app.command()
def submit(
    task_file: Annotated[
        Path,
        typer.Argument(
            help="TES task JSON ('-' reads standard input), or a Five Safes request crate: a BagIt zip "
            "(*.zip) or a bag folder (zipped on the fly)."
        ),
    ],
    url: Url = DEFAULT_URL,
    token: Token = None,
    idempotency_key: IdempotencyKey = None,
    tres: Annotated[
        str | None, typer.Option(help="Crates: TREs to run in, comma separated (default: the project's).")
    ] = None,
) -> None:
    """Submit a TES task or a request crate and print its id."""
    if str(task_file) != "-" and (task_file.suffix.lower() == ".zip" or task_file.is_dir()):
        _submit_crate(task_file, url, token, idempotency_key, tres)
        return
    text = sys.stdin.read() if str(task_file) == "-" else task_file.read_text()
    try:
        task = json.loads(text)
    except json.JSONDecodeError as exc:
        _output.err.print(f"[red]{task_file} is not JSON:[/] {exc}")
        raise typer.Exit(2) from None
    with tes_client(url, token) as client:
        typer.echo(run_or_exit(lambda: client.create(task, idempotency_key=idempotency_key)))


def _submit_crate(
    source: Path, url: str, token: str | None, idempotency_key: str | None, tres: str | None
) -> None:
    """POST a request crate to /api/v1/crates with a progress bar; a bag folder is zipped first."""
    import tempfile

    import httpx
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    tes_client(url, token).close()  # no token: says how to get one
    with tempfile.TemporaryDirectory(prefix="fivesafes-crate-") as scratch:
        if source.is_dir():
            zipped = Path(scratch) / f"{source.resolve().name}.zip"
            try:
                zip_bag(source, zipped)
            except ValueError as exc:
                _output.err.print(f"[red]Cannot send {source}:[/] {escape(str(exc))}")
                raise typer.Exit(2) from None
        elif source.is_file():
            zipped = source
        else:
            _output.err.print(f"[red]No such file:[/] {source}")
            raise typer.Exit(2)
        size = zipped.stat().st_size
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/zip",
            "Content-Length": str(size),
        }
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=_output.err,
            transient=True,
            disable=size < 8 * 1024 * 1024,
        ) as progress:
            job = progress.add_task(f"sending {source.name}", total=size)

            def chunks() -> Iterator[bytes]:
                with zipped.open("rb") as handle:
                    while chunk := handle.read(1024 * 1024):
                        progress.advance(job, len(chunk))
                        yield chunk

            try:
                response = httpx.post(
                    url.rstrip("/") + "/api/v1/crates",
                    content=chunks(),
                    headers=headers,
                    params={"tres": tres} if tres else None,
                    timeout=httpx.Timeout(60, read=600),
                )
            except httpx.HTTPError as exc:
                _output.err.print(f"[red]Cannot reach the gateway[/] (FIVESAFES_TES_URL): {exc}")
                raise typer.Exit(1) from None
    exit_if_refused(response)
    typer.echo(response.json()["id"])


def zip_bag(folder: Path, out: Path) -> None:
    """Zip a BagIt bag folder as the profile wants it: one top-level folder holding the bag. Links are
    refused rather than followed (the gateway would refuse them too)."""
    import os
    import zipfile

    if not (folder / "bagit.txt").is_file():
        raise ValueError(
            f"{folder} is not a BagIt bag (no bagit.txt); make one (see ro-crates/README.md) or pass its zip"
        )
    top = folder.resolve().name
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for here, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files) + [d for d in dirs if (Path(here) / d).is_symlink()]:
                path = Path(here) / name
                relative = path.relative_to(folder).as_posix()
                if path.is_symlink() or not path.is_file():
                    raise ValueError(
                        f"{relative} is a link or not a regular file; crates hold plain files only"
                    )
                archive.write(path, f"{top}/{relative}")


@app.command("submit-workflow")
def submit_workflow(
    workflow: Annotated[
        Path, typer.Argument(help="A CWL workflow (*.cwl) or a Snakefile (Snakefile, *.smk).")
    ],
    root: Annotated[
        Path | None,
        typer.Option(help="Folder sent whole to /workflow (default: the workflow's own folder)."),
    ] = None,
    job: Annotated[Path | None, typer.Option(help="CWL: the job (inputs) file, under --root.")] = None,
    output: Annotated[
        list[str],
        typer.Option(help="Snakemake: a final output to release, relative to its working directory; repeat."),
    ] = [],
    config: Annotated[list[str], typer.Option(help="Snakemake: KEY=VALUE for --config; repeat.")] = [],
    tres: Annotated[
        str | None, typer.Option(help="TREs to run in, comma separated (default: the project's).")
    ] = None,
    project: Annotated[str | None, typer.Option(help="Project (default: your default project).")] = None,
    name: Annotated[str | None, typer.Option(help="Task name.")] = None,
    cores: Annotated[int, typer.Option(min=1, help="CPU cores for the run (the TRE may cap them).")] = 1,
    ram_gb: Annotated[float | None, typer.Option(help="Memory for the run, GB (the TRE may cap it).")] = None,
    output_url: Annotated[str | None, typer.Option(help="TES output url of the released files.")] = None,
    image: Annotated[
        str, typer.Option(help="A runner image the TREs allow (default fivesafes/workflow-runner:1).")
    ] = "",
    print_task: Annotated[bool, typer.Option(help="Print the TES task instead of submitting it.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    idempotency_key: IdempotencyKey = None,
) -> None:
    """Submit a whole CWL or Snakemake workflow to run inside each TRE as one task; print its id.

    Every step runs inside the TRE's sandbox; intermediates stay there, and only the final outputs
    are held in each TRE's airlock for its output checkers (see workflows/README.md)."""
    from fivesafes_tes.devimages import RUNNER_IMAGE
    from fivesafes_tes.workflows import WorkflowError, read_workflow, workflow_task

    try:
        found = read_workflow(workflow, root)
        job_rel = None
        if job is not None:
            base = (root or workflow.parent).resolve()
            if base not in job.resolve().parents:
                raise WorkflowError(f"the job file {job} must be under {base}, which is sent whole")
            job_rel = job.resolve().relative_to(base).as_posix()
        task = workflow_task(
            found,
            job=job_rel,
            outputs=output,
            config=config,
            tres=[t.strip() for t in tres.split(",") if t.strip()] if tres else None,
            project=project,
            name=name,
            cores=cores,
            ram_gb=ram_gb,
            output_url=output_url,
            image=image or RUNNER_IMAGE,
        )
    except WorkflowError as exc:
        _output.err.print(f"[red]Cannot send this workflow:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if print_task:
        typer.echo(json.dumps(task, indent=2))
        return
    with tes_client(url, token) as client:
        typer.echo(run_or_exit(lambda: client.create(task, idempotency_key=idempotency_key)))


@app.command()
def status(
    task_id: str,
    url: Url = DEFAULT_URL,
    token: Token = None,
    view: Annotated[str, typer.Option(help="MINIMAL, BASIC or FULL.")] = "BASIC",
) -> None:
    """Show one task as JSON."""
    with tes_client(url, token) as client:
        typer.echo(json.dumps(run_or_exit(lambda: client.get(task_id, view.upper())), indent=2))


@app.command("list")
def list_(
    url: Url = DEFAULT_URL,
    token: Token = None,
    state: Annotated[str | None, typer.Option(help="Only tasks in this state.")] = None,
    name_prefix: Annotated[str | None, typer.Option(help="Only names starting with this.")] = None,
    tag: Annotated[list[str], typer.Option(help="KEY or KEY=VALUE; repeat for several.")] = [],
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
) -> None:
    """List your tasks, newest first, as a table."""
    keys = [t.partition("=")[0] for t in tag]
    values = [t.partition("=")[2] for t in tag]
    table = Table("id", "state", "name", "created")
    with tes_client(url, token) as client:
        tasks = client.list(
            view="BASIC",
            page_size=min(limit, 2047),
            state=state,
            name_prefix=name_prefix,
            tag_key=keys,
            tag_value=values,
        )
        for task in run_or_exit(lambda: list(itertools.islice(tasks, limit))):
            table.add_row(task["id"], task["state"], task.get("name", ""), task.get("creation_time", ""))
    _output.console.print(table)


@app.command()
def cancel(task_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Cancel a task (a no-op if it has already ended)."""
    with tes_client(url, token) as client:
        run_or_exit(lambda: client.cancel(task_id))
    _output.console.print(f"{task_id}: cancel requested")


@app.command()
def results(
    task_id: str,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory to download into (one folder per TRE; default results/), or with --crate "
            "the zip file to write (default task-ID-results.zip)."
        ),
    ] = None,
    crate: Annotated[
        bool,
        typer.Option(
            "--crate", help="Download the results crate (a BagIt-zipped Five Safes RO-Crate) instead."
        ),
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Download the files each TRE released for a task, checking every SHA-256; print the decisions
    (and the reasons for what was withheld). With --crate, download the task's results crate, verify
    its BagIt manifests and the SHA-256 its record gives each file, and print what it says."""
    if crate:
        _results_crate(task_id, out or Path(f"task-{task_id}-results.zip"), url, token)
        return
    out = out or Path("results")
    import hashlib

    import httpx
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    if not token:
        _output.err.print("[red]No token.[/] Pass --token or set FIVESAFES_TES_TOKEN.")
        raise typer.Exit(2)
    http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=60)
    try:
        listing = http.get(f"/api/v1/tasks/{task_id}/results")
    except httpx.HTTPError as exc:
        _output.err.print(f"[red]Cannot reach {url}:[/] {exc}")
        raise typer.Exit(1) from None
    exit_if_refused(listing)
    decisions = Table("TRE", "file", "decision", "reason", title=f"disclosure decisions for {task_id}")
    bad = 0
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=_output.console,
    ) as progress:
        for tre in listing.json()["tres"]:
            disclosure = tre.get("disclosure") or {}
            for entry in disclosure.get("files", []):
                reasons = "; ".join(d["reason"] for d in entry["decisions"] if d["reason"])
                decisions.add_row(tre["tre"], entry["name"], entry["decision"], reasons)
            for reason in disclosure.get("withheld_reasons", []):
                decisions.add_row(tre["tre"], "(the others)", "withheld", reason)
            for file in tre["files"]:
                target = (
                    out
                    / tre["tre"]
                    / (file["name"].lstrip("/") if file["kind"] == "output" else file["name"])
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                job = progress.add_task(f"{tre['tre']} {file['name']}", total=file["size"])
                digest = hashlib.sha256()
                with (
                    http.stream("GET", f"/api/v1/results/{file['id']}") as response,
                    target.open("wb") as handle,
                ):
                    response.raise_for_status()
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        handle.write(chunk)
                        progress.advance(job, len(chunk))
                if digest.hexdigest() != file["sha256"]:
                    bad += 1
                    target.unlink()
                    _output.err.print(
                        f"[red]{file['name']} from {tre['tre']} does not match its SHA-256; discarded[/]"
                    )
    _output.console.print(decisions)
    _output.console.print(
        f"files in {out}/ (one folder per TRE){'' if not bad else f'; {bad} failed verification'}"
    )
    raise typer.Exit(1 if bad else 0)


def _results_crate(task_id: str, out: Path, url: str, token: str | None) -> None:
    """Fetch the results crate into `out`, verify it and print each TRE's part of its record."""
    import httpx

    from fivesafes_tes.crates.bagit import BagRefused, open_bag
    from fivesafes_tes.crates.record import summarise

    if not token:
        _output.err.print("[red]No token.[/] Pass --token or set FIVESAFES_TES_TOKEN.")
        raise typer.Exit(2)
    partial = out.with_name(out.name + ".part")
    try:
        with httpx.stream(
            "GET",
            f"{url.rstrip('/')}/api/v1/tasks/{task_id}/crate",
            headers={"Authorization": f"Bearer {token}"},
            timeout=300,
        ) as response:
            if response.status_code >= 400:
                response.read()
                exit_if_refused(response)
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        _output.err.print(f"[red]Cannot reach {url}:[/] {exc}")
        raise typer.Exit(1) from None
    try:
        with open_bag(partial) as bag:
            record = bag.metadata()
            payload = {path: file.sha256 for path, file in bag.payload.items()}
    except BagRefused as exc:
        partial.unlink(missing_ok=True)
        _output.err.print(f"[red]The results crate failed verification; discarded:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    summary = summarise(record)
    wrong = [path for tre in summary for path, _, sha256 in tre.files if payload.get(path) != sha256]
    if wrong:
        partial.unlink(missing_ok=True)
        _output.err.print(
            f"[red]The results crate's record and its files disagree ({', '.join(wrong)}); discarded[/]"
        )
        raise typer.Exit(1)
    partial.replace(out)
    table = Table(
        "TRE", "run", "sign-off", "disclosure", "released files", title=f"results crate of {task_id}"
    )
    for tre in summary:
        names = "\n".join(escape(name) for _, name, _ in tre.files) or "-"
        table.add_row(tre.tre, tre.run, tre.sign_off, tre.disclosure, names)
    _output.console.print(table)
    files = sum(len(t.files) for t in summary)
    _output.console.print(f"{out}: BagIt manifests and {files} file SHA-256(s) verified")
