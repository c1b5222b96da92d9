"""`fivesafes-tes review`: an output checker's view of held outputs, and their decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fivesafes_tes.cli import _output
from fivesafes_tes.cli._common import TreToken, TreUrl, tre_call

app = typer.Typer(
    help="Output checkers: review held outputs of this TRE (through the TRE's own API, with your token).",
    no_args_is_help=True,
)


@app.command("list")
def review_list(url: TreUrl = None, token: TreToken = None) -> None:
    """Children whose outputs wait for an output checker."""
    table = Table("child", "project", "submitter", "files", "checks", "decided", title="awaiting review")
    for child in tre_call(url, token, "GET", "/review/v1/children"):
        verdicts = [f["verdict"] for f in child["files"]]
        table.add_row(
            child["child_id"],
            child["project"],
            child["submitter"],
            str(len(child["files"])),
            ", ".join(f"{verdicts.count(v)} {v}" for v in ("fail", "review", "pass") if v in verdicts),
            str(sum(1 for f in child["files"] if f["decisions"])),
        )
    _output.console.print(table)


@app.command("show")
def review_show(child_id: str, url: TreUrl = None, token: TreToken = None) -> None:
    """Each held file of a child with its findings, decisions so far and a safe preview."""
    view = tre_call(url, token, "GET", f"/review/v1/children/{child_id}")
    _output.console.rule(f"{view['child_id']}: project {view['project']}, submitted by {view['submitter']}")
    # The researcher sees these only if something is released: read them as part of the outputs.
    message = view.get("outcome_message") or ""
    _output.console.print(
        f"run: {view.get('outcome') or 'unknown'}{'; ' + message if message else ''}", markup=False
    )
    for n, step in enumerate(view.get("steps", [])):
        _output.console.print(
            f"  step {n}: exit code {step['exit_code']}, {step['start_time']} to {step['end_time']}",
            markup=False,
        )
    for file in view["files"]:
        _output.console.print(
            f"[bold]{escape(file['name'])}[/]  {file['kind']}, {file['size']} bytes, "
            f"sha256 {file['sha256'][:16]}…, "
            f"automated checks: [bold]{file['verdict']}[/]",
            highlight=False,
        )
        if file.get("never_releasable"):
            _output.console.print(
                f"  [red]never releasable: {escape(file['never_releasable'])}[/]", highlight=False
            )
        for finding in file["findings"]:
            _output.console.print(f"  - {finding}", markup=False, highlight=False)
        for checker, decision, reason in file["decisions"]:
            _output.console.print(
                f"  {checker}: {decision} {('(' + reason + ')') if reason else ''}", markup=False
            )
        shown = tre_call(
            url, token, "GET", f"/review/v1/children/{child_id}/preview", params={"name": file["name"]}
        )["preview"]
        _output.console.print(
            shown if shown is not None else "(larger than 64 KiB: no preview)", markup=False, highlight=False
        )


@app.command("crate")
def review_crate(
    child_id: str,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the crate's ro-crate-metadata.json here.")
    ] = None,
    url: TreUrl = None,
    token: TreToken = None,
) -> None:
    """The activity crate of a child's request as this TRE knows it: who asked, what the gateway checked,
    who here signed the project and the person off, and the run; a table, and with --output the JSON."""
    from fivesafes_tes.agent.record import view

    crate = tre_call(url, token, "GET", f"/review/v1/children/{child_id}/crate")
    shown = view(crate)
    table = Table("action", "status", "by", "when", title=shown.name, caption=shown.identifier)
    for action in shown.actions:
        described = f"\n[dim]{escape(action.description)}[/]" if action.description else ""
        if not action.recorded:
            described += "\n[dim](as the request crate states it)[/]"
        table.add_row(escape(action.name) + described, action.status, escape(action.by), action.when)
    _output.console.print(table)
    if output is not None:
        output.write_text(json.dumps(crate, indent=2, ensure_ascii=False) + "\n")
        _output.console.print(f"wrote {escape(str(output))}", highlight=False)


def _review_decide(
    url: str | None, token: str | None, child_id: str, name: str, decision: str, reason: str
) -> None:
    names = (
        [f["name"] for f in tre_call(url, token, "GET", f"/review/v1/children/{child_id}")["files"]]
        if name == "all"
        else [name]
    )
    checker = ""
    for each in names:
        checker = tre_call(
            url,
            token,
            "POST",
            f"/review/v1/children/{child_id}/decisions",
            json={"name": each, "decision": decision, "reason": reason},
        )["checker"]
    _output.console.print(f"{checker}: {decision} {', '.join(names)}")


FileName = Annotated[str, typer.Argument(help="The file (its container path, or step-N.stdout), or 'all'.")]


@app.command("approve")
def review_approve(
    child_id: str,
    name: FileName,
    reason: Annotated[str, typer.Option(help="Why; required to approve a file that failed a check.")] = "",
    url: TreUrl = None,
    token: TreToken = None,
) -> None:
    """Approve a held file for release, as the person your token names."""
    _review_decide(url, token, child_id, name, "approved", reason)


@app.command("reject")
def review_reject(
    child_id: str,
    name: FileName,
    reason: Annotated[str, typer.Option(help="Why; the researcher reads it.")],
    url: TreUrl = None,
    token: TreToken = None,
) -> None:
    """Reject a held file: it never leaves the TRE."""
    _review_decide(url, token, child_id, name, "rejected", reason)
