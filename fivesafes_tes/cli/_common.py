"""What several command groups share: the options naming a server and a token, and the calls that
turn a refusal or an unreachable server into one line on standard error and a non-zero exit."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from fivesafes_tes.cli import _output
from fivesafes_tes.client import ClientError, TesClient

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

Url = Annotated[str, typer.Option(envvar="FIVESAFES_TES_URL", help="Gateway base URL.")]
IdempotencyKey = Annotated[str | None, typer.Option(help="Make retries safe: same key, same task.")]
Token = Annotated[
    str | None, typer.Option(envvar="FIVESAFES_TES_TOKEN", help="Bearer token.", show_default=False)
]
DEFAULT_URL = "http://127.0.0.1:8000"


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


def tes_client(url: str, token: str | None) -> TesClient:
    """A client for the gateway's TES API; no token ends the command with how to get one."""
    if not token:
        _output.err.print(
            "[red]No token.[/] Pass --token or set FIVESAFES_TES_TOKEN "
            "(dev: `fivesafes-tes token --user alice`)."
        )
        raise typer.Exit(2)
    return TesClient(url, token)


def run_or_exit(action: Callable[[], T]) -> T:
    """Run one client call; a refusal or an unreachable gateway ends the command in one line."""
    import httpx

    try:
        return action()
    except ClientError as exc:
        _output.err.print(f"[red]Refused:[/] {exc}")
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        _output.err.print(f"[red]Cannot reach the gateway[/] (FIVESAFES_TES_URL): {exc}")
        raise typer.Exit(1) from None


def tre_call(url: str | None, token: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One call to the TRE's own API as the person whose token it is; refusals end the command."""
    if not url:
        _output.err.print("[red]No TRE URL.[/] Pass --url or set FIVESAFES_TRE_URL (the agent's admin API).")
        raise typer.Exit(2)
    if not token:
        _output.err.print(
            "[red]No token.[/] Pass --token or set FIVESAFES_TRE_TOKEN (a token from this TRE's identity "
            "provider with the tre-admin or output-checker role)."
        )
        raise typer.Exit(2)
    return call_json(
        url, token, method, path, "this TRE's admin and review API (FIVESAFES_TRE_URL)", **kwargs
    )


def call_json(url: str, token: str, method: str, path: str, api: str, **kwargs: Any) -> Any:
    """One JSON call with a bearer token: an unreachable server, a refusal or an answer that is not
    JSON is one line on standard error and a non-zero exit, never a traceback."""
    import httpx

    try:
        response = httpx.request(
            method, url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs
        )
    except httpx.HTTPError as exc:
        _output.err.print(f"[red]Cannot reach {url}:[/] {exc}")
        raise typer.Exit(1) from None
    exit_if_refused(response)
    try:
        return response.json()
    except ValueError:
        _output.err.print(f"[red]{url} is not {api}[/]: it answered {path} with no JSON")
        raise typer.Exit(1) from None


def exit_if_refused(response: httpx.Response) -> None:
    """A refusal (4xx, 5xx) is one line on standard error, in the server's words (never read as
    markup), and exit 1; a streamed response must have been read first."""
    if response.status_code >= 400:
        from rich.markup import escape

        _output.err.print(f"[red]Refused:[/] {response.status_code}: {escape(refusal_detail(response))}")
        raise typer.Exit(1)


def refusal_detail(response: httpx.Response) -> str:
    """The reason a refusal gives (FastAPI's `detail`), or its body when it is not ours."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)
