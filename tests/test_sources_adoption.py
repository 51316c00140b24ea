"""Adopting the platform's estate: sources are found by what they do (they write into the feed's bucket), never by
name, so provision neither duplicates them nor stops on a name that someone else holds; verify agrees with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from conftest import Stack

from socfeeds.aws import AwsClients
from socfeeds.report import Change, Finding, Status
from socfeeds.settings import SETTINGS_FILE_ENV, FlowLogSource, S3Feed, Settings
from tasks.buckets import ensure_bucket
from tasks.notifications import ensure_notification
from tasks.queues import ensure_queues
from tasks.sources import (
    FLOW_LOG_FORMAT,
    FlowLogConflict,
    check_source,
    count_sources,
    ensure_source,
    flow_log_fits,
    flow_log_prefix,
    trail_log_prefix,
)

FLOW, DNS, TRAIL = "vpc-flow-logs", "route53-resolver", "cloudtrail"
ACCOUNT = "123456789012"


def wire(stack: Stack, aws: AwsClients, feed: str) -> None:
    """The bucket, queues and notification a source writes into, as provision makes them first."""
    for step in (ensure_bucket, ensure_queues, ensure_notification):
        step.fn(aws, stack.settings, feed, False)


def set_source(stack: Stack, feed: str, **fields: Any) -> None:
    feeds = stack.values["s3_feeds"]
    feeds[feed]["source"].update(fields)
    stack.update(s3_feeds=feeds)


@contextmanager
def writes(aws: AwsClients) -> Iterator[list[str]]:
    """The AWS operations made inside the block that are not reads (Describe, List, Get)."""
    made: list[str] = []

    def record(event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if not operation.startswith(("Describe", "List", "Get")):
            made.append(operation)

    clients = (aws.ec2, aws.resolver, aws.cloudtrail)
    for client in clients:
        client.meta.events.register("before-call", record)
    try:
        yield made
    finally:
        for client in clients:
            client.meta.events.unregister("before-call", record)


def actions(changes: list[Change]) -> list[tuple[str, bool]]:
    return [(c.action, c.applied) for c in changes]


def finding(findings: list[Finding], check: str) -> Finding:
    [match] = [f for f in findings if f.check == check]
    return match


def bucket_arn(stack: Stack, feed: str) -> str:
    return f"arn:aws:s3:::{stack.settings.s3_feeds[feed].bucket}"


# --- flow logs -------------------------------------------------------------------------------

def their_flow_log(stack: Stack, **options: Any) -> str:
    """A flow log the platform made: on the VPC, to the feed's bucket, in the AWS default format unless told."""
    answer = stack.client("ec2").create_flow_logs(
        ResourceIds=[stack.local.vpc_id], ResourceType="VPC", LogDestinationType="s3",
        LogDestination=bucket_arn(stack, FLOW), **{"TrafficType": "ALL", **options})
    assert answer["Unsuccessful"] == []
    [flow_log_id] = answer["FlowLogIds"]
    return str(flow_log_id)


def flow_logs(stack: Stack) -> list[dict[str, Any]]:
    every = stack.client("ec2").describe_flow_logs()["FlowLogs"]
    return [dict(f) for f in every if f["LogDestination"] == bucket_arn(stack, FLOW)]


def test_flow_log_in_another_format_is_reported_never_duplicated(stack: Stack) -> None:
    aws = stack.aws
    wire(stack, aws, FLOW)
    theirs = their_flow_log(stack)
    with writes(aws) as made:
        planned = ensure_source.fn(aws, stack.settings, FLOW, True)
        changes = ensure_source.fn(aws, stack.settings, FLOW, False)
    assert made == []
    assert actions(changes) == [("flow log format differs", False)] and planned == changes
    assert theirs in changes[0].detail and "AWS default format (14 fields)" in changes[0].detail
    assert f"s3_feeds.{FLOW}.source.replace_mismatched = true" in changes[0].detail
    assert count_sources(aws, stack.settings, FLOW) == {"flow_logs": 1}
    failed = finding(check_source.fn(aws, stack.settings, FLOW), "flow log")
    assert failed.status is Status.FAIL and theirs in failed.detail
    assert failed.fix == (f"set s3_feeds.{FLOW}.source.replace_mismatched = true and run provision-feeds "
                          f"(creates the XSIAM-format flow log, then deletes {theirs})")


