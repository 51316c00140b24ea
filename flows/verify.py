"""verify-feeds: read-only checks of every selected feed, one row per check, Failed if any fails."""

from __future__ import annotations

from prefect import flow
from prefect.futures import PrefectFuture

import tasks.rds  # noqa: F401 (registers the RDS and CloudFront source wiring)
from flows._common import concurrent_tasks, gather, publish, start_run
from socfeeds.report import Finding, Status
from tasks.buckets import check_bucket
from tasks.canary import check_canary_writer
from tasks.firehose import check_cluster_logging, check_delivery_stream, check_subscription
from tasks.kms import check_key_policies
from tasks.notifications import check_notification
from tasks.queues import check_queue
from tasks.reader import check_reader
from tasks.sources import check_source

FINDING_COLUMNS = ["feed", "resource", "check", "status", "detail", "fix"]
FEED_CHECKS = (check_bucket, check_queue, check_notification, check_source)
FIREHOSE_FEED_CHECKS = (check_cluster_logging, check_delivery_stream, check_subscription)


class ChecksFailed(RuntimeError):
    """At least one check failed; `findings` holds the whole report."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings


@flow(name="verify-feeds", task_runner=concurrent_tasks())
def verify_feeds(feeds: list[str] | None = None) -> list[Finding]:
    """Check each S3 feed's bucket, queue, notification and source, the EKS feed's logging, stream and
    subscription, and the XSIAM reader's grants.

    Changes nothing. Publishes a table artifact and ends Failed when any check fails, so
    automations can alert on it.

    Args:
        feeds: Feed names from settings; None means every feed.
    """
    run = start_run(feeds)
    checks: list[tuple[str, PrefectFuture[list[Finding]]]] = [
        ("check-reader", check_reader.submit(run.aws, run.settings)),
        ("check-canary-writer", check_canary_writer.submit(run.aws, run.settings)),
        ("check-key-policies", check_key_policies.submit(run.aws, run.settings))]
    for name in run.s3_feeds:
        checks += [(f"{check.name}[{name}]", check.submit(run.aws, run.settings, name))
                   for check in FEED_CHECKS]
    for name in run.firehose_feeds:
        checks += [(f"{check.name}[{name}]", check.submit(run.aws, run.settings, name))
                   for check in FIREHOSE_FEED_CHECKS]
    findings, errors = gather(checks)
    findings += [Finding(feed=feed, resource=label, check="check ran", status=Status.FAIL, detail=error,
                         fix="see the task run's log; the check itself could not finish")
                 for feed, label, error in ((label.partition("[")[2].rstrip("]") or "reader", label, error)
                                            for label, error in errors)]
    failed = [f for f in findings if f.status is Status.FAIL]
    warned = sum(f.status is Status.WARN for f in findings)
    summary = f"verify-feeds: {len(findings)} checks, {len(failed)} failed, {warned} warnings"
    publish("verify-feeds", summary, findings, FINDING_COLUMNS)
    if failed:
        raise ChecksFailed(summary + ":\n" + "\n".join(
            f"{f.feed} {f.resource} {f.check}: {f.detail} -> {f.fix}" for f in failed), findings)
    return findings
