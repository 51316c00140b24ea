"""The daily canary: write a marked, recognisably synthetic event into a feed, find it again, time it.

The writer is its own identity (a role allowed only PutObject/DeleteObject and PutLogEvents).
Confirmation follows the feed's strategy: `siem` asks XSIAM's query API (production: XSIAM's queue
is never touched), `queue` long-polls a queue nobody else reads. Each failure names its leg:
write, notification, collection, delivery or backup.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from socfeeds import formats, policies
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, new_session
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor, Status
from socfeeds.settings import LOG_TYPE_DATASETS, FirehoseFeed, RdsLogsSource, S3Feed, Settings, canary_key_prefix
from tasks._task import aws_task
from tasks.firehose import backed_up_records, http_of, read_estate
from tasks.iam import granted_statements
from tasks.notifications import notifies
from tasks.queues import queue_url
from tasks.roles import check_role, ensure_role
from tasks.xql import XqlClient, XqlError

QUEUE_WAIT_SECONDS = 20


class CanaryResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    feed: str
    strategy: str
    status: str  # passed | failed
    leg: str  # "-" when passed
    latency_ms: int | None
    detail: str
    fix: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class Outcome:
    """Builds the feed's result, timing from the moment the write succeeded."""

    def __init__(self, feed: str, strategy: str) -> None:
        self.feed, self.strategy = feed, strategy
        self.written_at = time.monotonic()

    def passed(self, detail: str) -> CanaryResult:
        latency = int((time.monotonic() - self.written_at) * 1000)
        return CanaryResult(feed=self.feed, strategy=self.strategy, status="passed", leg="-", latency_ms=latency,
                            detail=detail)

    def failed(self, leg: str, detail: str, fix: str) -> CanaryResult:
        return CanaryResult(feed=self.feed, strategy=self.strategy, status="failed", leg=leg, latency_ms=None,
                            detail=detail, fix=fix)


def marker_for(run_tag: str, feed_name: str) -> str:
    return f"{formats.CANARY_AGENT}-{run_tag}-{feed_name}-{int(time.time() * 1000)}"


# --- the writer identity ---------------------------------------------------------------------

def _writer_role_arn(settings: Settings) -> str:
    return Arns(settings.region, settings.account_id).role(settings.canary.writer_role)


@aws_task("ensure-canary-writer", per_feed=False)
def ensure_canary_writer(aws: AwsClients, settings: Settings, dry_run: bool) -> list[Change]:
    changes = ChangesFor("canary", f"iam-role:{settings.canary.writer_role}", dry_run)
    ensure_role(aws, changes, settings.canary.writer_role,
                policies.canary_writer_trust(settings),
                policies.canary_writer_policy(settings), "socfeeds canary: writes synthetic log events only")
    return changes.changes


@aws_task("check-canary-writer", per_feed=False)
def check_canary_writer(aws: AwsClients, settings: Settings) -> list[Finding]:
    check = FindingsFor("canary", f"iam-role:{settings.canary.writer_role}")
    check_role(aws, check, settings.canary.writer_role,
               policies.canary_writer_trust(settings),
               policies.canary_writer_policy(settings))
    if check.findings[0].status is Status.PASS:  # the role exists
        reach = policies.canary_scope_problems(granted_statements(aws, "role", settings.canary.writer_role), settings)
        check.expect("canary scope", not reach, "; ".join(reach) if reach else
                     "writes only under canary prefixes and canary log streams: it can neither forge nor hide "
                     "real logs", f"remove these grants from {settings.canary.writer_role}; provision-feeds "
                     "rewrites its socfeeds policy")
    return check.findings


def writer_clients(aws: AwsClients, settings: Settings, run_tag: str) -> AwsClients:
    """Clients acting as the canary writer role (assumed with the flow's own identity)."""
    credentials = aws.sts.assume_role(RoleArn=_writer_role_arn(settings),
                                      RoleSessionName=_session_name(run_tag))["Credentials"]
    session = new_session(credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"])
    return AwsClients(session, settings.region, settings.endpoint_url)


# --- confirmation ----------------------------------------------------------------------------

def _notified_key(body: str, bucket: str) -> list[str]:
    try:
        records = json.loads(body).get("Records", [])
    except ValueError:
        return []
    return [unquote_plus(r["s3"]["object"]["key"]) for r in records
            if r.get("s3", {}).get("bucket", {}).get("name") == bucket]


def confirm_on_queue(aws: AwsClients, feed: S3Feed, key: str, deadline: float) -> bool:
    """Long-poll for the object's notification and delete only it.

    Other messages are held (invisible) only while the scan walks past them, so it can reach the
    canary's message behind a backlog, and are all made visible again the moment the scan ends.
    None is ever deleted.
    """
    url = queue_url(aws, feed.queue)
    if url is None:
        raise LookupError(f"queue {feed.queue} does not exist")
    held: list[str] = []
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            messages = aws.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=max(0, min(QUEUE_WAIT_SECONDS, int(remaining))),
                VisibilityTimeout=max(1, min(30, int(remaining) + 5))).get("Messages", [])
            for message in messages:
                if key in _notified_key(message["Body"], feed.bucket):
                    aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    return True
                held.append(message["ReceiptHandle"])
        return False
    finally:
        release(aws, url, held)


