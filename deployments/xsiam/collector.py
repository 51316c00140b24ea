"""XSIAM's Amazon S3 data source: long-poll each feed's queue with the reader's own credentials.

Per message: skip `s3:TestEvent`, URL-decode keys, fetch the object, gunzip or read plain, split
records by log type, store them, delete the message. A processing error leaves the message for
redelivery (so the queue's DLQ policy is exercised); an authentication failure is recorded with
the key id that failed. Credentials can be reloaded from the Secrets Manager secret the rotation
flow writes, on SIGHUP (via `reload()`) or on an interval, as an operator pasting a new key would.

For the audit and replay tests, the collector can be paused (messages stay on the queues, as when
XSIAM's data source is down) or set to drop (messages deleted without ingesting: the silent loss
users of S3 -> SQS SIEM inputs report), then set running again.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import unquote_plus

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from deployments.xsiam.store import Event, Store
from socfeeds.formats import object_body, read_records
from socfeeds.settings import LOG_TYPE_DATASETS

AUTH_ERRORS = {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
               "InvalidAccessKeyId", "AccessDenied", "AccessDeniedException", "ExpiredToken", "403"}
WAIT_SECONDS = 2  # short long polls keep shutdown prompt; a send still wakes them at once
CollectorMode = Literal["running", "paused", "dropping"]
MODES: tuple[CollectorMode, ...] = ("running", "paused", "dropping")


@dataclass(frozen=True)
class FeedSource:
    """A configured data source, as XSIAM's S3 data source takes it: the queue URL and the log type."""

    name: str
    queue_url: str
    log_type: str


@dataclass
class ReaderIdentity:
    """The reader's key, given directly or read from a Secrets Manager secret; or a role to assume.

    The secret is read as the operator: the process's own identity, or (one account of a fleet, where each
    account keeps its reader's key) that account's operator key.
    """

    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    secret_id: str | None = None
    role_arn: str | None = None
    external_id: str | None = field(default=None, repr=False)
    operator_key_id: str | None = None
    operator_secret_access_key: str | None = field(default=None, repr=False)


