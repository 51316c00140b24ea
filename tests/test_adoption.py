"""Adopting what another owner built: nothing created twice, nothing of theirs lost, Terraform's never written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Stack

from flows.provision import provision_feeds
from flows.verify import verify_feeds
from socfeeds.aws import AwsClients
from socfeeds.report import Change, Status
from tasks.buckets import check_bucket
from tasks.queues import check_queue, queue_url

READS = ("Get", "List", "Describe", "Head")


@pytest.fixture
def api_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every AWS operation the flows' clients call, in order (botocore's before-call event)."""
    calls: list[str] = []
    original = AwsClients.client

    def client(self: AwsClients, service: str) -> Any:
        made = original(self, service)
        if not getattr(made, "_socfeeds_counted", False):
            made.meta.events.register("before-call", lambda model, **_: calls.append(model.name))
            made._socfeeds_counted = True
        return made

    monkeypatch.setattr(AwsClients, "client", client)
    yield calls


def writes(calls: list[str]) -> list[str]:
    return [c for c in calls if not c.startswith(READS) and c not in {"AssumeRole", "GetCallerIdentity"}]


def _feed(stack: Stack, name: str, **changes: Any) -> None:
    stack.update(s3_feeds={**stack.values["s3_feeds"], name: {**stack.values["s3_feeds"][name], **changes}})


def test_a_terraform_owned_feed_is_reported_as_terraform_and_never_written(stack: Stack,
                                                                             api_calls: list[str]) -> None:
    provision_feeds(feeds=["cloudtrail"])
    bucket = stack.settings.s3_feeds["cloudtrail"].bucket
    stack.client("s3").delete_public_access_block(Bucket=bucket)
    stack.client("s3").delete_bucket_ownership_controls(Bucket=bucket)
    _feed(stack, "cloudtrail", managed_by="terraform")
    api_calls.clear()

    changes: list[Change] = provision_feeds(feeds=["cloudtrail"])
    assert writes(api_calls) == [], "a run that would change a Terraform-owned resource is a bug"
    assert {(c.action, c.owner, c.applied) for c in changes} == {
        ("block public access", "terraform", False), ("enforce bucket owner", "terraform", False)}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        [artifact] = [a for a in client.read_latest_artifacts() if a.key == "provision-feeds-terraform"]
    assert 'resource "aws_s3_bucket_public_access_block"' in str(artifact.data)
    assert 'resource "aws_s3_bucket_ownership_controls"' in str(artifact.data)
    failing = {f.check for f in check_bucket.fn(stack.aws, stack.settings, "cloudtrail") if f.status is Status.FAIL}
    assert failing == {"public access block", "object ownership"}, "verify still reports what Terraform must fix"


def test_several_buckets_feed_one_queue_through_one_statement_and_converge(stack: Stack) -> None:
    provision_feeds(feeds=["modsecurity"])
    feed, sqs = stack.settings.s3_feeds["modsecurity"], stack.client("sqs")
    url = queue_url(stack.aws, feed.queue)
    assert url is not None
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    [statement] = [s for s in policy["Statement"] if s["Sid"] != "SocfeedsReplay"]  # replay-feed's own sender
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == sorted(f"arn:aws:s3:::{b}" for b in feed.buckets)
    for bucket in feed.buckets:  # each bucket notifies the one queue
        stack.client("s3").put_object(Bucket=bucket, Key="modsec/audit.log", Body=b"{}")
    bodies = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                                                 WaitTimeSeconds=1).get("Messages", [])]
    notified = {r["s3"]["bucket"]["name"] for b in bodies for r in b.get("Records", [])}
    assert notified == set(feed.buckets)
    assert provision_feeds(feeds=["modsecurity"]) == [], "a second run changes nothing"
    rules = stack.client("s3").get_bucket_lifecycle_configuration(Bucket=feed.bucket)["Rules"]
    assert "socfeeds-retention" not in {r["ID"] for r in rules}, "retention_days = keep adds no expiry"
    assert all(f.status is not Status.FAIL for f in check_queue.fn(stack.aws, stack.settings, "modsecurity"))


