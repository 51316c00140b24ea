"""feed-canary: a marked synthetic event through every selected feed, found again, timed, leg named."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import cast

from prefect import flow, get_run_logger, runtime
from prefect.events import Event, emit_event
from prefect.futures import PrefectFuture, wait

from flows._common import (
    Run,
    concurrent_tasks,
    failed_with,
    failing_when,
    feed_of,
    fleet_result,
    gather,
    leaves_a_record,
    one_line,
    publish,
    publish_failures,
    target_run,
)
from flows._fleet import publish_feed_status, start_fleet
from flows._slo import observed, prefetch_history, publish_feed_slos
from tasks.canary import CanaryResult, canary_feed, writer_clients
from tasks.xql import XqlClient

CANARY_COLUMNS = ["status", "leg", "fix", "feed", "strategy", "latency_ms", "detail"]
FAILURE_COLUMNS = ["feed", "leg", "fix", "detail"]
FAILURES_ARTIFACT = "feed-canary-failures"
PROGRESS_SECONDS = 10.0


def explain(result: CanaryResult) -> str:
    """One failed feed as the on-call engineer reads it: the feed, the leg, what happened, the fix."""
    return one_line(f"{result.feed}: {result.leg} leg failed: {result.detail} -> {result.fix}")


canary_task = failing_when(canary_feed, lambda results: [explain(r) for r in results if not r.passed])


@flow(name="feed-canary", task_runner=concurrent_tasks())
@leaves_a_record("feed-canary")
def feed_canary(feeds: list[str] | None = None, accounts: list[str] | None = None) -> list[CanaryResult]:
    """Write one synthetic, marked event into each feed in its real format and confirm it arrived.

    Each feed's strategy (siem or queue) and deadline come from settings. All feeds run at once;
    the run ends Failed if any feed fails, naming the leg (write, notification, collection,
    delivery, backup) and the fix, that feed's task marked Failed. Logs which feeds are still waiting
    every PROGRESS_SECONDS. Publishes a table (failed first) and a failures-only artifact. Emits
    socfeeds.canary.passed / socfeeds.canary.failed per feed, which are also the SLO history: the `feed-slos`
    artifact (flows/_slo.py) reads them back, while the feeds run, and adds this run's.

    In fleet mode (several accounts), runs one child per account and publishes the coverage matrix.

    Args:
        feeds: Feed names from settings; None means every feed.
        accounts: Fleet accounts (id, name, or id/region); None means every account.
    """
    fleet = start_fleet(feeds, accounts)
    if fleet.fans_out:
        return cast(list[CanaryResult], fleet_result("feed-canary", fleet, {"feeds": feeds}, feed_canary))
    run = target_run(fleet, feeds, "feed-canary")
    run_tag = (runtime.flow_run.id or uuid.uuid4().hex)[:8]
    writer = writer_clients(run.aws, run.settings, run_tag)
    wants_siem = run.firehose_feeds or any(run.settings.s3_feeds[n].canary_strategy == "siem" for n in run.s3_feeds)
    xql = XqlClient.from_settings(run.settings) if wants_siem else None
    with xql or contextlib.nullcontext():  # every query finished and the connection closed with the feeds
        futures: list[tuple[str, PrefectFuture[list[CanaryResult]]]] = [
            (name, canary_task.submit(run.aws, writer, xql, run.settings, name, run_tag)) for name in run.feeds
            if name not in run.delivering_feeds]
        history = prefetch_history(run.settings, [name for name, _ in futures])  # read while the feeds run
        wait_reporting_progress(run, futures)
        results, errors = gather((f"canary[{name}]", future) for name, future in futures)
    account = run.settings.account_id
    emitted: list[Event | None] = []
    for result in results:
        resource = {"prefect.resource.id": f"socfeeds.feed.{result.feed}", "prefect.resource.name": result.feed,
                    "socfeeds.account": account}
        emitted.append(emit_event(event=f"socfeeds.canary.{result.status}", resource=resource,
                                  payload={"leg": result.leg, "latency_ms": result.latency_ms,
                                           "detail": result.detail, "fix": result.fix, "account": account}))
    results.sort(key=lambda r: r.passed)  # failed feeds first
    failed = [r for r in results if not r.passed]
    summary = f"feed-canary: {len(failed)} of {len(results)} feeds failed"
    publish("feed-canary", summary, results, CANARY_COLUMNS)
    publish_failures(FAILURES_ARTIFACT, summary, failed, FAILURE_COLUMNS, f"All {len(results)} feeds passed.")
    publish_feed_slos(run.settings, [name for name, _ in futures], observed(emitted), history)
    publish_feed_status("feed-canary", run.target, {
        **{name: ("pass", f"delivers to s3://{feed.bucket} of account {feed.bucket_account}, whose canary confirms "
                          "the bucket's path") for name, feed in run.settings.delivering_feeds.items()
           if name in run.feeds},
        **{feed_of(label): ("fail", one_line(error)) for label, error in errors},
        **{r.feed: ("pass" if r.passed else "fail", "" if r.passed else explain(r)) for r in results}})
    problems = [explain(r) for r in failed] + [one_line(f"{label} crashed: {error} -> see the task run's log")
                                               for label, error in errors]
    if problems:
        return failed_with(f"feed-canary{run.at}: {len(problems)} of {len(run.feeds)} feeds failed: "
                           f"{'; '.join(problems)}; see artifact {FAILURES_ARTIFACT}", results)
    return results


def wait_reporting_progress(run: Run, futures: list[tuple[str, PrefectFuture[list[CanaryResult]]]]) -> None:
    """Log every PROGRESS_SECONDS which feeds are done and which are still waiting, and for how long,
    so a broken feed's deadline is not silence."""
    started, name_of = time.monotonic(), {future: name for name, future in futures}
    pending = [future for _, future in futures]
    while pending := list(wait(pending, timeout=PROGRESS_SECONDS).not_done):
        waited = int(time.monotonic() - started)
        done = [future for _, future in futures if future not in pending]
        confirmed = [name_of[future] for future in done if future.state.is_completed()]
        failed = [name_of[future] for future in done if not future.state.is_completed()]
        waiting = [f"{name_of[future]} ({waited} s of {deadline_of(run, name_of[future])} s)" for future in pending]
        get_run_logger().info("feed-canary after %d s: confirmed %s; failed %s; waiting on %s", waited,
                              ", ".join(confirmed) or "none", ", ".join(failed) or "none", ", ".join(waiting))


def deadline_of(run: Run, feed: str) -> int:
    return run.settings.feed(feed).canary_deadline_seconds
