"""Images for the embedded stack and the tests, built locally: TREs pull from no registry here.

`fivesafes/busybox:1` is the host's static busybox (Debian's busybox-static) with applet
links, a passwd/group that know `nobody` (65534) and a /tmp, imported from a tar made here. The
tar is byte-for-byte reproducible, so its hash, kept as a label, tells whether the image is current.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
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
