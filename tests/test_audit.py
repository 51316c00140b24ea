"""audit-feeds: needles, sampling, the interval and where a window lives, without servers; then one audit end to end
that finds objects XSIAM never heard of."""

from __future__ import annotations

import gzip
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import Stack, prefect_events
from test_verify import artifacts_of
from test_xsiam_standin import eventually

from deployments.local.stack import LocalXsiam
from deployments.xsiam.collector import split_records
from flows._common import items_of
from flows.audit import audit_feeds
from socfeeds import audit, formats
from socfeeds.report import Status
from socfeeds.settings import (
    CloudFrontSource,
    CloudTrailSource,
    FlowLogSource,
    FluentBitSource,
    RdsLogsSource,
    ResolverQueryLogSource,
    S3Feed,
)
from tasks.audit import FeedAudit, Sample, judge, window_objects

ORIGIN = formats.Origin("123456789012", "eu-west-2", vpc_id="vpc-0a1b2c3d4e5f60718")
AT = datetime(2026, 11, 27, 10, 30, tzinfo=UTC)
LOG_TYPES = ("Audit Logs", "Flow Logs", "Route 53", "Generic", "CloudFront", "RDS")


def text_of(obj: formats.LogObject) -> str:
    return (gzip.decompress(obj.body) if obj.body[:2] == b"\x1f\x8b" else obj.body).decode()


# --- needles ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("log_type", LOG_TYPES)
def test_each_format_gives_a_needle_xql_can_search_and_xsiam_holds(log_type: str) -> None:
    """Quote-free, and a substring of the record as XSIAM keeps it; two records of the same source differ."""
    first, second = (text_of(formats.WRITERS[log_type](ORIGIN, f"m{n}", AT + timedelta(microseconds=n)))
                     for n in (1, 2))
    [record] = formats.read_records(log_type, first)
    needle = audit.needle_for(log_type, record)
    assert needle and not audit.NEEDLE_UNSAFE.search(needle)
    assert needle in split_records(log_type, first)[0]  # the record's _raw_log as the stand-in keeps it
    assert needle != audit.needle_for(log_type, formats.read_records(log_type, second)[0])


def test_cloudtrail_needle_is_the_event_id() -> None:
    [record] = formats.read_records("Audit Logs", text_of(formats.cloudtrail(ORIGIN, "m", AT)))
    assert audit.needle_for("Audit Logs", record) == record["eventID"]


def test_flow_log_needle_is_the_whole_line() -> None:
    text = text_of(formats.vpc_flow_log(ORIGIN, "m", AT))
    [record] = formats.read_records("Flow Logs", text)
    assert audit.needle_for("Flow Logs", record) == text.splitlines()[1]


def test_free_text_needles_skip_quotes_and_refuse_short_runs() -> None:
    assert audit.fluent_bit_needle({"log": 'GET "/healthz" 200 from kube-probe/1.29 in 2 ms'}) == \
        " 200 from kube-probe/1.29 in 2 ms"
    assert audit.fluent_bit_needle({"log": 'a "b" c'}) is None  # nothing particular enough: not sampled
    assert audit.eks_needle('{"auditID": "5e0f9a8c-1d2b-4c3d-9e8f-0a1b2c3d4e5f", "verb": "get"}') == \
        "5e0f9a8c-1d2b-4c3d-9e8f-0a1b2c3d4e5f"
    klog = 'I1127 10:30:00.123456      10 controller.go:123] "Starting workers" count=5'
    assert audit.eks_needle(klog) == "I1127 10:30:00.123456      10 controller.go:123] "
    assert audit.needle_for("Route 53", {"query_name": 'bad"name.'}) is None


# --- sampling and the interval ----------------------------------------------------------------------

def test_wilson_interval_matches_known_values_and_edges() -> None:
    low, high = audit.wilson(50, 50)
    assert high == 1.0 and round(low, 4) == 0.9287  # all found: the interval still admits a 7% loss
    low, high = audit.wilson(0, 50)
    assert low == 0.0 and round(high, 4) == 0.0713
    low, high = audit.wilson(12, 16)
    assert round(low, 4) == 0.5050 and round(high, 4) == 0.8982
    assert audit.wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="between 0 and sampled"):
        audit.wilson(3, 2)


