"""The RDS feed on the local stack: an RDS log group -> subscription -> Firehose (extended S3) -> the feed bucket ->
SQS -> the XSIAM stand-in; and CloudFront's standard logging (v2) delivery, the other source CloudWatch Logs writes.

moto cannot make an RDS instance log, so each test creates the log group RDS would write to (with the admin
client) and puts the event RDS would export, in a stream named after the instance as RDS names them.
"""

from __future__ import annotations

import gzip
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import Stack
from parliament import analyze_policy_string
from test_parliament import SUPPRESSED
from test_verify import status_of
from test_xsiam_standin import eventually

from deployments.local.stack import LocalXsiam
from flows.provision import provision_feeds
from flows.verify import FEED_CHECKS
from socfeeds import formats, policies
from socfeeds.arns import Arns
from socfeeds.policies import RDS_CANARY_STREAM_PREFIX
from socfeeds.report import Change, Finding, Status
from socfeeds.settings import RdsLogsSource, S3Feed, Settings
from tasks.canary import CanaryResult, ensure_canary_writer, writer_clients
from tasks.rds import canary_rds, cloudfront_logs, firehose_role_policy, rendered
from tasks.sources import check_source, ensure_source
from tasks.xql import XqlClient

FEED = "rds"
CLOUDFRONT = "cloudfront"


def feed(stack: Stack, name: str = FEED) -> S3Feed:
    return stack.settings.s3_feeds[name]


def source(stack: Stack) -> RdsLogsSource:
    settings = stack.settings
    declared = settings.s3_feeds[FEED].source
    assert isinstance(declared, RdsLogsSource)
    return rendered(declared, settings, settings.s3_feeds[FEED])


def declare(stack: Stack, name: str = FEED, **source_fields: Any) -> None:
    """Change the feed's source in the settings file, as an operator would."""
    feeds = stack.values["s3_feeds"]
    stack.update(s3_feeds={**feeds, name: {**feeds[name], "source": {**feeds[name]["source"], **source_fields}}})


def rds_log_group(stack: Stack, log_type: str = "postgresql") -> tuple[str, str]:
    """(instance id, log group) of an instance of this test's own, its group created as the RDS module does."""
    instance = f"{feed(stack).bucket.split('-')[0]}-cloud-platform-{uuid.uuid4().hex[:8]}"
    group = f"{RdsLogsSource.LOG_GROUP_PREFIX}{instance}/{log_type}"
    stack.client("logs").create_log_group(logGroupName=group)
    return instance, group


def put_rds_event(stack: Stack, group: str, instance: str, marker: str) -> None:
    logs, now = stack.client("logs"), datetime.now(UTC)
    if not logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=instance)["logStreams"]:
        logs.create_log_stream(logGroupName=group, logStreamName=instance)
    logs.put_log_events(logGroupName=group, logStreamName=instance, logEvents=[
        {"timestamp": int(now.timestamp() * 1000), "message": formats.rds_log_line("postgresql", marker, now)}])


def provision(stack: Stack, name: str = FEED) -> list[Change]:
    return [c for c in provision_feeds(feeds=[name]) if c.feed == name]


def checks(stack: Stack, name: str = FEED) -> list[Finding]:
    return [f for check in FEED_CHECKS for f in check.fn(stack.aws, stack.settings, name)]


def failing(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status is Status.FAIL]


def objects(stack: Stack) -> list[str]:
    listed = stack.client("s3").list_objects_v2(Bucket=feed(stack).bucket, Prefix=f"{source(stack).key_prefix}/")
    return [o["Key"] for o in listed.get("Contents", [])]


# --- the path end to end ---------------------------------------------------------------------

def test_an_rds_event_reaches_xsiam_keeping_its_log_group_and_instance(stack: Stack, collecting: LocalXsiam) -> None:
    instance, group = rds_log_group(stack)
    declare(stack, log_groups=[group])
    provision(stack)
    assert failing(checks(stack)) == []
    marker = f"socfeeds-test-{uuid.uuid4().hex}"
    put_rds_event(stack, group, instance, marker)

    [key] = eventually("Firehose object in the feed bucket", lambda: objects(stack))
    stream = re.escape(source(stack).delivery_stream)  # Firehose names it <prefix>/YYYY/MM/DD/HH/<stream>-<v>-...
    assert re.fullmatch(rf"logs/\d{{4}}/\d\d/\d\d/\d\d/{stream}-1-\d{{4}}(-\d\d){{5}}-[0-9a-f-]{{36}}", key), key
    body = stack.client("s3").get_object(Bucket=feed(stack).bucket, Key=key)["Body"].read()
    [payload] = [json.loads(gzip.decompress(body))]  # CloudWatch Logs' gzip, not compressed again by Firehose
    assert (payload["logGroup"], payload["logStream"]) == (group, instance)

    [event] = eventually("the record in amazon_rds_raw", lambda: [
        e for e in collecting.events("amazon_rds_raw") if marker in json.dumps(e["raw"])])
    assert event["origin"] == f"s3://{feed(stack).bucket}/{key}"  # the collector only learns of objects from SQS
    record = event["raw"]
    assert (record["logGroup"], record["logStream"]) == (group, instance)
    assert RdsLogsSource.instance_and_type(record["logGroup"]) == (instance, "postgresql")
    assert marker in record["message"] and record["message"].endswith(f"statement: SELECT 'socfeeds-canary {marker}'")


