"""Images for the embedded stack and the tests, built locally: TREs pull from no registry here.

`fivesafes/busybox:1` is the host's static busybox (Debian's busybox-static) with applet
links, a passwd/group that know `nobody` (65534) and a /tmp, imported from a tar made here. The
tar is byte-for-byte reproducible, so its hash, kept as a label, tells whether the image is current.

`fivesafes/workflow-runner:1` runs whole CWL and Snakemake workflows inside a TRE (see workflows/):
a Debian minbase root file system (debootstrap) with python3, cwltool and Snakemake at pinned
versions, and `fivesafes-workflow` (fivesafes_tes/workflow_runner.py) as its entry point. Its label
is the hash of that recipe, so it is built once per engine until the recipe changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

BUSYBOX_IMAGE = "fivesafes/busybox:1"
CONTENT_LABEL = "org.fivesafes.test-content"
HOST_BUSYBOX = Path("/bin/busybox")
# fmt: off
APPLETS = (
    "sh", "cat", "echo", "sleep", "wc", "nslookup", "wget", "nc", "dd", "yes", "id", "touch", "ls",
    "grep", "head", "tail", "env", "mkdir", "rm", "true", "false", "kill", "seq", "tee", "date",
    "timeout", "printf", "test", "[", "ps", "sort", "uniq", "tr", "cut",
)
# fmt: on
_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _add(
    tar: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o644, link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid = mode, 0, 0, 0
    if link:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    elif data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def busybox_rootfs(busybox: Path = HOST_BUSYBOX) -> bytes:
    """A reproducible rootfs tar around a static busybox."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for d in ("bin", "etc", "proc", "sys", "dev", "root"):
            _add(tar, d, mode=0o755)
        _add(tar, "tmp", mode=0o1777)
        _add(tar, "bin/busybox", data=busybox.read_bytes(), mode=0o755)
        for applet in APPLETS:
            _add(tar, f"bin/{applet}", link="busybox", mode=0o777)
        _add(tar, "etc/passwd", data=_PASSWD.encode())
        _add(tar, "etc/group", data=_GROUP.encode())
    return buf.getvalue()


def ensure_busybox_image(client) -> str:  # type: ignore[no-untyped-def]
    """Import the image unless the engine already has it with the same content; return its name."""
    import docker.errors

    rootfs = busybox_rootfs()
    digest = hashlib.sha256(rootfs).hexdigest()
    try:
        if client.images.get(BUSYBOX_IMAGE).labels.get(CONTENT_LABEL) == digest:
            return BUSYBOX_IMAGE
    except docker.errors.ImageNotFound:
        pass
    repository, _, tag = BUSYBOX_IMAGE.rpartition(":")
    changes = ["ENV PATH=/bin", 'CMD ["/bin/sh"]', f"LABEL {CONTENT_LABEL}={digest}"]
    client.api.import_image_from_data(rootfs, repository=repository, tag=tag, changes=changes)
    return BUSYBOX_IMAGE


RUNNER_IMAGE = "fivesafes/workflow-runner:1"
RUNNER_SUITE = "bookworm"  # its python3 is 3.11, which the pinned engines support
RUNNER_MIRROR = "http://deb.debian.org/debian"
RUNNER_ENGINES = ("cwltool==3.3.20260925135507", "snakemake==9.27.1")
RUNNER_USER = "65534:65534"
_RUNNER_SCRIPT = Path(__file__).with_name("workflow_runner.py")
# What a workflow never needs and the image would carry for nothing.
_RUNNER_TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
)


def runner_recipe() -> str:
    """Everything the runner image is made from (this module, with the pins above, and the entry
    point); its hash is the image's content label."""
    return Path(__file__).read_text() + _RUNNER_SCRIPT.read_text()