def test_draw_is_a_sample_without_replacement_in_order() -> None:
    items = list(range(1000))
    chosen = audit.draw(items, 50, random.Random(7))
    assert len(set(chosen)) == 50 and chosen == sorted(chosen) and set(chosen) <= set(items)
    assert audit.draw(items[:10], 50, random.Random(7)) == items[:10]
    hits = sum(0 in audit.draw(items[:20], 5, random.Random(seed)) for seed in range(2000))
    assert 400 < hits < 600  # each item drawn with probability 5/20


def test_the_interval_covers_the_true_loss_about_95_percent_of_the_time() -> None:
    """Objects as the unit: 5,000 objects, 3% lost, samples of 50."""
    rng = random.Random(11)
    lost = set(rng.sample(range(5000), 150))
    covered = 0
    for _ in range(400):
        chosen = audit.draw(range(5000), 50, rng)
        low, high = audit.wilson(sum(i not in lost for i in chosen), len(chosen))
        covered += low <= 0.97 <= high
    assert covered / 400 >= 0.9


# --- where a window lives ---------------------------------------------------------------------------

LOG_TYPE_OF: dict[type, str] = {CloudTrailSource: "Audit Logs", FlowLogSource: "Flow Logs", ResolverQueryLogSource:
                                "Route 53", CloudFrontSource: "CloudFront", RdsLogsSource: "RDS"}


def feed_of(source: Any, **extra: Any) -> S3Feed:
    return S3Feed.model_validate({"log_type": LOG_TYPE_OF.get(type(source), "Generic"), "bucket": "b-123",
                                  "queue": "q", "retention_days": 7, "source": source, **extra})


def test_listings_follow_each_formats_layout() -> None:
    acct, region = "123456789012", "eu-west-2"
    assert audit.listings(feed_of(CloudTrailSource()), acct, region) == [
        audit.Listing(f"AWSLogs/{acct}/CloudTrail/*/")]
    organization = feed_of(CloudTrailSource(organization_id="o-a1b2c3d4e5"), source_accounts=("210987654321",))
    assert audit.listings(organization, acct, region) == [  # the management account's own, then every member's
        audit.Listing("AWSLogs/210987654321/CloudTrail/*/"), audit.Listing("AWSLogs/o-a1b2c3d4e5/*/CloudTrail/*/")]
    central = feed_of(FlowLogSource(vpc_id="vpc-0a1b2c3d"), source_accounts=("210987654321",))
    assert [x.prefix for x in audit.listings(central, acct, region)] == [
        f"AWSLogs/{acct}/vpcflowlogs/{region}/", f"AWSLogs/210987654321/vpcflowlogs/{region}/"]
    resolver = feed_of(ResolverQueryLogSource(vpc_id="vpc-0a1b2c3d"), source_accounts=("210987654321",))
    assert audit.listings(resolver, acct, region) == [
        audit.Listing(f"AWSLogs/{acct}/vpcdnsquerylogs/vpc-0a1b2c3d/"),
        audit.Listing("AWSLogs/210987654321/vpcdnsquerylogs/*/")]
    assert audit.listings(feed_of(FluentBitSource(key_prefix="/logs/")), acct, region) == [audit.Listing("logs/")]
    assert audit.listings(feed_of(RdsLogsSource(key_prefix="rds/exports")), acct, region) == [
        audit.Listing("rds/exports/")]
    assert audit.listings(feed_of(CloudFrontSource(key_prefix="web/{DistributionId}/{yyyy}")), acct, region) == [
        audit.Listing(f"AWSLogs/{acct}/CloudFront/web/", dated=False)]
    assert audit.listings(feed_of(None), acct, region) == [audit.Listing("", dated=False)]


def test_each_star_of_a_listing_is_one_folder_level_found() -> None:
    org = "AWSLogs/o-a1b2c3d4e5/"
    tree = {org: [f"{org}111111111111/", f"{org}222222222222/"],
            f"{org}111111111111/CloudTrail/": [f"{org}111111111111/CloudTrail/eu-west-2/"],
            f"{org}222222222222/CloudTrail/": [f"{org}222222222222/CloudTrail/us-east-1/",
                                               f"{org}222222222222/CloudTrail/eu-west-2/"]}
    asked: list[str] = []

    def subfolders(prefix: str) -> list[str]:
        asked.append(prefix)
        return tree.get(prefix, [])

    assert audit.Listing("AWSLogs/o-a1b2c3d4e5/*/CloudTrail/*/").folders(subfolders) == [
        "AWSLogs/o-a1b2c3d4e5/111111111111/CloudTrail/eu-west-2/",
        "AWSLogs/o-a1b2c3d4e5/222222222222/CloudTrail/us-east-1/",
        "AWSLogs/o-a1b2c3d4e5/222222222222/CloudTrail/eu-west-2/"]
    assert asked == ["AWSLogs/o-a1b2c3d4e5/", "AWSLogs/o-a1b2c3d4e5/111111111111/CloudTrail/",
                     "AWSLogs/o-a1b2c3d4e5/222222222222/CloudTrail/"]  # CloudTrail-Digest/ is never listed
    assert audit.Listing("logs/").folders(subfolders) == ["logs/"] and asked[-1].endswith("CloudTrail/")