def release(aws: AwsClients, url: str, receipts: list[str]) -> None:
    """Make held messages visible again at once."""
    for start in range(0, len(receipts), 10):
        batch = receipts[start:start + 10]
        aws.sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": 0} for n, handle in enumerate(batch)])


def find_in_siem(xql: XqlClient, dataset: str, marker: str, since_ms: int, deadline: float,
                 also: Callable[[], str | None] | None = None, max_pause: float = 2.0) -> tuple[bool, str | None]:
    """Query until the marker shows or the deadline passes; `also` may end the wait with a reason. Every query
    started is finished before this returns (XqlClient polls a running one to its end), so none outlives the run."""
    pause = 0.2
    while True:
        now_ms = int(time.time() * 1000)
        if xql.search(dataset, marker, since_ms - 60_000, now_ms + 60_000, deadline):
            return True, None
        reason = also() if also else None
        if reason:
            return False, reason
        if time.monotonic() + pause > deadline:
            return False, None
        time.sleep(pause)
        pause = min(pause * 1.5, max_pause)  # latency is measured to within one pause


BACKUP_MARGIN_SECONDS = 60  # Firehose's last attempt ending, then its write of the backup object
BACKUP_MAX_PAUSE = 15.0  # while only the backup can still name the leg, XSIAM is asked less often


def backup_wait_seconds(canary_deadline_seconds: int, buffering_seconds: int, retry_seconds: int) -> int:
    """How long the EKS canary waits before it calls its event lost. A delivery XSIAM rejects reaches the error
    bucket only after the buffer flushed (buffering) and Firehose retried for the stream's retry duration, so a
    deadline shorter than that could never name the backup leg."""
    return max(canary_deadline_seconds, buffering_seconds + retry_seconds + BACKUP_MARGIN_SECONDS)


def stream_timing(aws: AwsClients, settings: Settings, feed: FirehoseFeed) -> tuple[int, int] | None:
    """(buffering, retry) seconds of the stream the cluster's log group feeds to XSIAM, as the stream itself says
    (settings' values when it cannot be read); None when no subscription feeds such a stream: no event can
    then reach a backup, so there is nothing to wait for."""
    try:
        estate = read_estate(aws, settings, feed)
    except (ClientError, BotoCoreError):
        return feed.buffering_seconds, feed.retry_seconds
    if not estate.paths:
        return None
    http = http_of(estate.description) or {}
    return (int(http.get("BufferingHints", {}).get("IntervalInSeconds", feed.buffering_seconds)),
            int(http.get("RetryOptions", {}).get("DurationInSeconds", feed.retry_seconds)))


# --- the canaries ----------------------------------------------------------------------------

def _origin(settings: Settings, feed: S3Feed, run_tag: str) -> formats.Origin:
    """The record claims what wrote it: the writer role's session, as CloudTrail would name it."""
    source = feed.source
    vpc = getattr(source, "vpc_id", None) or settings.vpc_id or "vpc-00000000"
    prefix = getattr(source, "key_prefix", "logs")
    return formats.Origin(settings.account_id, settings.region, vpc_id=vpc, key_prefix=prefix,
                          writer_role=settings.canary.writer_role, session_name=_session_name(run_tag),
                          organization_id=feed.organization_id)


def _session_name(run_tag: str) -> str:
    return f"socfeeds-canary-{run_tag}"


@aws_task("canary")
def canary_feed(aws: AwsClients, writer: AwsClients, xql: XqlClient | None, settings: Settings,
                feed_name: str, run_tag: str) -> list[CanaryResult]:
    """One result (a list, like every task's findings), by the path the feed's kind takes."""
    feed = settings.s3_feeds.get(feed_name)
    if feed is not None and isinstance(feed.source, RdsLogsSource) and policies.rds_canary_group(feed.source):
        from tasks.rds import canary_rds  # through the log group, subscription and Firehose (tasks.rds imports us)

        return [canary_rds(aws, writer, xql, settings, feed_name, run_tag)]
    canary = _canary_s3 if feed is not None else _canary_firehose
    return [canary(aws, writer, xql, settings, feed_name, run_tag)]


