"""file:// outputs go where the task said, or the task is told why at once (issue 9, item 4): with
FIVESAFES_FILE_OUTPUT_ROOT set, released outputs are written under that folder by the delivery loop,
and never anywhere else (no `..`, no other host, no symbolic link leading out, nothing replaced);
unset, a task with a file:// output is refused at submission with a 400 that says so."""

from __future__ import annotations

import hashlib
import io

import pytest

from fivesafes_tes.egress.store import ChecksumMismatch
from fivesafes_tes.gateway.context import app_context
from fivesafes_tes.submission import file_outputs
from tests.conftest import Gateway, results_store_settings
from tests.test_agent_api import TES, approve, event, lease, upload
from tests.test_deliveries import child_row, delivered_urls, delivery_audit, outputs_view

SUMMARY = b"region,n\nnorth,120\n"


def filler(data: bytes):
    def fill(out) -> None:
        out.write(data)

    return fill


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- where a file:// url may point ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/out/../etc/passwd",
        "file:///srv/out/%2e%2e/etc/passwd",
        "file:///srv/outside/x.csv",  # shares the folder's name as a prefix only
        "file:///etc/passwd",
        "file:///srv/out",
        "file://evil.example/srv/out/x.csv",
        "file:///srv/out/x.csv?x=1",
        "file:///srv/out/x%00.csv",
        "file:relative/x.csv",
    ],
)
def test_a_url_leaving_the_folder_is_refused(url):
    with pytest.raises(file_outputs.UnsafeDestination):
        file_outputs.relative_path(url, "/srv/out")


def test_a_url_inside_the_folder_names_a_path_under_it():
    assert str(file_outputs.relative_path("file:///srv/out/study%201/./x.csv", "/srv/out")) == "study 1/x.csv"
    assert str(file_outputs.relative_path("file://localhost/srv/out/a/b", "/srv/out/")) == "a/b"


# --- writing inside the folder --------------------------------------------------------------------


def test_a_released_file_is_written_with_its_folders_and_a_repeat_is_a_no_op(tmp_path):
    url = f"file://{tmp_path}/study/2026/summary.csv"
    file_outputs.write(str(tmp_path), url, filler(SUMMARY), sha(SUMMARY))
    file_outputs.write(str(tmp_path), url, filler(b"never read"), sha(SUMMARY))  # there already
    assert (tmp_path / "study" / "2026" / "summary.csv").read_bytes() == SUMMARY
    assert sorted(p.name for p in (tmp_path / "study" / "2026").iterdir()) == ["summary.csv"]


def test_a_file_with_other_content_is_never_replaced(tmp_path):
    (tmp_path / "summary.csv").write_bytes(b"someone else's")
    with pytest.raises(file_outputs.DestinationExists):
        file_outputs.write(str(tmp_path), f"file://{tmp_path}/summary.csv", filler(SUMMARY), sha(SUMMARY))
    assert (tmp_path / "summary.csv").read_bytes() == b"someone else's"


def test_a_file_that_appears_while_writing_is_not_replaced(tmp_path):
    def racing(out) -> None:
        out.write(SUMMARY)
        (tmp_path / "summary.csv").write_bytes(b"someone else's")

    with pytest.raises(file_outputs.DestinationExists):
        file_outputs.write(str(tmp_path), f"file://{tmp_path}/summary.csv", racing, sha(SUMMARY))
    assert [(p.name, p.read_bytes()) for p in tmp_path.iterdir()] == [("summary.csv", b"someone else's")]


def test_bytes_that_do_not_match_their_sha256_never_appear(tmp_path):
    def damaged(out) -> None:
        out.write(b"tampered")
        raise ChecksumMismatch("k", sha(SUMMARY), sha(b"tampered"))

    with pytest.raises(ChecksumMismatch):
        file_outputs.write(str(tmp_path), f"file://{tmp_path}/summary.csv", damaged, sha(SUMMARY))
    assert list(tmp_path.iterdir()) == []


