"""A zip archive judged from its central directory before a byte of any member is read, and its
members streamed with guards: no member yields more than the directory declares, nothing is written.

The directory is parsed here rather than by `zipfile`, whose reader trusts what it parses: it reads
the whole directory into memory whatever its entry count, cuts names at NUL, and quietly truncates a
member that holds more than declared. Every member is read with `os.pread` at explicit offsets, so
streams opened on one archive never share a file position.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import stat
import struct
import threading
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: Size of every read and the most any single step of inflating may produce.
CHUNK = 1 << 20
#: Members this small expand to little whatever their ratio: the ratio limit starts above it.
RATIO_FLOOR = 1 << 20
MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 64  # folders deep: bounds the work of judging each name

STORED, DEFLATED = 0, 8
_METHODS = {1: "shrink", 6: "implode", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstandard", 95: "xz"}
_ENCRYPTED, _PATCHED, _STRONG_ENCRYPTION, _UTF8, _MASKED_HEADERS = 0x1, 0x20, 0x40, 0x800, 0x2000
_REPARSE_POINT = 0x400  # Windows: a link or junction
_UNIX = 3
_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
}

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_EOCD_SIG, _ZIP64_LOCATOR_SIG, _ZIP64_EOCD_SIG = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_CENTRAL_SIG, _LOCAL_SIG = b"PK\x01\x02", b"PK\x03\x04"
_DRIVE = re.compile(r"[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

REMAKE = "re-create the zip from the bag folder with a standard zip tool (e.g. `zip -r crate.zip BAG`)"


class BagRefused(ValueError):
    """A crate the gateway will not take. The message says what is wrong and what the submitter
    should change, naming the entry or file concerned."""


@dataclass(frozen=True)
class ZipLimits:
    max_zip_bytes: int
    max_entries: int
    max_total_bytes: int
    max_ratio: float
    max_directory_bytes: int


@dataclass(frozen=True)
class Member:
    """One entry of the central directory, as declared there."""

    name: str
    raw_name: bytes
    is_dir: bool
    size: int  # uncompressed, as declared
    compressed: int
    method: int
    crc: int
    offset: int  # of the local header
    end_limit: int  # where the next entry (or the directory) starts: the member must end before


def show(name: str) -> str:
    """A name as a message shows it: quoted, control characters escaped, bounded in length."""
    text = repr(name)
    return text if len(text) <= 160 else text[:150] + "…" + text[-9:]


def size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def check_relative_path(path: str, what: str, fix: str) -> list[str]:
    """The components of a relative POSIX path that stays where it is put, or BagRefused."""
    if not path:
        raise BagRefused(f"{what} has an empty name: {fix}")
    if _CONTROL.search(path):
        raise BagRefused(
            f"{what} has a control character (line break, tab, NUL…) in its name: rename it; {fix}"
        )
    if "\\" in path:
        raise BagRefused(
            f"{what} has a backslash in its name (a Windows path?): zip paths use '/' between folders; {fix}"
        )
    if path.startswith("/"):
        raise BagRefused(f"{what} is an absolute path: paths must be relative, inside the bag; {fix}")
    parts = path.split("/")
    if _DRIVE.match(parts[0]):
        raise BagRefused(f"{what} starts with a drive letter: paths must be relative, inside the bag; {fix}")
    if ".." in parts:
        raise BagRefused(f"{what} leaves the bag: paths must stay inside its one top-level folder; {fix}")
    if "" in parts or "." in parts:
        raise BagRefused(f"{what} has an empty or '.' folder in its path ('//' or '/./'): {fix}")
    if len(path.encode()) > MAX_PATH_BYTES or max(map(len, map(str.encode, parts))) > MAX_COMPONENT_BYTES:
        raise BagRefused(
            f"{what} has a name longer than {MAX_PATH_BYTES} bytes, or a part longer than "
            f"{MAX_COMPONENT_BYTES}: use shorter names"
        )
    if len(parts) > MAX_DEPTH:
        raise BagRefused(f"{what} is more than {MAX_DEPTH} folders deep: flatten the folders")
    return parts


def name_key(path: str) -> str:
    """What two names must not share: many file systems ignore case and Unicode normalisation."""
    return unicodedata.normalize("NFC", path).casefold()


# --- the central directory -------------------------------------------------------------------


def _pread(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise BagRefused(
            f"the zip ends early (at byte {offset + len(data):,}): it is truncated; upload it again"
        )
    return data


def _directory_span(fd: int, size: int, limits: ZipLimits) -> tuple[int, int, int]:
    """(entries, directory offset, directory size) from the end records, checked against the limits
    and against the file: nothing before the first entry, nothing after the end record."""
    not_zip = (
        "the upload is not a zip file (no end-of-archive record): send the crate as a .zip of the bag folder"
    )
    if size < _EOCD.size:
        raise BagRefused(not_zip)
    tail_len = min(size, _EOCD.size + 0xFFFF)
    tail = _pread(fd, tail_len, size - tail_len)
    at = tail.rfind(_EOCD_SIG)
    if at < 0 or at + _EOCD.size > len(tail):
        raise BagRefused(not_zip)
    _, disk, cd_disk, disk_entries, entries, cd_size, cd_offset, comment = _EOCD.unpack_from(tail, at)
    eocd = size - tail_len + at
    if eocd + _EOCD.size + comment != size:
        raise BagRefused(f"the zip has data after its end: {REMAKE}")
    cd_end = eocd
    locator = b""
    if eocd >= _ZIP64_LOCATOR.size + _ZIP64_EOCD.size:
        locator = _pread(fd, _ZIP64_LOCATOR.size, eocd - _ZIP64_LOCATOR.size)
    if locator.startswith(_ZIP64_LOCATOR_SIG):  # ZIP64 end records, whatever the plain one says
        _, _, z64_at, _ = _ZIP64_LOCATOR.unpack(locator)
        if z64_at > eocd - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size:
            raise BagRefused(f"the zip's ZIP64 end records are damaged: {REMAKE}")
        record = _ZIP64_EOCD.unpack(_pread(fd, _ZIP64_EOCD.size, z64_at))
        sig, _, _, _, disk, cd_disk, disk_entries, entries, cd_size, cd_offset = record
        if sig != _ZIP64_EOCD_SIG:
            raise BagRefused(f"the zip's ZIP64 end records are damaged: {REMAKE}")
        cd_end = z64_at
    elif 0xFFFF in (disk_entries, entries) or 0xFFFFFFFF in (cd_size, cd_offset):
        raise BagRefused(f"the zip's ZIP64 end records are missing: {REMAKE}")
    if disk or cd_disk or disk_entries != entries:
        raise BagRefused("the zip is split over several files (a spanned archive): send it as one .zip file")
    if entries > limits.max_entries:
        raise BagRefused(
            f"the zip has {entries:,} entries; the limit is {limits.max_entries:,}: put many small files "
            "together (e.g. into one table or one .tar.gz in data/) and refer to that"
        )
    if cd_size > limits.max_directory_bytes:
        raise BagRefused(
            f"the zip's directory is {size_text(cd_size)}; the limit is "
            f"{size_text(limits.max_directory_bytes)}: "
            "use fewer files or shorter names"
        )
    if cd_offset + cd_size != cd_end:
        raise BagRefused(f"the zip has data before its first entry or its directory is damaged: {REMAKE}")
    return entries, cd_offset, cd_size


def _zip64_extra(extra: bytes, size: int, compressed: int, offset: int, name: str) -> tuple[int, int, int]:
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, at)
        body = extra[at + 4 : at + 4 + length]
        if tag == 1:
            values = iter(struct.unpack_from(f"<{len(body) // 8}Q", body))
            try:
                size = next(values) if size == 0xFFFFFFFF else size
                compressed = next(values) if compressed == 0xFFFFFFFF else compressed
                offset = next(values) if offset == 0xFFFFFFFF else offset
            except StopIteration:
                break
            return size, compressed, offset
        at += 4 + length
    if 0xFFFFFFFF in (size, compressed, offset):
        raise BagRefused(f"entry {show(name)} lacks its ZIP64 sizes: the zip is damaged; {REMAKE}")
    return size, compressed, offset


def _entries(fd: int, count: int, cd_offset: int, cd_size: int, limits: ZipLimits) -> list[Member]:
    directory = _pread(fd, cd_size, cd_offset)
    members: list[tuple[str, bytes, int, int, int, int, int]] = []
    at = 0
    while at < len(directory):
        if len(members) >= limits.max_entries:
            raise BagRefused(
                f"the zip has more than {limits.max_entries:,} entries (more than its end record says): "
                f"{REMAKE}, with fewer files"
            )
        if at + _CENTRAL.size > len(directory):
            raise BagRefused(f"the zip's directory is damaged: {REMAKE}")
        fields = _CENTRAL.unpack_from(directory, at)
        (sig, _, system, _, _, flags, method, _, _, crc, compressed, size, n_name, n_extra, n_comment,
         _, _, attributes, offset) = fields  # fmt: skip
        if sig != _CENTRAL_SIG:
            raise BagRefused(f"the zip's directory is damaged: {REMAKE}")
        start = at + _CENTRAL.size
        raw_name = directory[start : start + n_name]
        extra = directory[start + n_name : start + n_name + n_extra]
        at = start + n_name + n_extra + n_comment
        if at > len(directory):
            raise BagRefused(f"the zip's directory is damaged: {REMAKE}")
        try:
            name = raw_name.decode("utf-8" if flags & _UTF8 else "cp437")
        except UnicodeDecodeError:
            raise BagRefused(
                f"an entry's name {raw_name[:100]!r} is not valid UTF-8 although the zip says it is: "
                "rename it"
            ) from None
        _judge_flags(name, flags, method, system, attributes)
        size, compressed, offset = _zip64_extra(extra, size, compressed, offset, name)
        members.append((name, raw_name, size, compressed, method, crc, offset))
    if len(members) != count:
        raise BagRefused(
            f"the zip's directory holds {len(members):,} entries, its end record {count:,}: {REMAKE}"
        )
    ends = sorted({offset for *_, offset in members} | {cd_offset})
    next_start = {start: ends[i + 1] for i, start in enumerate(ends[:-1])}
    return [
        Member(name, raw, name.endswith("/"), size, compressed, method, crc, offset, next_start[offset])
        for name, raw, size, compressed, method, crc, offset in members
    ]


def _judge_flags(name: str, flags: int, method: int, system: int, attributes: int) -> None:
    if flags & (_ENCRYPTED | _STRONG_ENCRYPTION | _MASKED_HEADERS):
        raise BagRefused(
            f"entry {show(name)} is encrypted: a crate must not be password-protected; re-create the zip "
            "without a password"
        )
    if flags & _PATCHED:
        raise BagRefused(f"entry {show(name)} uses patched data (a PKWARE extension): {REMAKE}")
    if method not in (STORED, DEFLATED):
        label = _METHODS.get(method, "unknown")
        raise BagRefused(
            f"entry {show(name)} uses compression method {method} ({label}); only 'stored' and 'deflate' "
            f"are accepted: {REMAKE}"
        )
    kind = _KINDS.get(stat.S_IFMT(attributes >> 16)) if system == _UNIX else None
    if kind is None and attributes & _REPARSE_POINT:
        kind = "a Windows link (reparse point)"
    if kind:
        raise BagRefused(
            f"entry {show(name)} is {kind}: a crate holds only regular files and folders; replace it with "
            "the file it stands for, or leave it out"
        )
    if system == _UNIX and (attributes >> 16):
        file_type = stat.S_IFMT(attributes >> 16)
        if (file_type == stat.S_IFDIR) != name.endswith("/") and file_type in (stat.S_IFDIR, stat.S_IFREG):
            raise BagRefused(f"entry {show(name)} is marked as a folder and a file at once: {REMAKE}")


def judge(fd: int, size: int, limits: ZipLimits) -> tuple[str, list[Member]]:
    """The archive's single top-level folder and its entries, each judged from the central directory
    alone (names, types, methods, sizes, ratios, overlaps): BagRefused for the first that fails."""
    if size > limits.max_zip_bytes:
        raise BagRefused(
            f"the zip is {size_text(size)}; the limit is {size_text(limits.max_zip_bytes)}: make the crate "
            "smaller, e.g. refer to large inputs by URL instead of including them"
        )
    count, cd_offset, cd_size = _directory_span(fd, size, limits)
    members = _entries(fd, count, cd_offset, cd_size, limits)
    if not members:
        raise BagRefused("the zip is empty: it must hold one folder, the bag")
    root = ""
    seen: dict[str, str] = {}
    tree: dict[str, Any] = {}
    total = 0
    for m in members:
        what = f"entry {show(m.name)}"
        parts = check_relative_path(m.name[:-1] if m.is_dir else m.name, what, REMAKE)
        if not root:
            root = parts[0]
        elif parts[0] != root:
            raise BagRefused(
                f"the zip has more than one top-level entry ({show(root)} and {show(parts[0])}): a crate zip "
                "holds exactly one folder, the bag; zip the bag folder itself, not its contents"
            )
        if len(parts) == 1 and not m.is_dir:
            raise BagRefused(
                f"{what} is a file at the top of the zip: a crate zip holds exactly one folder, the bag; "
                "zip the bag folder itself, not its contents"
            )
        key = name_key("/".join(parts))
        if key in seen:
            same = "twice" if seen[key] == m.name else f"twice ({show(seen[key])} and {show(m.name)})"
            raise BagRefused(
                f"{what} appears {same} (names are compared ignoring case and Unicode normalisation, as "
                "many file systems do): rename or remove one of them"
            )
        seen[key] = m.name
        _place(tree, key.split("/"), m)
        if m.is_dir and m.size:
            raise BagRefused(f"{what} is a folder with {m.size:,} bytes of data: {REMAKE}")
        if m.method == STORED and m.compressed != m.size:
            raise BagRefused(
                f"{what} is stored uncompressed but its sizes disagree ({m.compressed:,} and {m.size:,} "
                f"bytes): the zip is damaged or forged; {REMAKE}"
            )
        if m.size > RATIO_FLOOR and m.size > limits.max_ratio * m.compressed:
            raise BagRefused(
                f"{what} would expand from {size_text(m.compressed)} to {size_text(m.size)} "
                f"({m.size / max(m.compressed, 1):,.0f}:1); the limit is {limits.max_ratio:g}:1, as such "
                "ratios "
                "are how zip bombs work: if it is real data, compress it yourself (e.g. gzip) before putting "
                "it in the bag"
            )
        total += m.size
        if total > limits.max_total_bytes:
            raise BagRefused(
                f"the zip would expand to more than {size_text(limits.max_total_bytes)} (the limit), at "
                f"{what}: make the crate smaller, e.g. refer to large inputs by URL instead of including them"
            )
    if len({m.offset for m in members}) != len(members):
        raise BagRefused(f"two entries of the zip share their data (a zip bomb trick, or damage): {REMAKE}")
    for m in members:
        if m.offset + _LOCAL.size + len(m.raw_name) + m.compressed > m.end_limit:
            raise BagRefused(
                f"entry {show(m.name)} overlaps the next entry in the zip (a zip bomb trick, or damage): "
                f"{REMAKE}"
            )
    return root, members


_FILE: dict[str, Any] = {}  # marks a file in the tree of names (compared by identity)


def _place(tree: dict[str, Any], parts: list[str], m: Member) -> None:
    """One entry put in the tree of names, in time linear in its length: refused if a name on its
    path is both a file and a folder."""
    node = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        child = node.get(part)
        if child is _FILE or (last and child is not None and not m.is_dir):
            clash = "/".join(m.name.split("/")[: depth + 1])
            raise BagRefused(
                f"entry {show(m.name)}: {show(clash)} is both a file and a folder in the zip: rename one"
            )
        if child is None:
            child = node[part] = _FILE if last and not m.is_dir else {}
        node = child


# --- reading members ---------------------------------------------------------------------------

Reader = Callable[[int, int], Iterator[bytes]]


def pread_range(fd: int) -> Reader:
    def read(start: int, end: int) -> Iterator[bytes]:
        while start < end:
            chunk = _pread(fd, min(CHUNK, end - start), start)
            start += len(chunk)
            yield chunk

    return read


def _data_start(read: Reader, m: Member) -> int:
    """Where the member's data starts, from its local header, which must agree with the directory."""
    header = b"".join(read(m.offset, m.offset + _LOCAL.size))
    sig, _, _, flags, method, _, _, _, _, _, n_name, n_extra = _LOCAL.unpack(header)
    name = b"".join(read(m.offset + _LOCAL.size, m.offset + _LOCAL.size + n_name))
    if sig != _LOCAL_SIG or name != m.raw_name or method != m.method or flags & _ENCRYPTED:
        raise BagRefused(
            f"entry {show(m.name)}: its header does not match the zip's directory (damaged or forged): "
            f"{REMAKE}"
        )
    start: int = m.offset + _LOCAL.size + n_name + n_extra
    if start + m.compressed > m.end_limit:
        raise BagRefused(
            f"entry {show(m.name)} overlaps the next entry in the zip (a zip bomb trick, or damage): {REMAKE}"
        )
    return start


