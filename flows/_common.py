"""What every flow does around its tasks: load settings, gather results, publish them."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

from prefect import Flow, Task, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import State, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.states import Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel

from flows._fleet import CHILD_DEPLOYMENT, Fleet, fan_out, report, target_inputs
from socfeeds.aws import AwsClients
from socfeeds.errors import OnCallError
from socfeeds.report import markdown_table, render_table, table_rows
from socfeeds.resolve import resolve
from socfeeds.settings import Settings, SettingsError
from socfeeds.targets import Target

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


def concurrent_tasks(max_workers: int = 16) -> TaskRunner[PrefectFuture[object]]:
    """Independent per-feed steps run at once; AWS round trips, not CPU, are the cost."""
    return ThreadPoolTaskRunner(max_workers=max_workers)  # type: ignore[return-value]


@dataclass(frozen=True)
class Run:
    """The resolved inputs of one flow run, for one target (account and region)."""

    settings: Settings
    feeds: list[str]
    aws: AwsClients
    target: Target | None = None  # set in fleet mode, so messages say which account

    @property
    def at(self) -> str:
        """' in <account>' for messages of a fleet target's run; '' for a single-account settings file."""
        return f" in {self.target.label}" if self.target else ""

    @property
    def s3_feeds(self) -> list[str]:
        return [name for name in self.feeds if name in self.settings.s3_feeds]

    @property
    def delivering_feeds(self) -> list[str]:
        """Feeds whose source this account wires into another account's bucket (a central log archive)."""
        return [name for name in self.feeds if name in self.settings.delivering_feeds]

    @property
    def firehose_feeds(self) -> list[str]:
        return [name for name in self.feeds if name in self.settings.firehose_feeds]

    def owner(self, feed: str) -> str:
        """Who owns a feed's resources; shared ones (reader, canary writer, keys) follow the top-level setting."""
        declared = self.settings.feed(feed) if feed in self.settings.feed_names else None
        return (declared.managed_by if declared else None) or self.settings.managed_by


def target_run(fleet: Fleet, feed_names: list[str] | None, flow_name: str) -> Run:
    """The run of a fleet's single selected target."""
    [target] = fleet.targets
    settings, aws = target_inputs(fleet, target, flow_name)
    catalog = fleet.catalog(target)
    wanted = None if feed_names is None else [name for name in feed_names if name in catalog]
    if wanted == []:
        raise SettingsError(f"feeds: {feed_names} are not declared for account {target.label}; it has {catalog}")
    return Run(settings=resolve(settings, aws), feeds=settings.select_feeds(wanted), aws=aws,
               target=target if fleet.settings.fleet else None)


def fleet_result(flow_name: str, fleet: Fleet, parameters: dict[str, Any], here: Flow[..., Any]) -> Any:
    """A parent run's outcome: children through the pool, the coverage matrix, Failed naming failing accounts."""
    outcomes = fan_out(flow_name, fleet, parameters, here)
    message = report(flow_name, fleet, outcomes)
    return failed_with(message, outcomes) if message else outcomes


def feed_of(label: str) -> str:
    """The feed a task label names (`check-bucket[cloudtrail]` -> `cloudtrail`); "" for a step every feed shares."""
    return label.partition("[")[2].rstrip("]")


def gather(futures: Iterable[tuple[str, PrefectFuture[list[T]]]]) -> tuple[list[T], list[tuple[str, str]]]:
    """Every task's items, from tasks that completed or ended Failed with their items (see `failed_with`),
    plus (task label, error) for each task that raised or crashed, and for each task that never ran because a
    task it waits on failed (Prefect leaves it Pending, "NotReady"): that one is named as skipped, with why."""
    futures = list(futures)
    label_of = {str(future.task_run_id): label for label, future in futures}
    outcomes: list[tuple[str, object]] = []
    for label, future in futures:
        future.wait()
        if future.state.is_final():
            outcomes.append((label, items_of(future.state)))
            continue
        upstream = [name for run_id, name in label_of.items() if run_id in str(future.state.message)]
        outcomes.append((label, f"skipped: it waits on {', '.join(upstream) or 'a step'}, which did not finish"))
    return split_outcomes(outcomes)


def call_each(steps: Iterable[tuple[str, Task[..., list[T]], tuple[Any, ...]]], at_once: int = 16
              ) -> tuple[list[T], list[tuple[str, str]]]:
    """What `gather` gives for submitted tasks, from the same steps called as plain functions in threads: for a
    fleet account's run, whose rows are already one cell of its parent's matrix, so the server is not asked to keep
    a task run per step (~24 ms of its CPU each: 50 accounts' verify would be 1,100 task runs)."""
    steps = list(steps)

    def call(task: Task[..., list[T]], args: tuple[Any, ...]) -> object:
        try:
            outcome = task.fn(*args)
        except Exception as error:
            get_run_logger().exception("%s raised", task.name)
            return error
        return items_of(cast(State[Any], outcome)) if isinstance(outcome, State) else outcome  # see failing_when

    with ThreadPoolExecutor(max_workers=max(1, min(at_once, len(steps)))) as pool:
        done = [(label, pool.submit(contextvars.copy_context().run, call, task, args)) for label, task, args in steps]
        return split_outcomes([(label, future.result()) for label, future in done])


def split_outcomes(outcomes: list[tuple[str, object]]) -> tuple[list[T], list[tuple[str, str]]]:
    """The items of every step that produced its list, and (label, error) for every other step."""
    items = [item for _, outcome in outcomes if isinstance(outcome, list) for item in outcome]
    return items, [(label, str(outcome)) for label, outcome in outcomes if not isinstance(outcome, list)]