@pytest.mark.parametrize("replace_mismatched", [False, True])
def test_flow_log_in_the_xsiam_format_is_adopted_whatever_its_other_settings(stack: Stack,
                                                                            replace_mismatched: bool) -> None:
    aws = stack.aws
    wire(stack, aws, FLOW)
    theirs = their_flow_log(stack, LogFormat=FLOW_LOG_FORMAT, MaxAggregationInterval=60)
    set_source(stack, FLOW, replace_mismatched=replace_mismatched)
    with writes(aws) as made:
        assert ensure_source.fn(aws, stack.settings, FLOW, True) == []
        assert ensure_source.fn(aws, stack.settings, FLOW, False) == []
    assert made == []
    assert [f["FlowLogId"] for f in flow_logs(stack)] == [theirs]
    findings = check_source.fn(aws, stack.settings, FLOW)
    assert [f for f in findings if f.status is not Status.PASS] == []
    assert f"{theirs} (adopted, not created by socfeeds)" in finding(findings, "flow log").detail


def keeps_two_formats(stack: Stack) -> bool:
    """Whether the stack's EC2 accepts a second flow log to one destination in another format, as AWS does
    (CloudFormation replaces a format change create-first); moto 5.2.5 answers FlowLogAlreadyExists. Probed on a
    bucket of its own, so the test expects the answer this emulator gives, and both are safe."""
    ec2, bucket = stack.client("ec2"), f"{stack.settings.s3_feeds[FLOW].bucket[:56]}-probe"
    stack.client("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    made: list[str] = []
    try:
        for log_format in ({}, {"LogFormat": FLOW_LOG_FORMAT}):
            made += ec2.create_flow_logs(ResourceIds=[stack.local.vpc_id], ResourceType="VPC", TrafficType="ALL",
                                         LogDestinationType="s3", LogDestination=f"arn:aws:s3:::{bucket}",
                                         **log_format)["FlowLogIds"]
        return True
    except ClientError as error:
        assert error.response["Error"]["Code"] == "FlowLogAlreadyExists"
        return False
    finally:
        ec2.delete_flow_logs(FlowLogIds=made)


def test_replace_mismatched_replaces_create_first_or_deletes_nothing_and_says_how(stack: Stack) -> None:
    aws = stack.aws
    wire(stack, aws, FLOW)
    theirs = their_flow_log(stack)
    set_source(stack, FLOW, replace_mismatched=True)
    with writes(aws) as made:
        planned = ensure_source.fn(aws, stack.settings, FLOW, True)
    assert made == [] and [f["FlowLogId"] for f in flow_logs(stack)] == [theirs]
    assert actions(planned) == [("create flow log", False), ("delete flow log", False)]
    assert finding(check_source.fn(aws, stack.settings, FLOW), "flow log").fix.startswith(
        "run provision-feeds for this feed (it will create flow log")

    if keeps_two_formats(stack):
        assert actions(ensure_source.fn(aws, stack.settings, FLOW, False)) == [
            ("create flow log", True), ("delete flow log", True)]
    else:  # the old flow log must keep delivering, and the engineer gets the fix, not a raw FlowLogAlreadyExists
        with pytest.raises(FlowLogConflict) as refused:
            ensure_source.fn(aws, stack.settings, FLOW, False)
        assert f"Nothing was deleted: {theirs} still delivers" in str(refused.value)
        assert f"aws ec2 delete-flow-logs --flow-log-ids {theirs}) and run provision-feeds" in str(refused.value)
        assert [f["FlowLogId"] for f in flow_logs(stack)] == [theirs]
        stack.client("ec2").delete_flow_logs(FlowLogIds=[theirs])  # the fix, as the engineer follows it
        assert actions(ensure_source.fn(aws, stack.settings, FLOW, False)) == [("create flow log", True)]
    [ours] = flow_logs(stack)
    assert flow_log_fits(ours) and ours["FlowLogId"] != theirs
    assert ensure_source.fn(aws, stack.settings, FLOW, False) == []
    assert [f for f in check_source.fn(aws, stack.settings, FLOW) if f.status is not Status.PASS] == []


# Where AWS accepts the replacement beside the old flow log, the order of the calls is the behaviour (create, then
# delete; nothing deleted when the create fails): a stubbed EC2 client pins it call by call, whatever the emulator.
VPC = "vpc-0123456789abcdef0"
BUCKET = "platform-flow-logs-123456789012"
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
DEFAULT_FORMAT = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} " \
                 "${packets} ${bytes} ${start} ${end} ${action} ${log-status}"