def test_a_second_provision_changes_nothing(stack: Stack) -> None:
    _, group = rds_log_group(stack)
    declare(stack, log_groups=[group])
    first = provision(stack)
    assert {c.action for c in first} >= {"create delivery stream", "subscribe log group", "create role"}
    stream = source(stack).delivery_stream
    description = stack.client("firehose").describe_delivery_stream(DeliveryStreamName=stream)
    destination = description["DeliveryStreamDescription"]["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert destination["BucketARN"] == f"arn:aws:s3:::{feed(stack).bucket}" and destination["Prefix"] == "logs/"
    assert destination["CompressionFormat"] == "UNCOMPRESSED"  # CloudWatch Logs' gzip is the only one
    assert destination["BufferingHints"] == {"SizeInMBs": 64, "IntervalInSeconds": 60}  # the platform's stream
    assert destination["CloudWatchLoggingOptions"]["LogGroupName"] == f"/aws/kinesisfirehose/{stream}"
    assert provision(stack) == []
    assert failing(checks(stack)) == []


def test_a_deleted_subscription_filter_fails_verify_and_provision_repairs_it(stack: Stack) -> None:
    instance, group = rds_log_group(stack)
    declare(stack, log_groups=[group])
    provision(stack)
    stack.client("logs").delete_subscription_filter(logGroupName=group, filterName=f"{instance}-postgresql-firehose")
    broken = checks(stack)
    assert status_of(broken, "source:rds_logs", f"subscription {group}") is Status.FAIL
    assert [f.check for f in failing(broken)] == [f"subscription {group}"] and all(f.fix for f in failing(broken))
    stream = source(stack).delivery_stream
    assert [(c.action, c.detail) for c in provision(stack)] == [
        ("subscribe log group", f"{group}: {instance}-postgresql-firehose, every event to {stream}")]
    assert failing(checks(stack)) == []
    marker = uuid.uuid4().hex  # and events flow again
    put_rds_event(stack, group, instance, marker)
    eventually("an object after the repair", lambda: objects(stack))


def test_a_missing_log_group_is_created_and_its_retention_kept(stack: Stack) -> None:
    group = f"{RdsLogsSource.LOG_GROUP_PREFIX}{feed(stack).bucket.split('-')[0]}-opted-in/audit"
    declare(stack, log_groups=[group])
    assert status_of(checks(stack), "source:rds_logs", f"log group {group}") is Status.FAIL
    provision(stack)
    [found] = stack.client("logs").describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    assert found["retentionInDays"] == 14  # as the platform's RDS module creates it
    stack.client("logs").put_retention_policy(logGroupName=group, retentionInDays=1)
    assert status_of(checks(stack), "source:rds_logs", f"log group {group}") is Status.FAIL
    assert [c.action for c in provision(stack)] == ["set log retention"]


def test_a_stream_and_filter_that_already_do_the_job_are_adopted(stack: Stack) -> None:
    """Discovered by what they do (deliver to this bucket, feed this stream), whatever their names."""
    instance, group = rds_log_group(stack)
    declare(stack, log_groups=[group])
    provision(stack)
    declared = source(stack)
    logs = stack.client("logs")
    logs.delete_subscription_filter(logGroupName=group, filterName=f"{instance}-postgresql-firehose")
    firehose = stack.client("firehose")
    description = firehose.describe_delivery_stream(DeliveryStreamName=declared.delivery_stream)
    destination = description["DeliveryStreamDescription"]["Destinations"][0]["ExtendedS3DestinationDescription"]
    theirs = f"cloudwatch-export-{uuid.uuid4().hex[:16]}"  # the platform module's naming
    firehose.create_delivery_stream(DeliveryStreamName=theirs, DeliveryStreamType="DirectPut",
                                    ExtendedS3DestinationConfiguration={
                                        k: destination[k] for k in ("RoleARN", "BucketARN", "Prefix")})
    firehose.delete_delivery_stream(DeliveryStreamName=declared.delivery_stream)
    arns = Arns(stack.settings.region, stack.settings.account_id)
    logs.put_subscription_filter(logGroupName=group, filterName="their-filter", filterPattern="",
                                 destinationArn=arns.delivery_stream(theirs), roleArn=arns.role(declared.logs_role))

    changes = provision(stack)
    assert "create delivery stream" not in {c.action for c in changes}
    assert [c.detail for c in changes if c.action == "update delivery stream"] == [
        f"{theirs} in place: BufferingHints, CloudWatchLoggingOptions, CompressionFormat, EncryptionConfiguration"]
    assert [f["filterName"] for f in logs.describe_subscription_filters(logGroupName=group)["subscriptionFilters"]] == [
        "their-filter"]
    assert failing(checks(stack)) == []
    assert provision(stack) == []


def test_a_stream_name_taken_by_another_destination_stops_provision_with_the_fix(stack: Stack) -> None:
    provision(stack)
    declared, settings = source(stack), stack.settings
    firehose = stack.client("firehose")
    firehose.delete_delivery_stream(DeliveryStreamName=declared.delivery_stream)
    other = Arns(settings.region, settings.account_id).bucket(settings.s3_feeds["cloudtrail"].bucket)
    firehose.create_delivery_stream(DeliveryStreamName=declared.delivery_stream, ExtendedS3DestinationConfiguration={
        "RoleARN": Arns(settings.region, settings.account_id).role(declared.firehose_role), "BucketARN": other})
    [finding] = [f for f in checks(stack) if f.check == "delivery stream"]
    assert finding.status is Status.FAIL and other in finding.detail and "another stream" in finding.fix
    with pytest.raises(RuntimeError, match=f"delivers to {other}.*Fix: name another stream"):
        ensure_source.fn(stack.aws, stack.settings, FEED, False)


def test_no_declared_log_group_warns(stack: Stack) -> None:
    provision(stack)
    assert status_of(checks(stack), "source:rds_logs", "log groups") is Status.WARN


# --- the canary through the log stream ------------------------------------------------------

def run_canary(stack: Stack) -> CanaryResult:
    settings = stack.settings
    ensure_canary_writer.fn(stack.aws, settings, False)
    writer, xql = writer_clients(stack.aws, settings, "rds"), XqlClient.from_settings(settings)
    return canary_rds(stack.aws, writer, xql, settings, FEED, "rds")


def test_the_canary_finds_its_statement_in_xsiam_through_the_whole_path(stack: Stack, collecting: LocalXsiam) -> None:
    _, group = rds_log_group(stack)
    declare(stack, log_groups=[group])
    provision(stack)
    ensure_canary_writer.fn(stack.aws, stack.settings, False)
    result = run_canary(stack)
    assert result.passed, result
    assert result.detail == f"found in amazon_rds_raw via {group}"
    streams = stack.client("logs").describe_log_streams(logGroupName=group)["logStreams"]
    assert [s["logStreamName"] for s in streams if s["logStreamName"].startswith(RDS_CANARY_STREAM_PREFIX)] == []


def provisioned_with_a_short_deadline(stack: Stack) -> tuple[str, str]:
    """The feed on a log group of its own with a 5 s canary deadline, provisioned: (instance id, log group)."""
    instance, group = rds_log_group(stack)
    feeds = stack.values["s3_feeds"]
    stack.update(s3_feeds={**feeds, FEED: {**feeds[FEED], "canary_deadline_seconds": 5,
                                           "source": {**feeds[FEED]["source"], "log_groups": [group]}}})
    provision(stack)
    ensure_canary_writer.fn(stack.aws, stack.settings, False)
    return instance, group


def test_the_canary_names_the_delivery_leg_when_the_subscription_is_gone(stack: Stack,
                                                                         collecting: LocalXsiam) -> None:
    instance, group = provisioned_with_a_short_deadline(stack)
    stack.client("logs").delete_subscription_filter(logGroupName=group, filterName=f"{instance}-postgresql-firehose")
    result = run_canary(stack)
    assert (result.status, result.leg) == ("failed", "delivery") and "subscription filter" in result.fix


def test_the_canary_names_the_collection_leg_when_the_object_arrives_but_xsiam_never_reads_it(stack: Stack) -> None:
    """No collector runs here: Firehose delivers the statement to the bucket, XSIAM never ingests it."""
    provisioned_with_a_short_deadline(stack)
    result = run_canary(stack)
    assert (result.status, result.leg) == ("failed", "collection"), result
    assert f"delivered to s3://{feed(stack).bucket}/logs/" in result.detail and "XSIAM did not ingest" in result.fix


def test_the_writer_policy_grants_the_rds_canary_streams_and_without_them_the_write_leg_fails(
        stack: Stack, collecting: LocalXsiam) -> None:
    _, group = rds_log_group(stack)
    declare(stack, log_groups=[group])
    provision(stack)
    settings = stack.settings
    ensure_canary_writer.fn(stack.aws, settings, False)
    grant = Arns(settings.region, settings.account_id).log_stream(group, f"{RDS_CANARY_STREAM_PREFIX}*")
    document = policies.canary_writer_policy(settings)
    assert grant in next(s for s in document["Statement"] if s["Sid"] == "SocfeedsCanaryStreams")["Resource"]
    for statement in document["Statement"]:
        statement["Resource"] = [r for r in policies.as_list(statement["Resource"]) if r != grant]
    stack.client("iam").put_role_policy(RoleName=settings.canary.writer_role, PolicyName="socfeeds",
                                        PolicyDocument=json.dumps(document))
    writer, xql = writer_clients(stack.aws, settings, "rds"), XqlClient.from_settings(settings)
    result = canary_rds(stack.aws, writer, xql, settings, FEED, "rds")
    assert (result.status, result.leg) == ("failed", "write") and "AccessDenied" in result.detail


# --- the roles' documents ----------------------------------------------------------------------

def test_the_rds_roles_documents_pass_parliament() -> None:
    settings = Settings(account_id="123456789012", vpc_id="vpc-0abc12345678", eks_cluster_name="live",
                        xsiam={"firehose_url": "https://api-tenant.xdr.eu.paloaltonetworks.com/logs/v1/aws"})
    rds = settings.s3_feeds[FEED]
    assert isinstance(rds.source, RdsLogsSource)
    spec = rendered(rds.source, settings, rds)
    key = "arn:aws:kms:eu-west-2:123456789012:key/0f6f1e33-1111-4a4a-9b9b-123456789abc"
    stream = Arns(settings.region, settings.account_id).delivery_stream(spec.delivery_stream)
    documents = [("identity", firehose_role_policy(spec, rds, settings, spec.delivery_stream)),
                 ("identity", firehose_role_policy(spec, rds.model_copy(update={"kms_key_arn": key}), settings,
                                                   spec.delivery_stream)),
                 ("trust", policies.firehose_role_trust(settings.account_id)),
                 ("identity", policies.logs_role_policy(stream)),
                 ("trust", policies.logs_role_trust(settings.region, settings.account_id))]
    problems = [f"{f.issue}: {f.detail}" for kind, doc in documents
                for f in analyze_policy_string(json.dumps(doc), include_community_auditors=True).findings
                if (kind, f.issue) not in SUPPRESSED]
    assert problems == []


# --- CloudFront: standard logging (v2) -------------------------------------------------------

def cloudfront_deliveries(stack: Stack) -> list[dict[str, Any]]:
    deliveries: list[dict[str, Any]] = cloudfront_logs(stack.aws).describe_deliveries()["deliveries"]
    return deliveries


def test_cloudfront_delivery_is_made_checked_and_repaired(stack: Stack) -> None:
    distribution = "E" + uuid.uuid4().hex[:13].upper()
    declare(stack, CLOUDFRONT, distribution_id=distribution)
    made = provision(stack, CLOUDFRONT)
    assert [c.action for c in made if c.resource == "source:cloudfront"] == [
        "create delivery source", "create delivery destination", "create delivery"]
    [delivery] = [d for d in cloudfront_deliveries(stack) if d["deliverySourceName"] == f"socfeeds-{distribution}"]
    assert delivery["recordFields"] == list(formats.CLOUDFRONT_FIELDS) and delivery["fieldDelimiter"] == "\t"
    assert failing(checks(stack, CLOUDFRONT)) == []
    assert provision(stack, CLOUDFRONT) == []

    cloudfront_logs(stack.aws).delete_delivery(id=delivery["id"])
    assert status_of(checks(stack, CLOUDFRONT), "source:cloudfront", "cloudfront delivery") is Status.FAIL
    assert [c.action for c in provision(stack, CLOUDFRONT)] == ["create delivery"]
    assert failing(checks(stack, CLOUDFRONT)) == []


def test_cloudfront_without_a_declared_distribution_warns_until_something_delivers(stack: Stack) -> None:
    provision(stack, CLOUDFRONT)
    assert status_of(checks(stack, CLOUDFRONT), "source:cloudfront", "cloudfront deliveries") is Status.WARN
    assert [f.check for f in check_source.fn(stack.aws, stack.settings, CLOUDFRONT)] == ["cloudfront deliveries"]
