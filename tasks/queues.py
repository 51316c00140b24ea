"""Feed queues: encrypted, dead-lettered, and open only to S3 notifications from the feed's bucket."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from socfeeds import policies
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, absent_on
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor, Status
from socfeeds.settings import S3Feed, Settings
from tasks._task import aws_task
from tasks.kms import check_key_use, reader
from tasks.queue_activity import check_activity

QUEUE_ABSENT = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
DLQ_RETENTION_SECONDS = 1_209_600  # the SQS maximum: time to notice and redrive


def _encryption(feed: S3Feed) -> dict[str, str]:
    if feed.kms_key_arn:
        return {"KmsMasterKeyId": feed.kms_key_arn}
    return {"SqsManagedSseEnabled": "true"}


def dlq_attributes(feed: S3Feed, settings: Settings) -> dict[str, str]:
    """Kept longest, and a dead-letter queue for the feed queue alone (RedriveAllowPolicy byQueue)."""
    source = Arns(settings.region, settings.account_id).queue(feed.queue)
    return {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS), **_encryption(feed),
            "RedriveAllowPolicy": json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [source]})}


def bucket_arns(feed: S3Feed, settings: Settings) -> list[str]:
    arns = Arns(settings.region, settings.account_id)
    return [arns.bucket(bucket) for bucket in feed.buckets]


def queue_attributes(feed: S3Feed, settings: Settings, current_policy: str | None = None) -> dict[str, str]:
    """Production's queue shape (feeds.md), plus the dead-letter queue production lacks. The policy is the
    current one with socfeeds' statement merged in: other owners' statements are kept."""
    arns = Arns(settings.region, settings.account_id)
    policy = policies.merged_queue_policy(policies.parse(current_policy), arns.queue(feed.queue),
                                          bucket_arns(feed, settings), settings.account_id,
                                          policies.replay_senders(settings))
    return {
        "VisibilityTimeout": "30",
        "MessageRetentionPeriod": "345600",
        "DelaySeconds": "0",
        "MaximumMessageSize": "262144",
        **_encryption(feed),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": arns.queue(feed.dlq_name),
                                     "maxReceiveCount": feed.max_receive_count}),
        "Policy": json.dumps(policy),
    }


def _attributes(aws: AwsClients, url: str, name: str) -> dict[str, str]:
    answer = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[name])  # type: ignore[list-item]
    return {str(k): str(v) for k, v in answer.get("Attributes", {}).items()}


def queue_url(aws: AwsClients, name: str) -> str | None:
    answer = absent_on(QUEUE_ABSENT, aws.sqs.get_queue_url, QueueName=name)
    return str(answer["QueueUrl"]) if answer else None


def _same(name: str, current: str | None, wanted: str) -> bool:
    """Attribute equality as SQS means it (JSON attributes compare as documents)."""
    if current is None:
        return False
    if name in {"Policy", "RedrivePolicy", "RedriveAllowPolicy"}:
        return bool(policies.canonical(_json_with_str_numbers(current))
                    == policies.canonical(_json_with_str_numbers(wanted)))
    return current == wanted


def _json_with_str_numbers(text: str) -> Any:
    return json.loads(text, parse_int=str)


def _ensure_queue(aws: AwsClients, changes: ChangesFor, name: str,
                  wanted_for: Callable[[str | None], dict[str, str]]) -> None:
    """`wanted_for(current policy)`: the declared attributes, the policy merged into what is there."""
    url = queue_url(aws, name)
    if url is None:
        wanted = wanted_for(None)
        changes.make("create queue", f"{name} with {', '.join(sorted(wanted))}",
                     lambda: aws.sqs.create_queue(QueueName=name, Attributes=wanted),  # type: ignore[arg-type]
                     wanted={"queue": name, "attributes": wanted})
        return
    current = _attributes(aws, url, "All")
    wanted = wanted_for(current.get("Policy"))
    drift = {k: v for k, v in wanted.items() if not _same(k, current.get(k), v)}
    if current.get("KmsMasterKeyId") and "KmsMasterKeyId" not in wanted:
        drift["KmsMasterKeyId"] = ""  # back to SSE-SQS: SQS drops the key only when told to
    if drift:
        shown = [_policy_change(current.get("Policy"), drift[k]) if k == "Policy" else k for k in sorted(drift)]
        changes.make("set queue attributes", f"{name}: {', '.join(shown)}",
                     lambda: aws.sqs.set_queue_attributes(QueueUrl=url, Attributes=drift),  # type: ignore[arg-type]
                     wanted={"queue": name, "attributes": drift})


def _policy_change(current: str | None, wanted: str) -> str:
    return f"Policy ({policies.describe_merge(policies.parse(current), policies.parse(wanted))})"


@aws_task("ensure-queues")
def ensure_queues(aws: AwsClients, settings: Settings, feed_name: str, dry_run: bool) -> list[Change]:
    """The dead-letter queue first (the redrive policy names it), then the feed queue."""
    feed = settings.s3_feeds[feed_name]
    changes = ChangesFor(feed_name, f"sqs:{feed.queue}", dry_run)
    _ensure_queue(aws, changes, feed.dlq_name, lambda _: dlq_attributes(feed, settings))
    _ensure_queue(aws, changes, feed.queue, lambda policy: queue_attributes(feed, settings, policy))
    return changes.changes


def _queue_policy_fix(current: str | None, feed: S3Feed, settings: Settings) -> str:
    """provision keeps other owners' statements: what it cannot fix is named for their owner to fix."""
    merged = policies.parse(queue_attributes(feed, settings, current)["Policy"])
    remaining = policies.queue_policy_problems(merged, Arns(settings.region, settings.account_id).queue(feed.queue),
                                               bucket_arns(feed, settings), settings.account_id,
                                               policies.replay_senders(settings))
    if not remaining:
        return "run provision-feeds for this feed (it adds its statement and keeps the others)"
    return ("provision-feeds keeps other owners' statements, so fix these where they are written (the Terraform "
            f"that owns the queue policy): {'; '.join(remaining)}")