def _flow_log(flow_log_id: str, log_format: str) -> dict[str, Any]:
    return {"FlowLogId": flow_log_id, "ResourceId": VPC, "TrafficType": "ALL", "LogDestinationType": "s3",
            "LogDestination": BUCKET_ARN, "LogFormat": log_format, "FlowLogStatus": "ACTIVE",
            "DeliverLogsStatus": "SUCCESS"}


def _settings(replace_mismatched: bool) -> Settings:
    return Settings(account_id=ACCOUNT, vpc_id=VPC, firehose_feeds={}, s3_feeds={FLOW: S3Feed(
        log_type="Flow Logs", bucket=BUCKET, queue="platform-flow-logs", retention_days=90,
        source=FlowLogSource(replace_mismatched=replace_mismatched))})


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AwsClients, Stubber]]:
    """An EC2 client that answers only the calls queued on it, in order, with the parameters given."""
    monkeypatch.delenv(SETTINGS_FILE_ENV, raising=False)
    session = boto3.session.Session(aws_access_key_id="unit", aws_secret_access_key="unit")
    aws = AwsClients(session, "eu-west-2", endpoint_url="http://127.0.0.1:9")
    with Stubber(aws.ec2) as stubber:
        yield aws, stubber
        stubber.assert_no_pending_responses()


def _describe(stubber: Stubber, *found: dict[str, Any]) -> None:
    stubber.add_response("describe_flow_logs", {"FlowLogs": list(found)},
                         {"Filters": [{"Name": "resource-id", "Values": [VPC]}]})


CREATE = {"ResourceIds": [VPC], "ResourceType": "VPC", "TrafficType": "ALL", "LogDestinationType": "s3",
          "LogDestination": BUCKET_ARN, "LogFormat": FLOW_LOG_FORMAT, "MaxAggregationInterval": 600,
          "DestinationOptions": ANY, "TagSpecifications": ANY}


def test_replacement_creates_the_xsiam_flow_log_first_then_deletes_the_old(stubbed: tuple[AwsClients, Stubber]) -> None:
    (aws, stubber), settings = stubbed, _settings(replace_mismatched=True)
    _describe(stubber, _flow_log("fl-0old", DEFAULT_FORMAT))
    stubber.add_response("create_flow_logs", {"FlowLogIds": ["fl-0new"], "Unsuccessful": []}, CREATE)
    stubber.add_response("delete_flow_logs", {"Unsuccessful": []}, {"FlowLogIds": ["fl-0old"]})
    changes = ensure_source.fn(aws, settings, FLOW, False)
    assert actions(changes) == [("create flow log", True), ("delete flow log", True)]
    assert "fl-0old" in changes[1].detail

    _describe(stubber, _flow_log("fl-0new", FLOW_LOG_FORMAT))  # the second run finds only the new one
    assert ensure_source.fn(aws, settings, FLOW, False) == []
    _describe(stubber, _flow_log("fl-0new", FLOW_LOG_FORMAT))
    assert [f for f in check_source.fn(aws, settings, FLOW) if f.status is not Status.PASS] == []


def test_a_refused_create_deletes_nothing(stubbed: tuple[AwsClients, Stubber]) -> None:
    (aws, stubber), settings = stubbed, _settings(replace_mismatched=True)
    _describe(stubber, _flow_log("fl-0old", DEFAULT_FORMAT))
    stubber.add_response("create_flow_logs", {"FlowLogIds": [], "Unsuccessful": [
        {"ResourceId": VPC, "Error": {"Code": "400", "Message": "Access Denied for LogDestination"}}]}, CREATE)
    with pytest.raises(RuntimeError, match=r"was refused: Access Denied for LogDestination\. Nothing was deleted"):
        ensure_source.fn(aws, settings, FLOW, False)  # a delete_flow_logs call here would fail: none is stubbed


