"""Running the services: the gateway, a TRE's agent, the gateway's database and its audit log."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fivesafes_tes.cli import _output
from fivesafes_tes.settings import GatewaySettings

app = typer.Typer()
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
db_app = typer.Typer(help="The gateway database.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")


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
        _output.err.print(f"[red]Cannot start:[/] {exc}")
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
    _output.console.print("database is at the newest migration")


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
            _output.err.print(
                "[red]--anchor must be SEQ:HASH[/], as printed by an earlier `fivesafes-tes audit verify`"
            )
            raise typer.Exit(2)
        checkpoint = audit.Checkpoint(int(seq), digest)
    settings = GatewaySettings()
    with Database(settings.effective_database_url).read() as session:
        report = audit.verify(session, anchor=checkpoint)
    if report.ok:
        _output.console.print(f"[green]audit chain intact[/]: {report.records} records")
        if report.head:
            _output.console.print(
                f"anchor for next time (keep it outside this database): {report.head.seq}:{report.head.hash}"
            )
        return
    table = Table("seq", "problem", "detail", title="audit chain broken")
    for problem in report.problems:
        table.add_row(str(problem.seq), problem.kind, problem.message)
    _output.console.print(table)
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
        _output.err.print(f"[red]Cannot start:[/] {exc}")
        raise typer.Exit(2) from None
    _output.console.print(
        f"agent for {settings.tre} pulling from {settings.gateway_url} ({settings.executor} executor)"
    )
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    try:
        while not worker.stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    worker.shutdown()
