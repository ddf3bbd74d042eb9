"""Turning user arguments into the package's enums, with one error message for all."""

from __future__ import annotations

import enum
from typing import TypeVar

__all__ = ["parse_enum"]

E = TypeVar("E", bound=enum.Enum)


def parse_enum(kind: type[E], value: object, arg: str) -> E:
    """``kind(value)``, or a ``ValueError`` naming ``arg`` and the accepted values."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{arg} must be one of {[m.value for m in kind]}, got {value!r}") from None