def _expand(m: Member, raw: Iterator[bytes], crc_check: bool = True) -> Iterator[bytes]:
    """The member's bytes from its compressed ones, never more than the directory declares, checked
    against its declared size and (``crc_check``) its CRC-32 at the end."""
    lying = (
        f"entry {show(m.name)} holds more data than the zip's directory declares ({m.size:,} bytes): "
        f"the zip is damaged or forged; {REMAKE}"
    )
    produced = crc = 0
    if m.method == STORED:
        for chunk in raw:
            produced += len(chunk)
            if crc_check:
                crc = zlib.crc32(chunk, crc)
            yield chunk
    else:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            for chunk in raw:
                data = inflate.decompress(chunk, CHUNK)
                while data:
                    produced += len(data)
                    if produced > m.size:
                        raise BagRefused(lying)
                    if crc_check:
                        crc = zlib.crc32(data, crc)
                    yield data
                    data = (
                        inflate.decompress(inflate.unconsumed_tail, CHUNK) if inflate.unconsumed_tail else b""
                    )
        except zlib.error:
            raise BagRefused(
                f"entry {show(m.name)} is not valid deflate data: the zip is damaged; {REMAKE}"
            ) from None
        if not inflate.eof or inflate.unused_data:
            raise BagRefused(
                f"entry {show(m.name)}: its compressed data is cut short or has extra bytes; {REMAKE}"
            )
    if produced != m.size:
        raise BagRefused(
            f"entry {show(m.name)} holds {produced:,} bytes, not the {m.size:,} the zip's directory "
            "declares: "
            f"the zip is damaged or forged; {REMAKE}"
        )
    if crc_check and crc != m.crc:
        raise BagRefused(f"entry {show(m.name)} fails its CRC-32 check: the zip is damaged; upload it again")


