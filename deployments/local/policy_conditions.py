"""Policy values and condition operators, as the emulator's fidelity patches evaluate them. Local stack only.

IAM User Guide, "IAM JSON policy elements: Condition operators": String operators compare exactly (`*` and `?`
only in the Like forms); ArnEquals and ArnLike both match `*` and `?` wildcards; the Not forms negate.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any


def _like(actual: str, expected: list[str]) -> bool:
    return any(fnmatchcase(actual, pattern) for pattern in expected)


Operator = Callable[[str, list[str]], bool]
STRING_OPERATORS: dict[str, Operator] = {
    "StringEquals": lambda actual, expected: actual in expected,
    "StringLike": _like,
    "StringNotEquals": lambda actual, expected: actual not in expected,
    "StringNotLike": lambda actual, expected: not _like(actual, expected),
}
ARN_OPERATORS: dict[str, Operator] = {
    "ArnEquals": _like,
    "ArnLike": _like,
    "ArnNotEquals": lambda actual, expected: not _like(actual, expected),
    "ArnNotLike": lambda actual, expected: not _like(actual, expected),
}


def allows_action(element: Any, action: str) -> bool:
    """Whether a statement's Action element (one pattern or a list) names the action; IAM ignores case."""
    return any(fnmatchcase(action.lower(), str(pattern).lower()) for pattern in listed(element))


def listed(value: Any) -> list[Any]:
    """A policy element that may be one value or a list of them, as a list."""
    return value if isinstance(value, list) else [value]
