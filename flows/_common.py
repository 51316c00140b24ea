"""What every flow does around its tasks: load settings, gather results, publish them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from socfeeds.aws import AwsClients
from socfeeds.report import render_table, table_rows
from socfeeds.resolve import resolve
from socfeeds.settings import Settings

T = TypeVar("T")


def concurrent_tasks(max_workers: int = 16) -> TaskRunner[PrefectFuture[object]]:
    """Independent per-feed steps run at once; AWS round trips, not CPU, are the cost."""
    return ThreadPoolTaskRunner(max_workers=max_workers)  # type: ignore[return-value]


@dataclass(frozen=True)
class Run:
    """The resolved inputs of one flow run."""

    settings: Settings
    feeds: list[str]
    aws: AwsClients

    @property
    def s3_feeds(self) -> list[str]:
        return [name for name in self.feeds if name in self.settings.s3_feeds]

    @property
    def firehose_feeds(self) -> list[str]:
        return [name for name in self.feeds if name in self.settings.firehose_feeds]

    def owner(self, feed: str) -> str:
        """Who owns a feed's resources; shared ones (reader, canary writer, keys) follow the top-level setting."""
        declared = self.settings.s3_feeds.get(feed) or self.settings.firehose_feeds.get(feed)
        return (declared.managed_by if declared else None) or self.settings.managed_by


def start_run(feed_names: list[str] | None) -> Run:
    """Validate settings and the feed selection before any AWS call, then resolve what only AWS knows."""
    settings = Settings()  # values come from the environment and the settings file
    feeds = settings.select_feeds(feed_names)
    aws = AwsClients.from_settings(settings)
    return Run(settings=resolve(settings, aws), feeds=feeds, aws=aws)


class StepsFailed(RuntimeError):
    """Some steps raised; the message names each one and its error, for the run's failure message."""


def gather(futures: Iterable[tuple[str, PrefectFuture[list[T]]]]) -> tuple[list[T], list[tuple[str, str]]]:
    """Every task's items, plus (task label, error) for each task that did not complete."""
    items: list[T] = []
    errors: list[tuple[str, str]] = []
    for label, future in futures:
        future.wait()
        state = future.state
        if state.is_completed():
            items.extend(future.result())
        else:
            errors.append((label, str(state.result(raise_on_failure=False))))
    return items, errors


def publish(key: str, description: str, items: Sequence[object], columns: list[str]) -> None:
    """Table artifact for the UI, the same table in the run log."""
    rows = table_rows(items)  # type: ignore[arg-type]
    create_table_artifact(key=key, table=rows, description=description)
    get_run_logger().info("%s\n%s", description, render_table(rows, columns))
