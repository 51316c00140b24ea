"""feed-canary: a marked synthetic event through every selected feed, found again, timed, leg named."""

from __future__ import annotations

import statistics
import uuid

from prefect import flow, get_run_logger, runtime
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.variables import Variable

from flows._common import StepsFailed, concurrent_tasks, gather, publish, start_run
from tasks.canary import CanaryResult, canary_feed, writer_clients
from tasks.xql import XqlClient

CANARY_COLUMNS = ["feed", "strategy", "status", "leg", "latency_ms", "detail", "fix"]
LATENCY_VARIABLE = "socfeeds-canary-latency-ms"


class CanaryFailed(RuntimeError):
    """At least one feed's canary failed; `results` holds every feed's outcome."""

    def __init__(self, message: str, results: list[CanaryResult]) -> None:
        super().__init__(message)
        self.results = results


@flow(name="feed-canary", task_runner=concurrent_tasks())
def feed_canary(feeds: list[str] | None = None) -> list[CanaryResult]:
    """Write one synthetic, marked event into each feed in its real format and confirm it arrived.

    Each feed's strategy (siem or queue) and deadline come from settings. All feeds run at once;
    the run ends Failed if any feed fails, naming the leg (write, notification, collection,
    delivery, backup) and the fix. Emits socfeeds.canary.passed / socfeeds.canary.failed per feed.

    Args:
        feeds: Feed names from settings; None means every feed.
    """
    run = start_run(feeds)
    run_tag = (runtime.flow_run.id or uuid.uuid4().hex)[:8]
    writer = writer_clients(run.aws, run.settings, run_tag)
    wants_siem = run.firehose_feeds or any(run.settings.s3_feeds[n].canary_strategy == "siem" for n in run.s3_feeds)
    xql = XqlClient.from_settings(run.settings) if wants_siem else None
    futures: list[tuple[str, PrefectFuture[list[CanaryResult]]]] = [
        (f"canary[{name}]", canary_feed.submit(run.aws, writer, xql, run.settings, name, run_tag))
        for name in run.feeds]
    results, errors = gather(futures)
    history = record_latencies(results, run.settings.canary.latency_history)
    for result in results:
        resource = {"prefect.resource.id": f"socfeeds.feed.{result.feed}", "prefect.resource.name": result.feed}
        emit_event(event=f"socfeeds.canary.{result.status}", resource=resource,
                   payload={"leg": result.leg, "latency_ms": result.latency_ms, "detail": result.detail,
                            "fix": result.fix, "median_latency_ms": history.get(result.feed)})
    failed = [r for r in results if not r.passed]
    summary = f"feed-canary: {len(results) - len(failed)} of {len(results)} feeds passed"
    publish("feed-canary", summary, results, CANARY_COLUMNS)
    if errors:
        raise StepsFailed("canary steps crashed:\n" + "\n".join(f"{label}: {error}" for label, error in errors))
    if failed:
        raise CanaryFailed(summary + ":\n" + "\n".join(
            f"{r.feed}: {r.leg} leg failed: {r.detail} -> {r.fix}" for r in failed), results)
    return results


def record_latencies(results: list[CanaryResult], keep: int) -> dict[str, int]:
    """Append today's latencies to the history variable; returns each feed's median, so drift shows."""
    history: dict[str, list[int]] = dict(Variable.get(LATENCY_VARIABLE, default={}) or {})
    for result in results:
        if result.latency_ms is not None:
            history[result.feed] = [*history.get(result.feed, []), result.latency_ms][-keep:]
    Variable.set(LATENCY_VARIABLE, history, overwrite=True)
    medians = {feed: int(statistics.median(values)) for feed, values in history.items() if values}
    get_run_logger().info("canary latency medians (ms, last %d runs): %s", keep, medians)
    return medians
