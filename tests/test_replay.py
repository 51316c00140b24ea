"""replay-feed: the window and feed refusals without servers; the notification against one moto sends for a real
put; the dead-letter queue redriven with none lost, a crash included; a dry run that sends nothing; and the audit's
gap closed end to end."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

import pytest
from conftest import Stack
from test_xsiam_standin import eventually

from deployments.local.stack import LocalXsiam
from flows._common import items_of
from flows.audit import audit_feeds
from flows.replay import ReplayResult, replay_feed
from socfeeds import formats, policies
from socfeeds.aws import AwsClients
from socfeeds.settings import Settings
from tasks.queues import ensure_queues, queue_url
from tasks.replay import (
    ReplayError,
    head_objects,
    move_by_hand,
    notification,
    redrive_dead_letters,
    replay_window,
    replayable_feed,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ACCOUNT = "123456789012"
QUEUE_ARN = f"arn:aws:sqs:eu-west-2:{ACCOUNT}:q"
FLOWS = f"arn:aws:iam::{ACCOUNT}:role/socfeeds-flows"


# --- without servers -------------------------------------------------------------------------------

@pytest.mark.parametrize(("start", "end", "field"), [
    (NOW - timedelta(hours=1), NOW - timedelta(hours=2), "end:"),
    (NOW - timedelta(days=15), None, "start: the window"),
    (NOW + timedelta(hours=1), NOW + timedelta(hours=2), "start:"),
])
def test_a_window_that_cannot_be_right_is_refused_naming_the_field(start: datetime, end: datetime | None,
                                                                   field: str) -> None:
    with pytest.raises(ReplayError, match=field):
        replay_window(start, end, NOW)


def test_the_window_ends_now_by_default_and_a_naive_time_is_utc() -> None:
    assert replay_window(datetime(2026, 11, 28, 9, 0), None, NOW) == (NOW - timedelta(hours=3), NOW)


def test_only_an_s3_feed_of_this_account_is_replayed() -> None:
    settings = Settings(account_id=ACCOUNT, vpc_id="vpc-0abc12345678", eks_cluster_name="live",
                        xsiam={"firehose_url": "https://api-tenant.xdr.eu.paloaltonetworks.com/logs/v1/aws"})
    assert replayable_feed(settings, "cloudtrail").queue == settings.s3_feeds["cloudtrail"].queue
    with pytest.raises(ReplayError, match="feed: unknown S3 feed 'cloudtral'"):
        replayable_feed(settings, "cloudtral")
    with pytest.raises(ReplayError, match="feed: eks-control-plane reaches XSIAM through Firehose"):
        replayable_feed(settings, "eks-control-plane")


def test_verify_accepts_exactly_the_replay_statement_and_no_other_sender() -> None:
    doc = policies.merged_queue_policy(policies.document([]), QUEUE_ARN, ["arn:aws:s3:::b"], ACCOUNT, [FLOWS])
    assert [s["Sid"] for s in doc["Statement"]] == ["SocfeedsS3Notifications", "SocfeedsReplay"]
    assert policies.queue_policy_problems(doc, QUEUE_ARN, ["arn:aws:s3:::b"], ACCOUNT, [FLOWS]) == []
    assert policies.merged_queue_policy(doc, QUEUE_ARN, ["arn:aws:s3:::b"], ACCOUNT, [FLOWS]) == doc, "converges"
    widened = json.loads(json.dumps(doc))
    widened["Statement"][1]["Action"] = ["sqs:SendMessage", "sqs:ReceiveMessage"]
    other = json.loads(json.dumps(doc))
    other["Statement"][1]["Principal"] = {"AWS": f"arn:aws:iam::{ACCOUNT}:role/someone"}
    for forged in (widened, other):
        [problem] = policies.queue_policy_problems(forged, QUEUE_ARN, ["arn:aws:s3:::b"], ACCOUNT, [FLOWS])
        assert "SocfeedsReplay: lets" in problem and "forged notifications" in problem


# --- against the local stack -------------------------------------------------------------------------

def _drain(aws: AwsClients, url: str) -> list[str]:
    """Every body on a queue nobody else reads (received and deleted), until it holds none."""
    bodies: list[str] = []
    while True:
        messages = aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            if _held(aws, url) == 0:
                return bodies
            continue
        bodies += [m["Body"] for m in messages]
        aws.sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                                                            for n, m in enumerate(messages)])


def _held(aws: AwsClients, url: str) -> int:
    attributes = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return sum(int(value) for value in attributes.values())


def _queues(stack: Stack, settings: Settings, feed_name: str) -> tuple[str, str]:
    ensure_queues.fn(stack.aws, settings, feed_name, False)
    feed = settings.s3_feeds[feed_name]
    url, dlq = queue_url(stack.aws, feed.queue), queue_url(stack.aws, feed.dlq_name)
    assert url and dlq
    return url, dlq


def _shape(value: Any) -> Any:
    return {k: _shape(v) for k, v in value.items()} if isinstance(value, dict) else type(value).__name__


def test_the_notification_is_the_one_s3_sends_for_a_real_put(stack: Stack) -> None:
    """moto sends S3's notification for a real put; ours carries every field of it with the same values (the time
    and configuration id aside), and AWS's fields moto leaves out (requester, request ids, owner, sequencer)."""
    s3, sqs, settings = stack.client("s3"), stack.client("sqs"), stack.settings
    bucket, key = settings.s3_feeds["application-logs"].bucket, "logs/2026/11/28/a b+c=d%e/é.log"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": settings.region})
    url, _ = _queues(stack, settings, "application-logs")
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
        {"Id": "xsiam", "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]})
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"log": "x"}\n')
    [real] = [json.loads(body)["Records"][0] for body in _drain(stack.aws, url) if "Records" in body]

    [head], gone = head_objects(stack.aws, [(bucket, key)])
    ours = notification(head, settings.region, "owner-id", "AIDAEXAMPLE")["Records"][0]
    assert gone == [] and unquote_plus(ours["s3"]["object"]["key"]) == key
    for path in (("eventVersion",), ("eventSource",), ("awsRegion",), ("eventName",), ("s3", "s3SchemaVersion"),
                 ("s3", "bucket", "name"), ("s3", "bucket", "arn"), ("s3", "object", "key"), ("s3", "object", "size"),
                 ("s3", "object", "eTag")):
        mine, theirs = ours, real
        for step in path:
            mine, theirs = mine[step], theirs[step]
        assert mine == theirs, path
    assert _contains(_shape(ours), _shape(real)), "every field moto sends, with its type"
    assert ours["userIdentity"] == {"principalId": "AWS:AIDAEXAMPLE"}
    assert set(ours["responseElements"]) == {"x-amz-request-id", "x-amz-id-2"}
    assert ours["s3"]["bucket"]["ownerIdentity"] == {"principalId": "owner-id"}
    assert len(ours["s3"]["object"]["sequencer"]) == 18 and ours["eventTime"].endswith("Z")


