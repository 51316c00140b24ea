"""provision-feeds against the real moto server: from empty, rerun, dry run, adoption, merging."""

from __future__ import annotations

import json

import pytest
from conftest import Stack
from test_verify import artifacts_of

from flows.provision import provision_feeds
from flows.verify import verify_feeds
from socfeeds.report import Status
from tasks.buckets import bucket_exists
from tasks.notifications import NotificationOverlap, check_notification, ensure_notification
from tasks.queues import queue_url


def test_provision_from_empty_then_verify_passes_and_rerun_is_a_no_op(stack: Stack) -> None:
    changes = provision_feeds()
    actions = {(c.feed, c.action) for c in changes}
    for feed in stack.settings.s3_feeds:
        assert {(feed, "create bucket"), (feed, "create queue"), (feed, "notify queue")} <= actions
    assert {("eks-control-plane", "enable control-plane logging"), ("eks-control-plane", "create delivery stream"),
            ("eks-control-plane", "subscribe log group"),
            ("reader", "create user"), ("reader", "create policy"), ("reader", "attach policy"),
            ("cloudtrail", "create trail"), ("cloudtrail", "start logging"),
            ("vpc-flow-logs", "create flow log"), ("route53-resolver", "create query log config"),
            ("route53-resolver", "associate query logging"),
            ("application-logs", "render fluent bit output")} <= actions
    assert all(c.applied for c in changes)

    findings = verify_feeds()
    assert [f for f in findings if f.status is Status.FAIL] == []
    assert provision_feeds() == []


def test_dry_run_reports_every_change_and_makes_none(stack: Stack) -> None:
    planned = provision_feeds(dry_run=True)
    settings = stack.settings
    assert planned and not any(c.applied for c in planned)
    assert {c.feed for c in planned} == {*settings.s3_feeds, *settings.firehose_feeds, "reader", "canary"}
    aws = stack.aws
    for feed in settings.s3_feeds.values():
        assert not bucket_exists(aws, feed.bucket)
        assert queue_url(aws, feed.queue) is None
    eks = settings.firehose_feeds["eks-control-plane"]
    assert not bucket_exists(aws, eks.error_bucket)
    assert stack.client("firehose").list_delivery_streams()["DeliveryStreamNames"].count(eks.delivery_stream) == 0
    assert stack.client("logs").describe_log_groups(logGroupNamePrefix=eks.log_group)["logGroups"] == []
    logging = stack.client("eks").describe_cluster(name=eks.cluster_name)["cluster"]["logging"]["clusterLogging"]
    assert not any(entry["enabled"] for entry in logging)
    users = [u["UserName"] for u in stack.client("iam").list_users()["Users"]]
    assert settings.reader.user_name not in users
    applied = provision_feeds()
    assert [(c.feed, c.resource, c.action) for c in applied] == [(c.feed, c.resource, c.action) for c in planned]


def test_a_subset_of_feeds_is_provisioned_alone(stack: Stack) -> None:
    provision_feeds(feeds=["application-logs"])
    aws, feeds = stack.aws, stack.settings.s3_feeds
    assert bucket_exists(aws, feeds["application-logs"].bucket)
    assert not bucket_exists(aws, feeds["cloudtrail"].bucket)


def test_unknown_feed_fails_before_any_aws_call(stack: Stack) -> None:
    state = provision_feeds(feeds=["cloudtrial"], return_state=True)
    assert state.is_failed()
    assert "unknown feed(s) ['cloudtrial']" in str(state.result(raise_on_failure=False))


def test_invalid_settings_fail_the_run_naming_the_field_and_leave_a_record(stack: Stack) -> None:
    """A settings error on the worker ends Failed in one line, no traceback, and the failures artifact says it all."""
    stack.update(region="eu-west-9")
    state = verify_feeds(return_state=True)
    assert state.is_failed() and "unknown AWS region 'eu-west-9'" in str(state.result(raise_on_failure=False))
    assert state.message is not None and "\n" not in state.message and "region" in state.message
    record = artifacts_of(state)["verify-feeds-failures"].data
    assert isinstance(record, str) and "unknown AWS region 'eu-west-9'" in record


def test_credentials_for_another_account_are_refused_up_front(stack: Stack) -> None:
    stack.update(account_id="111122223333")
    state = verify_feeds(return_state=True)
    assert state.is_failed() and state.message is not None
    assert "account_id: the settings name account 111122223333, but the credentials act in account 123456789012" in (
        state.message)
    assert "Fix: run with credentials for 111122223333" in state.message


def test_a_region_other_than_the_buckets_is_named_once_not_as_every_check_failing(stack: Stack) -> None:
    provision_feeds(feeds=["application-logs", "cloudtrail"])
    buckets = sorted(stack.settings.s3_feeds[name].bucket for name in ("application-logs", "cloudtrail"))
    stack.update(region="eu-west-1")
    state = verify_feeds(return_state=True)
    assert state.is_failed() and state.message is not None
    assert f"region: the settings name eu-west-1, but the feeds' buckets are in eu-west-2 ({', '.join(buckets)})" in (
        state.message)
    assert "Fix: set region = 'eu-west-2'" in state.message
    assert set(artifacts_of(state)) == {"verify-feeds-failures"}, "no check ran against the wrong region"


