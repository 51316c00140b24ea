"""The bucket -> queue notification: merged into the bucket's configuration, never overwriting others.

S3 keeps one notification configuration per bucket and a write replaces it whole, so socfeeds reads
it, replaces only its own entry, and refuses (with the other entry named) when another consumer's
entry for object-created events would overlap, which S3 would reject anyway.
"""

from __future__ import annotations

from typing import Any

from socfeeds.arns import Arns
from socfeeds.aws import AwsClients
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor, Status
from socfeeds.settings import S3Feed, Settings, log_key_prefix
from tasks._task import aws_task
from tasks.buckets import bucket_exists

EVENTS = ["s3:ObjectCreated:*"]
TARGET_KEYS = {
    "QueueConfigurations": "QueueArn",
    "TopicConfigurations": "TopicArn",
    "LambdaFunctionConfigurations": "LambdaFunctionArn",
}


class NotificationOverlap(RuntimeError):
    """Another consumer already receives this bucket's object-created events with an overlapping filter."""


def notification_id(feed_name: str) -> str:
    return f"socfeeds-{feed_name}"


def _filter_rules(entry: dict[str, Any]) -> dict[str, str]:
    rules = entry.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return {str(r["Name"]).lower(): str(r["Value"]) for r in rules}


def _is_object_created(entry: dict[str, Any]) -> bool:
    return any(str(e).startswith("s3:ObjectCreated:") for e in entry.get("Events", []))


def _serves_feed(entry: dict[str, Any], queue_arn: str) -> bool:
    """An entry that already delivers every new object to the feed's queue (ours, or adopted)."""
    return entry.get("QueueArn") == queue_arn and "s3:ObjectCreated:*" in entry.get("Events", []) \
        and not _filter_rules(entry)


def read_configuration(aws: AwsClients, bucket: str) -> dict[str, list[dict[str, Any]]]:
    answer = aws.s3.get_bucket_notification_configuration(Bucket=bucket)
    return {k: [dict(e) for e in v] for k, v in answer.items() if k in TARGET_KEYS}  # type: ignore[attr-defined]


@aws_task("ensure-notification")
def ensure_notification(aws: AwsClients, settings: Settings, feed_name: str, dry_run: bool) -> list[Change]:
    feed = settings.s3_feeds[feed_name]
    queue_arn = Arns(settings.region, settings.account_id).queue(feed.queue)
    changes = ChangesFor(feed_name, f"s3://{feed.bucket} notification", dry_run)
    config = read_configuration(aws, feed.bucket) if bucket_exists(aws, feed.bucket) else {}
    if any(_serves_feed(e, queue_arn) for e in config.get("QueueConfigurations", [])):
        return changes.changes

    ours_id = notification_id(feed_name)
    for kind, target_key in TARGET_KEYS.items():
        for entry in config.get(kind, []):
            if entry.get("Id") != ours_id and _is_object_created(entry):
                raise NotificationOverlap(
                    f"s3://{feed.bucket}: notification {entry.get('Id')!r} already sends object-created events "
                    f"to {entry.get(target_key)}; S3 rejects overlapping configurations. Fix: fan out "
                    f"through SNS or EventBridge, or remove that entry, then rerun provision-feeds"
                )
    queues = [e for e in config.get("QueueConfigurations", []) if e.get("Id") != ours_id]
    queues.append({"Id": ours_id, "QueueArn": queue_arn, "Events": EVENTS})
    merged = {**config, "QueueConfigurations": queues}
    changes.make("notify queue", f"s3:ObjectCreated:* -> {feed.queue}; {len(queues) - 1} other entries kept",
                 lambda: aws.s3.put_bucket_notification_configuration(
                     Bucket=feed.bucket, NotificationConfiguration=merged))  # type: ignore[arg-type]
    return changes.changes


def _hides_logs(entry: dict[str, Any], feed: S3Feed, account_id: str) -> str | None:
    rules = _filter_rules(entry)
    prefix = rules.get("prefix", "")
    logs = log_key_prefix(feed, account_id)
    if prefix and not logs.startswith(prefix):
        return f"prefix filter {prefix!r} hides log keys under {logs or 'any prefix'!r}"
    if rules.get("suffix"):
        return f"suffix filter {rules['suffix']!r} may hide log objects"
    return None


@aws_task("check-notification")
def check_notification(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    feed = settings.s3_feeds[feed_name]
    queue_arn = Arns(settings.region, settings.account_id).queue(feed.queue)
    check = FindingsFor(feed_name, f"s3://{feed.bucket} notification")
    fix = "run provision-feeds for this feed"
    if not bucket_exists(aws, feed.bucket):
        check.add("notification", Status.FAIL, "bucket missing, so nothing notifies the queue", fix)
        return check.findings
    entries = [e for e in read_configuration(aws, feed.bucket).get("QueueConfigurations", [])
               if e.get("QueueArn") == queue_arn and _is_object_created(e)]
    if not check.expect("notification", bool(entries), f"{len(entries)} object-created entries to {feed.queue}",
                        f"new objects do not reach {feed.queue}: {fix}"):
        return check.findings
    all_events = any("s3:ObjectCreated:*" in e.get("Events", []) for e in entries)
    check.expect("events", all_events, "s3:ObjectCreated:*" if all_events else
                 f"only {sorted({ev for e in entries for ev in e['Events']})}", fix)
    hidden = [h for e in entries if (h := _hides_logs(e, feed, settings.account_id))]
    check.expect("filter", not hidden, "; ".join(hidden) or "no filter hides log keys", fix)
    return check.findings