def _contains(big: Any, small: Any) -> bool:
    """Every field of `small` is in `big`, with the same type, at every level."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _contains(big[k], v) for k, v in small.items())
    return bool(big == small)


class CrashingSqs:
    """The real SQS client, except that the process 'crashes' at its first DeleteMessageBatch."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def delete_message_batch(self, **_: Any) -> Any:
        raise SystemExit("crashed between send and delete")


class Crashing(AwsClients):
    @property
    def sqs(self) -> Any:
        return CrashingSqs(super().sqs)


def test_a_dead_letter_queue_is_redriven_with_none_lost_even_across_a_crash(stack: Stack) -> None:
    """moto has no StartMessageMoveTask, so this is the fallback: a crash between send and delete leaves the batch
    in both queues; the next redrive finishes, every body reaches the feed queue, the crashed batch twice at worst."""
    settings, sqs = stack.settings, stack.client("sqs")
    url, dlq = _queues(stack, settings, "cloudtrail")
    bodies = [json.dumps({"Records": [{"s3": {"object": {"key": f"k{n}"}}}]}) for n in range(23)]
    for first in range(0, len(bodies), 10):
        sqs.send_message_batch(QueueUrl=dlq, Entries=[{"Id": str(n), "MessageBody": b}
                                                      for n, b in enumerate(bodies[first:first + 10])])
    crashing = Crashing(stack.aws.session, stack.aws.region, stack.aws.endpoint_url)
    with pytest.raises(SystemExit):
        move_by_hand(crashing, dlq, url, time.monotonic() + 30, visibility_s=1)

    redrive = redrive_dead_letters.fn(stack.aws, settings, "cloudtrail")
    assert (redrive.method, redrive.left) == ("receive-send-delete", 0)
    assert redrive.moved == len(bodies), "the crashed batch was still in the DLQ and moved again"
    received = Counter(_drain(stack.aws, url))
    assert set(received) == set(bodies), "none lost, none invented"
    assert sum(received.values()) == len(bodies) + 10, "the batch sent before the crash arrives twice, no more"
    assert _drain(stack.aws, dlq) == []


def _app_log(stack: Stack, bucket: str, name: str) -> str:
    key = f"logs/{datetime.now(UTC):%Y/%m/%d/%H/%M/%S}-{name}"
    stack.client("s3").put_object(Bucket=bucket, Key=key,
                                  Body=json.dumps({"date": "2026-11-28T12:00:00Z", "log": name}).encode() + b"\n")
    return key