def test_existing_bucket_is_adopted_and_other_policy_statements_are_kept(stack: Stack) -> None:
    bucket = stack.settings.s3_feeds["vpc-flow-logs"].bucket
    s3 = stack.client("s3")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    team = {"Sid": "PlatformTeamRead", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [team]}))
    changes = provision_feeds(feeds=["vpc-flow-logs"])
    assert ("vpc-flow-logs", "create bucket") not in {(c.feed, c.action) for c in changes}
    statements = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert team in statements and {"SocfeedsLogDeliveryWrite", "SocfeedsLogDeliveryAclCheck"} <= {
        s.get("Sid") for s in statements}


def _other_queue(stack: Stack, name: str) -> str:
    sqs = stack.client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def test_notification_merge_keeps_another_consumers_entry(stack: Stack) -> None:
    provision_feeds(feeds=["cloudtrail"])
    bucket = stack.settings.s3_feeds["cloudtrail"].bucket
    s3 = stack.client("s3")
    other = {"Id": "audit-deletes", "QueueArn": _other_queue(stack, bucket[:60] + "-del"),
             "Events": ["s3:ObjectRemoved:*"]}
    config = s3.get_bucket_notification_configuration(Bucket=bucket)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [other]})  # someone overwrote ours, keeping only theirs
    provision_feeds(feeds=["cloudtrail"])
    entries = s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
    assert {e["Id"] for e in entries} == {"audit-deletes", config["QueueConfigurations"][0]["Id"]}


def test_overlapping_notification_is_a_clear_error_not_an_overwrite(stack: Stack) -> None:
    provision_feeds(feeds=["route53-resolver"], dry_run=False)
    feed = stack.settings.s3_feeds["route53-resolver"]
    s3 = stack.client("s3")
    theirs = {"Id": "siem-pilot", "QueueArn": _other_queue(stack, feed.queue + "-pilot"),
              "Events": ["s3:ObjectCreated:Put"]}
    s3.put_bucket_notification_configuration(Bucket=feed.bucket, NotificationConfiguration={
        "QueueConfigurations": [theirs]})
    with pytest.raises(NotificationOverlap, match="notification 'siem-pilot' already sends object-created events"):
        ensure_notification.fn(stack.aws, stack.settings, "route53-resolver", False)
    state = provision_feeds(feeds=["route53-resolver"], return_state=True)
    assert state.is_failed() and "ensure-notification[route53-resolver] failed: s3://" in str(state.message)
    assert s3.get_bucket_notification_configuration(Bucket=feed.bucket)["QueueConfigurations"] == [theirs]
    [missing] = [f for f in check_notification.fn(stack.aws, stack.settings, "route53-resolver")
                 if f.check == "notification"]
    assert missing.status is Status.FAIL
    assert missing.fix.startswith(f"new objects do not reach {feed.queue}: provision-feeds cannot add it: "), (
        "verify's fix is what provision does, here the manual step")
    assert "notification 'siem-pilot' already sends" in missing.fix
    assert "fan out through SNS or EventBridge" in missing.fix


def test_resources_from_before_the_hardening_are_converged_and_the_dry_run_lists_each_step(stack: Stack) -> None:
    """A bucket, DLQ and stream made before Object Ownership, the canary/upload rules, RedriveAllowPolicy and
    encryption at rest were declared: the dry run names each missing piece, changes nothing, and one run fixes all."""
    provision_feeds()
    settings, s3, sqs = stack.settings, stack.client("s3"), stack.client("sqs")
    feed = settings.s3_feeds["cloudtrail"]
    s3.delete_bucket_ownership_controls(Bucket=feed.bucket)
    rules = s3.get_bucket_lifecycle_configuration(Bucket=feed.bucket)["Rules"]
    s3.put_bucket_lifecycle_configuration(Bucket=feed.bucket, LifecycleConfiguration={
        "Rules": [r for r in rules if r["ID"] == "socfeeds-retention"]})
    dlq = sqs.get_queue_url(QueueName=feed.dlq_name)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=dlq, Attributes={
        "RedriveAllowPolicy": json.dumps({"redrivePermission": "allowAll"})})
    stream = settings.firehose_feeds["eks-control-plane"].delivery_stream
    stack.client("firehose").stop_delivery_stream_encryption(DeliveryStreamName=stream)

    planned = provision_feeds(dry_run=True)
    assert {(c.resource, c.action) for c in planned} == {
        (f"s3://{feed.bucket}", "enforce bucket owner"), (f"s3://{feed.bucket}", "set lifecycle rules"),
        (f"sqs:{feed.queue}", "set queue attributes"), (f"firehose:{stream}", "encrypt delivery stream")}
    assert not any(c.applied for c in planned)
    assert "RedriveAllowPolicy" in next(c.detail for c in planned if c.action == "set queue attributes")
    assert s3.get_bucket_lifecycle_configuration(Bucket=feed.bucket)["Rules"][0]["ID"] == "socfeeds-retention"

    assert len(provision_feeds()) == 4
    assert provision_feeds() == []
    assert verify_feeds(return_state=True).is_completed()