def test_old_format_beside_an_xsiam_one_is_deleted_only_when_allowed(stubbed: tuple[AwsClients, Stubber]) -> None:
    """A replacement interrupted after its create, or an old flow log left beside ours: both formats land in one
    bucket. Only replace_mismatched = true lets provision delete the old one; otherwise verify warns."""
    aws, stubber = stubbed
    both = (_flow_log("fl-0new", FLOW_LOG_FORMAT), _flow_log("fl-0old", DEFAULT_FORMAT))
    _describe(stubber, *both)
    assert ensure_source.fn(aws, _settings(replace_mismatched=False), FLOW, False) == []
    _describe(stubber, *both)
    warned = finding(check_source.fn(aws, _settings(replace_mismatched=False), FLOW), "other flow log formats")
    assert warned.status is Status.WARN and "fl-0old" in warned.detail

    _describe(stubber, *both)
    stubber.add_response("delete_flow_logs", {"Unsuccessful": []}, {"FlowLogIds": ["fl-0old"]})
    assert actions(ensure_source.fn(aws, _settings(replace_mismatched=True), FLOW, False)) == [
        ("delete flow log", True)]


def test_flow_log_with_a_key_prefix_is_found_and_a_lookalike_bucket_is_not(stubbed: tuple[AwsClients, Stubber]) -> None:
    aws, stubber = stubbed
    prefixed = {**_flow_log("fl-0theirs", FLOW_LOG_FORMAT), "LogDestination": f"{BUCKET_ARN}/platform/"}
    lookalike = {**_flow_log("fl-0other", DEFAULT_FORMAT), "LogDestination": f"{BUCKET_ARN}-archive"}
    _describe(stubber, prefixed, lookalike)
    assert ensure_source.fn(aws, _settings(replace_mismatched=True), FLOW, False) == []
    _describe(stubber, prefixed, lookalike)
    assert count_sources(aws, _settings(replace_mismatched=True), FLOW) == {"flow_logs": 1}
    assert flow_log_prefix(prefixed, ACCOUNT) == f"platform/AWSLogs/{ACCOUNT}/"


# --- Route 53 Resolver query logging ---------------------------------------------------------

def their_config(stack: Stack, name: str, destination: str, associate: bool) -> str:
    resolver = stack.client("route53resolver")
    config = resolver.create_resolver_query_log_config(Name=name, DestinationArn=destination,
                                                       CreatorRequestId=f"platform-{name}")["ResolverQueryLogConfig"]
    if associate:
        resolver.associate_resolver_query_log_config(ResolverQueryLogConfigId=config["Id"],
                                                     ResourceId=stack.local.vpc_id)
    return str(config["Id"])


def configs_to_bucket(stack: Stack) -> list[dict[str, Any]]:
    every = stack.client("route53resolver").list_resolver_query_log_configs()["ResolverQueryLogConfigs"]
    return [dict(c) for c in every if c["DestinationArn"] == bucket_arn(stack, DNS)]


def associations_of(stack: Stack, config_id: str) -> list[dict[str, Any]]:
    every = stack.client("route53resolver").list_resolver_query_log_config_associations()
    return [dict(a) for a in every["ResolverQueryLogConfigAssociations"]
            if a["ResolverQueryLogConfigId"] == config_id and a["ResourceId"] == stack.local.vpc_id]


def test_query_log_config_under_a_foreign_name_is_adopted(stack: Stack) -> None:
    aws = stack.aws
    wire(stack, aws, DNS)
    name = f"platform-dns-{stack.settings.s3_feeds[DNS].bucket[:30]}"
    theirs = their_config(stack, name, bucket_arn(stack, DNS), associate=True)
    with writes(aws) as made:
        assert ensure_source.fn(aws, stack.settings, DNS, True) == []
        assert ensure_source.fn(aws, stack.settings, DNS, False) == []
    assert made == []
    assert count_sources(aws, stack.settings, DNS) == {"query_log_configs": 1, "associations": 1}
    assert len(associations_of(stack, theirs)) == 1
    findings = check_source.fn(aws, stack.settings, DNS)
    assert [f for f in findings if f.status is not Status.PASS] == []
    assert f"{name} ({theirs}, adopted, not socfeeds' name" in finding(findings, "query log config").detail


