"""audit-feeds: sample a feed's real log objects of a window and find their records in XSIAM.

Read-only everywhere: S3 listings of the window's date-partitioned prefixes (LISTERS at once) and GetObject of
sampled objects (READERS at once), or FilterLogEvents over the EKS log group, then batched XQL lookups
(NEEDLES_PER_QUERY needles a query) and at most 4 queries at once (XqlClient.find); the staleness query runs
while the feed is being sampled.
`window_objects` and `missing_objects` are also replay-feed's: what was written in a window, and which of those
objects XSIAM lacks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from socfeeds import audit
from socfeeds.aws import AwsClients, error_code
from socfeeds.formats import object_body, read_records
from socfeeds.report import Status
from socfeeds.settings import (
    CANARY_KEY_PREFIX,
    LOG_TYPE_DATASETS,
    FirehoseFeed,
    FlowLogSource,
    FluentBitSource,
    S3Feed,
    Settings,
    SettingsError,
)
from socfeeds.slo import duration
from tasks._task import aws_task
from tasks.xql import XqlClient

READERS = 16  # objects read at once per feed: S3 round trips, not CPU, are the cost
LISTERS = 8  # prefixes listed at once per feed (pages of one prefix follow each other's continuation token)
LOOKBACK = timedelta(hours=1)  # XSIAM may time an event by its own clock, up to the source's delivery delay earlier
MAX_EKS_EVENTS = 10_000  # events read from the log group before sampling (a day of a busy cluster is millions)
SHOWN_MISSING = 20  # missing keys listed in events and the table


@dataclass(frozen=True)
class WindowObject:
    """A real log object of a feed written in the window."""

    bucket: str
    key: str
    size: int
    last_modified: datetime


class FeedAudit(BaseModel):
    """One feed's audit, worded for on-call: how complete and fresh XSIAM's copy is, what is missing, the fix."""

    model_config = ConfigDict(frozen=True)

    status: Status
    fix: str
    feed: str
    objects: int  # in the window (EKS: log events read from the log group)
    sampled: int
    found: int
    completeness: str  # found / sampled, as a percentage
    interval: str  # the 95% Wilson interval of completeness
    staleness: str  # age of the newest event XSIAM holds for the feed
    missing: str  # object keys and the needles XSIAM lacks
    ci_low: float
    ci_high: float
    staleness_seconds: float | None
    missing_keys: list[str]
    account: str


# --- the window's objects ---------------------------------------------------------------------------

def window_objects(aws: AwsClients, settings: Settings, feed_name: str, start: datetime,
                   end: datetime) -> list[WindowObject]:
    """Every object the feed's source wrote in [start, end) in each of its buckets, listing only the day folders
    the window touches (socfeeds.audit.listings); canary objects and objects younger than
    `audit.settle_minutes` (XSIAM may not have collected them yet) are left out."""
    feed = _s3_feed(settings, feed_name)
    settled_before = min(_utc(end), datetime.now(UTC) - timedelta(minutes=settings.audit.settle_minutes))
    if settled_before <= _utc(start):
        return []
    days = audit.window_days(start, settled_before)
    layouts = [(bucket, listing) for bucket in feed.buckets
               for listing in audit.listings(feed, settings.account_id, settings.region)]

    def discover(layout: tuple[str, audit.Listing]) -> list[tuple[str, str]]:
        bucket, listing = layout
        folders = listing.folders(lambda prefix: _subfolders(aws, bucket, prefix))
        return [(bucket, prefix) for prefix in listing.day_prefixes(folders, days)]

    def listed(where: tuple[str, str]) -> list[WindowObject]:
        return [o for o in _list(aws, *where)
                if audit.in_window(o.key, o.last_modified, start, settled_before, CANARY_KEY_PREFIX)]

    with ThreadPoolExecutor(max_workers=LISTERS, thread_name_prefix="s3-list") as pool:
        prefixes = [where for found in pool.map(discover, layouts) for where in found]
        return [o for objects in pool.map(listed, prefixes) for o in objects]


def _s3_feed(settings: Settings, feed_name: str) -> S3Feed:
    feed = settings.s3_feeds.get(feed_name)
    if feed is None:
        raise SettingsError(f"feed: {feed_name!r} has no bucket in account {settings.account_id}; its S3 feeds are "
                            f"{sorted(settings.s3_feeds)}")
    return feed


def _list(aws: AwsClients, bucket: str, prefix: str) -> Iterator[WindowObject]:
    for page in aws.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            yield WindowObject(bucket, o["Key"], o["Size"], o["LastModified"])


def _subfolders(aws: AwsClients, bucket: str, prefix: str) -> list[str]:
    return [common["Prefix"] for page in aws.s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/") for common in page.get("CommonPrefixes", [])]


def _utc(at: datetime) -> datetime:
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


# --- reading records --------------------------------------------------------------------------------

def object_records(aws: AwsClients, feed: S3Feed, obj: WindowObject) -> list[dict[str, object]]:
    """The object's records as XSIAM splits its log type (gzip or plain, whatever the name says)."""
    data = object_body(aws.s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"].read())
    return [dict(r) for r in read_records(feed.log_type, data.decode("utf-8", errors="replace"))]


def _needles_of(aws: AwsClients, feed: S3Feed, objects: Sequence[WindowObject], per_object: int,
                rng: random.Random | None) -> dict[WindowObject, list[str]]:
    """Needles of each object, read concurrently: `per_object` random records (rng), or the first (no rng).
    An object gone meanwhile (expired, deleted) or holding no record has none."""

    def read(obj: WindowObject) -> list[str]:
        try:
            records = object_records(aws, feed, obj)
        except ClientError as error:
            if error_code(error) in {"NoSuchKey", "404"}:
                return []
            raise
        if rng is None:
            return next(([n] for n in (audit.needle_for(feed.log_type, r) for r in records) if n), [])
        return audit.object_needles(feed.log_type, records, per_object, random.Random(rng.random()))

    with ThreadPoolExecutor(max_workers=READERS) as pool:
        return dict(zip(objects, pool.map(read, objects), strict=True))


# --- lookups ----------------------------------------------------------------------------------------

def _timeframe(start: datetime) -> tuple[int, int]:
    return int((_utc(start) - LOOKBACK).timestamp() * 1000), int(time.time() * 1000) + 60_000


def missing_objects(aws: AwsClients, xql: XqlClient, settings: Settings, feed_name: str, keys: Sequence[str],
                    deadline: float) -> list[str]:
    """The keys whose first record XSIAM does not hold: every given object checked (one needle each, 10 a query).

    Keys are looked for in the feed's buckets in order; a key in none of them, or an object without records, is
    not missing (there is nothing to ingest)."""
    feed = _s3_feed(settings, feed_name)
    located = _locate(aws, feed, keys)
    needles = _needles_of(aws, feed, located, 1, None)
    earliest = min((o.last_modified for o in located), default=datetime.now(UTC))
    held = xql.find(LOG_TYPE_DATASETS[feed.log_type], sorted({n for ns in needles.values() for n in ns}),
                    *_timeframe(earliest), deadline)
    return [obj.key for obj, ns in needles.items() if ns and not set(ns) <= held]


def _locate(aws: AwsClients, feed: S3Feed, keys: Sequence[str]) -> list[WindowObject]:
    def head(key: str) -> WindowObject | None:
        for bucket in feed.buckets:
            try:
                answer = aws.s3.head_object(Bucket=bucket, Key=key)
            except ClientError as error:
                if error_code(error) in {"NoSuchKey", "404", "NotFound"}:
                    continue
                raise
            return WindowObject(bucket, key, int(answer["ContentLength"]), answer["LastModified"])
        return None

    with ThreadPoolExecutor(max_workers=READERS) as pool:
        return [obj for obj in pool.map(head, keys) if obj is not None]


def staleness_filter(feed: S3Feed | FirehoseFeed) -> str | None:
    """Text only this feed's events carry in a dataset other feeds share: CloudTrail's `eventVersion` key, the flow
    log's VPC id, Fluent Bit's `kubernetes` metadata; None for a dataset of the feed's own."""
    if isinstance(feed, FirehoseFeed):
        return None
    if feed.log_type == "Audit Logs":
        return "eventVersion"
    if isinstance(feed.source, FlowLogSource):
        return feed.source.vpc_id
    if isinstance(feed.source, FluentBitSource):
        return "kubernetes"
    return None


# --- one feed's audit -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """What was sampled: each unit's label (object key, or EKS log stream and event id) and its needles."""

    population: int
    needles: dict[str, list[str]]


@aws_task("audit")
def audit_feed(aws: AwsClients, xql: XqlClient, settings: Settings, feed_name: str, window_hours: float,
               sample: int) -> list[FeedAudit]:
    """Sample the window's objects (EKS: log events), find their records in XSIAM, judge against the feed's SLO."""
    end = datetime.now(UTC)
    start = end - timedelta(hours=window_hours)
    rng = random.Random()
    feed = settings.feed(feed_name)
    per_object = settings.audit.records_per_object
    deadline = time.monotonic() + settings.audit.deadline_seconds
    dataset = LOG_TYPE_DATASETS["EKS" if isinstance(feed, FirehoseFeed) else feed.log_type]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xql-newest") as background:
        newest = background.submit(xql.newest_ms, dataset, int(start.timestamp() * 1000),
                                   int(time.time() * 1000) + 60_000, deadline, contains=staleness_filter(feed))
        if isinstance(feed, FirehoseFeed):
            drawn = _eks_sample(aws, settings, feed, start, sample, rng)
        else:
            objects = window_objects(aws, settings, feed_name, start, end)
            needles = _needles_of(aws, feed, audit.draw(objects, sample, rng), per_object, rng)
            drawn = Sample(len(objects), {o.key: ns for o, ns in needles.items()})
        wanted = sorted({n for ns in drawn.needles.values() for n in ns})
        held = xql.find(dataset, wanted, *_timeframe(start), deadline) if wanted else set()
        return [judge(feed_name, feed, settings.account_id, drawn, held, newest.result())]


def judge(feed_name: str, feed: S3Feed | FirehoseFeed, account: str, drawn: Sample, held: set[str],
          newest_ms: int | None, now_ms: int | None = None) -> FeedAudit:
    """The feed's row: objects count found when every sampled record is found; fail when the interval's upper
    bound is below the completeness objective, or the newest event is older than the staleness objective."""
    units = {label: ns for label, ns in drawn.needles.items() if ns}
    missing = {label: [n for n in ns if n not in held] for label, ns in units.items()}
    missing = {label: ns for label, ns in missing.items() if ns}
    found = len(units) - len(missing)
    low, high = audit.wilson(found, len(units))
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    staleness = None if newest_ms is None else max(0.0, (now_ms - newest_ms) / 1000)
    slo = feed.slo
    problems = []
    if units and high < slo.completeness:
        problems.append(f"{len(missing)} of {len(units)} sampled objects not in XSIAM")
    if staleness is None:
        problems.append("XSIAM holds no event of the feed in the window")
    elif staleness > slo.staleness_seconds:
        problems.append(f"newest event {duration(staleness)} old (objective {duration(slo.staleness_seconds)})")
    status = Status.FAIL if problems else Status.WARN if not units else Status.PASS
    return FeedAudit(
        status=status, fix=fix_for(feed_name, feed, problems, missing) if problems else
        ("" if units else "nothing written in the window to sample: check the source is logging (verify-feeds)"),
        feed=feed_name, objects=drawn.population, sampled=len(units), found=found,
        completeness=f"{found / len(units):.1%}" if units else "n/a",
        interval=f"{low:.1%} - {high:.1%}", staleness=duration(staleness) if staleness is not None else "no event",
        missing="; ".join(f"{label} ({', '.join(ns)})" for label, ns in list(missing.items())[:SHOWN_MISSING]),
        ci_low=round(low, 6), ci_high=round(high, 6), staleness_seconds=staleness,
        missing_keys=list(missing)[:SHOWN_MISSING], account=account)


def unaudited(feed_name: str, account: str, error: str) -> FeedAudit:
    """The row of a feed whose audit could not finish (AWS or XSIAM refused, a query outlived the deadline)."""
    return FeedAudit(status=Status.FAIL, fix=f"the audit could not finish: {error}; see the task run's log",
                     feed=feed_name, objects=0, sampled=0, found=0, completeness="n/a", interval="n/a",
                     staleness="n/a", missing="", ci_low=0.0, ci_high=1.0, staleness_seconds=None, missing_keys=[],
                     account=account)


def fix_for(feed_name: str, feed: S3Feed | FirehoseFeed, problems: list[str], missing: dict[str, list[str]]) -> str:
    """What on-call does: for S3 feeds replay the window's missing objects; for EKS see Firehose's backup."""
    what = "; ".join(problems)
    if isinstance(feed, FirehoseFeed):
        return (f"{what}: check the delivery stream {feed.delivery_stream} (verify-feeds: failed deliveries in "
                f"{feed.error_bucket}) and re-send what its backup holds")
    if missing:
        return (f"{what}: run replay-feed with feed={feed_name}, start/end = the audit window, only_missing=true; "
                "then check the queue and DLQ (verify-feeds)")
    return f"{what}: run verify-feeds (queue backlog, DLQ, notification) and the canary for {feed_name}"


# --- EKS: events of the log group -------------------------------------------------------------------

def _eks_sample(aws: AwsClients, settings: Settings, feed: FirehoseFeed, start: datetime, sample: int,
                rng: random.Random) -> Sample:
    """Events of the cluster log group in the window (FilterLogEvents, at most MAX_EKS_EVENTS read), canary streams
    and events younger than settle_minutes left out; `sample` drawn at random, one needle each."""
    settled_ms = int(time.time() * 1000) - int(settings.audit.settle_minutes * 60_000)
    events: list[tuple[str, str]] = []
    paginator = aws.logs.get_paginator("filter_log_events")
    for page in paginator.paginate(logGroupName=feed.log_group, startTime=int(start.timestamp() * 1000),
                                   endTime=settled_ms):
        events += [(f"{e['logStreamName']}#{e['eventId']}", e["message"]) for e in page.get("events", [])
                   if "socfeeds-canary" not in e["logStreamName"]]
        if len(events) >= MAX_EKS_EVENTS:
            break
    chosen = audit.draw(events, sample, rng)
    return Sample(len(events), {label: [n] for label, message in chosen if (n := audit.eks_needle(message))})
