"""S3 object store adapter: the one module that talks boto3 (its multipart uploads in `multipart`, the
layout of its keys in `keys`). The gateway's results store and a TRE's airlock are each built by
`ObjectStore.from_settings` from one `StoreSettings` group, so neither side configures S3 by hand.

Every object we write carries its SHA-256 as user metadata (`sha256`) and, where the endpoint
supports it, as an S3 `ChecksumSHA256` the server verifies on arrival. Reads verify the bytes
against the SHA-256 the caller recorded (never against the object's own metadata, which whoever
overwrote the object could also have rewritten). A write only becomes visible after its bytes
have matched the expected hash: single PUTs are hashed before sending, multipart uploads are
completed only after the last part hashed correctly, otherwise aborted.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import BaseModel, Field, SecretStr

from fivesafes_tes.egress import multipart
from fivesafes_tes.egress.keys import shown
from fivesafes_tes.egress.multipart import MIN_PART, MiB, read_exact

log = logging.getLogger(__name__)

_READ_CHUNK = 1 * MiB
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_META_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestTimeTooSkewed",
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
_DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"})


# --- errors -------------------------------------------------------------------------------------


class StoreError(Exception):
    """The object store refused or failed an operation in a way a retry will not fix."""


class StoreUnavailable(StoreError):
    """The object store cannot be reached or answered 5xx/throttling: retry later (HTTP 503)."""


class ObjectMissing(StoreError):
    """The key does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object {key!r} does not exist")
        self.key = key