def test_unassociated_foreign_config_is_associated_not_duplicated(stack: Stack) -> None:
    aws = stack.aws
    wire(stack, aws, DNS)
    theirs = their_config(stack, f"platform-dns-{stack.settings.s3_feeds[DNS].bucket[:30]}", bucket_arn(stack, DNS),
                          associate=False)
    assert finding(check_source.fn(aws, stack.settings, DNS), "query logging on vpc").status is Status.FAIL
    with writes(aws) as made:
        planned = ensure_source.fn(aws, stack.settings, DNS, True)
    assert made == [] and associations_of(stack, theirs) == []
    changes = ensure_source.fn(aws, stack.settings, DNS, False)
    assert actions(planned) == [("associate query logging", False)]
    assert actions(changes) == [("associate query logging", True)] and theirs in changes[0].detail
    assert count_sources(aws, stack.settings, DNS) == {"query_log_configs": 1, "associations": 1}
    assert len(associations_of(stack, theirs)) == 1
    assert ensure_source.fn(aws, stack.settings, DNS, False) == []
    assert [f for f in check_source.fn(aws, stack.settings, DNS) if f.status is not Status.PASS] == []


def test_declared_config_name_writing_elsewhere_no_longer_stops_the_feed(stack: Stack) -> None:
    aws = stack.aws
    wire(stack, aws, DNS)
    declared = stack.settings.s3_feeds[DNS].source.config_name  # type: ignore[union-attr]
    elsewhere = f"arn:aws:s3:::{stack.settings.s3_feeds[DNS].bucket[:58]}-old"
    holder = their_config(stack, declared, elsewhere, associate=False)
    with writes(aws) as made:
        planned = ensure_source.fn(aws, stack.settings, DNS, True)
    assert made == [] and configs_to_bucket(stack) == []
    changes = ensure_source.fn(aws, stack.settings, DNS, False)
    assert actions(planned) == [("create query log config", False), ("associate query logging", False)]
    assert actions(changes) == [("create query log config", True), ("associate query logging", True)]
    assert f"is taken by {holder}, which writes to {elsewhere}" in changes[0].detail
    [ours] = configs_to_bucket(stack)
    assert ours["Name"] == f"{declared}-{DNS}" and len(associations_of(stack, str(ours["Id"]))) == 1
    [kept] = [c for c in stack.client("route53resolver").list_resolver_query_log_configs()["ResolverQueryLogConfigs"]
              if c["Id"] == holder]
    assert kept["DestinationArn"] == elsewhere and kept["Name"] == declared
    assert ensure_source.fn(aws, stack.settings, DNS, False) == []
    assert [f for f in check_source.fn(aws, stack.settings, DNS) if f.status is not Status.PASS] == []


# --- CloudTrail ------------------------------------------------------------------------------

