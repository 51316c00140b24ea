"""replay-feed's operations: re-announce a window's objects to a feed's queue as S3 would, and redrive its DLQ.

After an outage (the consumer down past the queue's 4-day retention, a broken notification, a full dead-letter
queue) the objects are still in the bucket but XSIAM never heard of them. Each is announced again as the S3
event notification AWS itself sends (AWS S3 User Guide, "Event message structure",
https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html), so XSIAM's S3 data
source takes it as any other. Delivery is at least once: SQS standard queues do not deduplicate and XSIAM's S3
data source documents no deduplication of objects, so an object announced twice (a rerun after a crash, or one
XSIAM had already) is ingested twice. That is why only the objects XSIAM lacks are announced by default.

The dead-letter queue goes back to its feed queue with SQS StartMessageMoveTask; where SQS does not offer it
(moto 5.2.5 answers 500 "not implemented") the messages are moved here: received from the dead-letter queue,
sent to the feed queue, and only then deleted, so a crash leaves a duplicate at worst, never a loss. The feed
queue's own messages are never received.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from socfeeds.arns import Arns, partition
from socfeeds.aws import AwsClients, error_code
from socfeeds.errors import OnCallError
from socfeeds.settings import S3Feed, Settings
from tasks._task import aws_task
from tasks.audit import WindowObject, missing_objects, window_objects
from tasks.queues import queue_url
from tasks.xql import XqlClient, XqlError

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageTypeDef, SendMessageBatchRequestEntryTypeDef

MAX_WINDOW = timedelta(days=14)  # the longest a bucket keeps logs XSIAM wants (7 days) twice over: a bigger
# window is more likely a typo than an outage, and re-announcing months of logs floods the SIEM's licence
BATCH = 10  # SendMessageBatch and DeleteMessageBatch take at most 10 entries
SEND_ATTEMPTS = 3  # entries SQS refuses in a batch (throttling, an internal error) are sent again this often
CONFIGURATION_ID = "socfeeds-replay"  # the notification's configurationId: a replayed message is recognisable
REDRIVE_VISIBILITY_SECONDS = 60  # a dead letter held while it is sent on; a crash makes it visible again after this
MOVE_TASK_POLL_SECONDS = 2.0
MOVE_UNAVAILABLE = {"UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation", "InvalidAction",
                    "UnknownOperationException", "NotImplemented", "501"}
MOVE_DONE = {"COMPLETED", "CANCELLED", "FAILED"}
OBJECT_ABSENT = {"404", "NoSuchKey", "NotFound"}


class ReplayError(ValueError, OnCallError):
    """A replay that cannot run as asked: the message names the parameter or resource and the fix."""


@dataclass(frozen=True)
class ObjectHead:
    """What an S3 notification says of an object, read from the object itself (HeadObject)."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: datetime
    version_id: str | None = None


class Redrive(BaseModel):
    model_config = ConfigDict(frozen=True)

    moved: int
    method: str  # StartMessageMoveTask | receive-send-delete | none
    left: int  # messages still in the dead-letter queue afterwards (sent again later, or by a rerun)
    detail: str


# --- the parameters ---------------------------------------------------------------------------

