"""The bucket -> queue notification: merged into the bucket's configuration, never overwriting others.

S3 keeps one notification configuration per bucket and a write replaces it whole, so socfeeds reads
it, replaces only its own entry, and writes back everything else it read (EventBridge delivery
included). It refuses, with the other entry named, only when another consumer's entry truly overlaps
ours, which S3 would reject anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from socfeeds.arns import Arns
from socfeeds.aws import AwsClients
from socfeeds.errors import OnCallError
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor, Status
from socfeeds.settings import S3Feed, Settings, canary_key_prefix, log_key_prefix
from tasks._task import aws_task
from tasks.buckets import bucket_exists

EVENTS = ["s3:ObjectCreated:*"]
TARGET_KEYS = {
    "QueueConfigurations": "QueueArn",
    "TopicConfigurations": "TopicArn",
    "LambdaFunctionConfigurations": "LambdaFunctionArn",
}


class NotificationOverlap(RuntimeError, OnCallError):
    """Another consumer's entry overlaps ours (event types and key filters), so S3 would reject the merge."""


def notification_id(feed_name: str) -> str:
    return f"socfeeds-{feed_name}"


def _filter_rules(entry: Mapping[str, Any]) -> dict[str, str]:
    rules = entry.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return {str(r["Name"]).lower(): str(r["Value"]) for r in rules}


def _is_object_created(entry: dict[str, Any]) -> bool:
    return any(str(e).startswith("s3:ObjectCreated:") for e in entry.get("Events", []))


def _serves_feed(entry: dict[str, Any], queue_arn: str) -> bool:
    """An entry that already delivers every new object to the feed's queue (ours, or adopted)."""
    return entry.get("QueueArn") == queue_arn and "s3:ObjectCreated:*" in entry.get("Events", []) \
        and not _filter_rules(entry)


def _event_types_overlap(a: str, b: str) -> bool:
    """A trailing * stands for every type under it (s3:ObjectCreated:* covers s3:ObjectCreated:Put)."""
    return a == b or any(x.endswith("*") and y.startswith(x[:-1]) for x, y in ((a, b), (b, a)))