def _depth(attributes: dict[str, str]) -> int:
    return int(attributes.get("ApproximateNumberOfMessages", "0"))


@aws_task("check-queue")
def check_queue(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    feed = settings.s3_feeds[feed_name]
    arns = Arns(settings.region, settings.account_id)
    fix = "run provision-feeds for this feed"
    check = FindingsFor(feed_name, f"sqs:{feed.queue}")
    url = queue_url(aws, feed.queue)
    if not check.expect("exists", url is not None, "queue exists", f"queue {feed.queue} is missing: {fix}"):
        return check.findings
    assert url is not None
    attributes = _attributes(aws, url, "All")

    sse = attributes.get("SqsManagedSseEnabled") == "true" or bool(attributes.get("KmsMasterKeyId"))
    check.expect("encryption", sse, "SSE on" if sse else "SSE off", fix)
    key = attributes.get("KmsMasterKeyId")
    wanted_key = feed.kms_key_arn or "SSE-SQS"
    check.expect("encryption key", key != "alias/aws/sqs", "AWS-managed alias/aws/sqs silently drops S3 notifications"
                 if key == "alias/aws/sqs" else f"{key or 'SSE-SQS'} (settings: {wanted_key})",
                 f"{fix} (it puts the queue back on {wanted_key}, which S3 can notify)")
    if key and key != "alias/aws/sqs":
        check_key_use(aws, settings, check, key, [reader(settings)], [policies.s3_notification_key_statement()],
                      feed.kms_key_arn)

    redrive = json.loads(attributes.get("RedrivePolicy", "{}"))
    target = redrive.get("deadLetterTargetArn")
    dlq_url = queue_url(aws, feed.dlq_name)
    wired = target == arns.queue(feed.dlq_name) and dlq_url is not None
    check.expect("dead-letter queue", wired,
                 f"redrive to {target or 'nothing'} after {redrive.get('maxReceiveCount', '-')} receives",
                 f"{fix}: dead-letter queue {feed.dlq_name} with maxReceiveCount {feed.max_receive_count}")

    policy, senders = policies.parse(attributes.get("Policy")), policies.replay_senders(settings)
    problems = policies.queue_policy_problems(policy, arns.queue(feed.queue), bucket_arns(feed, settings),
                                              settings.account_id, senders)
    check.expect("queue policy", not problems,
                 "; ".join(problems) if problems else "only S3 from the feed's buckets and account may send",
                 _queue_policy_fix(attributes.get("Policy"), feed, settings))
    replays = policies.has_replay_statement(policy, arns.queue(feed.queue), senders)
    if senders:  # resolved settings name the flows' identity (every flow run)
        check.expect("replay sender", replays, f"{policies.REPLAY_SID}: {', '.join(senders)} may send (SendMessage "
                     f"only)" if replays else f"no {policies.REPLAY_SID} statement: replay-feed can send only on the "
                     "flows' own IAM grant, which the queue policy does not show",
                     f"run provision-feeds for this feed: it writes {policies.REPLAY_SID}, which lets replay-feed "
                     f"re-announce objects as {', '.join(senders)} and nobody else", failing=Status.WARN)

    depth = _depth(attributes)
    limit = settings.backlog.max_visible_messages
    check.expect("backlog", depth <= limit, f"{depth} messages waiting (limit {limit})",
                 "XSIAM is not keeping up or not reading: check the data source's status and the reader key",
                 failing=Status.WARN)
    check_activity(aws, check, feed.queue, settings.backlog, attributes)  # a stalled consumer shows by age
    if dlq_url is not None:
        dlq = _attributes(aws, dlq_url, "All")
        wanted_allow = dlq_attributes(feed, settings)["RedriveAllowPolicy"]
        check.expect("dead-letter source", _same("RedriveAllowPolicy", dlq.get("RedriveAllowPolicy"), wanted_allow),
                     f"{feed.dlq_name} accepts dead letters only from {feed.queue}" if _same(
                         "RedriveAllowPolicy", dlq.get("RedriveAllowPolicy"), wanted_allow) else
                     f"{feed.dlq_name} redrive allow policy: {dlq.get('RedriveAllowPolicy', 'not set (any queue)')}",
                     fix)
        dead = _depth(dlq)
        dlq_limit = settings.backlog.max_dlq_messages
        check.expect("dead letters", dead <= dlq_limit, f"{dead} messages in {feed.dlq_name} (limit {dlq_limit})",
                     "XSIAM failed these objects 4 times: inspect them, fix the cause, then redrive "
                     f"(aws sqs start-message-move-task --source-arn {arns.queue(feed.dlq_name)})")
    return check.findings
