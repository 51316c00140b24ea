"""The Prefect task decorator every AWS operation shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.tasks import exponential_backoff

NEVER_RETRY = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "InvalidClientTokenId"}


def worth_retrying(task: object, task_run: object, state: State[object]) -> bool:
    """Retry errors that can pass (throttling, eventual consistency), never a refusal or a human's answer."""
    error = state.result(raise_on_failure=False)
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "")) not in NEVER_RETRY
    return isinstance(error, BotoCoreError | ConnectionError | TimeoutError)

P = ParamSpec("P")
R = TypeVar("R")


def aws_task(name: str, per_feed: bool = True, retries: int = 0) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A task named after what it does and the feed it does it for, never cached.

    Results are live AWS state, so caching would hide drift; transient AWS errors are retried by
    botocore's adaptive retry mode in the client factory. `retries` adds whole-step retries with
    exponential backoff and jitter (IAM's eventual consistency), never for access denials.
    """

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        return Task(fn=fn, name=name, task_run_name=name + "[{feed_name}]" if per_feed else name,
                    cache_policy=NO_CACHE, retries=retries, retry_delay_seconds=exponential_backoff(backoff_factor=1),
                    retry_jitter_factor=0.5, retry_condition_fn=worth_retrying)

    return decorate