def test_a_dry_run_lists_and_counts_and_sends_nothing(stack: Stack) -> None:
    stack.update(audit={"settle_minutes": 0})
    settings = stack.settings
    feed = settings.s3_feeds["application-logs"]
    stack.client("s3").create_bucket(Bucket=feed.bucket,
                                     CreateBucketConfiguration={"LocationConstraint": settings.region})
    url, dlq = _queues(stack, settings, "application-logs")
    for n in range(3):
        _app_log(stack, feed.bucket, f"lost-{n}")
    stack.client("sqs").send_message(QueueUrl=dlq, MessageBody="dead letter")

    planned = replay_feed(feed="application-logs", start=datetime.now(UTC) - timedelta(hours=1), only_missing=False,
                          dry_run=True)
    assert isinstance(planned, ReplayResult) and planned.status == "dry run"
    assert (planned.objects_listed, planned.to_announce, planned.announced, planned.dlq_messages) == (3, 3, 0, 1)
    assert planned.already_in_xsiam == "not checked"
    assert _drain(stack.aws, url) == [], "nothing announced"
    assert _drain(stack.aws, dlq) == ["dead letter"], "nothing moved"


def test_a_refused_parameter_fails_the_run_naming_it(stack: Stack) -> None:
    state = replay_feed(feed="eks-control-plane", start=datetime.now(UTC) - timedelta(hours=1), return_state=True)
    assert state.is_failed() and "feed: eks-control-plane reaches XSIAM through Firehose" in str(state.message)


def _trail_objects(stack: Stack, settings: Settings, count: int, tag: str) -> list[str]:
    feed = settings.s3_feeds["cloudtrail"]
    origin = formats.Origin(settings.account_id, settings.region)
    objects = [formats.cloudtrail(origin, f"replay-{tag}-{n}-{time.time_ns()}", datetime.now(UTC))
               for n in range(count)]
    for obj in objects:
        stack.client("s3").put_object(Bucket=feed.bucket, Key=obj.key, Body=obj.body)
    return [obj.key for obj in objects]


def test_replay_closes_the_gap_the_audit_found(stack: Stack, collecting: LocalXsiam) -> None:
    """Objects written while the collector dropped their messages: the audit lists them missing, replay-feed
    (only_missing) announces exactly those, and a second audit finds every object."""
    stack.update(audit={"settle_minutes": 0, "deadline_seconds": 60})
    settings = stack.settings
    url = queue_url(stack.aws, settings.s3_feeds["cloudtrail"].queue)
    assert url is not None

    def collected(keys: list[str]) -> bool | None:
        origins = {e["origin"].split("/", 3)[3] for e in collecting.events("aws_s3_raw")}
        return set(keys) <= origins or None

    kept = _trail_objects(stack, settings, 3, "kept")
    eventually("the kept objects collected", lambda: collected(kept), 30)
    collecting.collector_mode("dropping")
    lost = _trail_objects(stack, settings, 3, "lost")
    eventually("the lost objects' messages dropped", lambda: _held(stack.aws, url) == 0 or None, 30)
    collecting.collector_mode("running")

    gap = audit_feeds(feeds=["cloudtrail"], return_state=True)
    assert gap.is_failed() and sorted(items_of(gap)[0].missing_keys) == sorted(lost)
    replayed = replay_feed(feed="cloudtrail", start=datetime.now(UTC) - timedelta(hours=1))
    assert (replayed.objects_listed, replayed.already_in_xsiam, replayed.announced) == (6, "3", 3)
    eventually("the replayed objects collected", lambda: collected(lost), 30)
    [closed] = audit_feeds(feeds=["cloudtrail"])
    assert (closed.sampled, closed.found, closed.missing_keys) == (6, 6, [])


def test_provision_restores_a_removed_replay_statement_that_verify_reported(stack: Stack) -> None:
    """Drift: someone rewrites the queue policy without SocfeedsReplay; verify warns, provision puts it back."""
    from tasks.queues import check_queue

    settings = stack.settings
    url, _ = _queues(stack, settings, "application-logs")
    sqs = stack.client("sqs")
    doc = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") != policies.REPLAY_SID]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(doc)})

    def replay_sender() -> str:
        [finding] = [f for f in check_queue.fn(stack.aws, settings, "application-logs") if f.check == "replay sender"]
        return finding.status.value

    assert replay_sender() == "warn"
    changes = ensure_queues.fn(stack.aws, settings, "application-logs", False)
    assert changes, "provision repaired nothing"
    assert replay_sender() == "pass"
    assert ensure_queues.fn(stack.aws, settings, "application-logs", False) == [], "a second provision changes nothing"
