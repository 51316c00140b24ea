"""The Prefect task decorator every AWS operation shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

F = TypeVar("F", bound=Callable[..., Any])


def aws_task(name: str, per_feed: bool = True) -> Callable[[F], F]:
    """A task named after what it does and the feed it does it for, never cached.

    Results are live AWS state, so caching would hide drift; transient AWS errors are retried by
    botocore's standard retry mode in the client factory, not here.
    """

    def decorate(fn: F) -> F:
        return task(  # type: ignore[return-value]
            fn, name=name, task_run_name=name + "[{feed_name}]" if per_feed else name, cache_policy=NO_CACHE,
        )

    return decorate