def admit_trail(stack: Stack, bucket: str, trail: str, prefix: str = "") -> None:
    """The platform's own statements for its trail, as AWS requires before it creates one into the bucket."""
    s3, bucket_arn = stack.client("s3"), f"arn:aws:s3:::{bucket}"
    try:
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except ClientError:
        policy = {"Version": "2012-10-17", "Statement": []}
    source = {"aws:SourceArn": f"arn:aws:cloudtrail:eu-west-2:{ACCOUNT}:trail/{trail}"}
    principal = {"Service": "cloudtrail.amazonaws.com"}
    policy["Statement"] += [
        {"Sid": "PlatformTrailAcl", "Effect": "Allow", "Principal": principal, "Action": "s3:GetBucketAcl",
         "Resource": bucket_arn, "Condition": {"StringEquals": source}},
        {"Sid": "PlatformTrailWrite", "Effect": "Allow", "Principal": principal, "Action": "s3:PutObject",
         "Resource": f"{bucket_arn}/{prefix}AWSLogs/{ACCOUNT}/*",
         "Condition": {"StringEquals": {**source, "s3:x-amz-acl": "bucket-owner-full-control"}}}]
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def test_trail_under_a_foreign_name_is_adopted_and_converged_keeping_its_prefix(stack: Stack) -> None:
    aws, cloudtrail = stack.aws, stack.client("cloudtrail")
    wire(stack, aws, TRAIL)
    bucket = stack.settings.s3_feeds[TRAIL].bucket
    declared = stack.settings.s3_feeds[TRAIL].source.trail_name  # type: ignore[union-attr]
    theirs = f"platform-audit-{bucket}"
    admit_trail(stack, bucket, theirs, "platform/")
    cloudtrail.create_trail(Name=theirs, S3BucketName=bucket, S3KeyPrefix="platform")  # one region, no validation

    with writes(aws) as made:
        planned = ensure_source.fn(aws, stack.settings, TRAIL, True)
    assert made == [] and actions(planned) == [("update trail", False), ("start logging", False)]
    assert not cloudtrail.get_trail(Name=theirs)["Trail"]["IsMultiRegionTrail"]
    assert finding(check_source.fn(aws, stack.settings, TRAIL), "trail settings").status is Status.FAIL

    changes = ensure_source.fn(aws, stack.settings, TRAIL, False)
    assert actions(changes) == [("update trail", True), ("start logging", True)]
    assert f"{theirs} (adopted, not socfeeds' name" in changes[0].detail
    assert count_sources(aws, stack.settings, TRAIL) == {"trails": 1}
    trail = cloudtrail.get_trail(Name=theirs)["Trail"]
    assert trail["IsMultiRegionTrail"] and trail["LogFileValidationEnabled"] and trail["IncludeGlobalServiceEvents"]
    assert trail["S3KeyPrefix"] == "platform" and trail_log_prefix(trail, ACCOUNT) == f"platform/AWSLogs/{ACCOUNT}/"
    assert cloudtrail.get_trail_status(Name=theirs)["IsLogging"]
    with pytest.raises(ClientError, match="TrailNotFoundException"):
        cloudtrail.get_trail(Name=declared)

    assert ensure_source.fn(aws, stack.settings, TRAIL, False) == []
    findings = check_source.fn(aws, stack.settings, TRAIL)
    assert [f for f in findings if f.status is not Status.PASS] == []
    assert f"s3://{bucket}/platform/AWSLogs/{ACCOUNT}/" in finding(findings, "trail exists").detail


def test_declared_trail_serving_another_bucket_is_reported_never_redirected(stack: Stack) -> None:
    aws, cloudtrail, s3 = stack.aws, stack.client("cloudtrail"), stack.client("s3")
    wire(stack, aws, TRAIL)
    declared = stack.settings.s3_feeds[TRAIL].source.trail_name  # type: ignore[union-attr]
    other = f"{stack.settings.s3_feeds[TRAIL].bucket[:58]}-old"
    s3.create_bucket(Bucket=other, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    admit_trail(stack, other, declared)
    cloudtrail.create_trail(Name=declared, S3BucketName=other)
    with writes(aws) as made:
        changes = ensure_source.fn(aws, stack.settings, TRAIL, False)
    assert made == [] and actions(changes) == [("trail name taken", False)]
    assert f"s3_feeds.{TRAIL}.source.trail_name" in changes[0].detail
    assert cloudtrail.get_trail(Name=declared)["Trail"]["S3BucketName"] == other
    failed = finding(check_source.fn(aws, stack.settings, TRAIL), "trail exists")
    assert failed.status is Status.FAIL and f"s3_feeds.{TRAIL}.source.trail_name" in failed.fix


def test_an_organization_trail_outside_any_organization_is_reported_and_never_attempted(stack: Stack) -> None:
    """The local single account is in no Organization: AWS would refuse the trail (OrganizationsNotInUse)."""
    aws = stack.aws
    wire(stack, aws, TRAIL)
    set_source(stack, TRAIL, organization_id="o-a1b2c3d4e5")
    with writes(aws) as made:
        changes = ensure_source.fn(aws, stack.settings, TRAIL, False)
    assert made == [] and actions(changes) == [("not in an organization", False)]
    assert f"remove s3_feeds.{TRAIL}.source.organization_id" in changes[0].detail
    failed = finding(check_source.fn(aws, stack.settings, TRAIL), "trail organization")
    assert failed.status is Status.FAIL and "is in no AWS Organization" in failed.detail
    assert "run the feed from the management account of o-a1b2c3d4e5" in failed.fix
    assert [f.check for f in check_source.fn(aws, stack.settings, TRAIL)] == ["trail organization"]
