"""The development federation: `dev` keeps one running, `demo` walks an analysis through it, and
`token` issues tokens from its embedded issuer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fivesafes_tes.cli import _output
from fivesafes_tes.settings import GatewaySettings

if TYPE_CHECKING:
    from fivesafes_tes.devstack import DevStack

app = typer.Typer()


@app.command()
def token(
    user: Annotated[str, typer.Option(help="Username (the token's subject).")],
    role: Annotated[list[str], typer.Option(help="Role; repeat for several.")] = ["researcher"],
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
    ] = [],
    auto_release: Annotated[
        bool,
        typer.Option(
            help="FOR TRYING CLIENTS ONLY: release outputs that pass every automated rule "
            "without an output checker."
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
        _output.err.print(
            "[red]--fresh starts in a new temporary directory;[/] drop --data-dir (or --fresh)."
        )
        raise typer.Exit(2)
    state = (
        Path(tempfile.mkdtemp(prefix="fivesafes-dev-")) if fresh else data_dir or GatewaySettings().data_dir
    )
    if auto_release:
        _output.err.print(f"[bold red]{AUTO_RELEASE_WARNING}[/]")
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
        _output.err.print(f"[red]Cannot start:[/] {exc}")
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
        _output.console.print(text, highlight=False, markup=False, soft_wrap=True)

    say(f"gateway   {stack.url}/ga4gh/tes/v1   (also {stack.url}/v1)")
    say(f"issuer    {stack.url}/dev-issuer")
    if stack.settings.web_pages:
        say(f"pages     {stack.url}/web/   (researchers: sign in as alice, bob or carol; docs/web.md)")
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
        f"TREs      {', '.join(stack.agents)} ({executor} executor; "
        f"images {', '.join(['fivesafes/*', *images])}; "
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
            "  fivesafes-tes review list; fivesafes-tes review show CHILD; "
            'fivesafes-tes review approve CHILD all --reason "..."'
        )
        say(
            f"  or in a browser: {stack.tre_url(tre)}/ (sign in as {tre}-admin, {checker} or {checker}-2; "
            "docs/web.md)"
        )
    say()
    say("More tokens (other people, roles tre-admin or output-checker):")
    say(
        f"  FIVESAFES_DATA_DIR={stack.settings.data_dir} FIVESAFES_PUBLIC_URL={stack.url} "
        "fivesafes-tes token "
        f"--user NAME --role output-checker --tre {next(iter(stack.agents))} --audience {TRE_AUDIENCE}"
    )
    if auto_release:
        _output.err.print(f"[bold red]{AUTO_RELEASE_WARNING}[/]")
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
        code = run(data_dir, _output.console, executor)
    except RuntimeError as exc:
        _output.err.print(f"[red]Demo stopped:[/] {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)
