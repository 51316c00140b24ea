"""verify-feeds: read-only checks of every selected feed, one row per check, Failed if any fails."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from prefect import Task, flow

import tasks.rds  # noqa: F401 (registers the RDS and CloudFront source wiring)
from flows._common import (
    call_each,
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
from socfeeds.report import STATUS_ORDER, Finding, Status
from tasks.buckets import check_bucket
from tasks.canary import check_canary_writer
from tasks.firehose import check_cluster_logging, check_delivery_stream, check_subscription
from tasks.kms import check_key_policies
from tasks.notifications import check_notification
from tasks.queues import check_queue
from tasks.reader import check_reader
from tasks.sources import check_source

FINDING_COLUMNS = ["status", "fix", "feed", "resource", "check", "detail"]
FAILURE_COLUMNS = ["status", "fix", "feed", "resource", "check", "detail"]  # the fix on screen at any width
FAILURES_ARTIFACT = "verify-feeds-failures"
SHOWN_IN_MESSAGE = 3  # the state message stays one readable line; the artifact lists every failure
FEED_CHECKS = (check_bucket, check_queue, check_notification, check_source)
FIREHOSE_FEED_CHECKS = (check_cluster_logging, check_delivery_stream, check_subscription)


def explain(finding: Finding) -> str:
    """One failure as the on-call engineer reads it: where, what, the fix."""
    return one_line(f"{finding.feed} {finding.resource} {finding.check}: {finding.detail} -> {finding.fix}")


def failed_checks(findings: list[Finding]) -> list[str]:
    return [explain(f) for f in findings if f.status is Status.FAIL]


reader_check, writer_check, key_check = (failing_when(check, failed_checks)
                                         for check in (check_reader, check_canary_writer, check_key_policies))
feed_checks = [failing_when(check, failed_checks) for check in FEED_CHECKS]
source_check = feed_checks[FEED_CHECKS.index(check_source)]
firehose_feed_checks = [failing_when(check, failed_checks) for check in FIREHOSE_FEED_CHECKS]


@flow(name="verify-feeds", task_runner=concurrent_tasks())
@leaves_a_record("verify-feeds")
def verify_feeds(feeds: list[str] | None = None, accounts: list[str] | None = None) -> list[Finding]:
    """Check each S3 feed's bucket, queue, notification and source, the EKS feed's logging, stream and
    subscription, and the XSIAM reader's grants.

    Changes nothing. Publishes a table artifact (failures first) and a failures-only one, marks each
    check task with a failure Failed, and ends Failed with a one-line message when any check fails,
    so automations can alert on it.

    In fleet mode (several accounts), runs one child per account and publishes the coverage matrix.

    Args:
        feeds: Feed names from settings; None means every feed.
        accounts: Fleet accounts (id, name, or id/region); None means every account.
    """
    fleet = start_fleet(feeds, accounts)
    if fleet.fans_out:
        return cast(list[Finding], fleet_result("verify-feeds", fleet, {"feeds": feeds}, verify_feeds))
    run = target_run(fleet, feeds, "verify-feeds")
    checks: list[tuple[str, Task[..., list[Finding]], tuple[Any, ...]]] = [
        ("check-reader", reader_check, (run.aws, run.settings)),
        ("check-canary-writer", writer_check, (run.aws, run.settings)),
        ("check-key-policies", key_check, (run.aws, run.settings))]
    for name in run.s3_feeds:
        checks += [(f"{check.name}[{name}]", check, (run.aws, run.settings, name)) for check in feed_checks]
    for name in run.delivering_feeds:  # the bucket is another account's feed: here only the source is checked
        checks.append((f"check-source[{name}]", source_check, (run.aws, run.settings, name)))
    for name in run.firehose_feeds:
        checks += [(f"{check.name}[{name}]", check, (run.aws, run.settings, name)) for check in firehose_feed_checks]
    # a fleet account's checks are cells of its parent's matrix: plain calls, not a task run each (see call_each)
    findings, errors = call_each(checks) if run.target else gather(
        (label, check.submit(*args)) for label, check, args in checks)
    findings += [Finding(feed=feed, resource=label, check="check ran", status=Status.FAIL, detail=error,
                         fix="see the run's log (the check's task run; in a fleet, the account's run): the check "
                             "could not finish")
                 for feed, label, error in ((feed_of(label) or "reader", label, error)
                                            for label, error in errors)]
    findings.sort(key=lambda f: STATUS_ORDER[f.status])  # stable: check order within each status
    failed = [f for f in findings if f.status is Status.FAIL]
    warned = [f for f in findings if f.status is Status.WARN]
    summary = f"verify-feeds: {len(failed)} of {len(findings)} checks failed, {len(warned)} warnings"
    publish("verify-feeds", summary, findings, FINDING_COLUMNS)
    publish_failures(FAILURES_ARTIFACT, summary, [*failed, *warned], FAILURE_COLUMNS,
                     f"All {len(findings)} checks passed.")
    publish_feed_status("verify-feeds", run.target, {feed: worst(f for f in findings if f.feed == feed)
                                         for feed in dict.fromkeys(f.feed for f in findings)})
    if not failed:
        return findings
    shown = "; ".join(explain(f) for f in failed[:SHOWN_IN_MESSAGE])
    more = f"; and {len(failed) - SHOWN_IN_MESSAGE} more" if len(failed) > SHOWN_IN_MESSAGE else ""
    return failed_with(f"verify-feeds{run.at}: {len(failed)} of {len(findings)} checks failed: {shown}{more}; "
                       f"see artifact {FAILURES_ARTIFACT}", findings)


def worst(findings: Iterable[Finding]) -> tuple[str, str]:
    """A feed's cell in the fleet matrix: its worst status and the first such finding, in one line."""
    first = min(findings, key=lambda f: STATUS_ORDER[f.status])
    return first.status.value, "" if first.status is Status.PASS else explain(first)