def member_chunks(fd: int, m: Member, crc_check: bool = True) -> Iterator[bytes]:
    """One member's bytes, read at its offsets (no shared file position)."""
    read = pread_range(fd)
    start = _data_start(read, m)
    return _expand(m, read(start, start + m.compressed), crc_check)


class _Offload:
    """Hash updates on a thread of their own, in order, at most a few chunks behind: hashlib releases
    the GIL on large updates, so hashes of the same bytes run on two cores."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Any, bytes] | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, name="bag-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            item[0].update(item[1])
            self._queue.task_done()
        self._queue.task_done()

    def update(self, hasher: Any, data: bytes) -> None:
        self._queue.put((hasher, data))

    def wait(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


@dataclass(frozen=True)
class Scanned:
    zip_sha512: str
    zip_size: int
    digests: dict[str, dict[str, str]]  # member name -> algorithm -> hex digest


def scan(
    fd: int,
    size: int,
    members: Sequence[Member],
    algorithms: Callable[[Member], Sequence[str]],
    archive_sha512: str | None = None,
) -> Scanned:
    """One pass over the whole file in order: the archive's SHA-512 (unless the caller has it), and
    every member expanded (its size checked) and hashed with the algorithms asked for it. A member
    hashed with SHA-512, to be compared with a manifest, skips its CRC-32: the stronger check of
    the same bytes stands in for it (and the CRC took a third of the reader's time). Memory stays
    flat: a chunk at a time, a few queued for the hashing threads."""
    archive_hash = hashlib.sha512()
    archive_thread = _Offload() if archive_sha512 is None else None
    member_thread = _Offload()
    position = 0
    pread = pread_range(fd)

    def sequential(start: int, end: int) -> Iterator[bytes]:
        nonlocal position
        if start < position:
            raise BagRefused(f"entries of the zip overlap (a zip bomb trick, or damage): {REMAKE}")
        for chunk in pread(position, end):
            if archive_thread is not None:
                archive_thread.update(archive_hash, chunk)
            position += len(chunk)
            if position > start:
                yield chunk[max(0, len(chunk) - (position - start)) :]

    digests: dict[str, dict[str, str]] = {}
    try:
        for m in sorted(members, key=lambda m: m.offset):
            start = _data_start(sequential, m)
            names = algorithms(m)
            hashers = [hashlib.new(name) for name in names]
            first, rest = (hashers[0], hashers[1:]) if hashers else (None, [])
            for data in _expand(m, sequential(start, start + m.compressed), "sha512" not in names):
                for hasher in rest:
                    member_thread.update(hasher, data)
                if first is not None:
                    first.update(data)
            member_thread.wait()
            if hashers:
                digests[m.name] = {h.name: h.hexdigest() for h in hashers}
        for _ in sequential(size, size):
            pass
    finally:
        if archive_thread is not None:
            archive_thread.close()
        member_thread.close()
    return Scanned(archive_sha512 or archive_hash.hexdigest(), position, digests)
