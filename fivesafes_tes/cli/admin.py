"""`fivesafes-tes admin`: the federation admin's TREs, projects and members, kept by the gateway."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from fivesafes_tes.cli import _output
from fivesafes_tes.cli._common import DEFAULT_URL, Token, Url, call_json

app = typer.Typer(
    help="Federation admin: TREs, projects, members (talks to the gateway).", no_args_is_help=True
)


def _admin_call(
    url: str, token: str | None, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    """One call to the gateway's admin API; refusals end the command."""
    if not token:
        _output.err.print(
            "[red]No token.[/] Pass --token or set FIVESAFES_TES_TOKEN (a federation-admin token)."
        )
        raise typer.Exit(2)
    return call_json(url, token, method, "/admin/v1" + path, "this gateway (FIVESAFES_TES_URL)", json=body)


@app.command("add-tre")
def admin_add_tre(name: str, title: str = "", url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Register a TRE; its agent's token must carry this name as its `tre` claim."""
    _admin_call(url, token, "POST", "/tres", {"name": name, "title": title})
    _output.console.print(f"TRE {name} registered")


@app.command("add-project")
def admin_add_project(
    name: str,
    tre: Annotated[list[str], typer.Option(help="A TRE the project runs in; repeat.")] = [],
    title: str = "",
    starts: Annotated[str | None, typer.Option(help="First day (YYYY-MM-DD).")] = None,
    ends: Annotated[str | None, typer.Option(help="Last day (YYYY-MM-DD).")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Create a project and assign its TREs."""
    body = {"name": name, "title": title, "tres": tre, "starts_on": starts, "ends_on": ends}
    _admin_call(url, token, "POST", "/projects", {k: v for k, v in body.items() if v is not None})
    _output.console.print(f"project {name} created in {', '.join(tre) or 'no TRE yet'}")


@app.command("add-member")
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
    _output.console.print(f"{username} added to {project}")


@app.command("projects")
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
    _output.console.print(table)


@app.command("redeliver")
def admin_redeliver(task_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Try again the deliveries of a task's outputs that were given up (once the bucket is fixed)."""
    children = _admin_call(url, token, "POST", f"/tasks/{task_id}/redeliver")["children"]
    _output.console.print(f"delivery owed again for {len(children)} TRE(s) of task {task_id}; it starts now")