def overlaps(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether S3 would refuse notification entries a and b in one configuration.

    They overlap when some object event could match both: an event type in common (wildcards
    included), prefixes of which one starts the other, and suffixes of which one ends the other; a
    missing prefix or suffix is "" and so overlaps every other. Rule and examples: Amazon S3 User
    Guide, "Configuring event notifications using object key name filtering",
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-how-to-filtering.html
    """
    rules_a, rules_b = _filter_rules(a), _filter_rules(b)
    prefix_a, prefix_b = rules_a.get("prefix", ""), rules_b.get("prefix", "")
    suffix_a, suffix_b = rules_a.get("suffix", ""), rules_b.get("suffix", "")
    return (any(_event_types_overlap(x, y) for x in a.get("Events", []) for y in b.get("Events", []))
            and (prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a))
            and (suffix_a.endswith(suffix_b) or suffix_b.endswith(suffix_a)))


def notification_document(answer: Mapping[str, Any]) -> dict[str, Any]:
    """GetBucketNotificationConfiguration's answer as Put takes it back: only boto3's ResponseMetadata dropped.

    Every other member is kept because a member left out of the write is switched off (an answer's
    `EventBridgeConfiguration: {}` means EventBridge delivery is on).
    """
    return {k: v for k, v in answer.items() if k != "ResponseMetadata"}


def read_configuration(aws: AwsClients, bucket: str) -> dict[str, Any]:
    return notification_document(aws.s3.get_bucket_notification_configuration(Bucket=bucket))


def _describe(entry: Mapping[str, Any]) -> str:
    rules = _filter_rules(entry)
    return ", ".join([*entry.get("Events", []), *(f"{name} {value!r}" for name, value in sorted(rules.items()))])


def merged_configuration(current: Mapping[str, Any], feed_queue_arn: str, our_id: str) -> dict[str, Any] | None:
    """The configuration to write: everything in `current` as it was, plus our entry in place of any older one.

    Pure, so the merge is tested on recorded AWS answers (the emulator does not round-trip EventBridge).
    None when an entry already delivers every new object to the queue; NotificationOverlap, naming the
    other entry, when one that S3 would reject next to ours is there.
    """
    document = notification_document(current)
    queues = document.get("QueueConfigurations", [])
    if any(_serves_feed(e, feed_queue_arn) for e in queues):
        return None
    adoptable = [e for e in queues if e.get("QueueArn") == feed_queue_arn and _is_object_created(e)
                 and e.get("Id") != our_id]
    if adoptable:  # another owner's entry already aims at the queue: widen its events, keep its Id and filter
        widened = {**adoptable[0], "Events": EVENTS}
        return {**document, "QueueConfigurations": [widened if e is adoptable[0] else e for e in queues
                                                    if e is adoptable[0] or e.get("Id") != our_id]}
    ours = {"Id": our_id, "QueueArn": feed_queue_arn, "Events": EVENTS}
    for kind, target_key in TARGET_KEYS.items():
        for entry in document.get(kind, []):
            if entry.get("Id") != our_id and overlaps(entry, ours):
                raise NotificationOverlap(
                    f"notification {entry.get('Id')!r} already sends object-created events to "
                    f"{entry.get(target_key)} ({_describe(entry)}); S3 rejects overlapping configurations. Fix: "
                    f"fan out through SNS or EventBridge, or remove that entry, then rerun provision-feeds"
                )
    queues = [e for e in document.get("QueueConfigurations", []) if e.get("Id") != our_id]
    return {**document, "QueueConfigurations": [*queues, ours]}


@aws_task("ensure-notification")
def ensure_notification(aws: AwsClients, settings: Settings, feed_name: str, dry_run: bool) -> list[Change]:
    """Every bucket of the feed notifies its queue."""
    feed = settings.s3_feeds[feed_name]
    return [change for bucket in feed.buckets
            for change in _ensure_bucket_notification(aws, settings, feed_name, bucket, dry_run)]


def _ensure_bucket_notification(aws: AwsClients, settings: Settings, feed_name: str, bucket: str,
                                dry_run: bool) -> list[Change]:
    feed = settings.s3_feeds[feed_name]
    queue_arn = Arns(settings.region, settings.account_id).queue(feed.queue)
    changes = ChangesFor(feed_name, f"s3://{bucket} notification", dry_run)
    config = read_configuration(aws, bucket) if bucket_exists(aws, bucket) else {}
    try:
        merged = merged_configuration(config, queue_arn, notification_id(feed_name))
    except NotificationOverlap as overlap:
        raise NotificationOverlap(f"s3://{bucket}: {overlap}") from overlap
    if merged is None:
        return changes.changes
    others = len(merged["QueueConfigurations"]) - 1
    adopted = next((e["Id"] for e in merged["QueueConfigurations"]
                    if e.get("QueueArn") == queue_arn and e.get("Id") != notification_id(feed_name)), None)
    adoption = f" (adopted entry {adopted!r}, events widened)" if adopted else ""
    action = f"s3:ObjectCreated:* -> {feed.queue}{adoption}"
    changes.make("notify queue", f"{action}; {others} other entries kept",
                 lambda: aws.s3.put_bucket_notification_configuration(
                     Bucket=bucket, NotificationConfiguration=merged))  # type: ignore[arg-type]
    return changes.changes


def notifies(aws: AwsClients, bucket: str, queue_arn: str, key: str) -> bool:
    """Whether a new object at `key` would be announced on the queue (an entry for object-created events whose
    prefix and suffix filters match the key)."""
    if not bucket_exists(aws, bucket):
        return False
    for entry in read_configuration(aws, bucket).get("QueueConfigurations", []):
        rules = _filter_rules(entry)
        if entry.get("QueueArn") == queue_arn and _is_object_created(entry) and key.startswith(
                rules.get("prefix", "")) and key.endswith(rules.get("suffix", "")):
            return True
    return False


def _hides_logs(entry: dict[str, Any], feed_name: str, feed: S3Feed, account_id: str) -> str | None:
    """A filter that keeps real log keys, or the canary's own prefix, away from the queue."""
    rules = _filter_rules(entry)
    prefix = rules.get("prefix", "")
    logs, canary = log_key_prefix(feed, account_id), canary_key_prefix(feed_name)
    if prefix and not logs.startswith(prefix):
        return f"prefix filter {prefix!r} hides log keys under {logs or 'any prefix'!r}"
    if prefix and not canary.startswith(prefix):
        return f"prefix filter {prefix!r} hides the canary's objects under {canary!r} (the canary would fail)"
    if rules.get("suffix"):
        return f"suffix filter {rules['suffix']!r} may hide log objects"
    return None


def _repair(config: dict[str, Any], queue_arn: str, feed_name: str, fix: str) -> str:
    """The fix verify prints is what provision would do: `fix` when it can add the entry, else the manual step."""
    try:
        merged_configuration(config, queue_arn, notification_id(feed_name))
    except NotificationOverlap as overlap:
        return f"provision-feeds cannot add it: {overlap}"
    return fix


@aws_task("check-notification")
def check_notification(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    feed = settings.s3_feeds[feed_name]
    return [finding for bucket in feed.buckets for finding in _check_bucket_notification(aws, settings, feed_name,
                                                                                           bucket)]


def _check_bucket_notification(aws: AwsClients, settings: Settings, feed_name: str, bucket: str) -> list[Finding]:
    feed = settings.s3_feeds[feed_name]
    queue_arn = Arns(settings.region, settings.account_id).queue(feed.queue)
    check = FindingsFor(feed_name, f"s3://{bucket} notification")
    fix = "run provision-feeds for this feed"
    if not bucket_exists(aws, bucket):
        check.add("notification", Status.FAIL, "bucket missing, so nothing notifies the queue", fix)
        return check.findings
    config = read_configuration(aws, bucket)
    entries = [e for e in config.get("QueueConfigurations", [])
               if e.get("QueueArn") == queue_arn and _is_object_created(e)]
    if not check.expect("notification", bool(entries), f"{len(entries)} object-created entries to {feed.queue}",
                        f"new objects do not reach {feed.queue}: {_repair(config, queue_arn, feed_name, fix)}"):
        return check.findings
    all_events = any("s3:ObjectCreated:*" in e.get("Events", []) for e in entries)
    check.expect("events", all_events, "s3:ObjectCreated:*" if all_events else
                 f"only {sorted({ev for e in entries for ev in e['Events']})}", fix)
    hidden = [(e, h) for e in entries if (h := _hides_logs(e, feed_name, feed, settings.account_id))]
    foreign = [str(e.get("Id")) for e, _ in hidden if e.get("Id") != notification_id(feed_name)]
    check.expect("filter", not hidden, "; ".join(h for _, h in hidden) or "no filter hides log keys",
                 f"remove the filter from notification {', '.join(foreign)} where its owner writes it (provision-feeds "
                 "adopts entries of other owners as they are)" if foreign else fix)
    return check.findings
