"""The Kubernetes executor's filer on its own: what stage-in writes, what stage-out leaves behind, and
the `fivesafes-tes filer` commands a pod runs (everything from its environment, nothing on the command
line). The whole round trip through the executor is in test_executor_kubernetes.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fivesafes_tes.cli import app
from fivesafes_tes.egress import staging_area
from fivesafes_tes.executors import filer

runner = CliRunner()


def inputs_secret(tmp_path: Path, inputs: dict[str, str], folders: list[str]) -> Path:
    """A folder standing for the mounted inputs Secret."""
    secret = tmp_path / "secret"
    secret.mkdir()
    for key in inputs:
        (secret / key).write_bytes(f"input {key}".encode())
    (secret / filer.INDEX).write_text(json.dumps({"inputs": inputs, "folders": folders}))
    return secret


def test_stage_in_refuses_a_path_that_leaves_the_volume(tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    secret = inputs_secret(tmp_path, {"0": "../escaped"}, [])
    with pytest.raises(filer.FilerError, match="not a path inside the run's volume"):
        filer.stage_in(secret, volume)
    assert not (tmp_path / "escaped").exists()


def test_stage_out_posts_regular_files_only_and_a_manifest_of_them(tmp_path, s3_store):
    volume = tmp_path / "volume"
    (volume / "rw/0/nested").mkdir(parents=True)
    (volume / "rw/0/nested/a.txt").write_bytes(b"a")
    (volume / "rw/0/link").symlink_to(volume / "rw/0/nested/a.txt")
    os.mkfifo(volume / "rw/0/pipe")
    capability = {
        **s3_store.presigned_post(staging_area.prefix("c1", 2), max_bytes=1 << 20, expires_s=60),
        "folders": [{"volume": "rw/0", "path": "/out", "key": staging_area.folder_key("c1", 2, "/out")}],
        "manifest": staging_area.manifest_key("c1", 2),
    }
    staged = filer.stage_out(volume, capability)
    assert [(f.path, f.size) for f in staged] == [("/out/nested/a.txt", 1)]
    keys = [item.key for item in s3_store.list(staging_area.prefix("c1", 2))]
    assert sorted(keys) == ["staging/c1/2/files/out/nested/a.txt", "staging/c1/2/manifest.json"]
    manifest = json.loads(s3_store.get_bytes(staging_area.manifest_key("c1", 2)))
    assert manifest == {"files": [{"path": "/out/nested/a.txt", "size": 1, "sha256": staged[0].sha256}]}


def test_the_commands_read_their_paths_from_the_pods_environment(tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    secret = inputs_secret(tmp_path, {"0": "in/0/x.csv"}, ["rw/0"])
    result = runner.invoke(
        app,
        ["filer", "stage-in"],
        env={"FIVESAFES_FILER_INPUTS": str(secret), "FIVESAFES_FILER_VOLUME": str(volume)},
    )
    assert result.exit_code == 0, result.output
    assert (volume / "in/0/x.csv").read_bytes() == b"input 0"
    assert (volume / "rw/0").is_dir()
    missing = runner.invoke(app, ["filer", "stage-out"], env={"FIVESAFES_FILER_VOLUME": str(volume)})
    assert missing.exit_code == 2
    assert "FIVESAFES_FILER_CAPABILITY is not set" in missing.output
    capability = tmp_path / "capability.json"
    capability.write_text(
        json.dumps({"url": "http://127.0.0.1:9/airlock", "fields": {}, "folders": [], "manifest": "m"})
    )
    refused = runner.invoke(
        app,
        ["filer", "stage-out"],
        env={"FIVESAFES_FILER_VOLUME": str(volume), "FIVESAFES_FILER_CAPABILITY": str(capability)},
    )
    assert refused.exit_code == 1
    assert "Cannot stage the outputs out: could not reach the airlock to upload 'm'" in refused.output


def test_a_refused_upload_says_why_without_echoing_the_signature(tmp_path, s3_store):
    volume = tmp_path / "volume"
    (volume / "rw/0").mkdir(parents=True)
    (volume / "rw/0/a.txt").write_bytes(b"a")
    post = s3_store.presigned_post(staging_area.prefix("c1", 1), max_bytes=10, expires_s=60)
    post["url"] = post["url"].rsplit("/", 1)[0] + "/no-such-bucket"
    capability = {
        **post,
        "folders": [{"volume": "rw/0", "path": "/out", "key": staging_area.folder_key("c1", 1, "/out")}],
        "manifest": staging_area.manifest_key("c1", 1),
    }
    with pytest.raises(filer.FilerError) as refused:
        filer.stage_out(volume, capability)
    assert str(refused.value).startswith(
        "the airlock refused 'staging/c1/1/files/out/a.txt': HTTP 404 NoSuchBucket"
    )
    assert post["fields"]["x-amz-signature"] not in str(refused.value)