def _canary_s3(aws: AwsClients, writer: AwsClients, xql: XqlClient | None, settings: Settings,
               feed_name: str, run_tag: str) -> CanaryResult:
    feed = settings.s3_feeds[feed_name]
    marker = marker_for(run_tag, feed_name)
    real = formats.synthetic_object(feed.log_type, _origin(settings, feed, run_tag), marker, datetime.now(UTC))
    obj = replace(real, key=canary_key_prefix(feed_name) + real.key)  # real layout, under the canary's own prefix
    outcome = Outcome(feed_name, feed.canary_strategy)
    since_ms = int(time.time() * 1000)
    extra: dict[str, Any] = {"ContentEncoding": obj.content_encoding} if obj.content_encoding else {}
    try:
        writer.s3.put_object(Bucket=feed.bucket, Key=obj.key, Body=obj.body, ContentType=obj.content_type, **extra)
    except (ClientError, BotoCoreError) as error:
        return outcome.failed("write", f"PutObject s3://{feed.bucket}/{obj.key}: {error}",
                              "run verify-feeds (bucket) and check the canary writer role (provision-feeds)")
    outcome.written_at = time.monotonic()
    deadline = outcome.written_at + feed.canary_deadline_seconds
    try:
        if feed.canary_strategy == "queue":
            return _confirm_queue(aws, feed, obj.key, deadline, outcome)
        result = _confirm_siem(xql, LOG_TYPE_DATASETS[feed.log_type], marker, since_ms, deadline, outcome, feed)
        if result.leg != "collection" or not result.detail.startswith("not in "):
            return result  # passed, or XSIAM could not be asked: nothing to narrow down
        return _diagnose_s3(aws, settings, feed, obj.key, outcome) or result
    finally:
        with contextlib.suppress(ClientError, BotoCoreError):  # lifecycle expiry covers a failed delete
            writer.s3.delete_object(Bucket=feed.bucket, Key=obj.key)


