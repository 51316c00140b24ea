"""The Prefect task decorator every AWS operation shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect import Task
from prefect.cache_policies import NO_CACHE

P = ParamSpec("P")
R = TypeVar("R")


def aws_task(name: str, per_feed: bool = True) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A task named after what it does and the feed it does it for, never cached.

    Results are live AWS state, so caching would hide drift; transient AWS errors are retried by
    botocore's standard retry mode in the client factory, not here.
    """

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        return Task(fn=fn, name=name, task_run_name=name + "[{feed_name}]" if per_feed else name,
                    cache_policy=NO_CACHE)

    return decorate
