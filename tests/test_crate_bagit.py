"""BagIt zips read safely and written streaming (crates/bagit.py). Hostile zips are built here byte by
byte: each must be refused with words that name the entry and the fix, before any member is read,
and without a byte written to disk. Written bags are checked by the `bagit` library as an outside
oracle and read back by `open_bag`."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import unicodedata
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import bagit
import pytest

from fivesafes_tes.crates import _zip
from fivesafes_tes.crates.bagit import BagEntry, BagLimits, BagRefused, open_bag, write_bag

EXTERNAL_ID = "urn:uuid:9796155a-fe44-4614-89b8-71945f718ffb"
METADATA = json.dumps(
    {
        "@context": "https://w3id.org/ro/crate/1.2/context",
        "@graph": [
            {"@id": "ro-crate-metadata.json", "about": {"@id": "./"}},
            {"@id": "./", "@type": "Dataset"},
        ],
    }
).encode()
PAYLOAD = {
    "ro-crate-metadata.json": METADATA,
    "inputs/cohort.csv": b"person_id,age\n1,54\n2,61\n" * 100,
    "workflow/task.json": b'{"executors": [{"image": "busybox", "command": ["true"]}]}',
}


# --- building bags and zips by hand ----------------------------------------------------------


def bag_members(
    payload: Mapping[str, bytes] = PAYLOAD,
    info: Mapping[str, str | None] | None = None,
    algorithms: tuple[str, ...] = ("sha512", "sha256"),
    tagmanifest: bool = True,
) -> dict[str, bytes]:
    """A valid bag's files by path inside the bag folder, made without the code under test."""
    members = {"bagit.txt": b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"}
    members.update({f"data/{path}": data for path, data in payload.items()})
    for algorithm in algorithms:
        members[f"manifest-{algorithm}.txt"] = "".join(
            f"{hashlib.new(algorithm, data).hexdigest()}  data/{path}\n" for path, data in payload.items()
        ).encode()
    oxum = f"{sum(len(d) for d in payload.values())}.{len(payload)}"
    fields = {"External-Identifier": EXTERNAL_ID, "Payload-Oxum": oxum, **(info or {})}
    members["bag-info.txt"] = "".join(f"{k}: {v}\n" for k, v in fields.items() if v is not None).encode()
    return retag(members) if tagmanifest else members


def retag(members: dict[str, bytes]) -> dict[str, bytes]:
    """The tag manifest recomputed, so that a test's change to a tag file is the only fault."""
    tags = {n: d for n, d in members.items() if not n.startswith(("data/", "tagmanifest-"))}
    members["tagmanifest-sha512.txt"] = "".join(
        f"{hashlib.sha512(d).hexdigest()} {n}\n" for n, d in tags.items()
    ).encode()
    return members


def zip_members(
    path: Path, members: Mapping[str, bytes], root: str = "bag", compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(f"{root}/{name}", data)
    return path


def raw_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests want
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for info, data in entries:
                archive.writestr(info, data)
    return path


def bag_plus(path: Path, *extra: tuple[zipfile.ZipInfo | str, bytes]) -> Path:
    """A valid bag's entries and then ``extra`` ones: what is refused is the extra entry alone."""
    return raw_zip(path, [*((f"bag/{n}", d) for n, d in bag_members().items()), *extra])


def unix_entry(name: str, kind: int, data: bytes = b"") -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (kind | 0o644) << 16
    return info, data


def central_entries(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset of its central directory header, name) of every entry, read from the end record."""
    eocd = data.rindex(b"PK\x05\x06")
    count, _, cd_offset = struct.unpack_from("<HLL", data, eocd + 10)
    at = cd_offset
    for _ in range(count):
        n_name, n_extra, n_comment = struct.unpack_from("<3H", data, at + 28)
        yield at, data[at + 46 : at + 46 + n_name]
        at += 46 + n_name + n_extra + n_comment


def patch(path: Path, name: str, **fields: int) -> Path:
    """Rewrite fields of one entry's central directory header (the local header is left alone)."""
    layout = {"flags": (8, "<H"), "method": (10, "<H"), "compressed": (20, "<L"), "size": (24, "<L"),
              "offset": (42, "<L"), "external": (38, "<L")}  # fmt: skip
    data = bytearray(path.read_bytes())
    at = next(at for at, found in central_entries(bytes(data)) if found == name.encode())
    for field, value in fields.items():
        offset, fmt = layout[field]
        struct.pack_into(fmt, data, at + offset, value)
    path.write_bytes(bytes(data))
    return path


def central(path: Path, name: str) -> dict[str, int]:
    data = path.read_bytes()
    at = next(at for at, found in central_entries(data) if found == name.encode())
    flags, method = struct.unpack_from("<2H", data, at + 8)
    compressed, size = struct.unpack_from("<2L", data, at + 20)
    (offset,) = struct.unpack_from("<L", data, at + 42)
    return {"flags": flags, "method": method, "compressed": compressed, "size": size, "offset": offset}


def refusal(path: Path, limits: BagLimits | None = None) -> str:
    with pytest.raises(BagRefused) as caught, open_bag(path, limits or BagLimits()):
        pass
    return str(caught.value)


@pytest.fixture
def spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The members whose data was read (expanded), in order."""
    read: list[str] = []
    expand = _zip._expand

    def spy(member: _zip.Member, raw: Iterator[bytes], crc_check: bool = True) -> Iterator[bytes]:
        read.append(member.name)
        return expand(member, raw, crc_check)

    monkeypatch.setattr(_zip, "_expand", spy)
    return read


# --- a valid bag -----------------------------------------------------------------------------


def test_a_valid_bag_opens_with_its_payload_identifier_and_hashes(tmp_path: Path) -> None:
    path = zip_members(tmp_path / "crate.zip", bag_members())

    with open_bag(path) as bag:
        assert bag.root == "bag"
        assert bag.external_identifier == EXTERNAL_ID
        assert bag.bag_info["External-Identifier"] == [EXTERNAL_ID]
        assert set(bag.payload) == set(PAYLOAD)
        for name, data in PAYLOAD.items():
            entry = bag.payload[name]
            assert (entry.path, entry.size) == (name, len(data))
            assert entry.sha512 == hashlib.sha512(data).hexdigest()
            assert entry.sha256 == hashlib.sha256(data).hexdigest()
            with bag.open(name) as stream:
                assert stream.read() == data
        assert (
            bag.read("inputs/cohort.csv", max_bytes=len(PAYLOAD["inputs/cohort.csv"]))
            == PAYLOAD["inputs/cohort.csv"]
        )
        assert bag.metadata() == json.loads(METADATA)
        assert bag.zip_sha512 == hashlib.sha512(path.read_bytes()).hexdigest()
        assert bag.zip_size == path.stat().st_size
    with pytest.raises(ValueError, match="closed"):
        bag.open("inputs/cohort.csv")


def test_a_zip_hash_the_caller_already_has_is_taken_as_given(tmp_path: Path) -> None:
    path = zip_members(tmp_path / "crate.zip", bag_members())
    with open_bag(path, zip_sha512="ab" * 64) as bag:
        assert bag.zip_sha512 == "ab" * 64
        assert (
            bag.payload["inputs/cohort.csv"].sha512
            == hashlib.sha512(PAYLOAD["inputs/cohort.csv"]).hexdigest()
        )


def test_zip64_records_and_fields_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ZIP64 end records and ZIP64 sizes and offsets in the directory, as a zip past 4 GiB or 65,535
    entries has them: zipfile is made to write them for a small bag by lowering its thresholds."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    path = zip_members(tmp_path / "crate.zip", bag_members())
    monkeypatch.undo()
    data = path.read_bytes()
    assert b"PK\x06\x06" in data  # the ZIP64 end record
    assert central(path, "bag/data/inputs/cohort.csv")["size"] == 0xFFFFFFFF  # sizes in the ZIP64 extra
    with open_bag(path) as bag:
        assert bag.payload["inputs/cohort.csv"].size == len(PAYLOAD["inputs/cohort.csv"])
        assert bag.metadata() == json.loads(METADATA)


def test_the_entry_count_of_a_zip64_end_record_is_held_to_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    path = zip_members(tmp_path / "crate.zip", bag_members())
    monkeypatch.undo()
    assert "the zip has 8 entries; the limit is 5" in refusal(path, BagLimits(max_entries=5))


def test_sha256_is_optional_and_then_not_reported(tmp_path: Path) -> None:
    path = zip_members(tmp_path / "crate.zip", bag_members(algorithms=("sha512",)))
    with open_bag(path) as bag:
        assert bag.payload["inputs/cohort.csv"].sha256 is None


def test_reading_beyond_a_bound_or_a_missing_file_is_refused_with_the_name(tmp_path: Path) -> None:
    path = zip_members(tmp_path / "crate.zip", bag_members())
    with open_bag(path) as bag:
        with pytest.raises(BagRefused, match=r"'data/inputs/cohort.csv' is .*at most 10 bytes"):
            bag.read("inputs/cohort.csv", max_bytes=10)
        with pytest.raises(BagRefused, match=r"no payload file 'data/inputs/missing.csv'"):
            bag.open("inputs/missing.csv")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", "is not valid JSON (line 1, column 2: Expecting property name"),
        (b"[1, 2]", "not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_metadata_that_is_not_a_json_object_is_refused(tmp_path: Path, content: bytes, words: str) -> None:
    path = zip_members(tmp_path / "crate.zip", bag_members({**PAYLOAD, "ro-crate-metadata.json": content}))
    with open_bag(path) as bag, pytest.raises(BagRefused) as caught:
        bag.metadata()
    assert words in str(caught.value)


def test_a_bag_without_metadata_opens_but_asking_for_it_says_what_to_add(tmp_path: Path) -> None:
    payload = {k: v for k, v in PAYLOAD.items() if k != "ro-crate-metadata.json"}
    path = zip_members(tmp_path / "crate.zip", bag_members(payload))
    with open_bag(path) as bag, pytest.raises(BagRefused, match=r"no data/ro-crate-metadata\.json"):
        bag.metadata()


def test_unicode_normalisation_may_differ_between_manifest_and_zip(tmp_path: Path) -> None:
    """A Mac stores names decomposed (NFD); the manifest may hold them composed: BagIt tools match them."""
    composed = unicodedata.normalize("NFC", "café.csv")
    members = bag_members({**PAYLOAD, composed: b"x"})
    members[f"data/{unicodedata.normalize('NFD', composed)}"] = members.pop(f"data/{composed}")
    path = zip_members(tmp_path / "crate.zip", members)
    with open_bag(path) as bag:
        assert bag.payload[unicodedata.normalize("NFD", composed)].sha512 == hashlib.sha512(b"x").hexdigest()


def test_manifest_paths_are_percent_decoded(tmp_path: Path) -> None:
    members = bag_members({**PAYLOAD, "50%.csv": b"half"})
    for name in ("manifest-sha512.txt", "manifest-sha256.txt"):
        members[name] = members[name].replace(b"data/50%.csv", b"data/50%25.csv")
    path = zip_members(tmp_path / "crate.zip", retag(members))
    with open_bag(path) as bag:
        assert bag.payload["50%.csv"].size == 4


# --- refused from the central directory alone --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("bag/data/../../etc/cron.d/x", "'bag/data/../../etc/cron.d/x' leaves the bag"),
        ("bag/../x", "'bag/../x' leaves the bag"),
        ("/bag/data/x", "'/bag/data/x' is an absolute path"),
        ("bag\\data\\x.csv", "'bag\\\\data\\\\x.csv' has a backslash"),
        ("C:/bag/x", "'C:/bag/x' starts with a drive letter"),
        ("bag//data/x", "has an empty or '.' folder"),
        ("bag/./data/x", "has an empty or '.' folder"),
        ("bag/data/line\nbreak.csv", "has a control character"),
        ("bag/data/" + "x" * 300, "has a name longer than"),
        ("bag/data/" + "a/" * 70 + "x", "is more than 64 folders deep: flatten the folders"),
    ],
)
def test_unsafe_paths_are_refused_naming_the_entry_and_the_fix(
    tmp_path: Path, spy_reads: list[str], name: str, words: str
) -> None:
    message = refusal(bag_plus(tmp_path / "crate.zip", (zipfile.ZipInfo(name), b"x")))
    assert words in message, message
    assert any(
        fix in message for fix in ("re-create the zip", "rename", "shorter names", "flatten the folders")
    )
    assert spy_reads == []


def test_a_nul_in_a_name_is_refused_not_cut_short(tmp_path: Path) -> None:
    path = bag_plus(tmp_path / "crate.zip", ("bag/data/evilXtail", b"x"))
    path.write_bytes(path.read_bytes().replace(b"evilXtail", b"evil\x00tail"))
    assert "'bag/data/evil\\x00tail' has a control character" in refusal(path)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (stat.S_IFLNK, "is a symbolic link"),
        (stat.S_IFCHR, "is a character device"),
        (stat.S_IFBLK, "is a block device"),
        (stat.S_IFIFO, "is a named pipe (FIFO)"),
        (stat.S_IFSOCK, "is a socket"),
    ],
)
def test_links_devices_and_other_special_files_are_refused(
    tmp_path: Path, spy_reads: list[str], kind: int, words: str
) -> None:
    path = bag_plus(tmp_path / "crate.zip", unix_entry("bag/data/special", kind, b"/etc/passwd"))
    message = refusal(path)
    assert f"entry 'bag/data/special' {words}" in message
    assert "regular files and folders" in message
    assert spy_reads == []  # judged from the central directory before any member was read


def test_a_windows_reparse_point_is_refused_as_a_link(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("bag/data/junction")
    info.create_system = 0
    info.external_attr = 0x400
    assert "is a Windows link" in refusal(bag_plus(tmp_path / "crate.zip", (info, b"")))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("bag/data/a.csv", "bag/data/a.csv"),
        ("bag/data/A.csv", "bag/data/a.csv"),
        (unicodedata.normalize("NFC", "bag/data/café"), unicodedata.normalize("NFD", "bag/data/café")),
    ],
)
def test_duplicate_names_are_refused_also_after_case_folding_and_normalisation(
    tmp_path: Path, first: str, second: str
) -> None:
    message = refusal(bag_plus(tmp_path / "crate.zip", (first, b"1"), (second, b"2")))
    assert "appears twice" in message
    assert "rename or remove one of them" in message


@pytest.mark.parametrize("order", [("bag/data/x", "bag/data/X/y"), ("bag/data/x/y", "bag/data/x")])
def test_a_name_that_is_both_a_file_and_a_folder_is_refused(tmp_path: Path, order: tuple[str, str]) -> None:
    message = refusal(bag_plus(tmp_path / "crate.zip", *((name, b"1") for name in order)))
    assert "is both a file and a folder in the zip: rename one" in message
    assert "'bag/data/x'" in message or "'bag/data/X'" in message


def test_folded_bag_info_values_are_unfolded(tmp_path: Path) -> None:
    members = bag_members()
    members["bag-info.txt"] += b"External-Description: a request\n  over two lines\n"
    with open_bag(zip_members(tmp_path / "crate.zip", retag(members))) as bag:
        assert bag.bag_info["External-Description"] == ["a request over two lines"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("other/file.txt", "more than one top-level entry ('bag' and 'other')"),
        ("README.txt", "more than one top-level entry ('bag' and 'README.txt')"),
    ],
)
def test_more_than_one_top_level_entry_is_refused(tmp_path: Path, extra: str, words: str) -> None:
    message = refusal(bag_plus(tmp_path / "crate.zip", (extra, b"x")))
    assert words in message
    assert "zip the bag folder itself, not its contents" in message


def test_a_bag_zipped_from_inside_its_folder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "crate.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("bagit.txt", bag_members()["bagit.txt"])
    assert "'bagit.txt' is a file at the top of the zip" in refusal(path)


def test_sixty_thousand_entries_are_refused_from_the_end_record(tmp_path: Path, spy_reads: list[str]) -> None:
    path = tmp_path / "crate.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in bag_members().items():
            archive.writestr(f"bag/{name}", data)
        for n in range(60_000):
            archive.writestr(f"bag/data/many/{n:05}.txt", b"")
    message = refusal(path)
    assert f"the zip has {len(bag_members()) + 60_000:,} entries; the limit is 10,000" in message
    assert "put many small files together" in message
    assert spy_reads == []


def test_an_end_record_that_understates_the_entries_does_not_get_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "crate.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for n in range(200):
            archive.writestr(f"bag/data/{n:03}.txt", b"")
    data = bytearray(path.read_bytes())
    struct.pack_into("<2H", data, len(data) - 22 + 8, 5, 5)  # "5 entries"
    path.write_bytes(bytes(data))
    assert "more than 100 entries (more than its end record says)" in refusal(
        path, BagLimits(max_entries=100)
    )


def test_a_directory_larger_than_its_limit_is_refused(tmp_path: Path) -> None:
    path = zip_members(tmp_path / "crate.zip", bag_members())
    assert "the zip's directory is" in refusal(path, BagLimits(max_directory_bytes=100))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real zip bomb: 256 MiB of zeros deflated to a few hundred KiB, in an otherwise valid bag."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in bag_members().items():
            archive.writestr(f"bag/{name}", data)
        info = zipfile.ZipInfo("bag/data/zeros.csv")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            zeros = bytes(1 << 20)
            for _ in range(256):
                member.write(zeros)
    assert path.stat().st_size < 2 << 20
    return path


def test_a_zip_bomb_is_refused_by_its_ratio(bomb: Path, spy_reads: list[str]) -> None:
    message = refusal(bomb)
    assert "entry 'bag/data/zeros.csv' would expand from" in message
    assert "to 256.0 MiB" in message
    assert "the limit is 100:1, as such ratios are how zip bombs work" in message
    assert "compress it yourself" in message
    assert spy_reads == []


def test_a_zip_bomb_within_the_ratio_is_refused_by_the_total(bomb: Path, spy_reads: list[str]) -> None:
    message = refusal(bomb, BagLimits(max_ratio=1e6, max_total_bytes=64 << 20))
    assert "would expand to more than 64.0 MiB (the limit), at entry 'bag/data/zeros.csv'" in message
    assert spy_reads == []


def test_a_zip_larger_than_its_limit_is_refused_before_reading_it(tmp_path: Path) -> None:
    path = zip_members(tmp_path / "crate.zip", bag_members())
    assert "the zip is " in refusal(path, BagLimits(max_zip_bytes=1000))


def lying_bag(tmp_path: Path, compression: int = zipfile.ZIP_DEFLATED) -> tuple[Path, str]:
    """A valid bag but for its central directory, which the test then falsifies; the payload is
    random hex (about 2:1 compressible), and there is no Payload-Oxum to give the lie away early."""
    big = os.urandom(1 << 20).hex().encode()  # 2 MiB
    path = zip_members(
        tmp_path / "crate.zip",
        bag_members({**PAYLOAD, "big.csv": big}, info={"Payload-Oxum": None}),
        compression=compression,
    )
    return path, "bag/data/big.csv"


def test_a_member_larger_than_its_directory_declares_is_stopped_while_streaming(tmp_path: Path) -> None:
    path, name = lying_bag(tmp_path)
    patch(path, name, size=1 << 20)  # says 1 MiB, holds 2 MiB
    message = refusal(path)
    assert f"entry '{name}' holds more data than the zip's directory declares (1,048,576 bytes)" in message
    assert "damaged or forged" in message


def test_a_member_smaller_than_its_directory_declares_is_refused(tmp_path: Path) -> None:
    path, name = lying_bag(tmp_path)
    real = central(path, name)["size"]
    patch(path, name, size=real + 1)
    assert f"entry '{name}' holds {real:,} bytes, not the {real + 1:,}" in refusal(path)


def test_a_stored_member_whose_sizes_disagree_is_refused(tmp_path: Path, spy_reads: list[str]) -> None:
    path, name = lying_bag(tmp_path, zipfile.ZIP_STORED)
    patch(path, name, size=1000)
    assert f"entry '{name}' is stored uncompressed but its sizes disagree" in refusal(path)
    assert spy_reads == []


def damage(path: Path, name: str) -> Path:
    """One byte of a stored member flipped in place: its CRC-32 no longer matches."""
    offset = central(path, name)["offset"]
    data = bytearray(path.read_bytes())
    data[offset + 30 + len(name) + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_tag_file_fails_its_crc(tmp_path: Path) -> None:
    members = bag_members(tagmanifest=False)  # no tag manifest: the CRC-32 is its only check
    path = damage(
        zip_members(tmp_path / "crate.zip", members, compression=zipfile.ZIP_STORED), "bag/bag-info.txt"
    )
    assert "entry 'bag/bag-info.txt' fails its CRC-32 check: the zip is damaged" in refusal(path)


def test_a_damaged_payload_file_fails_its_sha512(tmp_path: Path) -> None:
    path, name = lying_bag(tmp_path, zipfile.ZIP_STORED)
    message = refusal(damage(path, name))
    assert "payload file 'data/big.csv' does not match its SHA-512 checksum" in message


def test_an_encrypted_entry_is_refused(tmp_path: Path, spy_reads: list[str]) -> None:
    path, name = lying_bag(tmp_path)
    patch(path, name, flags=central(path, name)["flags"] | 0x1)
    message = refusal(path)
    assert f"entry '{name}' is encrypted" in message
    assert "without a password" in message
    assert spy_reads == []


@pytest.mark.parametrize(("method", "label"), [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "lzma")])
def test_unsupported_compression_methods_are_refused(tmp_path: Path, method: int, label: str) -> None:
    path = zip_members(tmp_path / "crate.zip", bag_members(), compression=method)
    message = refusal(path)
    assert f"uses compression method {method} ({label}); only 'stored' and 'deflate' are accepted" in message


def test_entries_sharing_their_data_are_refused(tmp_path: Path, spy_reads: list[str]) -> None:
    path, name = lying_bag(tmp_path)
    patch(path, name, offset=central(path, "bag/bagit.txt")["offset"])
    assert "share their data (a zip bomb trick" in refusal(path)
    assert spy_reads == []


def test_overlapping_entries_are_refused(tmp_path: Path, spy_reads: list[str]) -> None:
    path, name = lying_bag(tmp_path)
    patch(path, name, offset=central(path, "bag/bagit.txt")["offset"] + 1)
    assert "overlaps the next entry in the zip" in refusal(path)
    assert spy_reads == []


def test_a_local_header_that_disagrees_with_the_directory_is_refused(tmp_path: Path) -> None:
    path = zip_members(tmp_path / "crate.zip", bag_members())
    data = path.read_bytes()
    first = data.index(b"bag/bagit.txt")  # the first local header's name
    path.write_bytes(data[:first] + b"bag/bagit.tXt" + data[first + 13 :])
    assert "'bag/bagit.txt': its header does not match the zip's directory" in refusal(path)


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda data: b"not a zip at all", "not a zip file"),
        (lambda data: data + b"trailing", "has data after its end"),
        (lambda data: b"#!/bin/sh\nexit 0\n" + data, "has data before its first entry"),
        (lambda data: data[: len(data) // 2] + data[-22:], "has data before its first entry"),
    ],
)
def test_files_that_are_not_plain_zips_are_refused(
    tmp_path: Path, mangle: Callable[[bytes], bytes], words: str
) -> None:
    path = zip_members(tmp_path / "crate.zip", bag_members())
    path.write_bytes(mangle(path.read_bytes()))
    assert words in refusal(path)


# --- refused as a bag --------------------------------------------------------------------------


def without(members: dict[str, bytes], name: str) -> dict[str, bytes]:
    return retag({n: d for n, d in members.items() if n != name and n != "tagmanifest-sha512.txt"})


@pytest.mark.parametrize(
    ("members", "words"),
    [
        (without(bag_members(), "bagit.txt"), "folder 'bag' has no bagit.txt, so it is not a BagIt bag"),
        (
            retag(
                {**bag_members(), "bagit.txt": b"BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n"}
            ),
            "bagit.txt says BagIt-Version '0.97': 5s-crate requires BagIt 1.0 or later",
        ),
        (
            retag(
                {
                    **bag_members(),
                    "bagit.txt": b"BagIt-Version: 1.0\nTag-File-Character-Encoding: ISO-8859-1\n",
                }
            ),
            "declares the encoding 'ISO-8859-1': this gateway reads UTF-8 bags only",
        ),
        (
            without(bag_members(), "manifest-sha512.txt"),
            "no manifest-sha512.txt: 5s-crate requires SHA-512 checksums of the payload",
        ),
        (
            bag_members(info={"External-Identifier": ""}),
            "bag-info.txt has no External-Identifier: 5s-crate requires one",
        ),
        (
            without(bag_members(), "bag-info.txt"),
            "the bag has no bag-info.txt: 5s-crate requires one with an External-Identifier",
        ),
        (
            retag({**bag_members(), "bag-info.txt": b"External-Identifier: a\nExternal-Identifier: b\n"}),
            "several External-Identifier values",
        ),
        (
            bag_members(info={"Payload-Oxum": "12.3"}),
            "Payload-Oxum says 3 files of 12 bytes, but data/ holds",
        ),
        (retag({**bag_members(), "fetch.txt": b"https://x/y 3 data/y\n"}), "this gateway does not fetch"),
        (
            retag({**bag_members(), "bag-info.txt": b"External-Identifier: x\nno colon here\n"}),
            "line 2 of the bag's bag-info.txt is not 'Label: value'",
        ),
        (
            {n: d for n, d in bag_members().items() if not n.startswith("data/")},
            "the bag has no data/ folder",
        ),
    ],
    ids=[
        "no-bagit.txt",
        "version-0.97",
        "latin-1",
        "no-sha512",
        "no-external-id",
        "no-bag-info",
        "two-external-ids",
        "oxum",
        "fetch",
        "bad-tag-line",
        "no-data",
    ],
)
def test_bags_missing_what_5s_crate_requires_are_refused(
    tmp_path: Path, members: dict[str, bytes], words: str
) -> None:
    message = refusal(zip_members(tmp_path / "crate.zip", members))
    assert words in message, message


def test_a_tampered_payload_file_is_refused_naming_it(tmp_path: Path) -> None:
    members = bag_members()
    members["data/inputs/cohort.csv"] = members["data/inputs/cohort.csv"].replace(b"54", b"45")
    message = refusal(zip_members(tmp_path / "crate.zip", members))
    assert "payload file 'data/inputs/cohort.csv' does not match its SHA-512 checksum" in message
    assert "in the bag's manifest-sha512.txt: it changed after the bag was made" in message


def test_a_payload_file_matching_sha512_but_not_sha256_is_refused(tmp_path: Path) -> None:
    members = bag_members()
    members["manifest-sha256.txt"] = members["manifest-sha256.txt"].replace(
        hashlib.sha256(PAYLOAD["workflow/task.json"]).hexdigest().encode(), b"0" * 64
    )
    message = refusal(zip_members(tmp_path / "crate.zip", retag(members)))
    assert "'data/workflow/task.json' does not match its SHA-256 checksum" in message


def test_a_tampered_tag_file_is_refused_by_the_tag_manifest(tmp_path: Path) -> None:
    members = bag_members()
    members["bag-info.txt"] += b"Contact-Name: someone else\n"
    message = refusal(zip_members(tmp_path / "crate.zip", members))
    assert (
        "tag file 'bag-info.txt' does not match its SHA-512 checksum in the bag's tagmanifest-sha512.txt"
        in message
    )


def test_a_listed_file_missing_from_the_zip_is_refused(tmp_path: Path) -> None:
    members = bag_members()
    del members["data/inputs/cohort.csv"]
    message = refusal(zip_members(tmp_path / "crate.zip", members))
    assert "manifest-sha512.txt lists 'data/inputs/cohort.csv' but the zip does not hold it" in message


def test_a_payload_file_missing_from_the_manifest_is_refused(tmp_path: Path) -> None:
    members = {**bag_members(), "data/smuggled.sh": b"rm -rf /"}
    message = refusal(zip_members(tmp_path / "crate.zip", members))
    assert "payload file 'data/smuggled.sh' is not listed in the bag's manifest-sha512.txt" in message


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"%s  data/../../etc/passwd\n", "leaves the bag"),
        (b"%s  bagit.txt\n", "names a file outside the payload folder data/"),
        (b"%s  /data/x\n", "is an absolute path"),
        (b"nothex  data/x\n", "is not '<SHA-512 checksum> <path>'"),
    ],
)
def test_manifest_lines_naming_paths_outside_the_payload_are_refused(
    tmp_path: Path, line: bytes, words: str
) -> None:
    members = bag_members()
    members["manifest-sha512.txt"] += line.replace(b"%s", b"a" * 128)
    message = refusal(zip_members(tmp_path / "crate.zip", retag(members)))
    assert "manifest-sha512.txt" in message
    assert words in message, message


def test_a_tag_manifest_naming_a_missing_file_is_refused(tmp_path: Path) -> None:
    members = bag_members()
    members["tagmanifest-sha512.txt"] += b"a" * 128 + b" extra-tags/notes.txt\n"
    message = refusal(zip_members(tmp_path / "crate.zip", members))
    assert "tagmanifest-sha512.txt lists 'extra-tags/notes.txt' but the bag has no such file" in message


# --- a refusal writes nothing ----------------------------------------------------------------

_WRITES: list[tuple[str, tuple[Any, ...]]] | None = None
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_FILE_EVENTS = {
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.symlink",
    "os.link",
    "os.truncate",
    "shutil.copyfile",
}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _WRITES is None:
        return
    opened_to_write = event == "open" and (
        (isinstance(args[1], str) and set(args[1]) & set("wax+")) or (args[2] or 0) & _WRITE_FLAGS
    )
    if opened_to_write or event in _FILE_EVENTS:
        _WRITES.append((event, args))


class Watch:
    """Every file this process opens for writing, creates, renames or removes from `start()` on
    (a Python audit hook), and anything left in a folder made the cwd and TMPDIR."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.writes: list[tuple[str, tuple[Any, ...]]] = []

    def start(self) -> None:
        global _WRITES
        _WRITES = self.writes

    def seen(self) -> list[Any]:
        return [*self.writes, *(("left in the watched folder", p.name) for p in self.folder.iterdir())]


@pytest.fixture
def watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Watch]:
    global _WRITES
    if not getattr(sys, "_bagit_test_audit", False):  # a hook cannot be removed: install it once
        sys.addaudithook(_audit)
        sys._bagit_test_audit = True  # type: ignore[attr-defined]
    folder = tmp_path / "watched"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    try:
        yield Watch(folder)
    finally:
        _WRITES = None


def _hostile(tmp_path: Path, kind: str, bomb: Path) -> Path:
    path = tmp_path / f"{kind}.zip"
    if kind == "traversal":
        return bag_plus(path, ("bag/data/../../../tmp/owned", b"x"))
    if kind == "symlink":
        return bag_plus(path, unix_entry("bag/data/link", stat.S_IFLNK, b"/etc/passwd"))
    if kind == "bomb":
        return bomb
    if kind == "lying":
        lying, name = lying_bag(tmp_path)
        return patch(lying, name, size=1 << 20)
    if kind == "tampered":
        members = bag_members()
        members["data/inputs/cohort.csv"] += b"3,70\n"
        return zip_members(path, members)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["traversal", "symlink", "bomb", "lying", "tampered"])
