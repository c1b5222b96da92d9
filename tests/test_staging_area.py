"""The airlock's staging area over real S3 (moto's server): what a backend that runs away from the
agent stages is fetched into the agent's folder by container path and step, and nothing else is."""

from __future__ import annotations

from pathlib import Path

import pytest

from fivesafes_tes.egress import staging_area
from fivesafes_tes.egress.store import ChecksumMismatch, ObjectStore

CHILD = "01a00000-0000-7000-8000-0000000000c1"


def test_staged_files_and_logs_come_back_by_container_path_and_step(s3_store: ObjectStore, tmp_path: Path):
    s3_store.ensure_bucket()
    s3_store.put_bytes(staging_area.file_key(CHILD, 2, "/out/table.csv"), b"n\n12\n")
    s3_store.put_bytes(staging_area.file_key(CHILD, 2, "/out/sub dir/é.txt"), b"x")
    s3_store.put_bytes(staging_area.log_key(CHILD, 2, 0, "stdout"), b"hello\n")
    s3_store.put_bytes(staging_area.manifest_key(CHILD, 2), b"{}")  # the stager's own record: skipped
    s3_store.put_bytes(staging_area.file_key(CHILD, 1, "/out/old.csv"), b"an older attempt's")

    collected = staging_area.fetch(s3_store, CHILD, 2, tmp_path, max_bytes=1 << 20)

    assert {p: f.read_bytes() for p, f in collected.files.items()} == {
        "/out/table.csv": b"n\n12\n",
        "/out/sub dir/é.txt": b"x",
    }
    assert {k: f.read_bytes() for k, f in collected.logs.items()} == {(0, "stdout"): b"hello\n"}
    assert all(tmp_path in f.parents for f in [*collected.files.values(), *collected.logs.values()])
    assert staging_area.url(s3_store, staging_area.folder_key(CHILD, 2, "/out")) == (
        f"s3://{s3_store.bucket}/staging/{CHILD}/2/files/out/"
    )

    assert staging_area.discard(s3_store, CHILD) == 5
    assert list(s3_store.list(staging_area.child_prefix(CHILD))) == []


def test_anything_else_under_the_prefix_or_too_much_is_refused(s3_store: ObjectStore, tmp_path: Path):
    s3_store.ensure_bucket()
    s3_store.put_bytes(staging_area.prefix(CHILD, 1) + "logs/notes.txt", b"not a log")
    with pytest.raises(staging_area.StagedFileRefused, match="not a staged file or log"):
        staging_area.fetch(s3_store, CHILD, 1, tmp_path, max_bytes=1 << 20)

    s3_store.put_bytes(staging_area.file_key(CHILD, 3, "/out/big"), b"x" * 100)
    with pytest.raises(staging_area.StagedFileRefused, match="more than 99 bytes"):
        staging_area.fetch(s3_store, CHILD, 3, tmp_path, max_bytes=99)
    with pytest.raises(staging_area.StagedFileRefused, match="normalised"):
        staging_area.file_key(CHILD, 3, "/out/../etc/passwd")


def test_a_staged_file_that_does_not_match_its_recorded_hash_is_refused(s3_store: ObjectStore, tmp_path):
    s3_store.ensure_bucket()
    key = staging_area.file_key(CHILD, 1, "/out/a")
    s3_store.put_bytes(key, b"original")
    raw = s3_store._client  # swap the bytes behind the recorded SHA-256, keeping its metadata
    head = raw.head_object(Bucket=s3_store.bucket, Key=key)
    raw.put_object(Bucket=s3_store.bucket, Key=key, Body=b"swapped", Metadata=head["Metadata"])
    with pytest.raises(ChecksumMismatch):
        staging_area.fetch(s3_store, CHILD, 1, tmp_path, max_bytes=1 << 20)
    assert list(tmp_path.rglob("*")) == []  # nothing half-written is left
