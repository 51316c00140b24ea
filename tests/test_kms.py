"""Every feed on one customer-managed KMS key: provision, verify and the canary end to end, and each key gap
caught by verify (moto does not evaluate key policies: verify parses them; the emulator's KMS fidelity patch
makes S3 and SQS ask the caller's own kms:GenerateDataKey / kms:Decrypt, as AWS does)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import Stack
from test_canary import EKS, run

from deployments.local.stack import LocalXsiam, on_customer_key
from flows.provision import provision_feeds
from flows.verify import verify_feeds
from socfeeds import policies
from socfeeds.report import Finding, Status
from socfeeds.resolve import ResolveError, resolve
from socfeeds.settings import Settings
from tasks.buckets import check_bucket
from tasks.kms import check_key_policies, key_policy
from tasks.queues import check_queue


@pytest.fixture
def feed_key(stack: Stack) -> Iterator[str]:
    """A customer key made as the platform makes one (default key policy), every feed declared on it by alias."""
    values = on_customer_key(stack.local, stack.values, alias=f"alias/{stack.values['reader']['user_name']}-feeds")
    stack.update(s3_feeds=values["s3_feeds"], firehose_feeds=values["firehose_feeds"])
    yield str(stack.settings.s3_feeds["cloudtrail"].kms_key_arn)


def failing(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings if f.status is Status.FAIL}


def test_every_feed_on_one_customer_key_provisions_verifies_and_passes_the_canary(
        stack: Stack, feed_key: str, collecting: LocalXsiam) -> None:
    settings = stack.settings
    assert {f.kms_key_arn for f in settings.s3_feeds.values()} | {
        f.kms_key_arn for f in settings.firehose_feeds.values()} == {feed_key}
    reader = policies.reader_policy(settings)  # the alias became the key ARN IAM honours
    assert {"Sid": "SocfeedsDecrypt", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": [feed_key]} in \
        reader["Statement"]
    written = key_policy(stack.aws, feed_key)
    sids = [s.get("Sid") for s in written["Statement"]]
    assert sids[0] != "SocfeedsS3NotifyEncryptedQueue", "the platform's own statements are kept, first"
    assert {"SocfeedsS3NotifyEncryptedQueue", "SocfeedsCloudTrailEncrypt", "SocfeedsCloudTrailDescribeKey",
            "SocfeedsLogDeliveryEncrypt"} <= set(sids)
    s3 = stack.client("s3")
    for feed in settings.s3_feeds.values():
        [rule] = s3.get_bucket_encryption(Bucket=feed.bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rule["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] == feed_key
    stream = stack.client("firehose").describe_delivery_stream(
        DeliveryStreamName=settings.firehose_feeds[EKS].delivery_stream)["DeliveryStreamDescription"]
    assert stream["DeliveryStreamEncryptionConfiguration"]["KeyARN"] == feed_key

    verify = verify_feeds(return_state=True)
    assert verify.is_completed(), verify.message
    ok, results = run()
    assert ok, results
    assert all(r.passed for r in results.values()) and set(results) == {*settings.s3_feeds, EKS}


def test_verify_fails_a_key_without_the_s3_statement_naming_it_and_provision_restores_it(
        stack: Stack, feed_key: str) -> None:
    provision_feeds(feeds=["cloudtrail"])
    kms, settings = stack.client("kms"), stack.settings
    doc = key_policy(stack.aws, feed_key)
    doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") != "SocfeedsS3NotifyEncryptedQueue"]
    kms.put_key_policy(KeyId=feed_key, PolicyName="default", Policy=json.dumps(doc))

    statement = json.dumps(policies.s3_notification_key_statement())
    for findings in (check_key_policies.fn(stack.aws, settings), check_queue.fn(stack.aws, settings, "cloudtrail")):
        gap = failing(findings)["key policy: s3.amazonaws.com"]
        assert statement in gap.fix and feed_key in gap.fix and "silently" in gap.detail
    provision_feeds(feeds=["cloudtrail"])
    assert failing(check_queue.fn(stack.aws, settings, "cloudtrail")) == {}
    assert failing(check_key_policies.fn(stack.aws, settings)) == {}


def test_a_bucket_switched_to_another_key_fails_for_the_reader_and_the_writer(stack: Stack, feed_key: str) -> None:
    provision_feeds(feeds=["vpc-flow-logs"])
    other = stack.client("kms").create_key(Description="someone else's")["KeyMetadata"]["Arn"]
    bucket = stack.settings.s3_feeds["vpc-flow-logs"].bucket
    stack.client("s3").put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": other}}]})
    gaps = failing(check_bucket.fn(stack.aws, stack.settings, "vpc-flow-logs"))
    assert {"encryption", "reader may use key", "canary writer may use key",
            "key policy: delivery.logs.amazonaws.com"} <= set(gaps)
    assert f"lacks kms:Decrypt on {other}" in gaps["reader may use key"].detail
    provision_feeds(feeds=["vpc-flow-logs"])  # back to the declared key
    assert failing(check_bucket.fn(stack.aws, stack.settings, "vpc-flow-logs")) == {}


def test_platform_owned_keys_are_reported_not_written(stack: Stack, feed_key: str) -> None:
    stack.update(kms_key_policies="report")
    before = key_policy(stack.aws, feed_key)
    changes = provision_feeds(feeds=["cloudtrail"], return_state=True).result()
    assert key_policy(stack.aws, feed_key) == before
    [listed] = [c for c in changes if c.resource == f"kms:{feed_key}"]
    assert not listed.applied and "SocfeedsS3NotifyEncryptedQueue" in listed.detail
    gap = failing(check_key_policies.fn(stack.aws, stack.settings))["key policy: s3.amazonaws.com"]
    assert "the key's owner must add it" in gap.fix


def test_an_unknown_alias_is_refused_naming_the_field(stack: Stack) -> None:
    feeds = {**stack.values["s3_feeds"]}
    feeds["cloudtrail"] = {**feeds["cloudtrail"], "kms_key_arn": "arn:aws:kms:eu-west-2:123456789012:alias/nope"}
    stack.update(s3_feeds=feeds)
    with pytest.raises(ResolveError, match=r"s3_feeds\.cloudtrail\.kms_key_arn: KMS key .*alias/nope does not exist"):
        resolve(Settings(), stack.aws)