def test_a_refusal_writes_nothing_to_disk(tmp_path: Path, bomb: Path, kind: str, watch: Watch) -> None:
    path = _hostile(tmp_path, kind, bomb)
    before = sorted(p.name for p in path.parent.iterdir())
    watch.start()
    refusal(path)
    assert watch.seen() == []
    assert sorted(p.name for p in path.parent.iterdir()) == before


def test_the_watch_sees_a_write(watch: Watch) -> None:
    """The watch would notice a write: the test of nothing written can fail."""
    watch.start()
    Path("spilled.txt").write_text("x")
    assert ("left in the watched folder", "spilled.txt") in watch.seen()
    assert any(event == "open" for event, _ in watch.seen())


# --- writing -----------------------------------------------------------------------------------


def entries(payload: Mapping[str, bytes] = PAYLOAD) -> list[BagEntry]:
    return [BagEntry(path, lambda data=data: io.BytesIO(data)) for path, data in payload.items()]


class Unseekable(io.RawIOBase):
    """An output that can only be written forward, as an HTTP response body is."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.buffer.write(data)


@pytest.mark.parametrize("seekable", [True, False])
def test_written_bags_validate_with_the_bagit_library_and_read_back(tmp_path: Path, seekable: bool) -> None:
    path = tmp_path / "crate.zip"
    if seekable:
        with path.open("wb") as out:
            write_bag(out, "query-12389", entries(), {"Source-Organization": "Five Safes TES"})
    else:
        stream = Unseekable()
        write_bag(stream, "query-12389", entries(), {"Source-Organization": "Five Safes TES"})  # type: ignore[arg-type]
        path.write_bytes(stream.buffer.getvalue())

    with zipfile.ZipFile(path) as archive:  # a trusted zip we just made: extracting it is the oracle's way
        archive.extractall(tmp_path / "out")
    oracle = bagit.Bag(str(tmp_path / "out" / "query-12389"))
    oracle.validate()  # every manifest and tag manifest recomputed, Payload-Oxum, completeness
    assert set(oracle.algorithms) == {"sha512", "sha256"}
    tag_files = {"bagit.txt", "bag-info.txt", "manifest-sha512.txt", "manifest-sha256.txt"}
    covered = {name: set(hashes) for name, hashes in oracle.entries.items() if name in tag_files}
    assert covered == {name: {"sha512", "sha256"} for name in tag_files}  # by both tag manifests
    assert oracle.version_info == (1, 0)
    assert oracle.info["Source-Organization"] == "Five Safes TES"
    assert oracle.info["External-Identifier"].startswith("urn:uuid:")
    assert oracle.info["Payload-Oxum"] == f"{sum(len(d) for d in PAYLOAD.values())}.{len(PAYLOAD)}"

    with open_bag(path) as bag:
        assert bag.root == "query-12389"
        assert bag.external_identifier == oracle.info["External-Identifier"]
        assert {p: f.sha512 for p, f in bag.payload.items()} == {
            p: hashlib.sha512(d).hexdigest() for p, d in PAYLOAD.items()
        }
        assert bag.metadata() == json.loads(METADATA)


def test_a_given_external_identifier_and_date_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "crate.zip"
    with path.open("wb") as out:
        write_bag(out, "bag", entries(), {"External-Identifier": EXTERNAL_ID, "Bagging-Date": "2026-01-02"})
    with open_bag(path) as bag:
        assert bag.external_identifier == EXTERNAL_ID
        assert bag.bag_info["Bagging-Date"] == ["2026-01-02"]


def test_a_bag_made_by_the_bagit_library_opens(tmp_path: Path) -> None:
    folder = tmp_path / "made" / "bag"
    for name, data in PAYLOAD.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    bagit.make_bag(str(folder), {"External-Identifier": EXTERNAL_ID}, checksums=["sha512", "sha256"])
    path = tmp_path / "crate.zip"
    zip_folder(path, folder)
    message = refusal(path)  # the library writes BagIt 0.97; the refusal says how to make it 1.0
    assert "says BagIt-Version '0.97'" in message
    assert "set 'BagIt-Version: 1.0' in bagit.txt" in message
    assert "bagit.Bag('FOLDER').save()" in message
    declaration = folder / "bagit.txt"  # the advice, followed
    declaration.write_text(declaration.read_text().replace("BagIt-Version: 0.97", "BagIt-Version: 1.0"))
    bagit.Bag(str(folder)).save()
    zip_folder(path, folder)
    with open_bag(path) as bag:
        assert bag.external_identifier == EXTERNAL_ID
        assert set(bag.payload) == set(PAYLOAD)


def zip_folder(path: Path, folder: Path) -> None:
    """The bag folder zipped as `zip -r` would from its parent."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, file.relative_to(folder.parent).as_posix())