def _diagnose_s3(aws: AwsClients, settings: Settings, feed: S3Feed, key: str, outcome: Outcome) -> CanaryResult | None:
    """XSIAM never showed the marker: find the leg that broke, read-only, never touching a message. The object
    (written?), the notification (present, aimed at the queue, not filtered away from the key?), then the
    queues (dead-lettered, waiting, or consumed). None when nothing more specific is known."""
    try:
        aws.s3.head_object(Bucket=feed.bucket, Key=key)
    except ClientError:
        return outcome.failed("write", f"s3://{feed.bucket}/{key} is not in the bucket although PutObject succeeded",
                              "check the bucket's lifecycle rules and who may delete under socfeeds-canary/")
    queue_arn = Arns(settings.region, settings.account_id).queue(feed.queue)
    if not notifies(aws, feed.bucket, queue_arn, key):
        return outcome.failed("notification", f"s3://{feed.bucket} has no notification of new objects like {key} "
                              f"to {feed.queue}, so XSIAM was never told", "run verify-feeds (notification), then "
                              "provision-feeds restores it")
    url, dlq = queue_url(aws, feed.queue), queue_url(aws, feed.dlq_name)
    counts = {name: int(aws.sqs.get_queue_attributes(QueueUrl=u, AttributeNames=[
        "ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"]) for name, u in
        (("queue", url), ("dlq", dlq)) if u}
    if counts.get("dlq"):
        return outcome.failed("collection", f"{counts['dlq']} messages in {feed.dlq_name}: XSIAM received the "
                              "notifications and failed them", "check the reader's s3:GetObject/kms:Decrypt grants "
                              "(verify-feeds) and the data source's errors in XSIAM, then redrive the DLQ")
    if counts.get("queue"):
        return outcome.failed("collection", f"{counts['queue']} messages waiting on {feed.queue}: XSIAM is not "
                              "reading the queue", "check the XSIAM data source's status and the reader key it holds")
    return None


def _confirm_queue(aws: AwsClients, feed: S3Feed, key: str, deadline: float, outcome: Outcome) -> CanaryResult:
    try:
        seen = confirm_on_queue(aws, feed, key, deadline)
    except (ClientError, BotoCoreError, LookupError) as error:
        return outcome.failed("notification", f"cannot read {feed.queue}: {error}",
                              "run verify-feeds: the queue is missing or unreadable; provision-feeds recreates it")
    if seen:
        return outcome.passed(f"notification for {key} arrived on {feed.queue}")
    return outcome.failed("notification", f"no notification on {feed.queue} within {feed.canary_deadline_seconds} s",
                          "run verify-feeds: check the bucket notification and the queue policy, then provision-feeds")


def _confirm_siem(xql: XqlClient | None, dataset: str, marker: str, since_ms: int, deadline: float,
                  outcome: Outcome, feed: S3Feed | FirehoseFeed, also: Callable[[], str | None] | None = None,
                  missing_leg: str = "collection", waited_s: int | None = None,
                  max_pause: float = 2.0) -> CanaryResult:
    """`waited_s`: the deadline in seconds from the write, when not the feed's canary deadline."""
    if xql is None:
        return outcome.failed("collection", "no XSIAM API configured", "set xsiam.api_url, api_key_id, xsiam_api_key")
    waited_s = waited_s or feed.canary_deadline_seconds
    try:
        found, reason = find_in_siem(xql, dataset, marker, since_ms, deadline, also, max_pause)
    except XqlError as error:
        return outcome.failed("collection", f"could not ask XSIAM: {error}",
                              "check the XSIAM tenant's status and the API key; the feed itself may be fine")
    if found:
        return outcome.passed(f"found in {dataset}")
    if reason:
        return outcome.failed("backup", reason, "Firehose gave up on XSIAM: check the token in the secret "
                              "(a revoked token is the usual cause) and the XSIAM HTTP collector's status")
    if isinstance(feed, FirehoseFeed):
        return outcome.failed(missing_leg, f"not in {dataset} within {waited_s} s and no backup",
                              "run verify-feeds: check the subscription filter, the stream and its error log group")
    return outcome.failed(missing_leg, f"not in {dataset} within {waited_s} s",
                          "XSIAM did not ingest it: run verify-feeds (notification, queue policy, reader grants), "
                          "check the reader key XSIAM holds and the data source's status in XSIAM")


def _canary_firehose(aws: AwsClients, writer: AwsClients, xql: XqlClient | None, settings: Settings,
                     feed_name: str, run_tag: str) -> CanaryResult:
    feed = settings.firehose_feeds[feed_name]
    marker = marker_for(run_tag, feed_name)
    outcome = Outcome(feed_name, "siem")
    stream = f"{policies.CANARY_STREAM_PREFIX}{run_tag}-{int(time.time())}"  # an audit stream, by its name
    now = datetime.now(UTC)
    try:
        writer.logs.create_log_stream(logGroupName=feed.log_group, logStreamName=stream)
        writer.logs.put_log_events(logGroupName=feed.log_group, logStreamName=stream, logEvents=[
            {"timestamp": int(now.timestamp() * 1000), "message": formats.eks_audit_event(marker, now)}])
    except (ClientError, BotoCoreError) as error:
        delete_canary_stream(writer, feed.log_group, stream)
        return outcome.failed("write", f"PutLogEvents {feed.log_group}:{stream}: {error}",
                              "run verify-feeds (log group) and check the canary writer role (provision-feeds)")
    outcome.written_at = time.monotonic()
    since = now - timedelta(seconds=5)
    already_read: set[str] = set()

    def backed_up() -> str | None:
        for where, message, payload in backed_up_records(aws, feed, since, already_read):
            if marker in payload:
                return f"delivery failed and the event went to {where}: {message}"
        return None

    dataset, since_ms = LOG_TYPE_DATASETS["EKS"], int(now.timestamp() * 1000)
    try:
        result = _confirm_siem(xql, dataset, marker, since_ms, outcome.written_at + feed.canary_deadline_seconds,
                               outcome, feed, also=backed_up, missing_leg="delivery")
        if result.passed or result.leg != "delivery":
            return result  # found, backed up, or XSIAM could not be asked
        timing = stream_timing(aws, settings, feed)
        waited = backup_wait_seconds(feed.canary_deadline_seconds, *timing) if timing else 0
        if waited <= feed.canary_deadline_seconds:
            return result
        return _confirm_siem(xql, dataset, marker, since_ms, outcome.written_at + waited, outcome, feed,
                             also=backed_up, missing_leg="delivery", waited_s=waited, max_pause=BACKUP_MAX_PAUSE)
    finally:  # once confirmed (or given up on) the stream has served its purpose: none is left behind
        delete_canary_stream(writer, feed.log_group, stream)


def delete_canary_stream(writer: AwsClients, group: str, stream: str) -> None:
    """The canary's own log stream, once used; a failed delete only leaves that stream behind, so it is not fatal."""
    with contextlib.suppress(ClientError, BotoCoreError):
        writer.logs.delete_log_stream(logGroupName=group, logStreamName=stream)

