"""I/O shell: a cluster's state is private to its owner: 0700 directories, 0600 files.

The state directory holds the services' databases (their ``-wal``/``-shm`` too), OSS's
objects, the logs, the generated broker config and password file, ``keys.json`` and the
cluster file. Secrets in them are sealed, but nothing there is anyone else's business.

The rule is kept by the process **umask** (:data:`UMASK`), set by ``ramsim up`` for its whole
life (its children, Mosquitto included, inherit it) and by every service at start (one started
on its own, by compose or by hand, keeps it too). A umask, rather than a chmod after each
creation, covers every file any code creates, including those ramsim never names (SQLite's
``-wal``/``-shm``, Mosquitto's persistence file and log, OSS's temporary parts), and from the
moment of creation: there is no window in which a new file is readable by others.
A umask cannot reach what already exists, so :func:`tighten` repairs a state directory made
before (by an older ramsim, or by hand) when ``ramsim up`` opens it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Iterator

UMASK = 0o077  # new directories 0700, new files 0600


def keep_private() -> None:
    """From now on, everything this process (and its children) creates is its owner's only."""
    os.umask(UMASK)


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """:func:`keep_private` for the duration of the block (the umask is restored after)."""
    before = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(before)


def tighten(state_dir: Path) -> list[Path]:
    """Take group and other permissions off ``state_dir`` and everything in it (symlinks are not
    followed). Returns what was changed."""
    changed: list[Path] = []
    for path in (state_dir, *sorted(state_dir.rglob("*"))):
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:  # gone meanwhile
            continue
        if stat.S_ISLNK(mode) or not mode & UMASK:
            continue
        os.chmod(path, stat.S_IMODE(mode) & ~UMASK)
        changed.append(path)
    return changed
