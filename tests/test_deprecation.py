"""The deprecation helpers: renamed keywords still work for one release, with a warning."""

from __future__ import annotations

import inspect
import warnings

import pytest

from pyro_prune._deprecation import renamed_keywords


@renamed_keywords(method="engine", size="width")
def _draw(x: int, *, engine: str = "fast", width: int = 1) -> tuple[int, str, int]:
    return x, engine, width


def test_the_new_keywords_pass_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _draw(1, engine="pyro", width=3) == (1, "pyro", 3)
        assert _draw(2) == (2, "fast", 1)


@pytest.mark.parametrize("old,new,value", [("method", "engine", "pyro"), ("size", "width", 5)])
def test_an_old_keyword_warns_at_the_caller_and_passes_its_value(old: str, new: str, value: object) -> None:
    with pytest.warns(DeprecationWarning, match=rf"_draw\({old}=\.\.\.\) is now _draw\({new}=\.\.\.\)") as record:
        out = _draw(7, **{old: value})
    assert out == (7, value if new == "engine" else "fast", value if new == "width" else 1)
    assert len(record) == 1 and record[0].filename == __file__


def test_both_names_are_a_type_error_naming_both() -> None:
    with pytest.raises(TypeError, match=r"_draw\(\) got both engine= and method=, its former name; pass engine= only"):
        _draw(1, engine="fast", method="pyro")


def test_the_signature_shows_the_new_names_only() -> None:
    params = inspect.signature(_draw).parameters
    assert list(params) == ["x", "engine", "width"]
    assert _draw.__name__ == "_draw"


@pytest.mark.parametrize("renamed", [{"method": "nothing"}, {"engine": "width"}])
def test_a_rename_the_function_does_not_match_fails_where_it_is_declared(renamed: dict[str, str]) -> None:
    with pytest.raises(TypeError, match="to rename"):
        renamed_keywords(**renamed)(_draw.__wrapped__)  # type: ignore[attr-defined]
