"""Multipart uploads: parts sent in parallel while the whole is hashed, completed only once the hash
matched, aborted otherwise, so a large object is never visible with bytes nobody checked.

Driven here rather than by boto3's transfer manager because it can neither send `If-None-Match` on
CompleteMultipartUpload nor hold back completion until a hash is checked.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3's smallest non-final part
_MAX_PARTS = 10_000

# Called once the last part is sent, with the SHA-256 of the bytes sent and the arguments of
# CompleteMultipartUpload: raises if the hash is not the one expected (the upload is then aborted),
# else completes the upload and returns the response.
Finish = Callable[[str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Parts:
    """How an upload is cut up and sent."""

    size: int
    concurrency: int
    native_checksums: bool


def read_exact(stream: IO[bytes], size: int) -> bytes:
    """Up to `size` bytes; fewer only at end of stream."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(min(remaining, 8 * MiB))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def upload(
    client: Any, create: dict[str, Any], stream: IO[bytes], size: int, parts: Parts, finish: Finish
) -> tuple[dict[str, Any], int, int]:
    """Upload `size` bytes of `stream` as the object `create` describes (Bucket, Key, Metadata...),
    `parts.concurrency` parts in flight; `finish` decides on completion. Returns the completion's
    response, the bytes written and the number of parts."""
    bucket, key = create["Bucket"], create["Key"]
    part_size = max(parts.size, -(-size // _MAX_PARTS))
    upload_id = client.create_multipart_upload(**create)["UploadId"]
    try:
        digest = hashlib.sha256()
        written = 0
        sent: list[Future[dict[str, Any]]] = []
        with ThreadPoolExecutor(parts.concurrency, thread_name_prefix="s3-part") as pool:
            while written < size:
                chunk = read_exact(stream, min(part_size, size - written))
                if not chunk:
                    break
                digest.update(chunk)
                written += len(chunk)
                in_flight = [f for f in sent if not f.done()]
                if len(in_flight) >= parts.concurrency:
                    wait(in_flight, return_when=FIRST_COMPLETED)
                for done in (f for f in sent if f.done()):
                    done.result()  # surface a failed part now, not after reading the rest
                number = len(sent) + 1
                sent.append(pool.submit(_upload_part, client, bucket, key, upload_id, number, chunk, parts))
            completed = [f.result() for f in sent]
        complete = {
            "Bucket": bucket,
            "Key": key,
            "UploadId": upload_id,
            "MultipartUpload": {"Parts": completed},
        }
        response = finish(digest.hexdigest(), complete)
    except BaseException:
        _abort(client, bucket, key, upload_id)
        raise
    return response, written, len(completed)


def _upload_part(
    client: Any, bucket: str, key: str, upload_id: str, number: int, chunk: bytes, parts: Parts
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "Bucket": bucket,
        "Key": key,
        "UploadId": upload_id,
        "PartNumber": number,
        "Body": chunk,
    }
    part: dict[str, Any] = {"PartNumber": number}
    if parts.native_checksums:
        kwargs["ChecksumAlgorithm"] = "SHA256"
        kwargs["ChecksumSHA256"] = part["ChecksumSHA256"] = base64.b64encode(
            hashlib.sha256(chunk).digest()
        ).decode()
    part["ETag"] = client.upload_part(**kwargs)["ETag"]
    return part


def _abort(client: Any, bucket: str, key: str, upload_id: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (ClientError, BotoCoreError) as exc:
        # Left for the bucket's abort-incomplete-multipart lifecycle rule; never visible.
        log.warning("could not abort the multipart upload of %s: %s", key, type(exc).__name__)