def test_foreign_queue_statements_are_kept_byte_for_byte_beside_ours(stack: Stack) -> None:
    provision_feeds(feeds=["vpc-flow-logs"])
    feed, sqs = stack.settings.s3_feeds["vpc-flow-logs"], stack.client("sqs")
    url = queue_url(stack.aws, feed.queue)
    assert url is not None
    queue_arn = f"arn:aws:sqs:eu-west-2:{stack.settings.account_id}:{feed.queue}"
    terraform = {"Sid": "AllowSendMessage", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
                 "Action": "sqs:SendMessage", "Resource": queue_arn,
                 "Condition": {"ArnEquals": {"aws:SourceArn": f"arn:aws:s3:::{feed.bucket}"}}}
    root = f"arn:aws:iam::{stack.settings.account_id}:root"
    reader = {"Sid": "SiemReads", "Effect": "Allow", "Principal": {"AWS": root}, "Action": "sqs:ReceiveMessage",
              "Resource": queue_arn}
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(
        {"Version": "2012-10-17", "Statement": [terraform, reader]})})

    planned = provision_feeds(feeds=["vpc-flow-logs"], dry_run=True)
    [row] = [c for c in planned if c.action == "set queue attributes"]
    assert "writes SocfeedsS3Notifications, SocfeedsReplay; keeps AllowSendMessage, SiemReads" in row.detail
    provision_feeds(feeds=["vpc-flow-logs"])
    statements = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])[
        "Statement"]
    assert statements[:2] == [terraform, reader] and statements[2]["Sid"] == "SocfeedsS3Notifications"
    assert provision_feeds(feeds=["vpc-flow-logs"]) == []
    [policy] = [f for f in check_queue.fn(stack.aws, stack.settings, "vpc-flow-logs") if f.check == "queue policy"]
    assert policy.status is Status.FAIL and "AllowSendMessage: aws:SourceAccount" in policy.detail
    assert "Terraform" in policy.fix, "a foreign weakness is named for its owner, not 'run provision'"


def test_a_same_named_reader_policy_at_another_path_is_never_duplicated(stack: Stack) -> None:
    iam, reader = stack.client("iam"), stack.settings.reader
    iam.create_policy(PolicyName=reader.policy_name, Path="/", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Resource": "*"}]}))
    state = provision_feeds(feeds=["cloudtrail"], return_state=True)
    assert state.is_failed() and "set reader.policy_path = '/'" in str(state.message)
    stack.update(reader={**stack.values["reader"], "policy_path": "/"})
    provision_feeds(feeds=["cloudtrail"])
    named = [p for p in iam.list_policies(Scope="Local")["Policies"] if p["PolicyName"] == reader.policy_name]
    assert [p["Arn"] for p in named] == [f"arn:aws:iam::{stack.settings.account_id}:policy/{reader.policy_name}"]


def test_verify_fails_unscoped_service_writes_in_a_bucket_policy(stack: Stack) -> None:
    provision_feeds(feeds=["cloudtrail"])
    s3, bucket = stack.client("s3"), stack.settings.s3_feeds["cloudtrail"].bucket
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    policy["Statement"].append({"Sid": "AWSCloudTrailWrite", "Effect": "Allow",
                                "Principal": {"Service": "cloudtrail.amazonaws.com"}, "Action": "s3:PutObject",
                                "Resource": f"arn:aws:s3:::{bucket}/AWSLogs/*"})
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    [deputy] = [f for f in check_bucket.fn(stack.aws, stack.settings, "cloudtrail") if f.check == "confused deputy"]
    assert deputy.status is Status.FAIL and "AWSCloudTrailWrite (cloudtrail.amazonaws.com)" in deputy.detail
    provision_feeds(feeds=["cloudtrail"])
    kept = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert any(s.get("Sid") == "AWSCloudTrailWrite" for s in kept), "provision never removes another owner's"
    assert not verify_feeds(feeds=["cloudtrail"], return_state=True).is_completed()