class Forward(io.RawIOBase):
    """A source that can only be read forward (a pipe, a download): its size is not known ahead."""

    def __init__(self, data: bytes) -> None:
        self.source = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self.source.readinto(buffer)


@pytest.mark.skipif(
    not (shutil.which("zip") and shutil.which("unzip")), reason="needs Info-ZIP zip and unzip"
)
def test_info_zip_reads_our_bags_and_its_bags_and_links_are_judged(tmp_path: Path) -> None:
    """The common zip tool: it tests what write_bag writes; a bag it zips is read, with its links
    kept (`zip -y`) refused."""
    written = tmp_path / "written.zip"
    with written.open("wb") as out:
        write_bag(out, "req", entries(), {})
    assert (
        "No errors detected"
        in subprocess.run(["unzip", "-t", written], capture_output=True, text=True).stdout
    )
    with zipfile.ZipFile(written) as archive:
        archive.extractall(tmp_path / "out")
    subprocess.run(["zip", "-qr", "../infozip.zip", "req"], cwd=tmp_path / "out", check=True)
    with open_bag(tmp_path / "infozip.zip") as bag:
        assert set(bag.payload) == set(PAYLOAD)
    (tmp_path / "out" / "req" / "data" / "link").symlink_to("/etc/passwd")
    subprocess.run(["zip", "-qry", "../links.zip", "req"], cwd=tmp_path / "out", check=True)
    assert "entry 'req/data/link' is a symbolic link" in refusal(tmp_path / "links.zip")


