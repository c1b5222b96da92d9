"""BagIt zips (RFC 8493) as 5s-crate 0.4 carries them: read safely, written streaming.

`open_bag` judges every entry of the zip from its central directory before reading any member
(`_zip.judge`: traversal, absolute paths, links, devices, duplicates, one top-level folder, entry
count, sizes and ratios, encryption, methods), then reads the small tag files, checks the bag's
shape (BagIt 1.0 or later in UTF-8, `manifest-sha512.txt`, `External-Identifier`, complete
manifests, Payload-Oxum) and only then reads the whole file once, in order, hashing every member
and the archive itself. Nothing is extracted: payload files are read later as streams from the zip.

`write_bag` streams a bag into a zip: payload entries hashed as they are written, then manifests
(SHA-512 and SHA-256), bag-info and tag manifests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import unicodedata
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

from fivesafes_tes.crates import _zip
from fivesafes_tes.crates._zip import BagRefused, Member, show, size_text

__all__ = [
    "BagEntry",
    "BagLimits",
    "BagRefused",
    "PayloadFile",
    "VerifiedBag",
    "open_bag",
    "write_bag",
]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
#: The payload manifest 5s-crate requires, and the one more this reader verifies when present.
REQUIRED_ALGORITHM, OPTIONAL_ALGORITHM = "sha512", "sha256"
_HEX_LENGTH = {"sha512": 128, "sha256": 64}
_ALGORITHM_NAMES = {"sha512": "SHA-512", "sha256": "SHA-256"}
METADATA = "ro-crate-metadata.json"
REMAKE_BAG = "re-make the bag (`fivesafes-tes crate new`, or a BagIt 1.0 tool with SHA-512) and zip it again"
_PERCENT = re.compile(r"%(0[AaDd]|25)")
_LINE = re.compile(r"\r\n|\r|\n")
_MANIFEST_LINE = re.compile(r"([0-9A-Fa-f]+)[ \t]+(.+)")


@dataclass(frozen=True)
class BagLimits:
    """What a gateway takes at most from one crate; the defaults suit a gateway. docs/crates.md lists them."""

    max_zip_bytes: int = 2 * GiB  # the zip file itself
    max_entries: int = 10_000  # files and folders in the zip
    max_total_bytes: int = 4 * GiB  # all members once expanded, as the zip declares them
    max_ratio: float = 100.0  # expanded:compressed, for each member larger than 1 MiB
    max_metadata_bytes: int = 16 * MiB  # each tag file, and ro-crate-metadata.json
    max_directory_bytes: int = 16 * MiB  # the zip's central directory

    def zip_limits(self) -> _zip.ZipLimits:
        return _zip.ZipLimits(
            self.max_zip_bytes,
            self.max_entries,
            self.max_total_bytes,
            self.max_ratio,
            self.max_directory_bytes,
        )


@dataclass(frozen=True)
class PayloadFile:
    path: str  # POSIX, relative to data/
    size: int
    sha512: str
    sha256: str | None


class VerifiedBag:
    """A bag whose every payload file was found, complete and matching its manifests. Open only inside
    `open_bag`'s `with`: payload files are read from the zip as streams when asked for."""

    def __init__(
        self,
        fd: int,
        root: str,
        external_identifier: str,
        bag_info: dict[str, list[str]],
        payload: dict[str, PayloadFile],
        members: dict[str, Member],
        zip_sha512: str,
        zip_size: int,
        limits: BagLimits,
    ) -> None:
        self.root = root
        self.external_identifier = external_identifier
        self.bag_info = bag_info
        self.payload = payload
        self.zip_sha512 = zip_sha512
        self.zip_size = zip_size
        self._fd: int | None = fd
        self._members = members
        self._limits = limits

    def _member(self, path: str) -> tuple[int, Member]:
        if self._fd is None:
            raise ValueError("the bag is closed: read it inside open_bag's `with`")
        member = self._members.get(path)
        if member is None:
            raise BagRefused(
                f"the crate has no payload file {show('data/' + path)}: add it to the bag's data/ folder "
                "(and its manifests), or correct the name that refers to it"
            )
        return self._fd, member

    def open(self, path: str) -> IO[bytes]:
        """A payload file (a path relative to data/) as a binary stream; use it as a context manager."""
        fd, member = self._member(path)
        chunks = _zip.member_chunks(fd, member, crc_check=False)  # SHA-512 verified at intake instead
        return io.BufferedReader(_MemberStream(chunks), buffer_size=_zip.CHUNK)

    def read(self, path: str, max_bytes: int) -> bytes:
        """A payload file's bytes, if it holds at most ``max_bytes``."""
        _, member = self._member(path)
        if member.size > max_bytes:
            raise BagRefused(
                f"payload file {show('data/' + path)} is {size_text(member.size)}; at most "
                f"{size_text(max_bytes)} is read from it: make it smaller"
            )
        with self.open(path) as stream:
            return stream.read()

    def metadata(self) -> dict[str, Any]:
        """data/ro-crate-metadata.json, parsed; BagRefused if missing, too large or not a JSON object."""
        if METADATA not in self._members:
            raise BagRefused(
                f"the crate has no data/{METADATA}: an RO-Crate needs its metadata file at the top of the "
                "payload folder data/; add it and re-make the bag"
            )
        raw = self.read(METADATA, self._limits.max_metadata_bytes)
        try:
            parsed = json.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise BagRefused(f"data/{METADATA} is not UTF-8 text: save it as UTF-8") from None
        except (ValueError, RecursionError) as exc:
            raise BagRefused(
                f"data/{METADATA} is not valid JSON ({_json_problem(exc)}): correct it"
            ) from None
        if not isinstance(parsed, dict):
            raise BagRefused(
                f"data/{METADATA} is JSON but not an object ({{...}}): it must be a JSON-LD object"
            )
        return parsed

    def close(self) -> None:
        self._fd = None


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]