def replay_window(start: datetime, end: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """The window as UTC datetimes (a naive time is UTC), refused naming the parameter when it cannot be right."""
    start, end = _utc(start), _utc(end or now)
    if end <= start:
        raise ReplayError(f"end: {end.isoformat()} is not after start {start.isoformat()}: give end later than start "
                          "(or leave it out for now)")
    if start >= _utc(now):
        raise ReplayError(f"start: {start.isoformat()} is in the future: nothing has been written yet")
    if end - start > MAX_WINDOW:
        raise ReplayError(f"start: the window {start.isoformat()} .. {end.isoformat()} is {end - start}, longer than "
                          f"{MAX_WINDOW.days} days: replay it in windows of at most {MAX_WINDOW.days} days")
    return start, end


def _utc(at: datetime) -> datetime:
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def replayable_feed(settings: Settings, name: str) -> S3Feed:
    """The S3 feed named `name`, or a refusal that says why it cannot be replayed here."""
    if name in settings.s3_feeds:
        return settings.s3_feeds[name]
    if name in settings.delivering_feeds:
        owner = settings.delivering_feeds[name].bucket_account
        raise ReplayError(f"feed: {name} delivers into account {owner}'s bucket, whose queue XSIAM reads: run "
                          f"replay-feed there (accounts=['{owner}'])")
    if name in settings.firehose_feeds:
        raise ReplayError(f"feed: {name} reaches XSIAM through Firehose, not a queue: nothing to re-announce. Failed "
                          "deliveries are in its error bucket (see feed-canary's backup leg)")
    raise ReplayError(f"feed: unknown S3 feed {name!r}; known: {sorted(settings.s3_feeds)}")


@dataclass(frozen=True)
class Selection:
    """The window's objects, and those to announce: all of them, or only those XSIAM lacks."""

    listed: list[WindowObject]
    chosen: list[WindowObject]
    checked: bool  # whether XSIAM was asked (only_missing)


@aws_task("select-objects")
def select_objects(aws: AwsClients, settings: Settings, feed_name: str, start: datetime, end: datetime,
                   only_missing: bool) -> Selection:
    """List the window's objects (tasks.audit.window_objects: canary objects and ones too young to judge left out)
    and, with only_missing, keep those XSIAM lacks (missing_objects checks every one)."""
    replayable_feed(settings, feed_name)
    listed = window_objects(aws, settings, feed_name, start, end)
    if not only_missing or not listed:
        return Selection(listed, listed, only_missing)
    try:
        with XqlClient.from_settings(settings) as xql:
            missing = set(missing_objects(aws, xql, settings, feed_name, sorted({o.key for o in listed}),
                                          time.monotonic() + settings.audit.deadline_seconds))
    except XqlError as error:
        raise ReplayError(f"only_missing: XSIAM could not be asked which objects it lacks ({error}). Fix the XQL API "
                          "settings, or pass only_missing=false to announce every object of the window") from None
    return Selection(listed, [o for o in listed if o.key in missing], True)


# --- the notification, in AWS's shape ---------------------------------------------------------

def notification(head: ObjectHead, region: str, owner_id: str, sender_id: str) -> dict[str, Any]:
    """The S3 event notification for one object's creation, field for field as AWS sends it (S3 User Guide,
    "Event message structure", version 2.1), its key URL-encoded as S3 encodes it (space as +).

    What only the original PUT knew is said honestly instead: the event time is the object's last modification,
    the identity is the one replaying (`sender_id`, AWS's `AWS:<unique id>` form), the source address says
    socfeeds-replay. The sequencer and request ids derive from the object, so a rerun sends the same message.
    """
    digest = hashlib.sha256(f"{head.bucket}/{head.key}/{head.etag}".encode()).hexdigest().upper()
    millis = int(head.last_modified.timestamp() * 1000)
    s3_object: dict[str, Any] = {"key": quote_plus(head.key), "size": head.size, "eTag": head.etag,
                                 **({"versionId": head.version_id} if head.version_id else {}),
                                 "sequencer": f"{millis:016X}{digest[:2]}"}
    return {"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": _utc(head.last_modified).strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": f"AWS:{sender_id}"},
        "requestParameters": {"sourceIPAddress": CONFIGURATION_ID},
        "responseElements": {"x-amz-request-id": digest[:16], "x-amz-id-2": digest[16:80]},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": CONFIGURATION_ID,
            "bucket": {"name": head.bucket, "ownerIdentity": {"principalId": owner_id},
                       "arn": f"arn:{partition(region)}:s3:::{head.bucket}"},
            "object": s3_object,
        },
    }]}


def head_objects(aws: AwsClients, objects: Iterable[tuple[str, str]]) -> tuple[list[ObjectHead], list[str]]:
    """(bucket, key) -> each object's head, concurrently; and the keys gone since (expired or deleted: nothing to
    announce, XSIAM could not fetch them)."""

    def head(ref: tuple[str, str]) -> ObjectHead | str:
        bucket, key = ref
        try:
            answer = aws.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error_code(error) in OBJECT_ABSENT:
                return key
            raise
        version = answer.get("VersionId")
        return ObjectHead(bucket, key, int(answer["ContentLength"]), str(answer["ETag"]).strip('"'),
                          answer["LastModified"], version if version and version != "null" else None)

    with ThreadPoolExecutor(max_workers=16) as pool:
        found = list(pool.map(head, objects))
    return [h for h in found if isinstance(h, ObjectHead)], [k for k in found if isinstance(k, str)]