def ensure_runner_image(client, *, log=print) -> str:  # type: ignore[no-untyped-def]
    """Build the workflow runner unless the engine already has this recipe's build; return its name.

    Needs root (or password-less sudo) for debootstrap, and the Debian mirror and PyPI: only the
    build reaches them, in a container of its own; the image then runs with no network at all.
    """
    import docker.errors

    digest = hashlib.sha256(runner_recipe().encode()).hexdigest()
    outdated = None
    try:
        current = client.images.get(RUNNER_IMAGE)
        if current.labels.get(CONTENT_LABEL) == digest:
            return RUNNER_IMAGE
        outdated = current.id
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("debootstrap") is None:
        raise RuntimeError(
            "building the workflow runner image needs debootstrap (Debian: apt-get install debootstrap)"
        )
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    base = f"fivesafes/workflow-runner-base:{digest[:12]}"
    with tempfile.TemporaryDirectory(prefix="fivesafes-runner-") as scratch:
        root, tar = Path(scratch) / "rootfs", Path(scratch) / "rootfs.tar"
        log(f"debootstrap {RUNNER_SUITE} (minbase, python3) from {RUNNER_MIRROR}")
        _quiet(
            [
                *sudo,
                "debootstrap",
                "--variant=minbase",
                "--include=python3",
                RUNNER_SUITE,
                str(root),
                RUNNER_MIRROR,
            ]
        )
        for path in _RUNNER_TRIM:
            if (root / path).is_dir():
                _quiet([*sudo, "find", str(root / path), "-mindepth", "1", "-delete"])
        _quiet(
            [
                *sudo,
                "install",
                "-m",
                "0755",
                str(_RUNNER_SCRIPT),
                str(root / "usr/local/bin/fivesafes-workflow"),
            ]
        )
        _quiet([*sudo, "tar", "--numeric-owner", "-C", str(root), "-cf", str(tar), "."])
        _quiet([*sudo, "rm", "-rf", str(root)])
        client.api.import_image_from_file(
            str(tar), repository=base.partition(":")[0], tag=base.partition(":")[2]
        )
    try:
        _install_engines(client, base, digest, log)
    finally:
        client.images.remove(base, force=True)
    if outdated is not None:
        # The build it replaces, untagged now: ~300 MB each. Kept while a container still uses it.
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(outdated)
    return RUNNER_IMAGE


def _install_engines(client, base: str, digest: str, log) -> None:  # type: ignore[no-untyped-def]
    """pip-install the engines in a build container (the only one with network), then commit it."""
    from docker.types import Mount

    with tempfile.TemporaryDirectory(prefix="fivesafes-runner-pip-") as wheels:
        # pip itself comes in as a wheel run in place, so the image carries no pip of its own.
        _quiet(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", wheels, "pip"]
        )
        pip = next(Path(wheels).glob("pip-*.whl")).name
        # Mounts (not `volumes`, which would declare image VOLUMEs) under /tmp, which the sandbox
        # covers with its tmpfs: nothing of the build stays visible, and the host's trust store is
        # never committed into the image.
        mounts = [Mount("/tmp/wheels", wheels, type="bind", read_only=True)]
        # pip's options as flags, not environment: a container's environment is committed with it.
        options = ["--no-cache-dir", "--disable-pip-version-check", "--root-user-action=ignore"]
        ca = Path(
            os.environ.get("PIP_CERT")
            or os.environ.get("SSL_CERT_FILE")
            or "/etc/ssl/certs/ca-certificates.crt"
        )
        if ca.is_file():
            mounts.append(Mount("/tmp/host-ca.crt", str(ca.resolve()), type="bind", read_only=True))
            options += ["--cert", "/tmp/host-ca.crt"]
        log(f"installing {', '.join(RUNNER_ENGINES)} from PyPI")
        container = client.containers.create(
            base,
            [
                "python3",
                f"/tmp/wheels/{pip}/pip",
                "install",
                *options,
                "--break-system-packages",
                "--no-warn-script-location",
                *RUNNER_ENGINES,
            ],
            name=f"fivesafes-runner-build-{uuid.uuid4().hex[:8]}",
            # The host's own network and resolver: a bridge's NAT and DNS fallback fail on some hosts.
            network_mode="host",
            mounts=mounts,
        )
        try:
            container.start()
            status = container.wait()
            if status.get("StatusCode") != 0:
                tail = container.logs(tail=30).decode(errors="replace")
                raise RuntimeError(f"installing the workflow engines failed:\n{tail}")
            repository, _, tag = RUNNER_IMAGE.rpartition(":")
            changes = [
                "ENV PATH=/usr/local/bin:/usr/bin:/bin",
                "ENV HOME=/tmp",
                "WORKDIR /tmp",
                f"USER {RUNNER_USER}",
                'CMD ["fivesafes-workflow", "--help"]',
                f"LABEL {CONTENT_LABEL}={digest}",
            ]
            container.commit(repository=repository, tag=tag, changes=changes)
        finally:
            container.remove(force=True)


def _quiet(command: list[str]) -> None:
    """Run a build step; its output is shown only when it fails."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-2000:]
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({done.returncode}):\n{output}")