def test_a_symbolic_link_inside_the_folder_never_leads_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "study").symlink_to(outside)
    with pytest.raises(file_outputs.UnsafeDestination, match="symbolic link"):
        file_outputs.write(str(root), f"file://{root}/study/x.csv", filler(SUMMARY), sha(SUMMARY))
    (root / "x.csv").symlink_to(outside / "x.csv")
    with pytest.raises(file_outputs.DestinationExists):
        file_outputs.write(str(root), f"file://{root}/x.csv", filler(SUMMARY), sha(SUMMARY))
    assert list(outside.iterdir()) == []


# --- at submission --------------------------------------------------------------------------------


def submit(gw, outputs: list[dict]):
    body = {
        "executors": [{"image": "alpine", "command": ["true"]}],
        "outputs": outputs,
        "tags": {"tres": "uk-tre"},
    }
    return gw.client.post(f"{TES}/tasks", json=body, headers=gw.headers())


def test_file_outputs_are_refused_at_submission_where_no_folder_is_configured(gateway):
    answer = submit(gateway, [{"path": "/outputs/x.csv", "url": "file:///home/alice/x.csv"}])
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith(
        "outputs.0.url: this gateway has no folder for file:// outputs (its admin may set "
        "FIVESAFES_FILE_OUTPUT_ROOT), so 'file:///home/alice/x.csv' would never be written"
    )
    assert gateway.client.get(f"{TES}/tasks", headers=gateway.headers()).json()["tasks"] == []


@pytest.fixture
def folder_gateway(database_url, tmp_path, s3_endpoint):
    results = s3_endpoint.store()
    root = tmp_path / "shared"
    root.mkdir()
    gw = Gateway(
        database_url,
        tmp_path / "data",
        **results_store_settings(s3_endpoint, results.bucket),
        file_output_root=root,
        delivery_retry_s=0.05,
        delivery_attempts=2,
    )
    gw.root = root  # type: ignore[attr-defined]
    yield gw
    gw.close()


def test_file_outputs_outside_the_folder_are_refused_at_submission(folder_gateway):
    root = folder_gateway.root
    for url in (f"file://{root}/../x.csv", "file:///etc/cron.d/x", f"file://{root}-other/x.csv"):
        answer = submit(folder_gateway, [{"path": "/outputs/x.csv", "url": url}])
        assert answer.status_code == 400, url
        assert answer.json()["detail"].startswith("outputs.0.url: "), url
    assert (
        submit(folder_gateway, [{"path": "/outputs/x.csv", "url": f"file://{root}/x.csv"}]).status_code == 200
    )


def test_a_missing_folder_stops_the_gateway_at_start(database_url, tmp_path):
    from fivesafes_tes.gateway.app import ConfigurationError

    with pytest.raises(ConfigurationError, match="FIVESAFES_FILE_OUTPUT_ROOT"):
        Gateway(database_url, tmp_path / "data", seed=False, file_output_root=tmp_path / "missing")


# --- delivered after release ----------------------------------------------------------------------


def release(gw: Gateway, outputs: list[dict], files: dict[str, bytes]) -> tuple[str, str]:
    """Submit, run, approve and release `files` through the agent API, then make one delivery attempt."""
    task_id = submit(gw, outputs).json()["id"]
    child = lease(gw)["leases"][0]["child_id"]
    for seq, stage in enumerate(("staging", "running", "checking", "awaiting_review"), start=1):
        assert event(gw, child, 1, seq, stage).status_code == 200
    assert approve(gw, child, files).status_code == 200
    for name, data in files.items():
        assert upload(gw, child, data, name=name).status_code == 200
    disclosure = {"files": [{"name": n, "sha256": sha(d), "decision": "approved"} for n, d in files.items()]}
    assert event(gw, child, 1, 5, "released", report={"disclosure": disclosure}).status_code == 200
    app_context(gw.app).deliverer.deliver(child)
    return task_id, child