def bucket_owner(aws: AwsClients, bucket: str) -> str:
    """The bucket owner's canonical id, which S3 names as the bucket's ownerIdentity."""
    return str(aws.s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"])


def sender_id(aws: AwsClients) -> str:
    """The replaying identity's unique id (AIDA... for a user, AROA...:session for a role), as S3 names a requester."""
    return str(aws.sts.get_caller_identity()["UserId"])


# --- sending -------------------------------------------------------------------------------------

def send_all(aws: AwsClients, url: str, bodies: Sequence[str]) -> int:
    """Send every body in batches of 10; entries SQS refuses are sent again (SEND_ATTEMPTS). Returns how many were
    sent; raises naming the queue and SQS's reason when any could not be."""
    sent, refused = 0, []
    for first in range(0, len(bodies), BATCH):
        pending = dict(enumerate(bodies[first:first + BATCH]))
        for _ in range(SEND_ATTEMPTS):
            answer = aws.sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(n), "MessageBody": body} for n, body in pending.items()])
            for entry in answer.get("Successful", []):
                pending.pop(int(entry["Id"]))
                sent += 1
            if not pending:
                break
            refused = answer.get("Failed", [])
        if pending:
            reasons = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in refused)
            raise ReplayError(f"sqs:{url.rsplit('/', 1)[-1]}: SQS refused {len(pending)} of the notifications after "
                              f"{SEND_ATTEMPTS} attempts ({reasons}); {sent} were sent. Rerun replay-feed: it sends "
                              "again only what XSIAM still lacks")
    return sent


@aws_task("announce-objects")
def announce_objects(aws: AwsClients, settings: Settings, feed_name: str, keys: list[tuple[str, str]]) -> list[str]:
    """Announce each (bucket, key) to the feed's queue; returns the s3:// addresses announced (objects gone since
    are not)."""
    feed = replayable_feed(settings, feed_name)
    url = queue_url(aws, feed.queue)
    if url is None:
        raise ReplayError(f"sqs:{feed.queue}: the feed queue does not exist: run provision-feeds for {feed_name}")
    heads, _ = head_objects(aws, keys)  # the flow reports those gone: requested, not announced
    owners = {bucket: bucket_owner(aws, bucket) for bucket in {head.bucket for head in heads}}
    sender = sender_id(aws)
    send_all(aws, url, [json.dumps(notification(head, settings.region, owners[head.bucket], sender))
                        for head in heads])
    return [f"s3://{head.bucket}/{head.key}" for head in heads]


# --- the dead-letter queue -------------------------------------------------------------------------

def _depth(aws: AwsClients, url: str) -> tuple[int, int]:
    """(waiting, in flight) messages of a queue."""
    attributes = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attributes.get("ApproximateNumberOfMessages", "0")),
            int(attributes.get("ApproximateNumberOfMessagesNotVisible", "0")))


def dead_letters(aws: AwsClients, feed: S3Feed) -> tuple[str, int]:
    """The dead-letter queue's URL and how many messages it holds (waiting or in flight)."""
    url = queue_url(aws, feed.dlq_name)
    if url is None:
        raise ReplayError(f"sqs:{feed.dlq_name}: the dead-letter queue does not exist: run provision-feeds")
    return url, sum(_depth(aws, url))


def _single_try(aws: AwsClients) -> Any:
    """An SQS client that asks once: telling 'not offered here' from a transient error must not cost 8 retries."""
    return aws.session.client("sqs", region_name=aws.region, endpoint_url=aws.endpoint_url,
                              config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=5,
                                            read_timeout=30))


def _move_tasks(sqs: Any, dlq_arn: str) -> list[dict[str, Any]] | None:
    """The dead-letter queue's move tasks, newest first; None where SQS does not offer message move tasks."""
    try:
        return list(sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=10).get("Results", []))
    except ClientError as error:
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if error_code(error) in MOVE_UNAVAILABLE or status >= 500:
            return None
        raise


