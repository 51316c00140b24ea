"""audit-feeds: do the platform's real logs reach XSIAM? A random sample of each feed's window, found or not."""

from __future__ import annotations

from typing import cast

from prefect import flow
from prefect.events import Event, emit_event

from flows._common import (
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
from socfeeds.report import STATUS_ORDER, Status
from socfeeds.settings import SettingsError
from tasks.audit import FeedAudit, audit_feed, unaudited
from tasks.xql import XqlClient, XqlError

AUDIT_COLUMNS = ["status", "fix", "feed", "objects", "sampled", "found", "completeness", "interval", "staleness",
                 "missing"]
FAILURE_COLUMNS = ["feed", "fix", "completeness", "interval", "staleness", "missing"]
FAILURES_ARTIFACT = "audit-feeds-failures"
EVENT = "socfeeds.audit.completed"


def explain(result: FeedAudit) -> str:
    return one_line(f"{result.feed}: {result.completeness} complete ({result.interval}), newest event "
                    f"{result.staleness} old -> {result.fix}")


def emit_completed(result: FeedAudit, account: str) -> Event | None:
    """The feed's audit as history: feed-slos and the dead-man's switch read it."""
    return emit_event(event=EVENT, resource={"prefect.resource.id": f"socfeeds.feed.{result.feed}",
                                             "prefect.resource.name": result.feed, "socfeeds.account": account},
                      payload={"objects": result.objects, "sampled": result.sampled, "found": result.found,
                               "completeness": result.found / result.sampled if result.sampled else None,
                               "ci_low": result.ci_low, "ci_high": result.ci_high,
                               "staleness_seconds": result.staleness_seconds, "missing_keys": result.missing_keys,
                               "account": account})


audit_task = failing_when(audit_feed, lambda results: [explain(r) for r in results if r.status is Status.FAIL])


@flow(name="audit-feeds", task_runner=concurrent_tasks())
@leaves_a_record("audit-feeds")
def audit_feeds(feeds: list[str] | None = None, window_hours: float | None = None, sample: int | None = None,
                accounts: list[str] | None = None) -> list[FeedAudit]:
    """Sample each feed's real log objects of the last `window_hours` (EKS: events of its log group), find their
    records in XSIAM, and estimate completeness with a 95% interval and staleness, per feed.

    Read-only. A feed fails when its interval's upper bound is below its `slo.completeness` or its newest event in
    XSIAM is older than `slo.staleness_seconds`; the fix names replay-feed for the window. Publishes the
    `audit-feeds` table (failures first) and `audit-feeds-failures`, emits `socfeeds.audit.completed` per feed,
    and ends Failed naming each failing feed.

    Args:
        feeds: Feed names from settings; None means every feed.
        window_hours: How far back objects are listed; default `audit.window_hours` (24).
        sample: Objects drawn at random per feed; default `audit.sample` (50).
        accounts: Fleet accounts (id, name, or id/region); None means every account.
    """
    fleet = start_fleet(feeds, accounts)
    if fleet.fans_out:
        parameters = {"feeds": feeds, "window_hours": window_hours, "sample": sample}
        return cast(list[FeedAudit], fleet_result("audit-feeds", fleet, parameters, audit_feeds))
    run = target_run(fleet, feeds, "audit-feeds")
    hours = window_hours if window_hours is not None else run.settings.audit.window_hours
    size = sample if sample is not None else run.settings.audit.sample
    if not 0 < hours <= 24 * 14:
        raise SettingsError(f"window_hours: {hours} is not between 0 and 336 (14 days, the longest window audited)")
    if size < 1:
        raise SettingsError(f"sample: {size} objects per feed samples nothing; give at least 1 (default 50)")
    audited = [name for name in run.feeds if name not in run.delivering_feeds]  # the archive account audits those
    try:
        xql = XqlClient.from_settings(run.settings)
    except XqlError as error:
        raise SettingsError(f"audit-feeds finds records through XSIAM's XQL API, which is not configured: {error}") \
            from None
    history = prefetch_history(run.settings, audited)  # read while the feeds are audited
    with xql:
        results, errors = gather((f"audit[{name}]", audit_task.submit(run.aws, xql, run.settings, name, hours, size))
                                 for name in audited)
    account = run.settings.account_id
    emitted = [emit_completed(result, account) for result in results]
    results += [unaudited(feed_of(label), account, error) for label, error in errors]
    results.sort(key=lambda r: STATUS_ORDER[r.status])
    failed = [r for r in results if r.status is Status.FAIL]
    summary = f"audit-feeds{run.at}: {len(failed)} of {len(results)} feeds failed over the last {hours:g} h"
    publish("audit-feeds", summary, results, AUDIT_COLUMNS)
    publish_failures(FAILURES_ARTIFACT, summary, failed, FAILURE_COLUMNS,
                     f"All {len(results)} feeds complete and fresh within their objectives.")
    publish_feed_slos(run.settings, audited, observed(emitted), history)
    publish_feed_status("audit-feeds", run.target, {
        r.feed: (r.status.value, "" if r.status is Status.PASS else explain(r)) for r in results})
    if failed:
        return failed_with(f"{summary}: {'; '.join(explain(r) for r in failed)}; see artifact {FAILURES_ARTIFACT}",
                           results)
    return results
