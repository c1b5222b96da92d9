"""roc-validator (PyPI `roc-validator`), run offline.

The validator fetches the RO-Crate JSON-LD contexts (https://w3id.org/ro/crate/1.x/context) over
HTTP through requests-cache; CI cannot reach the network. `Validator.seeded` seeds the validator's
own sqlite HTTP cache from the official contexts kept in `tests/data/ro-crate-context/` (copied from
the project's shared specs, with their licence), by letting the validator fetch them once through a
transport that serves only those files and refuses every other URL, so the cache holds exactly the
requests the validator makes, under its own keys. Every validation after that is the command line as
CI would run it: `rocrate-validator validate --offline --cache-path ...`, which fails on a URL the
cache does not hold rather than reaching out.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTEXTS = Path(__file__).parent / "data" / "ro-crate-context"
# Every URL a context is published at, with the file that holds it; w3id.org redirects to the
# researchobject.org copies, which are served directly too.
URLS = {
    f"{base}{version}{suffix}": f"{version.removesuffix('-DRAFT')}.jsonld"
    for version in ("1.1", "1.2", "1.2-DRAFT", "1.3", "1.3-DRAFT")
    for base, suffix in (
        ("https://w3id.org/ro/crate/", "/context"),
        ("http://w3id.org/ro/crate/", "/context"),
        ("https://www.researchobject.org/ro-crate/", "/context.jsonld"),
        ("https://www.researchobject.org/ro-crate/specification/", "/context.jsonld"),
    )
}
PROFILES = ("ro-crate-1.2",)
COMMAND = Path(sys.executable).parent / "rocrate-validator"


@dataclass(frozen=True)
class Result:
    passed: bool
    issues: list[str]
    output: str


class _LocalContexts:
    """A requests transport adapter serving the kept contexts and refusing everything else."""

    def send(self, request: Any, **_: Any) -> Any:
        import requests
        from requests.structures import CaseInsensitiveDict
        from urllib3 import HTTPResponse

        name = URLS.get(str(request.url).split("#")[0])
        if name is None:
            raise requests.ConnectionError(f"offline test: {request.url} is not one of the kept contexts")
        content = (CONTEXTS / name).read_bytes()
        headers = {"Content-Type": "application/ld+json", "Content-Length": str(len(content))}
        response = requests.Response()
        response.status_code = 200
        response.url = request.url
        response.request = request
        response.headers = CaseInsensitiveDict(headers)
        response.raw = HTTPResponse(
            body=io.BytesIO(content),
            headers=headers,
            status=200,
            preload_content=False,
            request_url=request.url,
        )
        response._content = content
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


class Validator:
    """roc-validator with a seeded cache, run as CI runs it."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    @classmethod
    def seeded(cls, folder: Path) -> Validator:
        cache = folder / "http-cache"
        seed = folder / "seed"
        seed.mkdir()
        (seed / "ro-crate-metadata.json").write_text(json.dumps(_minimal_crate()))
        # In a child process: the validator's HTTP requester is a process-wide singleton.
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"from tests.rocrate_validation import _seed; _seed({str(cache)!r}, {str(seed)!r})",
            ],
            check=True,
            cwd=Path(__file__).parent.parent,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
            timeout=600,
        )
        return cls(cache)

    def check(self, crate: Path, profile: str = "ro-crate-1.2") -> Result:
        """Validate a crate folder (or RO-Crate zip) against `profile`, at REQUIRED severity."""
        command = [
            str(COMMAND),
            "--no-interactive",
            "validate",
            "--offline",
            "--cache-path",
            str(self.cache),
            "--profile-identifier",
            profile,
            "--requirement-severity",
            "required",
            "--no-paging",
            "--output-format",
            "json",
            str(crate),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        output = done.stdout + done.stderr
        issues = _issues(done.stdout)
        return Result(done.returncode == 0 and not issues, issues or [output[-4000:]], output)

    def check_record(self, record: dict[str, Any], folder: Path, profile: str = "ro-crate-1.2") -> Result:
        """Validate a record alone: a crate folder holding only its metadata file (and stand-ins for
        its local data entities' files, as a detached record names files it does not carry)."""
        folder.mkdir(parents=True)
        (folder / "ro-crate-metadata.json").write_text(json.dumps(record))
        for entity in record.get("@graph", []):
            _stand_in(folder, entity)
        return self.check(folder, profile)

    def check_bag(self, zipped: Path, folder: Path, profile: str = "ro-crate-1.2") -> Result:
        """Validate a BagIt-zipped crate: its payload folder (data/) is the RO-Crate root."""
        with zipfile.ZipFile(zipped) as archive:
            archive.extractall(folder)
        [root] = [p for p in folder.iterdir() if p.is_dir()]
        return self.check(root / "data", profile)


def _stand_in(folder: Path, entity: dict[str, Any]) -> None:
    entity_id = entity.get("@id", "")
    kinds = entity.get("@type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(entity_id, str) or ":" in entity_id or entity_id.startswith(("#", "./")):
        return
    from urllib.parse import unquote

    path = folder / unquote(entity_id)
    if "Dataset" in kinds:
        path.mkdir(parents=True, exist_ok=True)
    elif "File" in kinds:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _issues(stdout: str) -> list[str]:
    try:
        report = json.loads(stdout[stdout.index("{") :])
    except ValueError:
        return []
    found = []
    for issue in report.get("issues", []):
        check = issue.get("check", {})
        found.append(f"{check.get('identifier', '')}: {issue.get('message', '')}")
    return found


def _minimal_crate() -> dict[str, Any]:
    return {
        "@context": "https://w3id.org/ro/crate/1.2/context",
        "@graph": [
            {
                "@id": "ro-crate-metadata.json",
                "@type": "CreativeWork",
                "about": {"@id": "./"},
                "conformsTo": {"@id": "https://w3id.org/ro/crate/1.2"},
            },
            {
                "@id": "./",
                "@type": "Dataset",
                "name": "seed",
                "description": "seeds the validator's cache",
                "datePublished": "2026-01-01T00:00:00Z",
                "license": {"@id": "https://spdx.org/licenses/CC0-1.0"},
            },
        ],
    }


def _seed(cache: str, crate: str) -> None:
    """Fill the validator's HTTP cache (sqlite, requests-cache) at `cache` from the kept contexts: the
    validator fetches them itself, once per profile, through a transport that reaches nothing else
    (every session it makes gets it; rdflib's own fallback to urllib is shut)."""
    import rdflib._networking
    from requests_cache import CachedSession
    from rocrate_validator import services
    from rocrate_validator.utils.http import HttpRequester

    original = CachedSession.__init__

    def local_only(session: CachedSession, *args: Any, **kwargs: Any) -> None:
        original(session, *args, **kwargs)
        for scheme in ("https://", "http://"):
            session.mount(scheme, _LocalContexts())  # type: ignore[arg-type]

    def no_network(request: Any) -> Any:
        raise OSError(f"offline test: rdflib tried to fetch {request.full_url} itself")

    CachedSession.__init__ = local_only  # type: ignore[method-assign]
    rdflib._networking._urlopen = no_network
    requester = HttpRequester.initialize_cache(cache_path=cache, offline=False)
    for url in URLS:
        requester.get(url, headers={"Accept": "application/ld+json, application/json, */*;q=0.1"})
    for profile in PROFILES:
        services.validate(
            {"rocrate_uri": crate, "profile_identifier": profile, "offline": False, "cache_path": cache}
        )


if __name__ == "__main__":  # pragma: no cover - by hand: python -m tests.rocrate_validation CRATE
    validator = Validator.seeded(Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".roc-cache"))
    print(validator.check(Path(sys.argv[1])))
    shutil.rmtree(validator.cache, ignore_errors=True)