class _MemberStream(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


@contextmanager
def open_bag(
    source: Path, limits: BagLimits = BagLimits(), *, zip_sha512: str | None = None
) -> Iterator[VerifiedBag]:
    """The BagIt zip at ``source``, verified; BagRefused (with what to change) if it is not a bag
    this gateway takes. Nothing is written anywhere: members are read from the zip as streams.

    ``zip_sha512``: the file's SHA-512 if the caller computed it as the bytes arrived (spooling an
    upload), taken as given: it spares a second SHA-512 over the whole file, a third of the work."""
    fd = os.open(source, os.O_RDONLY)
    try:
        bag = _verify(fd, os.fstat(fd).st_size, limits, zip_sha512)
        try:
            yield bag
        finally:
            bag.close()
    finally:
        os.close(fd)


# --- verification ------------------------------------------------------------------------------


def _verify(fd: int, size: int, limits: BagLimits, zip_sha512: str | None) -> VerifiedBag:
    root, members = _zip.judge(fd, size, limits.zip_limits())
    prefix = root + "/"
    files = {m.name[len(prefix) :]: m for m in members if not m.is_dir}
    by_nfc = {unicodedata.normalize("NFC", name): name for name in files}  # judge() refused any clash

    def text(name: str) -> str:
        member = files[name]
        if member.size > limits.max_metadata_bytes:
            raise BagRefused(
                f"the bag's {name} is {size_text(member.size)}; the limit for a tag file is "
                f"{size_text(limits.max_metadata_bytes)}: {REMAKE_BAG}"
            )
        raw = b"".join(_zip.member_chunks(fd, member))
        try:
            return raw.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            raise BagRefused(f"the bag's {name} is not UTF-8 text: {REMAKE_BAG}") from None

    if "bagit.txt" not in files:
        raise BagRefused(
            f"the zip's folder {show(root)} has no bagit.txt, so it is not a BagIt bag: make the crate a bag "
            "(`fivesafes-tes crate new`, or a BagIt 1.0 tool with SHA-512) and zip the bag folder"
        )
    _check_declaration(_tags(text("bagit.txt"), "bagit.txt"))
    if not any(m.name.startswith(prefix + "data/") for m in members):
        raise BagRefused(f"the bag has no data/ folder: the crate's files belong in data/; {REMAKE_BAG}")
    payload_members = {name.removeprefix("data/"): m for name, m in files.items() if name.startswith("data/")}
    manifests: dict[str, dict[str, str]] = {}
    for algorithm in (REQUIRED_ALGORITHM, OPTIONAL_ALGORITHM):
        name = f"manifest-{algorithm}.txt"
        if name in files:
            manifests[algorithm] = _manifest(text(name), name, algorithm, payload=True)
    if REQUIRED_ALGORITHM not in manifests:
        raise BagRefused(
            "the bag has no manifest-sha512.txt: 5s-crate requires SHA-512 checksums of the payload; "
            f"{REMAKE_BAG}"
        )
    for algorithm, listed in manifests.items():
        _check_complete(listed, payload_members, f"manifest-{algorithm}.txt")
    tag_manifests: dict[str, dict[str, str]] = {}
    for algorithm in (REQUIRED_ALGORITHM, OPTIONAL_ALGORITHM):
        name = f"tagmanifest-{algorithm}.txt"
        if name in files:
            tag_manifests[algorithm] = listed = _manifest(text(name), name, algorithm, payload=False)
            for path in listed:
                if unicodedata.normalize("NFC", path) not in by_nfc:
                    raise BagRefused(f"{name} lists {show(path)} but the bag has no such file: {REMAKE_BAG}")
    if "fetch.txt" in files and text("fetch.txt").strip():
        raise BagRefused(
            "the bag has a fetch.txt listing files to download: this gateway does not fetch; put the files "
            "in data/ and remove fetch.txt"
        )
    if "bag-info.txt" not in files:
        raise BagRefused(
            "the bag has no bag-info.txt: 5s-crate requires one with an External-Identifier, a fresh UUID "
            f"URN for each request (e.g. 'External-Identifier: urn:uuid:{uuid.uuid4()}')"
        )
    bag_info = _tags(text("bag-info.txt"), "bag-info.txt")
    external_identifier = _external_identifier(bag_info)
    _check_oxum(bag_info, payload_members)

    wanted: dict[str, list[str]] = {}
    for path in payload_members:
        wanted[prefix + "data/" + path] = list(manifests)
    for algorithm, listed in tag_manifests.items():
        for path in listed:
            wanted.setdefault(prefix + by_nfc[unicodedata.normalize("NFC", path)], []).append(algorithm)
    scanned = _zip.scan(fd, size, members, lambda m: wanted.get(m.name, ()), zip_sha512)

    def digest(path: str, algorithm: str) -> str:
        return scanned.digests[prefix + by_nfc[unicodedata.normalize("NFC", path)]][algorithm]

    for algorithm, listed in manifests.items():
        _compare(listed, digest, f"manifest-{algorithm}.txt", algorithm, "payload file")
    for algorithm, listed in tag_manifests.items():
        _compare(listed, digest, f"tagmanifest-{algorithm}.txt", algorithm, "tag file")
    payload = {
        path: PayloadFile(
            path,
            m.size,
            digest("data/" + path, REQUIRED_ALGORITHM),
            digest("data/" + path, OPTIONAL_ALGORITHM) if OPTIONAL_ALGORITHM in manifests else None,
        )
        for path, m in payload_members.items()
    }
    return VerifiedBag(
        fd,
        root,
        external_identifier,
        bag_info,
        payload,
        payload_members,
        scanned.zip_sha512,
        scanned.zip_size,
        limits,
    )


def _tags(content: str, name: str) -> dict[str, list[str]]:
    """A tag file's labels and values (RFC 8493 2.2.2): 'Label: value', continued on indented lines."""
    pieces: list[tuple[str, list[str]]] = []  # joined at the end: folding stays linear in the file
    for number, line in enumerate(_LINE.split(content), start=1):
        if not line.strip():
            continue
        if line[0] in " \t" and pieces:
            pieces[-1][1].append(line.strip())
            continue
        label, colon, value = line.partition(":")
        if not colon or not label.strip():
            raise BagRefused(
                f"line {number} of the bag's {name} is not 'Label: value': correct it or {REMAKE_BAG}"
            )
        pieces.append((label.strip(), [value.strip()]))
    tags: dict[str, list[str]] = {}
    for label, parts in pieces:
        tags.setdefault(label, []).append(" ".join(p for p in parts if p))
    return tags


def _check_declaration(tags: dict[str, list[str]]) -> None:
    version = (tags.get("BagIt-Version") or [""])[0]
    match = re.fullmatch(r"(\d+)\.(\d+)", version)
    if not match or (int(match[1]), int(match[2])) < (1, 0):
        said = f"says BagIt-Version {version!r}" if version else "has no BagIt-Version"
        raise BagRefused(
            f"the bag's bagit.txt {said}: 5s-crate requires BagIt 1.0 or later; {REMAKE_BAG} (the `bagit` "
            "Python tool writes 0.97: set 'BagIt-Version: 1.0' in bagit.txt, then update the tag manifests "
            "with `python -c \"import bagit; bagit.Bag('FOLDER').save()\"`)"
        )
    encoding = (tags.get("Tag-File-Character-Encoding") or [""])[0]
    if encoding.upper().replace("_", "-") not in ("UTF-8", "UTF8"):
        said = (
            f"declares the encoding {encoding!r}" if encoding else "declares no Tag-File-Character-Encoding"
        )
        raise BagRefused(f"the bag's bagit.txt {said}: this gateway reads UTF-8 bags only; {REMAKE_BAG}")


def _manifest(content: str, name: str, algorithm: str, payload: bool) -> dict[str, str]:
    """A manifest's paths (decoded, relative to the bag) and checksums (lower case)."""
    listed: dict[str, str] = {}
    keys: dict[str, str] = {}
    hex_length = _HEX_LENGTH[algorithm]
    for number, line in enumerate(_LINE.split(content), start=1):
        if not line.strip():
            continue
        match = _MANIFEST_LINE.fullmatch(line)
        if not match or len(match[1]) != hex_length:
            raise BagRefused(
                f"line {number} of the bag's {name} is not "
                f"'<{_ALGORITHM_NAMES[algorithm]} checksum> <path>': "
                f"{REMAKE_BAG}"
            )
        checksum, path = match[1], _PERCENT.sub(lambda m: chr(int(m[1], 16)), match[2])
        what = f"line {number} of the bag's {name} ({show(path)})"
        parts = _zip.check_relative_path(path, what, REMAKE_BAG)
        if payload and (parts[0] != "data" or len(parts) < 2):
            raise BagRefused(f"{what} names a file outside the payload folder data/: {REMAKE_BAG}")
        if not payload and parts[0] == "data":
            raise BagRefused(
                f"{what} names a payload file: a tag manifest lists tag files only; {REMAKE_BAG}"
            )
        key = _zip.name_key(path)
        if key in keys:
            raise BagRefused(f"the bag's {name} lists {show(path)} twice: {REMAKE_BAG}")
        keys[key] = path
        listed[path] = checksum.lower()
    return listed


def _check_complete(listed: dict[str, str], payload: dict[str, Member], name: str) -> None:
    """Every payload file listed, every listed file present (names compared after NFC, as BagIt
    tools do, since file systems differ in the normalisation they store)."""
    present = {unicodedata.normalize("NFC", "data/" + path) for path in payload}
    named = {unicodedata.normalize("NFC", path) for path in listed}
    missing = sorted(named - present)
    unlisted = sorted(present - named)
    if missing:
        more = f" (and {len(missing) - 1:,} more)" if len(missing) > 1 else ""
        raise BagRefused(
            f"the bag's {name} lists {show(missing[0])}{more} but the zip does not hold it: add the file, or "
            f"remove it from the manifests ({REMAKE_BAG})"
        )
    if unlisted:
        more = f" (and {len(unlisted) - 1:,} more)" if len(unlisted) > 1 else ""
        raise BagRefused(
            f"payload file {show(unlisted[0])}{more} is not listed in the bag's {name}: every file under "
            "data/ "
            f"must be listed; {REMAKE_BAG} after adding files"
        )


def _compare(
    listed: dict[str, str], digest: Callable[[str, str], str], name: str, algorithm: str, kind: str
) -> None:
    wrong = sorted(path for path, checksum in listed.items() if digest(path, algorithm) != checksum)
    if wrong:
        more = f" (and {len(wrong) - 1:,} more)" if len(wrong) > 1 else ""
        raise BagRefused(
            f"{kind} {show(wrong[0])}{more} does not match its {_ALGORITHM_NAMES[algorithm]} checksum in the "
            f"bag's {name}: it changed after the bag was made, or was damaged; restore it, or {REMAKE_BAG}"
        )


def _external_identifier(bag_info: dict[str, list[str]]) -> str:
    values = [v for v in bag_info.get("External-Identifier", []) if v]
    if not values:
        raise BagRefused(
            "the bag's bag-info.txt has no External-Identifier: 5s-crate requires one, a fresh UUID URN for "
            f"each request; add a line like 'External-Identifier: urn:uuid:{uuid.uuid4()}'"
        )
    if len(set(values)) > 1:
        raise BagRefused(
            "the bag's bag-info.txt has several External-Identifier values: a crate has one; keep one line"
        )
    return values[0]


def _check_oxum(bag_info: dict[str, list[str]], payload: dict[str, Member]) -> None:
    for oxum in bag_info.get("Payload-Oxum", []):
        match = re.fullmatch(r"(\d+)\.(\d+)", oxum)
        if not match:
            raise BagRefused(f"the bag's Payload-Oxum {oxum!r} is not '<bytes>.<files>': {REMAKE_BAG}")
        octets, files = int(match[1]), int(match[2])
        actual = sum(m.size for m in payload.values())
        if (octets, files) != (actual, len(payload)):
            raise BagRefused(
                f"the bag's Payload-Oxum says {files:,} files of {octets:,} bytes, but data/ holds "
                f"{len(payload):,} "
                f"files of {actual:,} bytes: files were added, removed or changed after the bag was made; "
                f"{REMAKE_BAG}"
            )


# --- writing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BagEntry:
    path: str  # POSIX, relative to data/
    open: Callable[[], IO[bytes]]


def write_bag(
    out: BinaryIO,
    root: str,
    entries: Iterable[BagEntry],
    bag_info: Mapping[str, str],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
) -> None:
    """A BagIt 1.0 bag named ``root`` as a zip on ``out`` (seekable or not), streamed: each payload
    file hashed as it is written, then manifest-sha512/-sha256, bagit.txt, bag-info.txt (with
    External-Identifier, a fresh urn:uuid if ``bag_info`` has none, Bagging-Date and Payload-Oxum) and
    tagmanifest-sha512/-sha256. ValueError for a path or label that would make a bag others refuse."""
    _zip.check_relative_path(root, f"bag name {root!r}", "use a single folder name")
    if "/" in root:
        raise ValueError(f"bag name {root!r}: a single folder name, without '/'")
    for label, value in bag_info.items():
        if not label or ":" in label or _LINE.search(label + value) or label != label.strip():
            raise ValueError(
                f"bag-info label {label!r} or its value cannot be written as one 'Label: value' line"
            )
    now = time.gmtime()
    stamp = (now.tm_year, now.tm_mon, now.tm_mday, now.tm_hour, now.tm_min, now.tm_sec)
    lines: dict[str, list[str]] = {"sha512": [], "sha256": []}
    seen: set[str] = set()
    octets = 0
    with zipfile.ZipFile(out, "w", compression=compression, allowZip64=True) as archive:
        for folder in (f"{root}/", f"{root}/data/"):
            directory = zipfile.ZipInfo(folder, stamp)
            directory.external_attr = 0o40755 << 16 | 0x10  # a folder, for Unix and for DOS
            archive.writestr(directory, b"")
        for entry in entries:
            try:
                _zip.check_relative_path(entry.path, f"payload path {entry.path!r}", "use a relative path")
            except BagRefused as exc:
                raise ValueError(str(exc)) from None
            key = _zip.name_key(entry.path)
            if key in seen:
                raise ValueError(f"payload path {entry.path!r} given twice (or differing only in case)")
            seen.add(key)
            hashers = {name: hashlib.new(name) for name in lines}
            info = zipfile.ZipInfo(f"{root}/data/{entry.path}", stamp)
            info.compress_type = compression
            info.external_attr = 0o100644 << 16
            with entry.open() as source:
                known = _known_size(source)
                info.file_size = known or 0
                with archive.open(info, "w", force_zip64=known is None) as target:
                    while chunk := source.read(_zip.CHUNK):
                        target.write(chunk)
                        for hasher in hashers.values():
                            hasher.update(chunk)
            octets += info.file_size
            encoded = _encode_path("data/" + entry.path)
            for name, hasher in hashers.items():
                lines[name].append(f"{hasher.hexdigest()}  {encoded}\n")
        info_lines = dict(bag_info)
        info_lines.setdefault("External-Identifier", f"urn:uuid:{uuid.uuid4()}")
        info_lines.setdefault("Bagging-Date", datetime.now(UTC).date().isoformat())
        info_lines.setdefault("Bag-Software-Agent", "fivesafes-tes")
        info_lines["Payload-Oxum"] = f"{octets}.{len(seen)}"
        tag_files = {
            "bagit.txt": "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
            "bag-info.txt": "".join(f"{label}: {value}\n" for label, value in info_lines.items()),
            **{f"manifest-{name}.txt": "".join(sorted(found)) for name, found in lines.items()},
        }
        for name, content in tag_files.items():
            archive.writestr(_tag_info(root, name, stamp, compression), content.encode())
        for algorithm in lines:
            tag_manifest = "".join(
                f"{hashlib.new(algorithm, content.encode()).hexdigest()} {name}\n"
                for name, content in tag_files.items()
            )
            archive.writestr(
                _tag_info(root, f"tagmanifest-{algorithm}.txt", stamp, compression), tag_manifest.encode()
            )


def _tag_info(
    root: str, name: str, stamp: tuple[int, int, int, int, int, int], compression: int
) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(f"{root}/{name}", stamp)
    info.compress_type = compression
    info.external_attr = 0o100644 << 16
    return info


def _known_size(source: IO[bytes]) -> int | None:
    """The bytes left in ``source`` if it can tell, so that small files get no ZIP64 headers."""
    try:
        if source.seekable():
            here = source.tell()
            end = source.seek(0, io.SEEK_END)
            source.seek(here)
            return end - here
    except (OSError, ValueError):
        return None
    return None


def _encode_path(path: str) -> str:
    """RFC 8493 2.1.3: CR, LF and '%' percent-encoded in a manifest's file paths."""
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
