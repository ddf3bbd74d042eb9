"""Atomic writes, zip integrity checks and the run-folder lock (pyro_prune._io)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from pyro_prune._io import (
    LOCK_NAME,
    CorruptOutputError,
    FolderLockedError,
    RunLock,
    atomic_path,
    atomic_write_text,
    check_zip,
    remove_stale_temporaries,
    save_torch,
)


def test_atomic_path_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.") and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the rename
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_writer_leaves_the_old_file(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "model.pt"
    save_torch({"w": torch.ones(3)}, target)
    with pytest.raises(error), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a fi")
        raise error("killed")
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_temporary_names_are_unique_and_keep_the_suffix(tmp_path: Path) -> None:
    target = tmp_path / "converted.pt2"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.suffix == b.suffix == ".pt2"
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the last rename wins, both complete files


def test_atomic_path_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError), atomic_path(tmp_path):
        pass


def test_remove_stale_temporaries_removes_only_temporaries(tmp_path: Path) -> None:
    keep = [tmp_path / "model.pt", tmp_path / ".lock", tmp_path / "notes.tmp", tmp_path / ".x.tmp"]
    for p in keep:
        p.write_text("x")
    stale = [tmp_path / ".model.pt.123.0a1b2c3d.tmp.pt", tmp_path / "figures" / ".h.png.9.ffffffff.tmp.png"]
    stale[1].parent.mkdir()
    for p in stale:
        p.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


# ============================================================================ zip checks
def _archive(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    save_torch({"a": torch.arange(2000, dtype=torch.float32), "b": torch.ones(7)}, path)
    return path


def test_check_zip_accepts_a_torch_file(tmp_path: Path) -> None:
    path = _archive(tmp_path)
    assert check_zip(path) == path
    with zipfile.ZipFile(path) as z:  # records named after the archive, not the temporary
        assert all(n.startswith("archive/") for n in z.namelist())


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped", "header"])
def test_check_zip_reports_damage(tmp_path: Path, damage: str) -> None:
    path = _archive(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "empty":
        data = bytearray()
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":  # a bit of the tensor data: only the CRC can tell
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("archive/data/0")
        data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 100] ^= 0x10
    else:
        data[:4] = b"XXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptOutputError, match="model.pt"):
        check_zip(path)


def test_check_zip_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_zip(tmp_path / "nothing.pt")


# ============================================================================ run lock
_HOLD = """
import sys, time
from pyro_prune._io import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_run_lock_refuses_a_second_process_and_names_the_holder(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid} on host .*started "):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    stale: list[str] = []  # the holder died without releasing: the lock is taken over
    with RunLock(tmp_path, on_stale=stale.append):
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid()
    assert len(stale) == 1 and f"pid {holder.pid}" in stale[0]


_HOLD_THEN_RECORD = """
import fcntl, json, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # the lock taken, its record not yet written
print("locked", flush=True)
time.sleep(0.3)
handle.write(json.dumps({"pid": 4242, "host": "h", "started": "s"}))
handle.flush()
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_run_lock_refusal_waits_for_the_holders_record(tmp_path: Path) -> None:
    """A refusal between the holder's flock and its record still names the holder."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_THEN_RECORD, str(tmp_path / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match="pid 4242 on host h"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_run_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with RunLock(tmp_path), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    with RunLock(tmp_path, on_stale=lambda who: pytest.fail(f"released lock seen as stale: {who}")):
        pass
    atomic_write_text(tmp_path / "a.txt", "done")
    assert (tmp_path / "a.txt").read_text() == "done"
