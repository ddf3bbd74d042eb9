"""Run a script under ``torchrun --nproc_per_node=2`` for the tests, with what went wrong kept.

The two-process tests check the library's decisions, not the machine's port allocator nor
torch's teardown:

* a launch that fails while the processes find each other (the rendezvous or gloo's
  connections, on a machine busy with other jobs) is started once more, and one that still
  fails reports the output of both attempts;
* a launch whose worker aborts in the interpreter's shutdown after every rank wrote its
  results (:data:`TEARDOWN_ABORT`) has finished its work: its results are taken, with a
  warning that shows in the test summary, and the test checks them as any others. Started
  again, such a launch aborted again in both attempts of one test run on an otherwise idle
  machine (its results complete both times), so a retry is no remedy.

Any other failure is reported at once, untouched.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: failures of two processes finding each other (not of the code they run)
RENDEZVOUS_FAILURE = re.compile(
    r"EADDRINUSE|Address already in use|RendezvousConnectionError|RendezvousTimeoutError|"
    r"RendezvousClosedError|DistNetworkError|DistStoreError|Connection reset by peer|"
    r"Connection refused|Socket Timeout|connect\(\) timed out|Gloo connectFullMesh failed",
    re.IGNORECASE)
#: a worker aborted by ``std::terminate`` in the interpreter's shutdown (no Python frame): seen
#: in 10 to 30% of two-process launches when several gloo jobs ran at once on one machine,
#: with a bare torch script too (``init_process_group``, ``all_reduce``, exit), and rarely
#: with one job alone
TEARDOWN_ABORT = "terminate called without an active exception"
COMMAND = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0"]


def is_rendezvous_failure(done: subprocess.CompletedProcess) -> bool:
    """Whether a failed launch failed while its processes were finding each other."""
    return done.returncode != 0 and RENDEZVOUS_FAILURE.search(f"{done.stdout}\n{done.stderr}") is not None


def is_teardown_abort(done: subprocess.CompletedProcess, results: Sequence[Path]) -> bool:
    """Whether a failed launch aborted in shutdown after every rank wrote its ``results``
    (each one whole: a rank stopped by the launcher while writing leaves a file cut short)."""
    return (done.returncode != 0 and TEARDOWN_ABORT in done.stderr and bool(results)
            and all(_whole(path) for path in results))


def _whole(path: Path) -> bool:
    """Whether a result file exists and, for JSON, parses."""
    if not path.exists():
        return False
    if path.suffix != ".json":
        return True
    try:
        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def describe(done: subprocess.CompletedProcess, limit: int = 6000) -> str:
    """The exit status and the ends of both streams of a launch."""
    return (f"exit status {done.returncode}\n--- stdout (end) ---\n{done.stdout[-limit:]}"
            f"\n--- stderr (end) ---\n{done.stderr[-limit:]}")


def torchrun(args: Sequence[str], env: dict[str, str], *, timeout: float = 400,
             results: Sequence[Path] = (), **kwargs: Any) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 args``; fails the test, with both attempts' output,
    unless it exits with 0 (a rendezvous failure is retried once) or aborts in shutdown after
    the ranks wrote their ``results`` files (taken, with a warning)."""
    import warnings

    import pytest

    attempts = []
    for _ in range(2):
        for path in results:  # a retry must write them again
            path.unlink(missing_ok=True)
        done = subprocess.run([*COMMAND, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, **kwargs)
        attempts.append(done)
        if done.returncode == 0 or not is_rendezvous_failure(done):
            break
    if is_teardown_abort(done, results):
        warnings.warn(f"torchrun {' '.join(map(str, args))}: a worker aborted in torch's shutdown after every "
                      f"rank wrote its results ({TEARDOWN_ABORT!r}); the results are checked as written",
                      RuntimeWarning, stacklevel=2)
        return done
    if done.returncode != 0:
        report = "\n\n".join(f"=== attempt {i + 1}: {describe(a)}" for i, a in enumerate(attempts))
        pytest.fail(f"torchrun {' '.join(map(str, args))} failed:\n{report}", pytrace=False)
    return done


def differences(first: Any, second: Any, path: str = "") -> list[str]:
    """Where two JSON-like values differ (``a.b[2]: 1 != 2``), for an assertion's message."""
    if isinstance(first, dict) and isinstance(second, dict):
        found = []
        for key in sorted(set(first) | set(second), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in first or key not in second:
                found.append(f"{where}: only in {'the second' if key not in first else 'the first'}")
            else:
                found += differences(first[key], second[key], where)
        return found
    if isinstance(first, list) and isinstance(second, list) and len(first) == len(second):
        return [d for i, (a, b) in enumerate(zip(first, second)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if first == second else [f"{path}: {first!r} != {second!r}"]