def move_with_task(aws: AwsClients, dlq_arn: str, queue_arn: str, deadline: float) -> Redrive | None:
    """SQS moves the messages itself (StartMessageMoveTask), watched until it ends or the deadline; a task already
    running (a crashed run's) is watched, not doubled. None where SQS does not offer it."""
    sqs = _single_try(aws)
    tasks = _move_tasks(sqs, dlq_arn)
    if tasks is None:
        return None
    if not any(task.get("Status") == "RUNNING" for task in tasks):
        aws.sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=queue_arn)
    while True:
        [task, *_] = aws.sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=1)["Results"]
        moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
        if task.get("Status") in MOVE_DONE or time.monotonic() + MOVE_TASK_POLL_SECONDS > deadline:
            break
        time.sleep(MOVE_TASK_POLL_SECONDS)
    if task.get("Status") == "FAILED":
        raise ReplayError(f"sqs:{dlq_arn.rsplit(':', 1)[-1]}: StartMessageMoveTask failed after moving {moved}: "
                          f"{task.get('FailureReason')}. Fix the cause and rerun replay-feed")
    return Redrive(moved=moved, method="StartMessageMoveTask", left=0,
                   detail=f"move task {task.get('Status', '?').lower()}")


def move_by_hand(aws: AwsClients, dlq_url: str, feed_queue_url: str, deadline: float,
                 visibility_s: int = REDRIVE_VISIBILITY_SECONDS) -> int:
    """Receive from the dead-letter queue, send to the feed queue, then delete what was sent: a crash between the
    two leaves the message in both (a duplicate), never in neither. Waits for messages in flight (a crashed run's,
    visible again after `visibility_s`) until the deadline. Returns how many were moved."""
    moved = 0
    while time.monotonic() < deadline:
        messages = _receive(aws, dlq_url, visibility_s, wait_s=0)
        if not messages:
            if sum(_depth(aws, dlq_url)) == 0:
                break
            messages = _receive(aws, dlq_url, visibility_s, wait_s=max(0, min(2, int(deadline - time.monotonic()))))
        answer = aws.sqs.send_message_batch(QueueUrl=feed_queue_url,
                                            Entries=[_resent(n, m) for n, m in enumerate(messages)])
        sent = [messages[int(entry["Id"])] for entry in answer.get("Successful", [])]
        if sent:  # only what the feed queue holds now; the rest is received again after its visibility timeout
            aws.sqs.delete_message_batch(QueueUrl=dlq_url, Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(sent)])
        moved += len(sent)
    return moved


def _receive(aws: AwsClients, url: str, visibility_s: int, wait_s: int) -> list[MessageTypeDef]:
    """Up to 10 dead letters, held for `visibility_s`; long-polled only while some are in flight elsewhere."""
    return aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=BATCH, VisibilityTimeout=visibility_s,
                                   MessageAttributeNames=["All"], WaitTimeSeconds=wait_s).get("Messages", [])


def _resent(n: int, message: MessageTypeDef) -> SendMessageBatchRequestEntryTypeDef:
    """A dead letter as it is sent on: its body and message attributes unchanged."""
    entry: SendMessageBatchRequestEntryTypeDef = {"Id": str(n), "MessageBody": message["Body"]}
    if message.get("MessageAttributes"):
        entry["MessageAttributes"] = message["MessageAttributes"]
    return entry


@aws_task("redrive-dead-letters")
def redrive_dead_letters(aws: AwsClients, settings: Settings, feed_name: str, deadline_s: float = 300) -> Redrive:
    """The dead-letter queue's messages back to the feed queue, none lost."""
    feed = replayable_feed(settings, feed_name)
    dlq_url, held = dead_letters(aws, feed)
    if held == 0:
        return Redrive(moved=0, method="none", left=0, detail=f"{feed.dlq_name} is empty")
    url = queue_url(aws, feed.queue)
    if url is None:
        raise ReplayError(f"sqs:{feed.queue}: the feed queue does not exist: run provision-feeds for {feed_name}")
    arns = Arns(settings.region, settings.account_id)
    deadline = time.monotonic() + deadline_s
    redrive = move_with_task(aws, arns.queue(feed.dlq_name), arns.queue(feed.queue), deadline)
    if redrive is None:
        moved = move_by_hand(aws, dlq_url, url, deadline)
        redrive = Redrive(moved=moved, method="receive-send-delete", left=0,
                          detail="StartMessageMoveTask is not offered here: moved by receive, send, then delete")
    left = sum(_depth(aws, dlq_url))
    return redrive.model_copy(update={"left": left, "detail": redrive.detail + (
        f"; {left} still in {feed.dlq_name}: rerun replay-feed" if left else "")})
