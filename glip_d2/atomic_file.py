"""Files written whole or not at all.

What a process writes goes to a temporary file beside the target, is flushed to disk, and only
then takes the target's name (``os.replace``, atomic on POSIX): a reader or a resumed run never
sees half a file, and a command stopped mid-write keeps the last complete one. The temporary
file is removed when anything fails.

The temporary file is named ``.<target name>.<process id>@<machine>.<8 random characters>.tmp``
(``<machine>``: 8 hex digits of the host name's sha256). A process killed mid-write (SIGKILL, the
machine down) cannot remove its own; :func:`remove_abandoned` removes those of this machine whose
process is gone and that no write has touched for a minute, which a resumed training run does in
its output folder (a folder shared with other machines keeps their files).

The temporary file gets the mode any new file gets (0666 less the umask), so the target is as
readable as one written in place; :func:`tempfile.mkstemp` would make it private (0600), and
setting the mode afterwards would need the umask, which only a process-wide ``os.umask`` call
reads, racing other threads.

It is a leaf module (nothing of glip_d2 imported), so the data side, the self-training parts, the
model zoo and the tools can all use it.
"""
import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import time
from typing import IO, Any, Callable, Iterator, List, Tuple

__all__ = [
    "new_file",
    "complete_temp_file",
    "atomic_write",
    "atomic_write_json",
    "remove_abandoned",
]

# what complete_temp_file names: .<target>.<pid>@<machine>.<random>.tmp
_TEMP_NAME = re.compile(r"^\..+\.(\d+)@([0-9a-f]{8})\.[0-9a-f]{8}\.tmp$")
# a temporary file untouched this long is no write in progress (writes are sequential)
_ABANDONED_AFTER_S = 60.0


def _machine() -> str:
    """8 hex digits naming this machine (its host name's sha256), for temporary file names."""
    return hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]


def new_file(directory: str, prefix: str, suffix: str) -> Tuple[int, str]:
    """Create a new file ``<directory>/<prefix><8 random characters><suffix>``, open for writing
    (as :func:`tempfile.mkstemp`, but with the mode a new file gets: 0666 less the umask).

    Returns:
        (file descriptor, path).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(directory, prefix + secrets.token_hex(4) + suffix)
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"No new file name {prefix}XXXXXXXX{suffix} was free in {directory}.")


@contextlib.contextmanager
def complete_temp_file(
    path: str, write: Callable[[IO], Any], binary: bool = False
) -> Iterator[str]:
    """A temporary file beside ``path`` (in the same folder, so a rename cannot cross file
    systems) holding what ``write(file)`` wrote, on disk; it is removed on leaving unless the
    caller moved it away (to ``path``, or by a hard link)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = new_file(directory, f".{os.path.basename(path)}.{os.getpid()}@{_machine()}.", ".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str, write: Callable[[IO], Any], binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file (text, UTF-8, unless ``binary``), then rename it
    to ``path``."""
    with complete_temp_file(path, write, binary) as tmp:
        os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any, **dump_kwargs) -> None:
    """``json.dump(obj, file, **dump_kwargs)`` into ``path``, atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, **dump_kwargs))


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):  # another user's process, or no answer
        return False
    return False


def remove_abandoned(directory: str) -> List[Tuple[str, int]]:
    """Remove the temporary files in ``directory`` (not its subfolders) that
    :func:`complete_temp_file` made for a process of this machine that no longer runs and that
    no write has touched for a minute: what a write killed before its rename left behind. A file
    of a running process (a write in progress) is kept, and so is one whose process id a new
    process has taken since, and one of another machine (a shared folder: its process cannot be
    seen from here).

    Returns:
        (path, size in bytes) of each file removed.
    """
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    here = _machine()
    for name in names:
        match = _TEMP_NAME.match(name)
        if not match or match.group(2) != here or not _process_gone(int(match.group(1))):
            continue
        path = os.path.join(directory, name)
        try:
            stat = os.stat(path)
            if time.time() - stat.st_mtime < _ABANDONED_AFTER_S:
                continue
            size = stat.st_size
            os.remove(path)
        except FileNotFoundError:  # removed meanwhile
            continue
        removed.append((path, size))
    return removed
