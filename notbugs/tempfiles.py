"""Temporary files of atomic writes, and the clean-up of those a killed writer leaves behind.

Every writer (`storage.atomic_write_bytes`, `results.append`, the report) writes a hidden file beside
its target and renames it into place. A writer killed before the rename (SIGKILL, OOM killer, power
cut) leaves that file behind, inside folders that DVC tracks. Its name records the host and process
that made it, `.tmp-<target>@<host>.<pid>-...`, so the next writer of the same target can tell a dead
writer's leftover from a live writer's file in progress, and removes only the former: files made on
this host by a process that no longer runs. Files of other hosts (shared storage) are left alone.

Standard library only: `notbugs.results` imports this and must stay free of torch.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

PREFIX = ".tmp-"
_OWNER = re.compile(r"@(?P<host>[^@/]+)\.(?P<pid>\d+)(?:-[^-]*|\.writing)$")


def owner() -> str:
    """`@<host>.<pid>`: who is writing, as it appears in a temporary file's name."""
    return f"@{socket.gethostname()}.{os.getpid()}"


def prefix(name: str) -> str:
    """The `tempfile.mkstemp` prefix for a temporary copy of `name`."""
    return f"{PREFIX}{name}{owner()}-"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete the temporary files in `folder` (those of target `name`, or all) whose writer ran on
    this host and is gone; returns what was deleted. A temporary folder (a fetch writes its arrays into
    one, then renames it into place) goes with everything in it."""
    host, removed = socket.gethostname(), []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.startswith(PREFIX if name is None else f"{PREFIX}{name}@"):
            continue
        m = _OWNER.search(entry.name)
        if m is None or m["host"] != host or _running(int(m["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            elif entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            else:
                continue
            removed.append(Path(entry.path))
        except FileNotFoundError:  # another writer cleaned it up first
            pass
    return removed


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it: `os.umask` can only read it by
    setting it, which for a moment would apply to files other threads create."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode `open` or `mkdir` would give a new file or folder: mkstemp and mkdtemp make theirs private
    (0600, 0700), which a rename keeps, so colleagues on a shared cluster could not read a report or a model."""
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder, fsync, rename: a reader (or DVC)
    sees the old file or the new one, never half of one. On failure nothing is left behind and the
    OSError propagates (callers that know the artefact word the message)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead(path.parent, path.name)  # left by a writer of this file that was killed
    tmp = None
    try:  # mkstemp inside: a read-only folder fails there
        fd, tmp = tempfile.mkstemp(prefix=prefix(path.name), dir=path.parent)
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