class ObjectExists(StoreError):
    """A write that must not overwrite found the key already taken."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object {key!r} already exists and may not be overwritten")
        self.key = key


class ChecksumMismatch(StoreError):
    """Bytes do not hash to the SHA-256 recorded for them: the object (or file) was altered."""

    def __init__(self, key: str, expected: str, actual: str | None) -> None:
        super().__init__(f"{key!r}: SHA-256 {actual or 'unknown'} does not match the recorded {expected}")
        self.key = key
        self.expected = expected
        self.actual = actual


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    """What the store knows of one object. `sha256` is None when the object has no recorded hash
    (or came from `list`, which does not return metadata)."""

    key: str
    size: int
    sha256: str | None
    etag: str
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


class StoreSettings(BaseModel):
    """Where one bucket lives and how to talk to it. Each process nests one per store it uses (the
    gateway's `results`, the agent's `airlock`), so every field has an environment variable."""

    endpoint_url: str | None = Field(default=None, description="S3 endpoint; unset means AWS.")
    bucket: str = Field(description="The bucket.")
    access_key: str | None = Field(
        default=None, description="Access key; unset: boto3's default credential chain."
    )
    secret_key: SecretStr | None = Field(default=None, description="Secret key of that access key.")
    region: str = Field(default="us-east-1", description="Region of the bucket.")
    addressing_style: Literal["path", "virtual", "auto"] = Field(
        default="path",
        description="`path` (MinIO, Ceph, moto), `virtual` (bucket in the host name) or `auto`.",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Seconds to wait for a connection.")
    read_timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for a response.")
    max_attempts: int = Field(default=3, ge=1, description="Tries per request, the first included.")
    native_checksums: bool = Field(
        default=True,
        description="Send ChecksumSHA256 for the server to verify (turn off for stores without it).",
    )
    conditional_writes: bool = Field(
        default=True, description="Use If-None-Match: * (else a HEAD check before each write)."
    )
    multipart_threshold: int = Field(
        default=16 * MiB, ge=MIN_PART, description="Bytes from which a file is uploaded in parts."
    )
    part_size: int = Field(default=16 * MiB, ge=MIN_PART, description="Bytes per part of a multipart upload.")
    max_concurrency: int = Field(default=4, ge=1, description="Parts in flight per upload.")


def _check_sha256(value: str) -> str:
    normalised = value.lower() if isinstance(value, str) else ""
    if not _SHA256_HEX.match(normalised):
        raise ValueError("a SHA-256 must be 64 hexadecimal characters")
    return normalised


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _etag(raw: str | None) -> str:
    return (raw or "").strip('"')


def _user_metadata(metadata: Mapping[str, str] | None, sha256: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not _META_NAME.match(name) or name == "sha256":
            raise ValueError(
                f"metadata name {shown(name)} must be lower-case letters, digits, '-' (not sha256)"
            )
        if not value.isascii() or not value.isprintable():
            raise ValueError(f"metadata {name!r} must be printable ASCII")
        out[name] = value
    out["sha256"] = sha256
    return out


# --- the store ----------------------------------------------------------------------------------


class ObjectStore:
    """One bucket of an S3-compatible store (MinIO, Ceph, AWS, moto)."""

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        access_key: str | None,
        secret_key: str | SecretStr | None,
        region: str = "us-east-1",
        *,
        addressing_style: Literal["path", "virtual", "auto"] = "path",
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 3,
        native_checksums: bool = True,
        conditional_writes: bool = True,
        multipart_threshold: int = 16 * MiB,
        part_size: int = 16 * MiB,
        max_concurrency: int = 4,
    ) -> None:
        if isinstance(secret_key, SecretStr):
            secret_key = secret_key.get_secret_value()
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.region = region
        self._native_checksums = native_checksums
        self._conditional_writes = conditional_writes
        self._multipart_threshold = max(multipart_threshold, MIN_PART)
        self._part_size = max(part_size, MIN_PART)
        self._max_concurrency = max(max_concurrency, 1)
        config = Config(
            region_name=region,
            signature_version="s3v4",
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max(10, self._max_concurrency + 2),
            tcp_keepalive=True,
            s3={"addressing_style": addressing_style},
            # Checksums are chosen explicitly below; botocore's default CRC32 on every request
            # breaks older S3-compatible stores and adds nothing to our SHA-256.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session per store: boto3 sessions are not thread-safe, clients are.
        session = boto3.session.Session()
        self._client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=config,
        )
        self._lock = threading.Lock()

    def with_bucket(self, bucket: str) -> ObjectStore:
        """Another bucket on the same endpoint, with the same credentials and client."""
        other = copy.copy(self)
        other.bucket = bucket
        return other

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> ObjectStore:
        return cls(
            settings.endpoint_url,
            settings.bucket,
            settings.access_key,
            settings.secret_key,
            settings.region,
            addressing_style=settings.addressing_style,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            max_attempts=settings.max_attempts,
            native_checksums=settings.native_checksums,
            conditional_writes=settings.conditional_writes,
            multipart_threshold=settings.multipart_threshold,
            part_size=settings.part_size,
            max_concurrency=settings.max_concurrency,
        )

    def __repr__(self) -> str:
        return f"ObjectStore(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r})"

    # --- error translation ---

    @contextmanager
    def _translate(self, operation: str, key: str | None = None) -> Iterator[None]:
        where = (
            f"{operation} {key!r} in bucket {self.bucket!r}"
            if key
            else f"{operation} on bucket {self.bucket!r}"
        )
        try:
            yield
        except ClientError as exc:
            raise self._from_client_error(exc, where, key) from exc
        except (BotoConnectionError, HTTPClientError, ResponseStreamingError, IncompleteReadError) as exc:
            raise StoreUnavailable(
                f"object store at {self._endpoint_name} unreachable ({where}): {type(exc).__name__}"
            ) from exc
        except NoCredentialsError as exc:
            raise StoreError(f"no credentials configured for the object store ({where})") from exc
        except BotoCoreError as exc:
            raise StoreError(f"object store client error ({where}): {type(exc).__name__}") from exc

    @property
    def _endpoint_name(self) -> str:
        return self.endpoint_url or "AWS"

    def _from_client_error(self, exc: ClientError, where: str, key: str | None) -> StoreError:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return StoreError(
                f"bucket {self.bucket!r} does not exist at {self._endpoint_name}; "
                "create it (ensure_bucket) or fix the configured bucket name"
            )
        if code in ("NoSuchKey", "NotFound") or (status == 404 and code in ("", "404")):
            return ObjectMissing(key or "")
        if status == 412 or code == "PreconditionFailed":
            return ObjectExists(key or "")
        if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
            return StoreUnavailable(
                f"object store at {self._endpoint_name} failed ({where}): {status} {code}"
            )
        if status == 403 or code in _DENIED_CODES:
            return StoreError(
                f"object store denied access ({where}): {code or status}; "
                "check the store's credentials and bucket policy"
            )
        return StoreError(f"object store refused ({where}): {status} {code}")

    # --- buckets ---

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        with self._translate("head bucket"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) != 404:
                    raise
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self._client.create_bucket(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

    # --- writes ---

    def put_file(
        self,
        key: str,
        path: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        content_type: str | None = None,
    ) -> StoredObject:
        """Upload a local file, recording its SHA-256.

        Files below the multipart threshold are read once (hashed, then sent with the hash). Larger
        files are read once when `sha256` is given and twice otherwise: S3 metadata travels with
        the first request, so the hash must be known before the upload starts. Either way the
        uploaded bytes are hashed as they are read and the upload is abandoned if they differ
        (the file changed underneath us, or `sha256` was wrong): `ChecksumMismatch`.
        With `if_absent`, an existing key is never overwritten: `ObjectExists`.
        """
        with Path(path).open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if sha256 is None:
                if size < self._multipart_threshold:
                    data = read_exact(handle, size)
                    return self._write_bytes(
                        key,
                        data,
                        hashlib.sha256(data).hexdigest(),
                        metadata,
                        if_absent,
                        content_type,
                        source=key,
                    )
                sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
                handle.seek(0)
            return self._write(
                key, handle, size, _check_sha256(sha256), metadata, if_absent, content_type, source=str(path)
            )

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        content_type: str | None = None,
    ) -> StoredObject:
        """Store a small object (a manifest, a record) with its SHA-256."""
        return self._write_bytes(
            key, bytes(data), hashlib.sha256(data).hexdigest(), metadata, if_absent, content_type, source=key
        )

    def _write(
        self,
        key: str,
        stream: IO[bytes],
        size: int,
        sha256: str,
        metadata: Mapping[str, str] | None,
        if_absent: bool,
        content_type: str | None,
        *,
        source: str,
    ) -> StoredObject:
        if size < self._multipart_threshold:
            return self._write_bytes(
                key, read_exact(stream, size), sha256, metadata, if_absent, content_type, source=source
            )
        return self._write_multipart(
            key, stream, size, sha256, metadata, if_absent, content_type, source=source
        )

    def _write_bytes(
        self,
        key: str,
        data: bytes,
        sha256: str,
        metadata: Mapping[str, str] | None,
        if_absent: bool,
        content_type: str | None,
        *,
        source: str,
    ) -> StoredObject:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ChecksumMismatch(source, sha256, actual)
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "Metadata": _user_metadata(metadata, sha256),
        }
        if content_type:
            kwargs["ContentType"] = content_type
        if self._native_checksums:
            kwargs["ChecksumAlgorithm"] = "SHA256"
            kwargs["ChecksumSHA256"] = _b64(sha256)
        with self._translate("put", key):
            if if_absent:
                self._refuse_existing(key)
            response = self._conditional(self._client.put_object, key, if_absent, kwargs)
        log.debug("stored %s (%d bytes)", key, len(data))
        return StoredObject(key, len(data), sha256, _etag(response.get("ETag")), kwargs["Metadata"])

    def _write_multipart(
        self,
        key: str,
        stream: IO[bytes],
        size: int,
        sha256: str,
        metadata: Mapping[str, str] | None,
        if_absent: bool,
        content_type: str | None,
        *,
        source: str,
    ) -> StoredObject:
        user_metadata = _user_metadata(metadata, sha256)
        create: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Metadata": user_metadata}
        if content_type:
            create["ContentType"] = content_type
        if self._native_checksums:
            create["ChecksumAlgorithm"] = "SHA256"

        def finish(actual: str, complete: dict[str, Any]) -> dict[str, Any]:
            if actual != sha256:
                raise ChecksumMismatch(source, sha256, actual)
            return self._conditional(self._client.complete_multipart_upload, key, if_absent, complete)

        parts = multipart.Parts(self._part_size, self._max_concurrency, self._native_checksums)
        with self._translate("multipart upload", key):
            if if_absent:
                self._refuse_existing(key)
            response, written, count = multipart.upload(self._client, create, stream, size, parts, finish)
        log.debug("stored %s (%d bytes, %d parts)", key, written, count)
        return StoredObject(key, written, sha256, _etag(response.get("ETag")), user_metadata)

    def _refuse_existing(self, key: str) -> None:
        if self._head(key) is not None:
            raise ObjectExists(key)

    def _conditional(
        self, call: Callable[..., dict[str, Any]], key: str, if_absent: bool, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """Make a write, with `If-None-Match: *` when it must not overwrite and the store knows it."""
        if if_absent and self._conditional_writes:
            try:
                return call(**kwargs, IfNoneMatch="*")
            except ClientError as exc:
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                if status == 412 or exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                    raise ObjectExists(key) from exc
                if status != 501 and exc.response.get("Error", {}).get("Code") != "NotImplemented":
                    raise
                with self._lock:
                    self._conditional_writes = False
                log.warning(
                    "object store at %s does not support conditional writes; "
                    "falling back to a check before each write",
                    self._endpoint_name,
                )
                self._refuse_existing(key)
        return call(**kwargs)

    # --- reads ---

    def _head(self, key: str) -> StoredObject | None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if self._native_checksums:
            kwargs["ChecksumMode"] = "ENABLED"
        try:
            response = self._client.head_object(**kwargs)
        except ClientError as exc:
            if int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) == 404:
                return None
            raise
        metadata = dict(response.get("Metadata") or {})
        return StoredObject(
            key,
            int(response.get("ContentLength", 0)),
            metadata.get("sha256"),
            _etag(response.get("ETag")),
            metadata,
        )

    def head(self, key: str) -> StoredObject | None:
        """The object's size, recorded SHA-256 and ETag, or None if there is no such key."""
        with self._translate("head", key):
            return self._head(key)

    @contextmanager
    def _open(self, key: str) -> Iterator[tuple[IO[bytes], int, dict[str, Any]]]:
        with self._translate("get", key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                yield body, int(response.get("ContentLength", 0)), response
            finally:
                body.close()

    def get_to_file(self, key: str, path: str | os.PathLike[str], *, expect_sha256: str) -> StoredObject:
        """Download to `path`, verifying the bytes against the SHA-256 recorded for them.

        The data lands in a temporary file beside `path` and is renamed into place only once it
        hashed correctly; on a mismatch the temporary file is removed and `ChecksumMismatch` raised.
        """
        target = Path(path)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(6)}.partial")
        try:
            # Held outputs may be disclosive: readable by this service's user only.
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                stored = self.copy_to(key, out, expect_sha256=expect_sha256)
                out.flush()
                os.fsync(out.fileno())
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return stored

    def copy_to(self, key: str, out: IO[bytes], *, expect_sha256: str) -> StoredObject:
        """Stream the object into `out`, then raise `ChecksumMismatch` unless the bytes hash to
        `expect_sha256`: the caller keeps what was written only if this returns."""
        expected = _check_sha256(expect_sha256)
        digest = hashlib.sha256()
        size = 0
        with self._open(key) as (body, _, response):
            for chunk in iter(lambda: body.read(_READ_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise ChecksumMismatch(key, expected, actual)
        return StoredObject(
            key, size, actual, _etag(response.get("ETag")), dict(response.get("Metadata") or {})
        )

    def copy_unverified(self, key: str, out: IO[bytes]) -> int:
        """Stream an object that has no recorded hash into `out` (the caller hashes what it keeps);
        returns the number of bytes."""
        size = 0
        with self._open(key) as (body, _, _response):
            for chunk in iter(lambda: body.read(_READ_CHUNK), b""):
                out.write(chunk)
                size += len(chunk)
        return size

    def get_bytes(self, key: str, *, expect_sha256: str | None = None, max_size: int = 16 * MiB) -> bytes:
        """A small object's bytes (verified when `expect_sha256` is given); refuses larger ones."""
        with self._open(key) as (body, size, _):
            if size > max_size:
                raise StoreError(f"object {key!r} is {size} bytes, more than the {max_size} allowed here")
            data = body.read()
        if expect_sha256 is not None:
            expected = _check_sha256(expect_sha256)
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise ChecksumMismatch(key, expected, actual)
        return data

    def get_head(self, key: str, max_bytes: int) -> bytes:
        """Up to the first `max_bytes` of a non-empty object, read with a ranged GET so a large object is
        never fetched whole. Unverified (a prefix has no checksum): for previews only, never for release."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        with self._translate("get", key):
            response = self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{max_bytes - 1}")
            body = response["Body"]
            try:
                data: bytes = body.read(max_bytes)
            finally:
                body.close()
        return data

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Objects under `prefix`, in key order. Listing returns no metadata: `sha256` is None."""
        paginator = self._client.get_paginator("list_objects_v2")
        with self._translate("list", prefix or "/"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"], int(item.get("Size", 0)), None, _etag(item.get("ETag")))

    # --- deletes ---

    def delete(self, key: str) -> None:
        """Remove the key; removing a missing key is not an error."""
        with self._translate("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under `prefix` (which must end in `/`); returns how many."""
        if not prefix or not prefix.endswith("/"):
            raise ValueError("a prefix to delete must be non-empty and end with '/'")
        deleted = 0
        batch: list[str] = []
        for item in self.list(prefix):
            batch.append(item.key)
            if len(batch) == 1000:
                deleted += self._delete_batch(batch)
                batch = []
        if batch:
            deleted += self._delete_batch(batch)
        return deleted

    def _delete_batch(self, keys: Sequence[str]) -> int:
        with self._translate("delete", keys[0]):
            response = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise StoreError(
                f"could not delete {len(errors)} object(s), first {first.get('Key')!r}: {first.get('Code')}"
            )
        return len(keys)

    # --- capabilities ---

    def presigned_post(self, prefix: str, *, max_bytes: int, expires_s: int) -> dict[str, Any]:
        """A capability to upload, by HTTP POST, objects whose keys start with `prefix` and no larger
        than `max_bytes` each, for `expires_s` seconds: {"url", "fields"}. It reads, lists and deletes
        nothing, and needs no credential of ours in the hands of whoever holds it."""
        if not prefix.endswith("/"):
            raise ValueError("a presigned prefix must end with '/'")
        with self._translate("presign a POST under", prefix):
            post: dict[str, Any] = self._client.generate_presigned_post(
                Bucket=self.bucket,
                Key=prefix + "${filename}",  # boto3 turns this into a starts-with condition on the key
                Conditions=[["content-length-range", 0, max_bytes]],
                ExpiresIn=expires_s,
            )
        return post

    # --- copies ---

    def copy_verified(
        self,
        src_store: ObjectStore,
        src_key: str,
        dst_key: str,
        expect_sha256: str,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Copy an object from another store into this one, verified at both ends.

        The source bytes stream through this process and must hash to `expect_sha256` before the
        destination becomes visible (else `ChecksumMismatch` naming the source key, and nothing is
        written). The destination is written only if absent and checked afterwards. Safe to repeat
        after a crash: a destination already holding the expected SHA-256 is returned as is; one
        holding anything else raises `ObjectExists`. The source is never modified.
        """
        expected = _check_sha256(expect_sha256)
        existing = self.head(dst_key)
        if existing is not None:
            if existing.sha256 == expected:
                return existing
            raise ObjectExists(dst_key)
        with src_store._open(src_key) as (body, size, response):
            try:
                written = self._write(
                    dst_key, body, size, expected, metadata, True, response.get("ContentType"), source=src_key
                )
            except ObjectExists:
                existing = self.head(dst_key)
                if existing is not None and existing.sha256 == expected:
                    return existing
                raise
        stored = self.head(dst_key)
        if stored is None or stored.sha256 != expected or stored.size != written.size:
            self.delete(dst_key)
            raise ChecksumMismatch(dst_key, expected, stored.sha256 if stored else None)
        return stored
