"""The TES output-path rules (`tes.outputs`), which staging collects by and the gateway delivers by:
a file is claimed only inside the folder that is mounted for it, a FILE output claims exactly its
path, a DIRECTORY everything below it, and a wildcard's file keeps its path below `path_prefix`."""

from __future__ import annotations

import posixpath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivesafes_tes.tes.outputs import claim, is_pattern, output_folder

CI = settings(derandomize=True, database=None, deadline=None, max_examples=300)

segment = st.text(alphabet="abcxyz._-", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
folder = st.lists(segment, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
relative = st.lists(segment, min_size=1, max_size=3).map("/".join)
# A part of a wildcard path, with a name it matches.
wild_part = st.one_of(
    segment.map(lambda s: ("*", s)),
    segment.map(lambda s: ("*.csv", f"{s}.csv")),
    st.sampled_from("abc").map(lambda c: ("?", c)),
    segment.map(lambda s: ("[ab]*", f"a{s}")),
)
part = st.one_of(segment.map(lambda s: (s, s)), wild_part)


@st.composite
def named(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """Any output a TRE admits (a file, a DIRECTORY, a wildcard with or without path_prefix), a file
    it names, and where TES says that file goes below the output's url ("" for the url itself)."""
    base = draw(folder)
    kind = draw(st.sampled_from(["file", "directory", "pattern", "pattern+prefix"]))
    if kind == "file":
        path = f"{base}/{draw(segment)}"
        return {"path": path, "type": "FILE"}, path, ""
    if kind == "directory":
        rel = draw(relative)
        return {"path": base, "type": "DIRECTORY"}, f"{base}/{rel}", rel
    if kind == "pattern":  # no path_prefix: the files are kept below the pattern's own folder
        pattern, name = draw(wild_part)
        return {"path": f"{base}/{pattern}"}, f"{base}/{name}", name
    parts = [*draw(st.lists(part, max_size=2)), draw(wild_part)]
    path = "/".join([base, *(p for p, _ in parts)])
    file = "/".join([base, *(name for _, name in parts)])
    prefix = "/".join(base.split("/")[: draw(st.integers(min_value=1, max_value=base.count("/"))) + 1])
    return {"path": path, "path_prefix": prefix}, file, posixpath.relpath(file, prefix)


def outputs() -> st.SearchStrategy[dict[str, Any]]:
    """`named`'s outputs, and wildcards whose path_prefix is any folder (admission does not insist it
    is an ancestor of the pattern)."""
    stray = st.builds(lambda t, prefix: {**t[0], "path_prefix": prefix}, named(), folder)
    return st.one_of(named().map(lambda t: t[0]), stray.filter(lambda o: is_pattern(o["path"])))


def candidates(output: dict[str, Any]) -> st.SearchStrategy[str]:
    """Container paths of files a task might write: anywhere, and below the output's folder."""
    return st.one_of(
        st.builds(lambda f, r: f"{f}/{r}", folder, relative),
        st.builds(lambda r: f"{output_folder(output)[1]}/{r}", relative),
        st.just(output["path"]),
    )


@CI
@given(st.data())
def test_a_claimed_file_is_inside_the_mounted_folder_at_the_place_its_url_names(data: st.DataObject) -> None:
    output = data.draw(outputs())
    path = data.draw(candidates(output))
    below = claim(output, path)
    if below is None:
        return
    mounted = output_folder(output)[1]
    assert path.startswith(mounted + "/")  # staging sees only the mounted folder
    if below:  # delivered at url + "/" + below: the path below the folder, never outside it
        assert posixpath.join(mounted, below) == path
        assert not below.startswith("/")
        assert ".." not in below.split("/")  # a name such as ".._" is a file's own, inside the folder
    else:
        assert output.get("type") != "DIRECTORY"
        assert not is_pattern(output["path"])
        assert path == output["path"]


@CI
@given(named())
def test_each_output_claims_the_files_tes_says_it_names(case: tuple[dict[str, Any], str, str]) -> None:
    output, file, below = case
    assert claim(output, file) == below


@CI
@given(outputs(), relative)
def test_a_file_output_claims_its_path_only_and_a_directory_not_itself(
    output: dict[str, Any], rel: str
) -> None:
    path = output["path"]
    if output.get("type") == "DIRECTORY":
        assert claim(output, path) is None
    elif not is_pattern(path):
        assert claim(output, f"{output_folder(output)[1]}/{rel}") == (
            "" if f"{output_folder(output)[1]}/{rel}" == path else None
        )


def test_examples_from_the_tes_specification() -> None:
    wildcard = {"path": "/out/plots/*.png", "path_prefix": "/out", "url": "s3://r/p/"}
    assert claim(wildcard, "/out/plots/a.png") == "plots/a.png"
    assert claim(wildcard, "/out/plots/a.txt") is None
    assert claim({"path": "/out/*.csv"}, "/out/sub/t.csv") == "sub/t.csv"  # fnmatch's * crosses folders
    assert (
        claim({"path": "/out/report", "type": "DIRECTORY"}, "/out/report/sub/index.html") == "sub/index.html"
    )
    assert claim({"path": "/out/report", "type": "DIRECTORY"}, "/out/reports/x") is None
    assert claim({"path": "/out/table.csv"}, "/out/table.csv") == ""
    assert claim({"path": "/out/table.csv"}, "/out/table.csv.bak") is None


@pytest.mark.parametrize(
    "path", ["/_/../x", "/out/../etc/passwd", "/out//x", "/out/./x", "out/x", "/out/x/.."]
)
def test_a_path_not_as_the_engine_reads_it_is_claimed_by_no_output(path: str) -> None:
    """`claim` trusts nothing it is handed: a collected name with '..' (or not normalised) would
    otherwise be delivered outside the output's url."""
    for output in (
        {"path": "/out", "type": "DIRECTORY"},
        {"path": "/_", "type": "DIRECTORY"},
        {"path": "/out/*", "path_prefix": "/out"},
        {"path": path},
    ):
        assert claim(output, path) is None, output