def test_the_window_lists_only_the_days_it_touches() -> None:
    days = audit.window_days(datetime(2026, 11, 27, 22, tzinfo=UTC), datetime(2026, 11, 28, 3, tzinfo=UTC))
    assert audit.Listing("logs/").day_prefixes(["logs/"], days) == ["logs/2026/11/27/", "logs/2026/11/28/"]
    assert audit.Listing("x/", dated=False).day_prefixes(["x/"], days) == ["x/"]
    key = "socfeeds-canary/cloudtrail/AWSLogs/1/CloudTrail/x.json.gz"
    start, before = AT - timedelta(hours=1), AT
    assert not audit.in_window(key, AT - timedelta(minutes=5), start, before, "socfeeds-canary/")
    assert audit.in_window("AWSLogs/1/x", AT - timedelta(minutes=5), start, before, "socfeeds-canary/")
    assert not audit.in_window("AWSLogs/1/x", AT, start, before, "socfeeds-canary/")  # not yet settled


# --- judging a feed ---------------------------------------------------------------------------------

def test_a_feed_fails_on_a_missing_object_or_stale_data_and_names_the_replay() -> None:
    feed = feed_of(CloudTrailSource())
    drawn = Sample(120, {f"k{n}": [f"n{n}a", f"n{n}b"] for n in range(50)} | {"empty": []})
    now = 10_000_000
    clean = judge("cloudtrail", feed, "123456789012", drawn, {f"n{n}{s}" for n in range(50) for s in "ab"},
                  now - 60_000, now)
    assert (clean.status, clean.sampled, clean.found, clean.completeness) == (Status.PASS, 50, 50, "100.0%")
    one_lost = judge("cloudtrail", feed, "123456789012", drawn,
                     {f"n{n}{s}" for n in range(50) for s in "ab"} - {"n7b"}, now - 60_000, now)
    assert one_lost.status is Status.FAIL and one_lost.missing_keys == ["k7"] and "k7 (n7b)" in one_lost.missing
    assert "replay-feed" in one_lost.fix and "only_missing=true" in one_lost.fix
    stale = judge("cloudtrail", feed, "123456789012", drawn, {f"n{n}{s}" for n in range(50) for s in "ab"},
                  now - 7_200_000, now)
    assert stale.status is Status.FAIL and stale.staleness == "2 h" and "objective 1 h)" in stale.fix
    quiet = judge("cloudtrail", feed, "123456789012", Sample(0, {}), set(), None, now)
    assert quiet.status is Status.FAIL and quiet.staleness == "no event"


# --- end to end -------------------------------------------------------------------------------------

def write_trail_objects(stack: Stack, count: int) -> list[str]:
    feed = stack.settings.s3_feeds["cloudtrail"]
    origin = formats.Origin(stack.settings.account_id, stack.settings.region)
    keys = []
    for n in range(count):
        obj = formats.cloudtrail(origin, f"audit-{n}-{time.time_ns()}", datetime.now(UTC))
        stack.client("s3").put_object(Bucket=feed.bucket, Key=obj.key, Body=obj.body)
        keys.append(obj.key)
    return keys


def put_eks_events(stack: Stack, count: int) -> list[str]:
    """Audit events in a kube-apiserver-audit stream of the cluster log group, as EKS writes them; their auditIDs."""
    logs, group = stack.client("logs"), stack.settings.firehose_feeds["eks-control-plane"].log_group
    stream = f"{formats.EKS_AUDIT_STREAM_PREFIX}{uuid.uuid4().hex}"
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    events = [formats.eks_audit_event(f"audit-{n}", datetime.now(UTC)) for n in range(count)]
    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
        {"timestamp": int(time.time() * 1000), "message": event} for event in events])
    return [json.loads(event)["auditID"] for event in events]


