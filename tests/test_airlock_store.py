"""The airlock's object store and holding outputs, against moto's S3 server over real HTTP."""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import posixpath
import socket
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fivesafes_tes.egress import (
    ChecksumMismatch,
    HeldKey,
    HoldConflict,
    LogKey,
    ObjectExists,
    ObjectMissing,
    ObjectStore,
    OutputKey,
    StaleAttempt,
    StoreSettings,
    StoreUnavailable,
    Stream,
    UnsafeKey,
    UnsafeOutput,
    discard,
    held_key,
    hold_outputs,
    read_manifest,
    safe_key,
)

if TYPE_CHECKING:
    from tests.s3 import S3Endpoint


MB = 1_000_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def open_uploads(endpoint: S3Endpoint, store: ObjectStore) -> list:
    return endpoint.raw_client().list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"hello, airlock\n", os.urandom(300_000)], ids=["empty", "text", "binary"]
)
def test_file_round_trip_records_and_verifies_sha256(
    s3_store: ObjectStore, tmp_path: Path, data: bytes
) -> None:
    source = write(tmp_path / "in.bin", data)

    stored = s3_store.put_file("a/in.bin", source)

    assert (stored.key, stored.size, stored.sha256) == ("a/in.bin", len(data), sha(data))
    head = s3_store.head("a/in.bin")
    assert head is not None
    assert head.sha256 == sha(data)
    assert head.size == len(data)
    fetched = s3_store.get_to_file("a/in.bin", tmp_path / "out.bin", expect_sha256=sha(data))
    assert (tmp_path / "out.bin").read_bytes() == data
    assert fetched.sha256 == sha(data)
    assert fetched.size == len(data)
    assert leftovers(tmp_path) == []


def test_large_file_goes_multipart_and_round_trips(
    s3_endpoint: S3Endpoint, s3_store: ObjectStore, tmp_path: Path
) -> None:
    data = os.urandom(20 * MB)
    source = write(tmp_path / "big.bin", data)

    stored = s3_store.put_file("big.bin", source)

    assert stored.etag.endswith("-2")  # 20 MB in 16 MiB parts
    assert stored.sha256 == sha(data)
    assert stored.size == len(data)
    head = s3_store.head("big.bin")
    assert head is not None
    assert head.sha256 == sha(data)
    assert head.etag == stored.etag
    s3_store.get_to_file("big.bin", tmp_path / "back.bin", expect_sha256=sha(data))
    assert sha((tmp_path / "back.bin").read_bytes()) == sha(data)
    assert open_uploads(s3_endpoint, s3_store) == []