def test_percent_and_large_files_round_trip(tmp_path: Path) -> None:
    """'%' is written as %25 (RFC 8493) and read back; a payload larger than a chunk, of a size not
    known ahead (so written with ZIP64 headers), streams through."""
    big = os.urandom(3 * _zip.CHUNK + 17)
    payload = {**PAYLOAD, "50% sample.csv": b"half"}
    path = tmp_path / "crate.zip"
    with path.open("wb") as out:
        forward = BagEntry("big.bin", lambda: io.BufferedReader(Forward(big)))
        write_bag(out, "bag", [*entries(payload), forward], {}, compression=zipfile.ZIP_STORED)
    with zipfile.ZipFile(path) as archive:
        assert b"  data/50%25 sample.csv\n" in archive.read("bag/manifest-sha512.txt")
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
    with open_bag(path) as bag:
        assert bag.payload["50% sample.csv"].size == 4
        assert bag.payload["big.bin"].sha512 == hashlib.sha512(big).hexdigest()
        with bag.open("big.bin") as stream:
            assert hashlib.sha512(stream.read()).digest() == hashlib.sha512(big).digest()


@pytest.mark.parametrize(
    ("root", "path", "info", "words"),
    [
        ("bag", "../escape", {}, "leaves the bag"),
        ("bag", "/abs", {}, "absolute path"),
        ("a/b", "x", {}, "single folder name"),
        ("bag", "x", {"Bad\nLabel": "v"}, "cannot be written"),
        ("bag", "x", {"Label": "two\nlines"}, "cannot be written"),
    ],
)
def test_write_bag_refuses_what_would_make_a_bad_bag(
    root: str, path: str, info: dict[str, str], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        write_bag(io.BytesIO(), root, entries({path: b"x"}), info)


def test_write_bag_refuses_duplicate_paths() -> None:
    with pytest.raises(ValueError, match="given twice"):
        write_bag(io.BytesIO(), "bag", [*entries({"a.csv": b"1"}), *entries({"A.csv": b"2"})], {})


def test_every_limit_is_documented_with_its_default() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "crates.md").read_text()
    section = doc.split("### Intake limits", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `(max_[a-z_]+)` \| ([^|]+) \|", section, re.MULTILINE))
    defaults = {f.name: f.default for f in dataclasses.fields(BagLimits)}
    assert set(documented) == set(defaults)
    for name, default in defaults.items():
        shown = documented[name].strip()
        if shown.endswith("GiB"):
            assert default == int(shown.split()[0]) << 30, name
        elif shown.endswith("MiB"):
            assert default == int(shown.split()[0]) << 20, name
        else:
            assert default == float(shown.replace(",", "")), name