def leaves_a_record(flow_name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Every outcome of a flow leaves a record an alert can point to.

    An OnCallError (bad settings, the wrong account, a step that needs a person) ends the run Failed with its
    message as one line, no traceback, and the `<flow>-failures` artifact holding the whole message; any other
    exception is a bug: the same artifact, then the exception with its traceback. A deployment's run that
    completes after its previous run failed emits `socfeeds.run.recovered`, so on-call hears the incident end.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                outcome = fn(*args, **kwargs)
            except OnCallError as error:
                record_failure(flow_name, str(error))
                return failed_with(one_line(f"{flow_name}: {error}; see artifact {flow_name}-failures"),
                                   cast(R, error))
            except Exception as error:
                record_failure(flow_name, f"{type(error).__name__}: {error}\n\n(Not an expected failure: the "
                                          "traceback is in the run's log.)")
                raise
            if not isinstance(outcome, State):
                announce_recovery(flow_name)
            return outcome

        return run

    return decorate


def record_failure(flow_name: str, text: str) -> None:
    key = f"{flow_name}-failures"
    create_markdown_artifact(key=key, description=f"{flow_name}: failed", markdown=(
        f"# {flow_name} failed\n\n```\n{text}\n```\n"))


def announce_recovery(flow_name: str) -> None:
    """Emit socfeeds.run.recovered when this deployment's previous finished run ended Failed or Crashed."""
    deployment_id, run_id = runtime.deployment.id, runtime.flow_run.id
    if not deployment_id or not run_id or runtime.deployment.name == CHILD_DEPLOYMENT:
        return  # nobody was alerted: not a deployment's run, or one account of a fleet run (its parent alerts)
    with get_client(sync_client=True) as client:
        previous = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[UUID(deployment_id)])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(not_any_=[UUID(run_id)]), state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.COMPLETED, StateType.FAILED, StateType.CRASHED]))),
            sort=FlowRunSort.END_TIME_DESC, limit=1)
    if previous and previous[0].state and previous[0].state.type in {StateType.FAILED, StateType.CRASHED}:
        last = previous[0]
        assert last.state is not None
        emit_event(event="socfeeds.run.recovered",
                   resource={"prefect.resource.id": f"socfeeds.deployment.{deployment_id}",
                             "prefect.resource.name": f"{flow_name}/{runtime.deployment.name}"},
                   payload={"previous_run": last.name, "previous_state": last.state.name,
                            "previous_message": one_line(last.state.message or "")[:500]})


class FailedWith(Exception):
    """The data of a Failed state a flow or task returns: its message and the items it still produced.

    Prefect needs a Failed state's data to be an exception (it raises it to a caller, and logs a TypeError
    for anything else), so the items travel inside one; `items_of` gives them back.
    """

    def __init__(self, message: str, items: object) -> None:
        super().__init__(message)
        self.items = items


def failed_with(message: str, data: T) -> T:
    """A Failed state carrying `data`, for a task or flow to return instead of raising.

    Prefect makes a returned state the run's own: the UI marks it red with `message` and no traceback,
    and `items_of(state)` gives back `data`. A caller of the run itself gets `data` or an exception,
    which is why the type stays `T`.
    """
    error = data if isinstance(data, BaseException) else FailedWith(message, data)
    return cast(T, Failed(message=message, data=error))


def items_of(state: State[Any]) -> Any:
    """What a run or task produced, whether it Completed or ended Failed through `failed_with`."""
    outcome = state.result(raise_on_failure=False)
    return outcome.items if isinstance(outcome, FailedWith) else outcome


def one_line(text: str) -> str:
    """State messages and alerts show one line; details from AWS may carry several."""
    return " ".join(text.split())


def failing_when(task: Task[P, list[T]], failures: Callable[[list[T]], list[str]]) -> Task[P, list[T]]:
    """The same task, ending Failed (its items kept as data) when `failures` names any, so the UI shows
    which task to open while the flow still collects every item."""

    @functools.wraps(task.fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> list[T]:
        items = task.fn(*args, **kwargs)
        failed = failures(items)
        return failed_with(one_line("; ".join(failed)), items) if failed else items

    return Task(fn=run, name=task.name, task_run_name=task.task_run_name, cache_policy=task.cache_policy,
                retries=task.retries, retry_delay_seconds=task.retry_delay_seconds,
                retry_jitter_factor=task.retry_jitter_factor, retry_condition_fn=task.retry_condition_fn)


def publish(key: str, description: str, items: Sequence[object], columns: list[str]) -> None:
    """Table artifact for the UI (`columns` first, in order), the same table in the run log.

    `description` is the artifact's title: its first line becomes a heading."""
    rows = table_rows(cast(Sequence[BaseModel], items), columns)
    create_table_artifact(key=key, table=rows, description=f"## {description}")
    get_run_logger().info("%s\n%s", description, render_table(rows, columns))


def publish_failures(key: str, title: str, failures: Sequence[BaseModel], columns: list[str], all_clear: str) -> None:
    """A short markdown artifact of only what needs a person, published on every run so its key always
    shows the latest run (`all_clear` when nothing failed); the run's failure message names `key`."""
    body = markdown_table(table_rows(failures, columns), columns) if failures else all_clear
    create_markdown_artifact(key=key, markdown=f"# {title}\n\n{body}\n", description=title)
