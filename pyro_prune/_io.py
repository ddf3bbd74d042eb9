"""Writing outputs safely: atomic file replacement, integrity checks and the run-folder lock.

Every file the package writes goes through :func:`atomic_path`: the writer fills a temporary
file with a unique name in the destination's folder (``.<name>.<pid>.<random>.tmp``), the
file is flushed to disk (``fsync``) and then renamed over the destination (``os.replace``,
atomic on POSIX and Windows). A reader therefore sees the old file or the new one, never a
truncated one, whatever moment a writer is killed at; a killed writer leaves at most a
temporary file, which :func:`remove_stale_temporaries` deletes on the next run.

:func:`check_zip` verifies the CRC-32 of every member of a ``torch.save`` archive, so a
truncated file or a flipped byte is reported before ``torch.load`` reads it.

:class:`RunLock` is an exclusive lock on a folder (``.lock`` inside it): a second process
that tries to take it gets a :class:`FolderLockedError` naming the holder (pid, host, start
time). The lock is an ``flock`` on the lock file, which the kernel releases when its holder
exits, killed or not: a lock left by a dead process is detected and taken over.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import secrets
import socket
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LOCK_NAME",
    "CorruptOutputError",
    "FolderLockedError",
    "RunLock",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_zip",
    "remove_stale_temporaries",
    "save_torch",
]

LOCK_NAME = ".lock"
_TMP_SUFFIX = ".tmp"


class CorruptOutputError(ValueError):
    """A file written by the package is truncated, damaged or not what its name says."""


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock (the message names it)."""


# ============================================================================ atomic writes
def _temporary_name(path: Path) -> Path:
    """``.<name>.<pid>.<8 hex>.tmp<suffix>``: unique, hidden, and with the destination's
    suffix (some writers choose the format by it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
                          f"{path.suffix}")


_TEMPORARY = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp(\.[^.]*)?$")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` on success.

    The temporary file lies in ``path``'s folder (so the rename never crosses file systems)
    and has a unique name (concurrent writers never share one). On an exception the
    temporary file is removed and ``path`` is left as it was.

        with atomic_path(out / "model.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    tmp = _temporary_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(errno.ENOENT, "the writer wrote no file", str(tmp))
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(path.parent)


def save_torch(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` atomically (the archive's records are named ``archive/``)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` by ``data`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` by ``text`` (UTF-8) atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder``; returns them.

    Only call this while holding the folder's :class:`RunLock` (a live writer's temporary
    file would go too).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".*{_TMP_SUFFIX}*"
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = []
    for p in found:
        if p.is_file() and _TEMPORARY.match(p.name):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


# ============================================================================ integrity
def check_zip(path: str | os.PathLike[str], what: str = "file") -> Path:
    """Check a ``torch.save`` archive: present, a zip file, every member's CRC-32 correct.

    Raises:
        FileNotFoundError: no file at ``path``.
        CorruptOutputError: empty, truncated or damaged (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"no {what}", str(path))
    if path.stat().st_size == 0:
        raise CorruptOutputError(f"{what} {path} is empty")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as err:
        raise CorruptOutputError(f"{what} {path} is truncated or damaged ({err})") from None
    if bad is not None:
        raise CorruptOutputError(f"{what} {path} is damaged: member {bad!r} fails its CRC check")
    return path


# ============================================================================ folder lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _describe(info: dict[str, Any]) -> str:
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
            f"started {info.get('started', '?')}")


class RunLock:
    """An exclusive, re-entrant (per process) lock on ``folder``; a context manager.

    The lock file ``folder/.lock`` holds the holder's pid, host and start time. Taking a
    lock that a live process holds raises :class:`FolderLockedError` naming that process;
    a lock whose holder died is taken over (the kernel released its ``flock``; on systems
    without ``fcntl``, a lock file of a dead pid on this host is replaced).

    ``on_stale`` is called with a description of the dead holder when one is taken over.
    """

    _held: dict[Path, list[Any]] = {}  # resolved folder -> [file object, depth]

    def __init__(self, folder: str | os.PathLike[str], *,
                 on_stale: Callable[[str], None] | None = None) -> None:
        self.folder = Path(folder)
        self.on_stale = on_stale
        self._key: Path | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        key = self.folder.resolve()
        held = RunLock._held.get(key)
        if held is not None:  # this process holds it already
            held[1] += 1
            self._key = key
            return
        handle: Any = None
        if _HAS_FCNTL:
            handle = self._acquire_flock()
        else:
            self._acquire_exclusive()
        RunLock._held[key] = [handle, 1]
        self._key = key

    def release(self) -> None:
        if self._key is None:
            return
        held = RunLock._held[self._key]
        held[1] -= 1
        if held[1] == 0:
            del RunLock._held[self._key]
            handle = held[0]
            if _HAS_FCNTL:
                with contextlib.suppress(OSError):
                    handle.truncate(0)
                    handle.flush()
                handle.close()  # closing releases the flock
            else:
                with contextlib.suppress(OSError):
                    self.path.unlink()
        self._key = None

    def _info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}

    def _read_info(self) -> dict[str, Any]:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def _holder_info(self, wait_s: float = 2.0) -> dict[str, Any]:
        """The holder's record; the holder writes it just after taking the lock, so a refusal
        that comes in between waits for it briefly (an empty record names no one)."""
        deadline = time.monotonic() + wait_s
        while not (info := self._read_info()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return info

    def _refuse(self, info: dict[str, Any]) -> FolderLockedError:
        who = _describe(info) if info else "another process"
        return FolderLockedError(f"{self.folder} is in use by {who} (lock file {self.path}); "
                                 f"wait for it to finish or use another folder")

    def _acquire_flock(self) -> IO[str]:
        handle = open(self.path, "a+")  # never truncates another holder's record
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.close()
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise self._refuse(self._holder_info()) from None
            raise
        previous = self._read_info()
        if previous and self.on_stale is not None:
            self.on_stale(_describe(previous))
        handle.seek(0)
        handle.truncate(0)
        handle.write(json.dumps(self._info()))
        handle.flush()
        return handle

    def _acquire_exclusive(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                info = self._read_info()
                same_host = info.get("host") == socket.gethostname()
                if same_host and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]):
                    if self.on_stale is not None:
                        self.on_stale(_describe(info))
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise self._refuse(info) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._info()))
            return None
        raise self._refuse(self._read_info())


try:
    import fcntl

    _HAS_FCNTL = True
except ImportError:  # pragma: no cover - Windows
    _HAS_FCNTL = False