def test_small_parts_and_known_hash(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    store = s3_endpoint.store(
        multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024, max_concurrency=2
    )
    data = os.urandom(23 * MB)
    source = write(tmp_path / "big.bin", data)

    stored = store.put_file("big.bin", source, sha256=sha(data).upper())

    assert stored.etag.endswith("-5")
    assert stored.sha256 == sha(data)
    store.get_to_file("big.bin", tmp_path / "back.bin", expect_sha256=sha(data))
    assert (tmp_path / "back.bin").read_bytes() == data


@pytest.mark.parametrize("size", [1000, 20 * MB], ids=["single", "multipart"])
def test_wrong_claimed_hash_writes_nothing(
    s3_endpoint: S3Endpoint, s3_store: ObjectStore, tmp_path: Path, size: int
) -> None:
    source = write(tmp_path / "f.bin", os.urandom(size))

    with pytest.raises(ChecksumMismatch):
        s3_store.put_file("f.bin", source, sha256="0" * 64)

    assert s3_store.head("f.bin") is None
    assert open_uploads(s3_endpoint, s3_store) == []


def test_put_bytes_list_delete(s3_store: ObjectStore) -> None:
    for name in ("p/a", "p/b/c", "q/d"):
        s3_store.put_bytes(name, name.encode())

    assert [o.key for o in s3_store.list("p/")] == ["p/a", "p/b/c"]
    assert s3_store.get_bytes("p/b/c", expect_sha256=sha(b"p/b/c")) == b"p/b/c"
    s3_store.delete("p/a")
    s3_store.delete("p/a")  # deleting a missing key is fine
    assert s3_store.delete_prefix("p/") == 1
    assert [o.key for o in s3_store.list()] == ["q/d"]
    with pytest.raises(ValueError, match="end with '/'"):
        s3_store.delete_prefix("q")  # would also match "q-other/..."


def test_missing_key(s3_store: ObjectStore, tmp_path: Path) -> None:
    assert s3_store.head("nope") is None
    with pytest.raises(ObjectMissing):
        s3_store.get_to_file("nope", tmp_path / "x", expect_sha256="0" * 64)
    with pytest.raises(ObjectMissing):
        s3_store.get_bytes("nope")
    assert not (tmp_path / "x").exists()
    assert leftovers(tmp_path) == []


# --- integrity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 18 * MB], ids=["single", "multipart"])
def test_object_changed_behind_our_back_is_caught(s3_endpoint: S3Endpoint, tmp_path: Path, size: int) -> None:
    airlock, results = s3_endpoint.store(), s3_endpoint.store()
    original = os.urandom(size)
    recorded = airlock.put_file("held/c1/outputs/out.csv", write(tmp_path / "out.csv", original)).sha256
    forged = bytearray(original)
    forged[size // 2] ^= 0xFF
    # Overwritten with the original's metadata too: only the recorded hash can tell.
    s3_endpoint.raw_client().put_object(
        Bucket=airlock.bucket,
        Key="held/c1/outputs/out.csv",
        Body=bytes(forged),
        Metadata={"sha256": recorded},
    )

    with pytest.raises(ChecksumMismatch) as caught:
        airlock.get_to_file("held/c1/outputs/out.csv", tmp_path / "fetched.csv", expect_sha256=recorded)
    assert caught.value.expected == recorded
    assert caught.value.actual == sha(bytes(forged))
    assert not (tmp_path / "fetched.csv").exists()
    assert leftovers(tmp_path) == []

    with pytest.raises(ChecksumMismatch) as caught:
        results.copy_verified(airlock, "held/c1/outputs/out.csv", "released/c1/out.csv", recorded)
    assert caught.value.key == "held/c1/outputs/out.csv"
    assert results.head("released/c1/out.csv") is None
    assert open_uploads(s3_endpoint, results) == []


def test_copy_verified_is_idempotent_and_never_overwrites(s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    airlock, results = s3_endpoint.store(), s3_endpoint.store()
    data = os.urandom(17 * MB)
    held = airlock.put_file("held/c1/outputs/big.bin", write(tmp_path / "big.bin", data))

    first = results.copy_verified(airlock, held.key, "released/c1/big.bin", held.sha256 or "")
    again = results.copy_verified(airlock, held.key, "released/c1/big.bin", held.sha256 or "")

    assert first == again
    assert first.sha256 == sha(data)
    assert first.size == len(data)
    results.get_to_file("released/c1/big.bin", tmp_path / "released.bin", expect_sha256=sha(data))
    assert airlock.head(held.key) is not None  # the source is left for the caller to remove
    results.put_bytes("released/c1/other", b"something else")
    with pytest.raises(ObjectExists):
        results.copy_verified(airlock, held.key, "released/c1/other", held.sha256 or "")


@pytest.mark.parametrize("conditional", [True, False], ids=["if-none-match", "head-check"])
def test_conditional_write_refuses_overwrite(
    s3_endpoint: S3Endpoint, tmp_path: Path, conditional: bool
) -> None:
    store = s3_endpoint.store(conditional_writes=conditional)
    store.put_bytes("k", b"first", if_absent=True)

    with pytest.raises(ObjectExists):
        store.put_bytes("k", b"second", if_absent=True)
    with pytest.raises(ObjectExists):
        store.put_file("k", write(tmp_path / "f", b"third"), if_absent=True)

    assert store.get_bytes("k") == b"first"
    store.put_bytes("k", b"fourth")  # an ordinary write may overwrite
    assert store.get_bytes("k") == b"fourth"


class _NoConditionals(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint of an older generation: no If-None-Match on writes, an empty bucket."""

    protocol_version = "HTTP/1.1"
    puts: ClassVar[list[bool]] = []

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        conditional = "If-None-Match" in self.headers
        type(self).puts.append(conditional)
        body = (
            b"<Error><Code>NotImplemented</Code><Message>If-None-Match</Message></Error>"
            if conditional
            else b""
        )
        self.send_response(501 if conditional else 200)
        self.send_header("ETag", '"abc"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_store_without_conditional_writes_falls_back_to_a_check() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoConditionals)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = ObjectStore(
            f"http://127.0.0.1:{server.server_address[1]}", "bucket", "ak", "sk", max_attempts=1
        )
        store.put_bytes("k1", b"x", if_absent=True)
        store.put_bytes("k2", b"y", if_absent=True)
    finally:
        server.shutdown()
        server.server_close()
    assert _NoConditionals.puts == [True, False, False]


def test_from_settings_keeps_the_secret_out_of_sight(s3_endpoint: S3Endpoint) -> None:
    settings = StoreSettings(
        endpoint_url=s3_endpoint.url,
        bucket="from-settings",
        access_key=s3_endpoint.access_key,
        secret_key=s3_endpoint.secret_key,
    )
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    store.put_bytes("k", b"v")

    assert store.get_bytes("k") == b"v"
    assert s3_endpoint.secret_key not in f"{store!r} {settings!r} {settings.model_dump_json()}"


# --- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [
        (),
        ("",),
        ("/outputs/x",),
        ("outputs/../x",),
        ("..",),
        ("a", "../b"),
        ("a//b",),
        ("a/",),
        ("a\\..\\b",),
        ("a\x00b",),
        ("a\nb",),
        ("a\x1bb",),
        ("a\u202eb",),  # right-to-left override
        ("a\u2028b",),  # line separator
        ("a\u200bb",),  # zero-width space
        ("a\U000e0001b",),  # language tag
        ("a\ufffeb",),  # noncharacter
        (".",),
        ("x" * 256,),
        ("/".join(["y" * 200] * 6),),
    ],
)
def test_safe_key_refuses(parts: tuple[str, ...]) -> None:
    with pytest.raises(UnsafeKey):
        safe_key(*parts)


def test_safe_key_normalises() -> None:
    assert safe_key("held", "c1", "outputs/./results/table.csv") == "held/c1/outputs/results/table.csv"
    assert safe_key("cafe\u0301") == "caf\u00e9"
    assert safe_key("résumé dir/ünïcode file.txt") == "résumé dir/ünïcode file.txt"
    with pytest.raises(TypeError):
        safe_key(b"bytes")  # type: ignore[arg-type]


segment = st.text(min_size=0, max_size=20)
part = st.lists(
    st.one_of(segment, st.sampled_from(["..", ".", "", "/", "\x00"])), min_size=1, max_size=6
).map("/".join)


@given(st.lists(part, min_size=1, max_size=4))
def test_safe_key_never_escapes(parts: list[str]) -> None:
    try:
        key = safe_key(*parts)
    except UnsafeKey:
        return
    segments = key.split("/")
    assert "" not in segments
    assert ".." not in segments
    assert "." not in segments
    assert not key.startswith("/")
    assert "\\" not in key
    assert not any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for ch in key)
    assert len(key.encode()) <= 1024
    assert posixpath.normpath(posixpath.join("/base", key)).startswith("/base/")
    assert safe_key(key) == key


@given(st.lists(segment.filter(lambda s: "/" not in s), min_size=0, max_size=4), st.integers(0, 4))
def test_safe_key_refuses_any_dotdot(segments: list[str], at: int) -> None:
    segments.insert(min(at, len(segments)), "..")
    with pytest.raises(UnsafeKey):
        safe_key("held", "/".join(segments))


# --- holding outputs ----------------------------------------------------------------------------


TABLE = OutputKey("/outputs/results/table.csv")
STDOUT = LogKey(0, Stream.STDOUT)


@pytest.fixture
def task_files(tmp_path: Path) -> dict[HeldKey, Path]:
    work = tmp_path / "work"
    return {
        TABLE: write(work / "o1", b"a,b\n1,2\n"),
        OutputKey("/outputs/plot.png"): write(work / "o2", os.urandom(50_000)),
        OutputKey("/outputs/empty.txt"): write(work / "o3", b""),
        STDOUT: write(work / "logs" / "step-0.stdout", b"started\n"),
        LogKey(0, Stream.STDERR): write(work / "logs" / "step-0.stderr", b""),
    }


def only_table(files: dict[HeldKey, Path]) -> dict[HeldKey, Path]:
    return {TABLE: files[TABLE]}


def keys_in(store: ObjectStore) -> list[str]:
    return [o.key for o in store.list()]


def test_hold_outputs_twice_gives_the_same_manifest(
    s3_store: ObjectStore, task_files: dict[HeldKey, Path]
) -> None:
    first = hold_outputs(s3_store, "c1", 1, task_files)
    second = hold_outputs(s3_store, "c1", 1, dict(reversed(task_files.items())))

    assert second == first
    assert read_manifest(s3_store, "c1") == first  # a HeldFile is the same file wherever its copy is
    assert [held_key("c1", f.key) for f in first.files] == [
        "held/c1/logs/step-0.stderr",
        "held/c1/logs/step-0.stdout",
        "held/c1/outputs/outputs/empty.txt",
        "held/c1/outputs/outputs/plot.png",
        "held/c1/outputs/outputs/results/table.csv",
    ]
    assert keys_in(s3_store) == sorted(
        [held_key("c1", f.key) for f in first.files] + ["held/c1/manifest.json"]
    )
    for held in first.files:
        head = s3_store.head(held_key("c1", held.key))
        assert head is not None
        assert head.sha256 == held.sha256
        assert head.size == held.size


def test_hold_resumes_after_a_crash(
    s3_endpoint: S3Endpoint, s3_store: ObjectStore, task_files: dict[HeldKey, Path]
) -> None:
    # A crashed earlier run: some files held, one stray the new run does not produce, no manifest.
    s3_store.put_file("held/c1/outputs/outputs/results/table.csv", task_files[TABLE])
    s3_store.put_bytes("held/c1/outputs/outputs/partial-leftover.tmp", b"junk")

    manifest = hold_outputs(s3_store, "c1", 1, task_files)

    assert keys_in(s3_store) == sorted(
        [held_key("c1", f.key) for f in manifest.files] + ["held/c1/manifest.json"]
    )
    redo = hold_outputs(s3_store, "c1", 1, task_files)
    assert [(f.key, f.sha256, f.size) for f in redo.files] == [
        (f.key, f.sha256, f.size) for f in manifest.files
    ]


def test_discard_removes_everything_held(s3_store: ObjectStore, task_files: dict[HeldKey, Path]) -> None:
    hold_outputs(s3_store, "c1", 1, task_files)
    hold_outputs(s3_store, "c2", 1, only_table(task_files))

    assert discard(s3_store, "c1") == 5
    assert read_manifest(s3_store, "c1") is None
    assert all(not k.startswith("held/c1/") for k in keys_in(s3_store))
    assert read_manifest(s3_store, "c2") is not None
    assert discard(s3_store, "c1") == 0


@pytest.mark.parametrize(
    "container_path",
    ["/outputs/../etc/passwd", "outputs/relative", "/outputs//x", "/outputs/a\nb", "/outputs/dir/"],
)
def test_hold_refuses_unsafe_paths_before_writing(
    s3_store: ObjectStore, task_files: dict[HeldKey, Path], container_path: str
) -> None:
    with pytest.raises(UnsafeOutput):
        hold_outputs(s3_store, "c1", 1, {**task_files, OutputKey(container_path): task_files[TABLE]})
    assert keys_in(s3_store) == []


def test_hold_refuses_symlinks_duplicates_and_bad_logs(
    s3_store: ObjectStore, task_files: dict[HeldKey, Path], tmp_path: Path
) -> None:
    secret = write(tmp_path / "host-secret", b"not an output")
    (tmp_path / "link").symlink_to(secret)
    attempts = [
        {OutputKey("/outputs/link"): tmp_path / "link"},
        {OutputKey("/outputs/dir"): tmp_path},
        {**only_table(task_files), OutputKey("/outputs/./results/table.csv"): task_files[STDOUT]},
        {LogKey(-1, Stream.STDOUT): task_files[STDOUT]},
    ]
    for files in attempts:
        with pytest.raises(UnsafeOutput):
            hold_outputs(s3_store, "c1", 1, files)
    for child_id in ("../c2", "c1/sub", "", "c1\n"):
        with pytest.raises(UnsafeOutput):
            hold_outputs(s3_store, child_id, 1, only_table(task_files))
        with pytest.raises(UnsafeOutput):
            discard(s3_store, child_id)
    assert keys_in(s3_store) == []


def test_hold_attempts(s3_store: ObjectStore, task_files: dict[HeldKey, Path], tmp_path: Path) -> None:
    hold_outputs(s3_store, "c1", 2, task_files)
    changed: dict[HeldKey, Path] = {TABLE: write(tmp_path / "new.csv", b"a,b\n3,4\n")}

    with pytest.raises(StaleAttempt):
        hold_outputs(s3_store, "c1", 1, task_files)
    with pytest.raises(HoldConflict):
        hold_outputs(s3_store, "c1", 2, changed)
    assert read_manifest(s3_store, "c1").attempt == 2  # type: ignore[union-attr]

    newer = hold_outputs(s3_store, "c1", 3, changed)

    assert newer.attempt == 3
    assert [f.key for f in newer.files] == [TABLE]
    assert keys_in(s3_store) == ["held/c1/manifest.json", "held/c1/outputs/outputs/results/table.csv"]
    assert s3_store.get_bytes(held_key("c1", TABLE), expect_sha256=newer.files[0].sha256) == b"a,b\n3,4\n"


# --- outages ------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FAST_FAIL = {"connect_timeout_s": 1.0, "read_timeout_s": 2.0, "max_attempts": 2}


def every_operation(store: ObjectStore, tmp_path: Path) -> list:
    source = write(tmp_path / "f", b"data")
    return [
        store.ensure_bucket,
        lambda: store.head("k"),
        lambda: store.put_bytes("k", b"x"),
        lambda: store.put_file("k", source, if_absent=True),
        lambda: store.get_to_file("k", tmp_path / "out", expect_sha256=sha(b"data")),
        lambda: list(store.list("p/")),
        lambda: store.delete("k"),
        lambda: store.delete_prefix("p/"),
        lambda: hold_outputs(store, "c1", 1, {OutputKey("/outputs/f"): source}),
        lambda: read_manifest(store, "c1"),
    ]


def assert_unavailable_quickly(store: ObjectStore, tmp_path: Path) -> None:
    for operation in every_operation(store, tmp_path):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            operation()
        assert time.monotonic() - started < 5
    assert leftovers(tmp_path) == []


def test_closed_port_is_unavailable_quickly(tmp_path: Path) -> None:
    store = ObjectStore(f"http://127.0.0.1:{closed_port()}", "bucket", "ak", "sk", **FAST_FAIL)
    assert_unavailable_quickly(store, tmp_path)


def test_stopped_server_is_unavailable_then_recovers(own_s3_endpoint: S3Endpoint, tmp_path: Path) -> None:
    store = own_s3_endpoint.store(**FAST_FAIL)
    store.put_bytes("before", b"kept")
    own_s3_endpoint.stop()

    assert_unavailable_quickly(store, tmp_path)

    own_s3_endpoint.restart()
    assert store.get_bytes("before") == b"kept"


class _Failing(http.server.BaseHTTPRequestHandler):
    def _fail(self) -> None:
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)) if self.command != "HEAD" else "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _fail

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_5xx_is_unavailable(failing_endpoint: str, tmp_path: Path) -> None:
    store = ObjectStore(failing_endpoint, "bucket", "ak", "sk", max_attempts=1)
    assert_unavailable_quickly(store, tmp_path)


# --- logs ---------------------------------------------------------------------------------------


def test_no_secret_in_logs_or_errors(
    s3_endpoint: S3Endpoint, tmp_path: Path, task_files: dict[HeldKey, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = s3_endpoint.secret_key
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        airlock, results = s3_endpoint.store(), s3_endpoint.store()
        manifest = hold_outputs(airlock, "c1", 1, task_files)
        big = airlock.put_file("big", write(tmp_path / "big", os.urandom(17 * MB)))
        results.copy_verified(airlock, big.key, "out/big", big.sha256 or "")
        for held in manifest.files:
            airlock.get_to_file(held_key("c1", held.key), tmp_path / "fetched", expect_sha256=held.sha256)
        first = held_key("c1", manifest.files[0].key)
        for failing in (
            lambda: airlock.get_to_file(first, tmp_path / "x", expect_sha256="0" * 64),
            lambda: airlock.put_bytes(first, b"", if_absent=True),
            lambda: ObjectStore(f"http://127.0.0.1:{closed_port()}", "b", "ak", secret, **FAST_FAIL).head(
                "k"
            ),
        ):
            try:
                failing()
            except Exception as exc:  # noqa: BLE001 - collecting every message the caller could log
                errors.append(f"{exc!r} {exc} {exc.__cause__!r}")
        discard(airlock, "c1")

    assert len(errors) == 3
    text = "\n".join([r.getMessage() for r in caplog.records] + errors + [repr(airlock)])
    assert any(r.name.startswith("fivesafes_tes.egress") for r in caplog.records)
    assert secret not in text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("fivesafes_tes"))
    assert "Signature=" not in ours
    assert "X-Amz-Signature" not in ours