def test_the_window_is_listed_across_regions_and_days(stack: Stack) -> None:
    """window_objects lists every day folder of every discovered region (at once): objects in yesterday's and
    today's folders of two regions are all listed."""
    feed = stack.settings.s3_feeds["cloudtrail"]
    s3, now = stack.client("s3"), datetime.now(UTC)
    s3.create_bucket(Bucket=feed.bucket, CreateBucketConfiguration={"LocationConstraint": stack.settings.region})
    written = []
    for region in (stack.settings.region, "us-east-1"):
        for at in (now - timedelta(days=1), now):
            obj = formats.cloudtrail(formats.Origin(stack.settings.account_id, region), f"w-{uuid.uuid4().hex}", at)
            s3.put_object(Bucket=feed.bucket, Key=obj.key, Body=obj.body)
            written.append(obj.key)
    settings = stack.settings.model_copy(update={"audit": stack.settings.audit.model_copy(
        update={"settle_minutes": 0})})  # objects written just now count
    listed = {o.key for o in window_objects(stack.aws, settings, "cloudtrail", now - timedelta(days=1),
                                            now + timedelta(minutes=1))}
    assert set(written) <= listed


def test_audit_finds_objects_xsiam_never_heard_of(stack: Stack, collecting: LocalXsiam) -> None:
    """12 CloudTrail objects collected, 4 written while the bucket's notification was off (a broken notification,
    as users report): the audit samples all 16, lists the 4 keys, and its interval holds the true 75%. The EKS
    feed's log-group events all reached XSIAM through Firehose: it passes."""
    stack.update(audit={"settle_minutes": 0, "deadline_seconds": 60})
    feed = stack.settings.s3_feeds["cloudtrail"]
    s3 = stack.client("s3")
    delivered = write_trail_objects(stack, 12)
    eventually("12 objects collected", lambda: len({e["origin"] for e in collecting.events("aws_s3_raw")
                                                    if e["origin"].split("/", 3)[3] in delivered}) == 12 or None, 30)
    notification = {k: v for k, v in s3.get_bucket_notification_configuration(Bucket=feed.bucket).items()
                    if k != "ResponseMetadata"}
    s3.put_bucket_notification_configuration(Bucket=feed.bucket, NotificationConfiguration={})
    lost = write_trail_objects(stack, 4)
    s3.put_bucket_notification_configuration(Bucket=feed.bucket, NotificationConfiguration=notification)
    audit_ids = put_eks_events(stack, 6)
    eventually("EKS events delivered", lambda: all(collecting.count("amazon_eks_raw", i) for i in audit_ids) or None,
               30)

    listed = window_objects(stack.aws, stack.settings, "cloudtrail", datetime.now(UTC) - timedelta(hours=1),
                            datetime.now(UTC))
    assert sorted(o.key for o in listed) == sorted(delivered + lost)
    state = audit_feeds(feeds=["cloudtrail", "eks-control-plane"], sample=50, return_state=True)
    result, eks = items_of(state)  # failures first
    assert isinstance(result, FeedAudit) and state.is_failed() and "replay-feed" in str(state.message)
    assert (eks.feed, eks.status, eks.objects, eks.sampled, eks.found) == ("eks-control-plane", Status.PASS, 6, 6, 6)
    assert (result.objects, result.sampled, result.found) == (16, 16, 12)
    assert sorted(result.missing_keys) == sorted(lost)
    assert result.ci_low <= 12 / 16 <= result.ci_high
    assert result.staleness_seconds is not None and result.staleness_seconds < 600
    events = eventually("the audit event", lambda: [e for e in prefect_events("socfeeds.audit.completed")
                                                    if sorted(e["payload"]["missing_keys"]) == sorted(lost)] or None)
    assert events[0]["resource"]["prefect.resource.id"] == "socfeeds.feed.cloudtrail"
    assert events[0]["payload"]["completeness"] == 0.75 and events[0]["payload"]["sampled"] == 16
    assert json.dumps(events[0]).count(stack.settings.account_id) >= 2  # resource label and payload
    slos = str(artifacts_of(state)["feed-slos"].data)  # the audit's own result, passed in, is the latest
    rows = {tuple(line.split(" | ")[1:3]): line.split(" | ")[3] for line in slos.splitlines() if " | " in line}
    assert rows["cloudtrail", "completeness"].startswith("75.00% (12 of 16 found"), slos


def test_bad_parameters_are_refused_naming_the_field(stack: Stack) -> None:
    for parameters, field in (({"window_hours": 0}, "window_hours"), ({"sample": 0}, "sample")):
        state = audit_feeds(feeds=["cloudtrail"], return_state=True, **parameters)
        assert state.is_failed() and str(state.message).startswith(f"audit-feeds: {field}: "), state.message
