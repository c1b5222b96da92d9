"""`fivesafes-tes tre`: a TRE admin's decisions on the projects and people that may run work there."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fivesafes_tes.cli import _output
from fivesafes_tes.cli._common import TreToken, TreUrl, tre_call

app = typer.Typer(
    help="TRE admin: this TRE's decisions on projects and people "
    "(through the TRE's own API, with your token).",
    no_args_is_help=True,
)


@app.command("projects")
def tre_projects(url: TreUrl = None, token: TreToken = None) -> None:
    """Projects assigned to this TRE, their members, and this TRE's decisions."""
    table = Table("project", "dates", "members", "decisions", title="projects in this TRE")
    for project in tre_call(url, token, "GET", "/tre/v1/projects"):
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
    _output.console.print(table)


def _decide(
    url: str | None, token: str | None, project: str, user: str | None, decision: str, reason: str
) -> None:
    from urllib.parse import quote

    path = f"/tre/v1/projects/{quote(project, safe='')}" + (
        f"/members/{quote(user, safe='')}" if user else ""
    )
    tre_call(url, token, "PUT", path + "/decision", json={"decision": decision, "reason": reason})
    _output.console.print(
        f"{decision}: {'user ' + user + ' in ' if user else ''}project {project} "
        "(sent to the gateway at the next sync)"
    )


@app.command("approve")
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


@app.command("reject")
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
