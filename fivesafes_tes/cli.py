"""`fivesafes-tes`: serve the gateway, issue development tokens, and talk TES from a shell."""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fivesafes_tes.client import ClientError, TesClient
from fivesafes_tes.settings import GatewaySettings

if TYPE_CHECKING:
    from fivesafes_tes.devstack import DevStack

app = typer.Typer(help="Five Safes TES: a GA4GH TES 1.1 gateway for federated TREs.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
db_app = typer.Typer(help="The gateway database.", no_args_is_help=True)
tre_app = typer.Typer(
    help="TRE admin: this TRE's decisions on projects and people (through the TRE's own API, with your token).",
    no_args_is_help=True,
)
admin_app = typer.Typer(
    help="Federation admin: TREs, projects, members (talks to the gateway).", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
review_app = typer.Typer(
    help="Output checkers: review held outputs of this TRE (through the TRE's own API, with your token).",
    no_args_is_help=True,
)
app.add_typer(tre_app, name="tre")
app.add_typer(review_app, name="review")
app.add_typer(admin_app, name="admin")
console = Console()
err = Console(stderr=True, soft_wrap=True)  # an error is one line, whatever the terminal's width

Url = Annotated[str, typer.Option(envvar="FIVESAFES_TES_URL", help="Gateway base URL.")]
IdempotencyKey = Annotated[str | None, typer.Option(help="Make retries safe: same key, same task.")]
Token = Annotated[
    str | None, typer.Option(envvar="FIVESAFES_TES_TOKEN", help="Bearer token.", show_default=False)
]
DEFAULT_URL = "http://127.0.0.1:8000"


def _client(url: str, token: str | None) -> TesClient:
    if not token:
        err.print(
            "[red]No token.[/] Pass --token or set FIVESAFES_TES_TOKEN (dev: `fivesafes-tes token --user alice`)."
        )
        raise typer.Exit(2)
    return TesClient(url, token)


def _run(action):  # type: ignore[no-untyped-def]
    import httpx

    try:
        return action()
    except ClientError as exc:
        err.print(f"[red]Refused:[/] {exc}")
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        err.print(f"[red]Cannot reach the gateway[/] (FIVESAFES_TES_URL): {exc}")
        raise typer.Exit(1) from None


@app.command()
def gateway(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Serve the gateway (TES API, health, metrics), migrating the database first."""
    import uvicorn

    from fivesafes_tes.db import Database
    from fivesafes_tes.gateway.app import ConfigurationError, create_app

    settings = GatewaySettings()
    Database(settings.effective_database_url).upgrade()
    try:
        create_app(settings)  # fail fast on unsafe settings, before forking workers
    except ConfigurationError as exc:
        err.print(f"[red]Cannot start:[/] {exc}")
        raise typer.Exit(2) from None
    uvicorn.run(
        "fivesafes_tes.gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        proxy_headers=True,
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations up to the newest."""
    from fivesafes_tes.db import Database

    settings = GatewaySettings()
    Database(settings.effective_database_url).upgrade()
    console.print("database is at the newest migration")


@app.command()
def token(
    user: Annotated[str, typer.Option(help="Username (the token's subject).")],
    role: Annotated[list[str], typer.Option(help="Role; repeat for several.")] = ["researcher"],  # noqa: B006
    tre: Annotated[str | None, typer.Option(help="TRE name, for agent tokens.")] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.")] = 3600,
    audience: Annotated[
        str | None,
        typer.Option(help="Audience; default the gateway's. A TRE's own API expects fivesafes-tre."),
    ] = None,
) -> None:
    """Print a token from the embedded development issuer (dev, demo and tests only)."""
    from fivesafes_tes.auth import DevIssuer
    from fivesafes_tes.gateway.app import dev_issuer_url

    settings = GatewaySettings()
    issuer = DevIssuer(settings.dev_issuer_dir, dev_issuer_url(settings))
    typer.echo(issuer.issue(user, role, audience=audience or settings.oidc_audience, ttl_s=ttl, tre=tre))


@app.command()
def submit(
    task_file: Annotated[Path, typer.Argument(help="TES task JSON; '-' reads standard input.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    idempotency_key: IdempotencyKey = None,
) -> None:
    """Submit a TES task and print its id."""
    text = sys.stdin.read() if str(task_file) == "-" else task_file.read_text()
    try:
        task = json.loads(text)
    except json.JSONDecodeError as exc:
        err.print(f"[red]{task_file} is not JSON:[/] {exc}")
        raise typer.Exit(2) from None
    with _client(url, token) as client:
        typer.echo(_run(lambda: client.create(task, idempotency_key=idempotency_key)))


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
    ] = [],  # noqa: B006
    config: Annotated[list[str], typer.Option(help="Snakemake: KEY=VALUE for --config; repeat.")] = [],  # noqa: B006
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
        err.print(f"[red]Cannot send this workflow:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if print_task:
        typer.echo(json.dumps(task, indent=2))
        return
    with _client(url, token) as client:
        typer.echo(_run(lambda: client.create(task, idempotency_key=idempotency_key)))


@app.command("build-runner-image")
def build_runner_image() -> None:
    """Build the workflow runner image in this machine's Docker engine (debootstrap and PyPI; once
    per recipe). A TRE's policy must allow it for workflows to run there."""
    import docker

    from fivesafes_tes.devimages import ensure_runner_image

    started = time.monotonic()
    try:
        client = docker.from_env()
        image = ensure_runner_image(client, log=lambda line: err.print(line, highlight=False))
    except (RuntimeError, docker.errors.DockerException) as exc:
        err.print(f"[red]Cannot build the runner image:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    err.print(f"{image} is ready ({time.monotonic() - started:.0f} s)")
    typer.echo(image)


@app.command()
def status(
    task_id: str,
    url: Url = DEFAULT_URL,
    token: Token = None,
    view: Annotated[str, typer.Option(help="MINIMAL, BASIC or FULL.")] = "BASIC",
) -> None:
    """Show one task as JSON."""
    with _client(url, token) as client:
        typer.echo(json.dumps(_run(lambda: client.get(task_id, view.upper())), indent=2))


@app.command("list")
def list_(
    url: Url = DEFAULT_URL,
    token: Token = None,
    state: Annotated[str | None, typer.Option(help="Only tasks in this state.")] = None,
    name_prefix: Annotated[str | None, typer.Option(help="Only names starting with this.")] = None,
    tag: Annotated[list[str], typer.Option(help="KEY or KEY=VALUE; repeat for several.")] = [],  # noqa: B006
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
) -> None:
    """List your tasks, newest first, as a table."""
    keys = [t.partition("=")[0] for t in tag]
    values = [t.partition("=")[2] for t in tag]
    table = Table("id", "state", "name", "created")
    with _client(url, token) as client:
        tasks = client.list(
            view="BASIC",
            page_size=min(limit, 2047),
            state=state,
            name_prefix=name_prefix,
            tag_key=keys,
            tag_value=values,
        )
        for task in _run(lambda: list(itertools.islice(tasks, limit))):
            table.add_row(task["id"], task["state"], task.get("name", ""), task.get("creation_time", ""))
    console.print(table)


@app.command()
def cancel(task_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Cancel a task (a no-op if it has already ended)."""
    with _client(url, token) as client:
        _run(lambda: client.cancel(task_id))
    console.print(f"{task_id}: cancel requested")


@audit_app.command("verify")
def audit_verify(
    anchor: Annotated[
        str | None,
        typer.Option(
            help="SEQ:HASH printed by an earlier verify and kept outside the database; "
            "proves the chain up to it was not cut back or rewritten."
        ),
    ] = None,
) -> None:
    """Check the whole audit chain; exit 1 if any record was edited, deleted, inserted or reordered."""
    from fivesafes_tes import audit
    from fivesafes_tes.db import Database

    checkpoint = None
    if anchor:
        seq, _, digest = anchor.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            err.print(
                "[red]--anchor must be SEQ:HASH[/], as printed by an earlier `fivesafes-tes audit verify`"
            )
            raise typer.Exit(2)
        checkpoint = audit.Checkpoint(int(seq), digest)
    settings = GatewaySettings()
    with Database(settings.effective_database_url).read() as session:
        report = audit.verify(session, anchor=checkpoint)
    if report.ok:
        console.print(f"[green]audit chain intact[/]: {report.records} records")
        if report.head:
            console.print(
                f"anchor for next time (keep it outside this database): {report.head.seq}:{report.head.hash}"
            )
        return
    table = Table("seq", "problem", "detail", title="audit chain broken")
    for problem in report.problems:
        table.add_row(str(problem.seq), problem.kind, problem.message)
    console.print(table)
    raise typer.Exit(1)


@app.command()
def agent() -> None:
    """Run this TRE's agent: pull work from the gateway, run it sandboxed, hold outputs in the airlock.

    Configured by FIVESAFES_AGENT_* variables (docs/configuration.md). It opens no listening socket
    unless FIVESAFES_AGENT_ADMIN_LISTEN is set (the in-TRE admin and review APIs).
    """
    import logging
    import signal

    from fivesafes_tes import logs
    from fivesafes_tes.agent.loop import Agent, CannotStart
    from fivesafes_tes.settings import AgentSettings, drop_secrets_from_environment

    logs.configure(logging.INFO)
    settings = AgentSettings()  # type: ignore[call-arg]
    drop_secrets_from_environment(settings)  # nothing the agent starts (check processes...) inherits them
    try:
        worker = Agent.from_settings(settings)
        worker.start()
    except CannotStart as exc:
        err.print(f"[red]Cannot start:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(
        f"agent for {settings.tre} pulling from {settings.gateway_url} ({settings.executor} executor)"
    )
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    try:
        while not worker.stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    worker.shutdown()


TreUrl = Annotated[
    str | None,
    typer.Option(
        envvar="FIVESAFES_TRE_URL",
        help="This TRE's admin and review API (the agent's FIVESAFES_AGENT_ADMIN_LISTEN).",
        show_default=False,
    ),
]
TreToken = Annotated[
    str | None,
    typer.Option(
        envvar="FIVESAFES_TRE_TOKEN",
        help="Your own token from this TRE's identity provider: it says who decides.",
        show_default=False,
    ),
]


def _tre_call(url: str | None, token: str | None, method: str, path: str, **kwargs):  # type: ignore[no-untyped-def]
    """One call to the TRE's own API as the person whose token it is; refusals end the command."""
    if not url:
        err.print("[red]No TRE URL.[/] Pass --url or set FIVESAFES_TRE_URL (the agent's admin API).")
        raise typer.Exit(2)
    if not token:
        err.print(
            "[red]No token.[/] Pass --token or set FIVESAFES_TRE_TOKEN (a token from this TRE's identity "
            "provider with the tre-admin or output-checker role)."
        )
        raise typer.Exit(2)
    return _call(url, token, method, path, "this TRE's admin and review API (FIVESAFES_TRE_URL)", **kwargs)


def _call(url: str, token: str, method: str, path: str, api: str, **kwargs):  # type: ignore[no-untyped-def]
    """One JSON call with a bearer token: an unreachable server, a refusal or an answer that is not
    JSON is one line on standard error and a non-zero exit, never a traceback."""
    import httpx

    try:
        response = httpx.request(
            method, url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs
        )
    except httpx.HTTPError as exc:
        err.print(f"[red]Cannot reach {url}:[/] {exc}")
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        err.print(f"[red]Refused:[/] {response.status_code}: {_detail(response)}")
        raise typer.Exit(1)
    try:
        return response.json()
    except ValueError:
        err.print(f"[red]{url} is not {api}[/]: it answered {path} with no JSON")
        raise typer.Exit(1) from None


def _detail(response) -> str:  # type: ignore[no-untyped-def]
    """The reason a refusal gives (FastAPI's `detail`), or its body when it is not ours."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


@tre_app.command("projects")
def tre_projects(url: TreUrl = None, token: TreToken = None) -> None:
    """Projects assigned to this TRE, their members, and this TRE's decisions."""
    table = Table("project", "dates", "members", "decisions", title="projects in this TRE")
    for project in _tre_call(url, token, "GET", "/tre/v1/projects"):
        marks = [
            f"{d['username'] or 'project'}: {d['decision']} by {d['decided_by_name']}"
            for d in sorted(project["decisions"], key=lambda d: d["username"])
        ]
        table.add_row(
            project["name"],
            f"{project['starts_on'] or '-'} to {project['ends_on'] or '-'}",
            ", ".join(project["members"]),
            "; ".join(marks) or "none yet",
        )
    console.print(table)


def _decide(
    url: str | None, token: str | None, project: str, user: str | None, decision: str, reason: str
) -> None:
    from urllib.parse import quote

    path = f"/tre/v1/projects/{quote(project, safe='')}" + (
        f"/members/{quote(user, safe='')}" if user else ""
    )
    _tre_call(url, token, "PUT", path + "/decision", json={"decision": decision, "reason": reason})
    console.print(
        f"{decision}: {'user ' + user + ' in ' if user else ''}project {project} (sent to the gateway at the next sync)"
    )


@tre_app.command("approve")
def tre_approve(
    project: str,
    user: Annotated[
        str | None, typer.Option(help="Approve this person for the project, not the project.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (optional for approvals).")] = "",
    url: TreUrl = None,
    token: TreToken = None,
) -> None:
    """Approve a project, or one person within a project, to run work in this TRE."""
    _decide(url, token, project, user, "approved", reason)


@tre_app.command("reject")
def tre_reject(
    project: str,
    reason: Annotated[str, typer.Option(help="Why; the researcher reads it.")],
    user: Annotated[
        str | None, typer.Option(help="Reject this person for the project, not the project.")
    ] = None,
    url: TreUrl = None,
    token: TreToken = None,
) -> None:
    """Reject a project, or one person within it; their tasks end rejected_by_tre with your reason."""
    _decide(url, token, project, user, "rejected", reason)


@review_app.command("list")
def review_list(url: TreUrl = None, token: TreToken = None) -> None:
    """Children whose outputs wait for an output checker."""
    table = Table("child", "project", "submitter", "files", "checks", "decided", title="awaiting review")
    for child in _tre_call(url, token, "GET", "/review/v1/children"):
        verdicts = [f["verdict"] for f in child["files"]]
        table.add_row(
            child["child_id"],
            child["project"],
            child["submitter"],
            str(len(child["files"])),
            ", ".join(f"{verdicts.count(v)} {v}" for v in ("fail", "review", "pass") if v in verdicts),
            str(sum(1 for f in child["files"] if f["decisions"])),
        )
    console.print(table)


@review_app.command("show")
def review_show(child_id: str, url: TreUrl = None, token: TreToken = None) -> None:
    """Each held file of a child with its findings, decisions so far and a safe preview."""
    view = _tre_call(url, token, "GET", f"/review/v1/children/{child_id}")
    console.rule(f"{view['child_id']}: project {view['project']}, submitted by {view['submitter']}")
    # The researcher sees these only if something is released: read them as part of the outputs.
    message = view.get("outcome_message") or ""
    console.print(f"run: {view.get('outcome') or 'unknown'}{'; ' + message if message else ''}", markup=False)
    for n, step in enumerate(view.get("steps", [])):
        console.print(
            f"  step {n}: exit code {step['exit_code']}, {step['start_time']} to {step['end_time']}",
            markup=False,
        )
    for file in view["files"]:
        console.print(
            f"[bold]{escape(file['name'])}[/]  {file['kind']}, {file['size']} bytes, sha256 {file['sha256'][:16]}…, "
            f"automated checks: [bold]{file['verdict']}[/]",
            highlight=False,
        )
        if file.get("never_releasable"):
            console.print(f"  [red]never releasable: {escape(file['never_releasable'])}[/]", highlight=False)
        for finding in file["findings"]:
            console.print(f"  - {finding}", markup=False, highlight=False)
        for checker, decision, reason in file["decisions"]:
            console.print(f"  {checker}: {decision} {('(' + reason + ')') if reason else ''}", markup=False)
        shown = _tre_call(
            url, token, "GET", f"/review/v1/children/{child_id}/preview", params={"name": file["name"]}
        )["preview"]
        console.print(
            shown if shown is not None else "(larger than 64 KiB: no preview)", markup=False, highlight=False
        )


def _review_decide(
    url: str | None, token: str | None, child_id: str, name: str, decision: str, reason: str
) -> None:
    names = (
        [f["name"] for f in _tre_call(url, token, "GET", f"/review/v1/children/{child_id}")["files"]]
        if name == "all"
        else [name]
    )
    checker = ""
    for each in names:
        checker = _tre_call(
            url,
            token,
            "POST",
            f"/review/v1/children/{child_id}/decisions",
            json={"name": each, "decision": decision, "reason": reason},
        )["checker"]
    console.print(f"{checker}: {decision} {', '.join(names)}")


FileName = Annotated[str, typer.Argument(help="The file (its container path, or step-N.stdout), or 'all'.")]


@review_app.command("approve")
def review_approve(
    child_id: str,
    name: FileName,
    reason: Annotated[str, typer.Option(help="Why; required to approve a file that failed a check.")] = "",
    url: TreUrl = None,
    token: TreToken = None,
) -> None:
    """Approve a held file for release, as the person your token names."""
    _review_decide(url, token, child_id, name, "approved", reason)


@review_app.command("reject")
def review_reject(
    child_id: str,
    name: FileName,
    reason: Annotated[str, typer.Option(help="Why; the researcher reads it.")],
    url: TreUrl = None,
    token: TreToken = None,
) -> None:
    """Reject a held file: it never leaves the TRE."""
    _review_decide(url, token, child_id, name, "rejected", reason)


@app.command()
def results(
    task_id: str,
    out: Annotated[Path, typer.Option(help="Directory to download into (one folder per TRE).")] = Path(
        "results"
    ),
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Download the files each TRE released for a task, checking every SHA-256; print the decisions
    (and the reasons for what was withheld)."""
    import hashlib

    import httpx
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    if not token:
        err.print("[red]No token.[/] Pass --token or set FIVESAFES_TES_TOKEN.")
        raise typer.Exit(2)
    http = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=60)
    try:
        listing = http.get(f"/api/v1/tasks/{task_id}/results")
    except httpx.HTTPError as exc:
        err.print(f"[red]Cannot reach {url}:[/] {exc}")
        raise typer.Exit(1) from None
    if listing.status_code >= 400:
        err.print(f"[red]Refused:[/] {listing.status_code}: {_detail(listing)}")
        raise typer.Exit(1)
    decisions = Table("TRE", "file", "decision", "reason", title=f"disclosure decisions for {task_id}")
    bad = 0
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
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
                    err.print(
                        f"[red]{file['name']} from {tre['tre']} does not match its SHA-256; discarded[/]"
                    )
    console.print(decisions)
    console.print(f"files in {out}/ (one folder per TRE){'' if not bad else f'; {bad} failed verification'}")
    raise typer.Exit(1 if bad else 0)


def _admin_call(url: str, token: str | None, method: str, path: str, body: dict | None = None):  # type: ignore[no-untyped-def]
    if not token:
        err.print("[red]No token.[/] Pass --token or set FIVESAFES_TES_TOKEN (a federation-admin token).")
        raise typer.Exit(2)
    return _call(url, token, method, "/admin/v1" + path, "this gateway (FIVESAFES_TES_URL)", json=body)


@admin_app.command("add-tre")
def admin_add_tre(name: str, title: str = "", url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Register a TRE; its agent's token must carry this name as its `tre` claim."""
    _admin_call(url, token, "POST", "/tres", {"name": name, "title": title})
    console.print(f"TRE {name} registered")


@admin_app.command("add-project")
def admin_add_project(
    name: str,
    tre: Annotated[list[str], typer.Option(help="A TRE the project runs in; repeat.")] = [],  # noqa: B006
    title: str = "",
    starts: Annotated[str | None, typer.Option(help="First day (YYYY-MM-DD).")] = None,
    ends: Annotated[str | None, typer.Option(help="Last day (YYYY-MM-DD).")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Create a project and assign its TREs."""
    body = {"name": name, "title": title, "tres": tre, "starts_on": starts, "ends_on": ends}
    _admin_call(url, token, "POST", "/projects", {k: v for k, v in body.items() if v is not None})
    console.print(f"project {name} created in {', '.join(tre) or 'no TRE yet'}")


@admin_app.command("add-member")
def admin_add_member(
    project: str,
    username: str,
    default: Annotated[bool, typer.Option(help="Make it the user's default project.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Add a person (by username) to a project."""
    _admin_call(
        url, token, "POST", f"/projects/{project}/members", {"username": username, "default": default}
    )
    console.print(f"{username} added to {project}")


@admin_app.command("projects")
def admin_projects(url: Url = DEFAULT_URL, token: Token = None) -> None:
    """All projects with their TREs and members."""
    table = Table("project", "TREs", "members", "dates")
    for p in _admin_call(url, token, "GET", "/projects"):
        table.add_row(
            p["name"],
            ", ".join(p["tres"]),
            ", ".join(p["members"]),
            f"{p['starts_on'] or '-'} to {p['ends_on'] or '-'}",
        )
    console.print(table)


@admin_app.command("redeliver")
def admin_redeliver(task_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Try again the deliveries of a task's outputs that were given up (once the bucket is fixed)."""
    children = _admin_call(url, token, "POST", f"/tasks/{task_id}/redeliver")["children"]
    console.print(f"delivery owed again for {len(children)} TRE(s) of task {task_id}; it starts now")


AUTO_RELEASE_WARNING = (
    "AUTO-RELEASE IS ON: outputs that pass every automated rule leave the TREs with no output checker "
    "looking at them. It is for trying TES clients only; never use it with real data."
)


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1.")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="State directory, kept across runs (default FIVESAFES_DATA_DIR).")
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            help="Start from nothing in a temporary state directory, removed (with its containers) at exit."
        ),
    ] = False,
    executor: Annotated[
        str, typer.Option(help="docker, or local (development only: no sandbox).")
    ] = "docker",
    allow_image: Annotated[
        list[str],
        typer.Option(
            help="Another image pattern the dev TREs allow besides fivesafes/* (e.g. 'alpine*'); repeat."
        ),
    ] = [],  # noqa: B006
    auto_release: Annotated[
        bool,
        typer.Option(
            help="FOR TRYING CLIENTS ONLY: release outputs that pass every automated rule without an output checker."
        ),
    ] = False,
) -> None:
    """Run the embedded federation on loopback (gateway, issuer, S3, two TRE agents); print how to use it."""
    import logging
    import shutil
    import signal
    import tempfile

    from fivesafes_tes import devstack, logs

    logs.configure(logging.WARNING)
    if fresh and data_dir is not None:
        err.print("[red]--fresh starts in a new temporary directory;[/] drop --data-dir (or --fresh).")
        raise typer.Exit(2)
    state = (
        Path(tempfile.mkdtemp(prefix="fivesafes-dev-")) if fresh else data_dir or GatewaySettings().data_dir
    )
    if auto_release:
        err.print(f"[bold red]{AUTO_RELEASE_WARNING}[/]")
    try:
        stack = devstack.start(
            state,
            port=port,
            agents=True,
            executor=executor,
            allow_images=allow_image,
            auto_release=auto_release,
        )
    except RuntimeError as exc:
        err.print(f"[red]Cannot start:[/] {exc}")
        if fresh:
            shutil.rmtree(state, ignore_errors=True)
        raise typer.Exit(2) from None
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: a --fresh stack cleans up after itself
    try:
        _print_dev_guide(
            stack, state, fresh=fresh, executor=executor, images=allow_image, auto_release=auto_release
        )
        while stack.thread.is_alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        if fresh:  # nothing will ever resume this state: its containers and files go with it
            for agent in stack.agents.values():
                agent.executor.sweep(set())
            shutil.rmtree(state, ignore_errors=True)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _print_dev_guide(
    stack: DevStack, state: Path, *, fresh: bool, executor: str, images: list[str], auto_release: bool
) -> None:
    """What a person trying the stack needs: where it is, and each role's environment, ready to paste."""
    from fivesafes_tes.devstack import TRE_AUDIENCE

    def say(text: str = "") -> None:  # tokens are long: never wrapped, so they paste whole
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    say(f"gateway   {stack.url}/ga4gh/tes/v1   (also {stack.url}/v1)")
    say(f"issuer    {stack.url}/dev-issuer")
    say(f"S3        {stack.s3_url}")
    kept = "temporary: removed when it stops" if fresh else "kept across runs; --fresh starts from nothing"
    say(f"state     {state} ({kept})")
    carried = stack.unfinished_tasks()
    if carried:
        say(
            f"          {carried} unfinished task(s) from earlier runs carry on (cancel them, or use --fresh)"
        )
    review = "AUTO-RELEASE when every rule passes" if auto_release else "an output checker decides"
    say(
        f"TREs      {', '.join(stack.agents)} ({executor} executor; images {', '.join(['fivesafes/*', *images])}; "
        f"datasets at /data/omop; review: {review})"
    )
    say()
    say("As a researcher (alice, project diabetes-cancer; token valid 12 h):")
    say(
        f"  export FIVESAFES_TES_URL={stack.url} "
        f"FIVESAFES_TES_TOKEN={stack.token('alice', 'researcher', ttl_s=12 * 3600)}"
    )
    say("  fivesafes-tes submit task.json; fivesafes-tes list; fivesafes-tes results ID")
    for tre in stack.agents:
        checker = f"{tre}-checker"
        say()
        say(f"As {tre}'s output checker ({checker}; its review API, on loopback here, is inside the TRE):")
        say(
            f"  export FIVESAFES_TRE_URL={stack.tre_url(tre)} "
            f"FIVESAFES_TRE_TOKEN={stack.tre_token(checker, 'output-checker', tre, ttl_s=12 * 3600)}"
        )
        say(
            '  fivesafes-tes review list; fivesafes-tes review show CHILD; fivesafes-tes review approve CHILD all --reason "..."'
        )
    say()
    say("More tokens (other people, roles tre-admin or output-checker):")
    say(
        f"  FIVESAFES_DATA_DIR={stack.settings.data_dir} FIVESAFES_PUBLIC_URL={stack.url} fivesafes-tes token "
        f"--user NAME --role output-checker --tre {next(iter(stack.agents))} --audience {TRE_AUDIENCE}"
    )
    if auto_release:
        err.print(f"[bold red]{AUTO_RELEASE_WARNING}[/]")
    say("Ctrl-C stops it.")


@app.command()
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="State directory (default: a fresh temporary one).")
    ] = None,
    executor: Annotated[
        str, typer.Option(help="docker, or local (development only: no sandbox).")
    ] = "docker",
) -> None:
    """Start the embedded federation and walk an analysis through both TREs end to end."""
    from fivesafes_tes.demo import run

    try:
        code = run(data_dir, console, executor)
    except RuntimeError as exc:
        err.print(f"[red]Demo stopped:[/] {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
