"""Drive a TES server with py-tes 0.4.x and print what happened as JSON on stdout.

    .venv-pytes04/bin/python tests/clients/pytes04_roundtrip.py URL TOKEN
    .venv-pytes04/bin/python tests/clients/pytes04_roundtrip.py URL TOKEN run IMAGE SCRIPT

The first sends every field py-tes 0.4 knows and cancels; `run` submits SCRIPT (sh -c) in IMAGE to
uk-tre with /data/out/count.txt as its output, waits as a workflow engine does for the task to end
(someone must release it meanwhile), and reports the FULL view.

Runs under the py-tes 0.4.x interpreter (it cannot share a virtualenv with py-tes 1.1), so it
imports nothing from this project. Every step is attempted even when an earlier one failed, and
each is reported as {"ok": true, "value": ...} or {"ok": false, "error": ..., plus the HTTP
request and response when there was one}. Exit status 0 unless the script itself is broken.
"""

from __future__ import annotations

import json
import sys
import traceback
from datetime import datetime
from importlib.metadata import version

import requests
import tes


def jsonable(value):
    if hasattr(value, "as_dict"):
        return jsonable(value.as_dict())
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def describe(exc: BaseException) -> dict:
    out: dict = {
        "ok": False,
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc()[-1500:],
    }
    response = getattr(exc, "response", None)
    if isinstance(response, requests.Response):
        request = response.request
        out["request"] = {"method": request.method, "url": request.url, "body": _text(request.body)}
        out["response"] = {"status": response.status_code, "body": response.text[:4000]}
    return out


def _text(body):
    return body.decode(errors="replace") if isinstance(body, bytes) else body


def main(url: str, token: str) -> dict:
    client = tes.HTTPClient(url, token=token)
    steps: dict = {}

    def run(name, call):
        try:
            steps[name] = {"ok": True, "value": jsonable(call())}
        except Exception as exc:  # noqa: BLE001  every failure is reported, none stops the run
            steps[name] = describe(exc)
        return steps[name].get("value")

    task = tes.Task(
        name="py-tes 0.4 round trip",
        description="the fields py-tes 0.4 knows",
        inputs=[
            tes.Input(name="data", description="by url", url="s3://inputs/data.csv", path="/in/data.csv"),
            tes.Input(name="script", path="/in/run.sh", content="echo literal content\n"),
            tes.Input(url="s3://inputs/dir/", path="/in/dir", type="DIRECTORY"),
        ],
        outputs=[
            tes.Output(name="result", url="s3://out/result.csv", path="/out/result.csv"),
            tes.Output(url="s3://out/dir/", path="/out/dir", type="DIRECTORY"),
        ],
        resources=tes.Resources(cpu_cores=1, ram_gb=2, disk_gb=5.5, preemptible=True, zones=["uk"]),
        executors=[
            tes.Executor(
                image="alpine:3.20",
                command=["sh", "-c", "cat /in/data.csv"],
                workdir="/work",
                stdout="/out/stdout.txt",
                env={"MODE": "old-client"},
            )
        ],
        volumes=["/vol/a"],
        tags={"client": "py-tes 0.4"},
    )

    run("service_info", client.get_service_info)
    task_id = run("create", lambda: client.create_task(task))
    if task_id is not None:
        for view in ("MINIMAL", "BASIC", "FULL"):
            run(f"get_{view}", lambda view=view: client.get_task(task_id, view))
        for view in ("MINIMAL", "BASIC"):
            run(f"list_{view}", lambda view=view: client.list_tasks(view))
        run("cancel", lambda: client.cancel_task(task_id))
        run("cancel_again", lambda: client.cancel_task(task_id))
        run("get_after_cancel", lambda: client.get_task(task_id, "MINIMAL"))
    return {"client_version": version("py-tes"), "sent": jsonable(task), "steps": steps}


def run_to_the_end(url: str, token: str, image: str, script: str) -> dict:
    client = tes.HTTPClient(url, token=token)
    steps: dict = {}
    task = tes.Task(
        name="py-tes 0.4 end to end",
        executors=[tes.Executor(image=image, command=["sh", "-c", script])],
        outputs=[tes.Output(path="/data/out/count.txt", url="s3://results/count.txt")],
        tags={"tres": "uk-tre"},
    )
    try:
        task_id = client.create_task(task)
        steps["create"] = {"ok": True, "value": task_id}
        steps["wait"] = {"ok": True, "value": client.wait(task_id, timeout=110).state}
        steps["get_FULL"] = {"ok": True, "value": jsonable(client.get_task(task_id, "FULL"))}
    except Exception as exc:  # noqa: BLE001  reported for the test to show
        steps[f"failed after {len(steps)} step(s)"] = describe(exc)
    return {"client_version": version("py-tes"), "steps": steps}


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[3] == "run":
        print(json.dumps(run_to_the_end(sys.argv[1], sys.argv[2], sys.argv[4], sys.argv[5]), indent=2))
    elif len(sys.argv) == 3:
        print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=2))
    else:
        sys.exit(f"usage: {sys.argv[0]} URL TOKEN [run IMAGE SCRIPT]")
