"""The two-process launcher of the tests (``tests/launch.py``): what it takes and what it fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch import TEARDOWN_ABORT, torchrun

#: writes its rank's result (whole, or cut short), then ends as asked
SCRIPT = '''
import json, os, sys
out, how = sys.argv[1], sys.argv[2]
path = os.path.join(out, f"rank{os.environ['RANK']}.json")
with open(path, "w") as f:
    f.write(json.dumps({"rank": int(os.environ["RANK"])})[:-1] if how == "cut" else json.dumps({"rank": int(os.environ["RANK"])}))
if how in ("abort", "cut"):
    sys.stderr.write("terminate called without an active exception\\n")
    sys.stderr.flush()
    os.abort()
'''


@pytest.mark.parametrize("how", ["exit", "abort", "cut"])
def test_a_worker_aborting_in_shutdown_after_writing_its_results_is_taken_with_a_warning(
        how: str, tmp_path: Path, subprocess_env) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    results = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    if how == "exit":
        done = torchrun([str(script), str(tmp_path), how], subprocess_env, timeout=120, results=results)
        assert done.returncode == 0
    elif how == "abort":
        with pytest.warns(RuntimeWarning, match="aborted in torch's shutdown after every rank wrote its results"):
            done = torchrun([str(script), str(tmp_path), how], subprocess_env, timeout=120, results=results)
        assert done.returncode != 0 and TEARDOWN_ABORT in done.stderr
    else:  # a result cut short is not a finished run: the test fails, with the output
        with pytest.raises(pytest.fail.Exception, match=r"attempt 1: exit status"):
            torchrun([str(script), str(tmp_path), how], subprocess_env, timeout=120, results=results)
        return
    assert [json.loads(p.read_text())["rank"] for p in results] == [0, 1]