def test_released_outputs_are_written_where_the_task_said_and_shown_there(folder_gateway):
    root = folder_gateway.root
    files = {"/outputs/summary.csv": SUMMARY, "/outputs/plots/a.png": b"png"}
    outputs = [
        {"path": "/outputs/summary.csv", "url": f"file://{root}/study/summary.csv"},
        {
            "path": "/outputs/plots/*.png",
            "path_prefix": "/outputs/plots",
            "url": f"file://{root}/study/plots/",
        },
    ]
    task_id, child = release(folder_gateway, outputs, files)
    assert (root / "study" / "summary.csv").read_bytes() == SUMMARY
    assert (root / "study" / "plots" / "a.png").read_bytes() == b"png"
    assert delivered_urls(folder_gateway, child) == {
        "/outputs/summary.csv": f"file://{root}/study/summary.csv",
        "/outputs/plots/a.png": f"file://{root}/study/plots/a.png",
    }
    assert outputs_view(folder_gateway, task_id)["/outputs/summary.csv"] == f"file://{root}/study/summary.csv"
    assert sorted(delivery_audit(folder_gateway)) == [
        ("ok", "/outputs/plots/a.png"),
        ("ok", "/outputs/summary.csv"),
    ]


def test_a_wildcard_output_cannot_climb_out_of_its_url(folder_gateway):
    """A file outside an output's path_prefix is not that output's (`tes.outputs.claim`, the rule
    staging collects by): no `..` ever reaches a url, nothing is owed or written."""
    root = folder_gateway.root
    outputs = [{"path": "/outputs/*.csv", "path_prefix": "/outputs/deep", "url": f"file://{root}/study/"}]
    _, child = release(folder_gateway, outputs, {"/outputs/summary.csv": SUMMARY})
    assert delivered_urls(folder_gateway, child) == {"/outputs/summary.csv": None}
    row = child_row(folder_gateway, child)
    assert row.delivery_due_at is None, "no delivery is owed"
    assert row.delivery_attempts == 0
    assert not any("could not deliver" in line for line in row.system_logs or [])
    assert list(root.rglob("*")) == []


def test_a_symbolic_link_planted_in_the_folder_is_not_followed_when_delivering(folder_gateway, tmp_path):
    root, outside = folder_gateway.root, tmp_path / "outside"
    outside.mkdir()
    (root / "study").symlink_to(outside)
    outputs = [{"path": "/outputs/summary.csv", "url": f"file://{root}/study/summary.csv"}]
    _, child = release(folder_gateway, outputs, {"/outputs/summary.csv": SUMMARY})
    assert list(outside.iterdir()) == []
    assert delivered_urls(folder_gateway, child) == {"/outputs/summary.csv": None}
    assert delivery_audit(folder_gateway) == [("failed", "/outputs/summary.csv")]


def test_nothing_is_written_for_an_output_nobody_released(folder_gateway):
    root = folder_gateway.root
    outputs = [
        {"path": "/outputs/summary.csv", "url": f"file://{root}/summary.csv"},
        {"path": "/outputs/detail.csv", "url": f"file://{root}/detail.csv"},
    ]
    release(folder_gateway, outputs, {"/outputs/summary.csv": SUMMARY})  # detail.csv was withheld
    assert sorted(p.name for p in root.iterdir()) == ["summary.csv"]


def test_store_copy_to_verifies_before_the_caller_keeps_anything(s3_endpoint):
    store = s3_endpoint.store()
    store.put_bytes("k", SUMMARY)
    out = io.BytesIO()
    assert store.copy_to("k", out, expect_sha256=sha(SUMMARY)).sha256 == sha(SUMMARY)
    assert out.getvalue() == SUMMARY
    with pytest.raises(ChecksumMismatch):
        store.copy_to("k", io.BytesIO(), expect_sha256=sha(b"other"))
