from __future__ import annotations

import io

import pytest

from pyro_prune import progress
from pyro_prune.progress import ProgressStyle, progress_bar, progress_style


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_style_follows_the_stream_and_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress_style(io.StringIO()) is ProgressStyle.LINES
    assert progress_style(_Tty()) is ProgressStyle.BAR
    monkeypatch.setenv(progress.ENV, "lines")
    assert progress_style(_Tty()) is ProgressStyle.LINES
    monkeypatch.setenv(progress.ENV, "sideways")
    with pytest.raises(ValueError, match="PYRO_PRUNE_PROGRESS"):
        progress_style(io.StringIO())


@pytest.mark.parametrize("total", [1, 5, 40])
def test_plain_lines_have_no_cursor_movement(total, monkeypatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    out = io.StringIO()
    assert list(progress_bar(range(total), desc="work", stream=out, every_s=0.0)) == list(range(total))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert len(lines) == total and lines[-1].startswith(f"work: {total}/{total} (100%)")
    # a handle: update / set_postfix / close, one line at the first step and at the end
    out = io.StringIO()
    bar = progress_bar(desc="fit", total=total, stream=out, every_s=3600.0)
    for _ in range(total):
        bar.set_postfix({"loss": "0.5"})
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"fit: 1/{total}") and lines[-1].endswith("loss=0.5")
    assert len(lines) == (1 if total == 1 else 2)


def test_a_bar_on_a_terminal_and_nothing_when_disabled(monkeypatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    tty = _Tty()
    list(progress_bar(range(3), desc="bar", stream=tty))
    assert "\r" in tty.getvalue()  # tqdm redraws its line
    out = io.StringIO()
    assert list(progress_bar(range(3), desc="off", stream=out, enabled=False)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_fit_logs_one_plain_line_per_epoch_when_redirected(capsys, monkeypatch) -> None:
    from pyro_prune.data import load_dataset
    from pyro_prune.inference import fit
    from pyro_prune.models import MLP

    monkeypatch.delenv(progress.ENV, raising=False)
    train = load_dataset("digits", "train")
    fit(MLP(64, [8], 10), train, epochs=3, batch_size=256, lr=1e-2, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert [line.split(" (")[0] for line in err.splitlines()] == ["fit MLP: 1/3", "fit MLP: 2/3", "fit MLP: 3/3"]
