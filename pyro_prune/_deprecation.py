"""Deprecated spellings that keep working for one release, with a ``DeprecationWarning``.

* :func:`moved_names`: names that moved to another module still import from the old one;
* :func:`renamed_keywords`: a keyword argument that was renamed is still accepted under its
  old name.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

__all__ = ["moved_names", "renamed_keywords"]

F = TypeVar("F", bound=Callable[..., Any])


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that resolves ``moved`` (name -> new module) with a warning.

    Every lookup of a moved name warns with a ``DeprecationWarning`` naming the new module,
    then returns the object from there; any other name is an ``AttributeError``.
    """

    def __getattr__(name: str) -> Any:
        target = moved.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} moved to {target}.{name}; import it from there "
                      "(this alias goes in the next release)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(target), name)

    return __getattr__


def renamed_keywords(**renamed: str) -> Callable[[F], F]:
    """A decorator: the function's keyword ``old`` is now called ``renamed[old]``.

    A call that passes ``old=`` warns with a ``DeprecationWarning`` naming the new keyword and
    runs as if it had passed ``new=``; passing both is a ``TypeError`` naming both. The
    wrapped function keeps its signature (with the new names only) for ``help`` and the docs.
    """

    def decorate(func: F) -> F:
        params = inspect.signature(func).parameters
        for old, new in renamed.items():
            if new not in params or old in params:
                raise TypeError(f"{func.__qualname__} must take {new!r} and not {old!r} to rename {old!r}")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renamed.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{func.__name__}() got both {new}= and {old}=, its former name; "
                                    f"pass {new}= only")
                warnings.warn(f"{func.__name__}({old}=...) is now {func.__name__}({new}=...); pass {new}= "
                              f"(the keyword {old!r} goes in the next release)", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return cast(F, wrapper)

    return decorate