class Collector:
    def __init__(self, store: Store, feeds: list[FeedSource], identity: ReaderIdentity, region: str,
                 endpoint_url: str | None, reload_seconds: float | None = None, account: str = "") -> None:
        """account: the AWS account whose feeds these are (one collector per account in a fleet); "" for one."""
        self.store, self.feeds, self.identity, self.account = store, feeds, identity, account
        self.region, self.endpoint_url = region, endpoint_url
        self.reload_seconds = reload_seconds
        self._stop = threading.Event()
        self._first_load = threading.Lock()
        self._changed = threading.Condition()  # a new key, or stop: feeds backing off try again at once
        self._generation = 0
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []
        self._last_failure: dict[str, str] = {}
        self._handling = 0  # receives being handled (under _changed): a mode change waits for them
        self.mode: CollectorMode = "running"
        self.key_id = ""

    # --- credentials -------------------------------------------------------------------------

    def reload(self, stage: str = "AWSCURRENT") -> None:
        """Take the reader's credentials from the secret's stage (AWSPENDING: what the SOC pastes mid-rotation)."""
        identity = self.identity
        key_id, secret = identity.access_key_id, identity.secret_access_key
        if identity.secret_id:
            operator = self._make_client(self._session(identity.operator_key_id, identity.operator_secret_access_key),
                                         "secretsmanager")
            value = json.loads(operator.get_secret_value(SecretId=identity.secret_id,
                                                         VersionStage=stage)["SecretString"])
            key_id, secret = value["access_key_id"], value["secret_access_key"]
        if not key_id or not secret:  # never fall back to whatever identity the process has
            raise ValueError("collector: no reader credentials (set reader.secret_id or XSIAM_READER_* env)")
        session = self._session(key_id, secret)
        if identity.role_arn:
            sts = self._make_client(session, "sts")
            extra = {"ExternalId": identity.external_id} if identity.external_id else {}
            assumed = sts.assume_role(RoleArn=identity.role_arn, RoleSessionName="xsiam-standin",
                                      **extra)["Credentials"]
            session = boto3.session.Session(assumed["AccessKeyId"], assumed["SecretAccessKey"],
                                            assumed["SessionToken"])
        clients = {service: self._make_client(session, service) for service in ("sqs", "s3")}
        with self._lock:
            self._clients, self.key_id = clients, key_id
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _make_client(self, session: boto3.session.Session, service: str) -> Any:
        """Every client of the collector: the configured endpoint only, bounded retries."""
        config = Config(retries={"mode": "standard", "max_attempts": 2}, max_pool_connections=len(self.feeds) * 2 + 2,
                        read_timeout=WAIT_SECONDS + 10, s3={"addressing_style": "path"})
        return cast(Any, session).client(service, region_name=self.region, endpoint_url=self.endpoint_url,
                                         config=config)

    def _session(self, key_id: str | None, secret: str | None) -> boto3.session.Session:
        return boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                     region_name=self.region)

    def _client(self, service: str) -> tuple[Any, str]:
        with self._lock:
            return self._clients[service], self.key_id

    # --- the polling loops -------------------------------------------------------------------

    def start(self) -> None:
        self._guard("reload", self.reload)  # a bad key is recorded and retried, never fatal
        self._threads = [threading.Thread(target=self._poll_feed, args=(feed,), name=f"collect-{feed.name}",
                                          daemon=True) for feed in self.feeds]
        if self.reload_seconds:
            self._threads.append(threading.Thread(target=self._reload_loop, daemon=True, name="reload"))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=WAIT_SECONDS + 15)

    def set_mode(self, mode: str) -> CollectorMode:
        """running, paused or dropping; returns once no message is handled under the previous mode any more."""
        if mode not in MODES:
            raise ValueError(f"collector mode {mode!r} is not one of {', '.join(MODES)}")
        with self._changed:
            self.mode = mode
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._handling == 0, timeout=WAIT_SECONDS + 30)
            return self.mode

    def _reload_loop(self) -> None:
        assert self.reload_seconds is not None
        while not self._stop.wait(self.reload_seconds):
            self._guard("reload", self.reload)

    def _poll_feed(self, feed: FeedSource) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            with self._changed:  # paused: no receive at all, so the messages wait on the queue
                self._changed.wait_for(lambda: self._stop.is_set() or self.mode != "paused")
            generation = self._generation
            loaded = bool(self._clients) or self._guard("reload", self._load)
            if loaded and self._guard(f"collector:{feed.name}", self.collect_once, feed):
                backoff = 0.5
            else:  # auth or network trouble: back off (a new key ends it), but keep going like the real data source
                self._back_off(generation, backoff)
                backoff = min(backoff * 2, 10.0)

    def _back_off(self, generation: int, seconds: float) -> None:
        """Wait, unless the collector stops or takes a new key (then a feed's next try may work) meanwhile."""
        with self._changed:
            self._changed.wait_for(lambda: self._stop.is_set() or self._generation != generation, seconds)

    def _load(self) -> None:
        """No key yet: one feed's thread loads it while the others wait (a fleet's stand-in polls many feeds)."""
        with self._first_load:
            if not self._clients:
                self.reload()

    def _guard(self, component: str, call: Any, *args: Any) -> bool:
        """Run a step; record a failure once per change of error (a retry loop must not flood the log)."""
        try:
            call(*args)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            self._record(component, "auth" if code in AUTH_ERRORS else "processing", f"{code}: {error}")
            return False
        except (BotoCoreError, OSError, ValueError, KeyError) as error:
            self._record(component, "processing", f"{type(error).__name__}: {error}")
            return False
        self._last_failure.pop(component, None)
        return True

    def _record(self, component: str, kind: str, detail: str) -> None:
        signature = f"{kind}:{self.key_id}:{detail[:120]}"
        if self._last_failure.get(component) != signature:
            self._last_failure[component] = signature
            named = f"{component}@{self.account}" if self.account and component == "reload" else component
            self.store.add_failure(named, kind, detail, key_id=self.key_id)

    def collect_once(self, feed: FeedSource, max_messages: int = 10) -> int:
        """One long poll of the feed's queue; returns how many messages were handled and deleted."""
        sqs, _ = self._client("sqs")
        messages = sqs.receive_message(QueueUrl=feed.queue_url, MaxNumberOfMessages=max_messages,
                                       WaitTimeSeconds=WAIT_SECONDS).get("Messages", [])
        with self._changed:
            mode = self.mode
            if mode == "paused":  # paused while this poll waited: the messages go back untouched
                self._release(sqs, feed, messages)
                return 0
            self._handling += 1
        try:
            return sum(self._take(sqs, feed, message, ingest=mode == "running") for message in messages)
        finally:
            with self._changed:
                self._handling -= 1
                self._changed.notify_all()

    def _release(self, sqs: Any, feed: FeedSource, messages: list[dict[str, Any]]) -> None:
        """Visible again at once (one call each: the reader is granted sqs:ChangeMessageVisibility, XSIAM's set)."""
        for message in messages:
            sqs.change_message_visibility(QueueUrl=feed.queue_url, ReceiptHandle=message["ReceiptHandle"],
                                          VisibilityTimeout=0)

    def _take(self, sqs: Any, feed: FeedSource, message: dict[str, Any], ingest: bool) -> bool:
        """Ingest the message's objects (unless dropping) and delete it; False when it failed and stays queued."""
        try:
            if ingest:
                self._handle(feed, message["Body"])
        except Exception as error:
            code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
            kind = "auth" if code in AUTH_ERRORS else "processing"
            self.store.add_failure(f"collector:{feed.name}", kind,
                                   f"message {message['MessageId']}: {type(error).__name__}: {error}",
                                   key_id=self._client("sqs")[1])
            return False
        sqs.delete_message(QueueUrl=feed.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return True

    def _handle(self, feed: FeedSource, body: str) -> None:
        notification = json.loads(body)
        if notification.get("Event") == "s3:TestEvent":
            return
        s3, _ = self._client("s3")
        for record in notification["Records"]:
            bucket = record["s3"]["bucket"]["name"]
            key = unquote_plus(record["s3"]["object"]["key"])
            data = object_body(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            raws = split_records(feed.log_type, data.decode())
            self.store.add_events(Event(LOG_TYPE_DATASETS.get(feed.log_type, "amazon_aws_raw"), feed.name,
                                        f"s3://{bucket}/{key}", None, raw) for raw in raws)


def split_records(log_type: str, text: str) -> list[str]:
    """One raw record per event, as XSIAM splits each log type (the formats are socfeeds.formats', shared).

    A flow log is text: its `_raw_log` is the record's line as written (XSIAM parses the fields beside it), so a
    search for a line's text finds it. JSON formats keep each record as JSON."""
    if log_type == "Flow Logs":
        return [" ".join(record.values()) for record in read_records(log_type, text)]
    return [json.dumps(record) for record in read_records(log_type, text)]
