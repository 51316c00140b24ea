"""feed-canary on the local stack: every feed passes, and each fault is caught at the right leg."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import Stack, prefect_events
from prefect.client.schemas.objects import State
from test_verify import artifacts_of
from test_xsiam_standin import eventually

import flows.canary
from deployments.local.stack import LocalXsiam
from flows._common import items_of
from flows.canary import CANARY_COLUMNS, FAILURES_ARTIFACT, feed_canary
from flows.provision import provision_feeds
from socfeeds.policies import CANARY_STREAM_PREFIX
from socfeeds.report import Status
from socfeeds.settings import canary_key_prefix
from tasks.buckets import ensure_bucket
from tasks.canary import CanaryResult, check_canary_writer, ensure_canary_writer, writer_clients
from tasks.firehose import ensure_cluster_logging
from tasks.queues import queue_url

EKS = "eks-control-plane"


def with_deadlines(stack: Stack, seconds: int, **feed_changes: Any) -> None:
    """Short canary deadlines (and other per-feed changes) for every feed, as an operator would set."""
    s3 = {name: {**feed, "canary_deadline_seconds": seconds, **feed_changes} for name, feed in
          stack.values["s3_feeds"].items()}
    firehose = {name: {**feed, "canary_deadline_seconds": seconds} for name, feed in
                stack.values["firehose_feeds"].items()}
    stack.update(s3_feeds=s3, firehose_feeds=firehose)


def run(feeds: list[str] | None = None) -> tuple[bool, dict[str, CanaryResult]]:
    ok, results, _ = run_state(feeds)
    return ok, results


def run_state(feeds: list[str] | None = None) -> tuple[bool, dict[str, CanaryResult], State[Any]]:
    """A failed run carries every feed's result as its data, not an exception."""
    state = feed_canary(feeds=feeds, return_state=True)
    results = items_of(state)
    assert isinstance(results, list), results
    return state.is_completed(), {r.feed: r for r in results}, state


def test_every_feed_passes_and_leaves_nothing_behind(stack: Stack, collecting: LocalXsiam) -> None:
    ok, results = run()
    assert ok, results
    assert set(results) == {*stack.settings.s3_feeds, EKS}
    assert all(r.passed and r.latency_ms is not None and r.latency_ms > 0 for r in results.values())
    s3 = stack.client("s3")
    for feed in stack.settings.s3_feeds.values():  # canary objects deleted after confirmation
        assert s3.list_objects_v2(Bucket=feed.bucket).get("KeyCount", 0) == 0
    passed = eventually("canary events", lambda: {e["resource"]["prefect.resource.name"] for e in
                                                   prefect_events("socfeeds.canary.passed")} >= set(results) or None)
    assert passed
    canaries = [e for e in collecting.events() if "socfeeds-canary" in json.dumps(e["raw"])]
    assert {e["dataset"] for e in canaries} == {"aws_s3_raw", "amazon_route53_raw", "amazon_aws_raw", "amazon_eks_raw",
                                                 "amazon_cloudfront_raw", "amazon_rds_raw"}
    group = stack.settings.firehose_feeds[EKS].log_group  # and the canary's log stream is gone too
    streams = stack.client("logs").describe_log_streams(logGroupName=group)["logStreams"]
    assert [s["logStreamName"] for s in streams if s["logStreamName"].startswith(CANARY_STREAM_PREFIX)] == []


def test_the_writer_reaches_only_canary_prefixes_and_streams(stack: Stack) -> None:
    """It can neither hide real logs (delete) nor forge them (write outside its prefix), in any feed bucket."""
    ensure_canary_writer.fn(stack.aws, stack.settings, False)
    for name in stack.settings.s3_feeds:
        ensure_bucket.fn(stack.aws, stack.settings, name, False)
    ensure_cluster_logging.fn(stack.aws, stack.settings, EKS, False)
    settings = stack.settings
    writer, s3 = writer_clients(stack.aws, settings, "scope"), stack.client("s3")
    for name, feed in settings.s3_feeds.items():
        real = f"AWSLogs/{settings.account_id}/CloudTrail/eu-west-2/2026/11/28/real.json.gz"
        s3.put_object(Bucket=feed.bucket, Key=real, Body=b"a real log")
        for call, arguments in ((writer.s3.delete_object, {"Key": real}),
                                (writer.s3.put_object, {"Key": real, "Body": b"forged"}),
                                (writer.s3.put_object, {"Key": f"socfeeds-canary/{name}x/k", "Body": b""})):
            with pytest.raises(ClientError) as refused:
                call(Bucket=feed.bucket, **arguments)
            assert refused.value.response["Error"]["Code"] == "AccessDenied", name
        assert s3.get_object(Bucket=feed.bucket, Key=real)["Body"].read() == b"a real log"
        probe = f"{canary_key_prefix(name)}probe"
        writer.s3.put_object(Bucket=feed.bucket, Key=probe, Body=b"synthetic")
        writer.s3.delete_object(Bucket=feed.bucket, Key=probe)
    group = settings.firehose_feeds[EKS].log_group
    with pytest.raises(ClientError):
        writer.logs.create_log_stream(logGroupName=group, logStreamName="kube-apiserver-audit-0123456789abcdef")
    writer.logs.create_log_stream(logGroupName=group, logStreamName=f"{CANARY_STREAM_PREFIX}scope")
    writer.logs.delete_log_stream(logGroupName=group, logStreamName=f"{CANARY_STREAM_PREFIX}scope")


def test_verify_flags_a_writer_that_reaches_real_logs_and_provision_narrows_it(stack: Stack) -> None:
    ensure_canary_writer.fn(stack.aws, stack.settings, False)
    bucket = stack.settings.s3_feeds["cloudtrail"].bucket
    stack.client("iam").put_role_policy(RoleName=stack.settings.canary.writer_role, PolicyName="socfeeds",
                                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                                            {"Effect": "Allow", "Action": "s3:DeleteObject",
                                             "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    [scope] = [f for f in check_canary_writer.fn(stack.aws, stack.settings) if f.check == "canary scope"]
    assert scope.status is Status.FAIL and f"s3:deleteobject on arn:aws:s3:::{bucket}/*" in scope.detail
    ensure_canary_writer.fn(stack.aws, stack.settings, False)
    assert all(f.status is Status.PASS for f in check_canary_writer.fn(stack.aws, stack.settings))


def test_faults_in_several_feeds_are_each_caught_at_their_leg_by_the_deadline(
        stack: Stack, collecting: LocalXsiam) -> None:
    """Feeds run concurrently, so one run with a different fault per feed checks every leg at once."""
    with_deadlines(stack, 6)
    settings = stack.settings
    stack.client("s3").put_bucket_notification_configuration(  # cloudtrail: notification removed
        Bucket=settings.s3_feeds["cloudtrail"].bucket, NotificationConfiguration={})
    iam = stack.client("iam")  # vpc-flow-logs: the reader loses s3:GetObject on its bucket
    arn = f"arn:aws:iam::{settings.account_id}:policy{settings.reader.path}{settings.reader.policy_name}"
    policy = iam.get_policy(PolicyArn=arn)["Policy"]
    document = iam.get_policy_version(PolicyArn=arn, VersionId=policy["DefaultVersionId"])["PolicyVersion"]["Document"]
    flow_bucket = f"arn:aws:s3:::{settings.s3_feeds['vpc-flow-logs'].bucket}/*"
    for statement in document["Statement"]:
        if statement["Sid"] == "SocfeedsReadObjects":
            statement["Resource"] = [r for r in statement["Resource"] if r != flow_bucket]
    iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(document), SetAsDefault=True)
    eks = settings.firehose_feeds[EKS]  # eks: subscription filter removed
    stack.client("logs").delete_subscription_filter(logGroupName=eks.log_group, filterName=eks.subscription_filter)

    ok, results = run()
    assert not ok
    assert (results["cloudtrail"].status, results["cloudtrail"].leg) == ("failed", "notification")
    assert "has no notification of new objects" in results["cloudtrail"].detail
    assert "provision-feeds restores it" in results["cloudtrail"].fix
    assert results["vpc-flow-logs"].leg == "collection"
    assert results[EKS].leg == "delivery" and "no backup" in results[EKS].detail
    assert results["application-logs"].passed and results["route53-resolver"].passed


def test_deleted_reader_key_means_xsiam_never_sees_it(stack: Stack, collecting: LocalXsiam) -> None:
    with_deadlines(stack, 6)
    iam, user = stack.client("iam"), stack.settings.reader.user_name
    for key in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
        iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
    ok, results = run(["route53-resolver"])
    assert not ok and results["route53-resolver"].leg == "collection"


def test_wrong_firehose_token_is_found_in_the_backup(stack: Stack, collecting: LocalXsiam) -> None:
    with_deadlines(stack, 30)
    feed = stack.settings.firehose_feeds[EKS]
    stack.client("secretsmanager").put_secret_value(SecretId=feed.token_secret_name,
                                                    SecretString=json.dumps({"api_key": "revoked"}))
    ok, results = run([EKS])
    assert not ok and results[EKS].leg == "backup"
    assert f"s3://{feed.error_bucket}/http-endpoint-failed/" in results[EKS].detail
    assert "403" in results[EKS].detail and "token" in results[EKS].fix


def test_stopped_siem_fails_collection_naming_the_api(stack: Stack, collecting: LocalXsiam) -> None:
    with_deadlines(stack, 5)
    collecting.stop()
    ok, results = run(["application-logs"])
    assert not ok and results["application-logs"].leg == "collection"
    assert "unreachable" in results["application-logs"].detail


# --- the queue strategy (no other consumer: no collector here) --------------------------------


def test_queue_strategy_confirms_and_never_touches_other_messages(stack: Stack) -> None:
    with_deadlines(stack, 30, canary_strategy="queue")
    provision_feeds(feeds=["application-logs"])
    sqs = stack.client("sqs")
    url = queue_url(stack.aws, stack.settings.s3_feeds["application-logs"].queue)
    sqs.purge_queue(QueueUrl=url)  # S3's test event
    for batch in range(100):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "MessageBody": json.dumps({"unrelated": batch * 10 + n})} for n in range(10)])
    ok, results = run(["application-logs"])
    assert ok, results
    assert results["application-logs"].strategy == "queue"
    print(f"canary behind 1000 messages: {results['application-logs'].latency_ms} ms")
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1000"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_queue_strategy_names_the_notification_leg(stack: Stack, prefect_logs: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Also how the failure reads: progress while waiting, failed first, the red task, one-line message."""
    monkeypatch.setattr(flows.canary, "PROGRESS_SECONDS", 1.0)
    with_deadlines(stack, 5, canary_strategy="queue")
    provision_feeds(feeds=["cloudtrail", "vpc-flow-logs", "application-logs"])
    settings = stack.settings
    stack.client("s3").put_bucket_notification_configuration(
        Bucket=settings.s3_feeds["cloudtrail"].bucket, NotificationConfiguration={})
    stack.client("sqs").delete_queue(QueueUrl=queue_url(stack.aws, settings.s3_feeds["vpc-flow-logs"].queue))
    ok, results, state = run_state(["cloudtrail", "vpc-flow-logs", "application-logs"])
    assert not ok
    assert results["cloudtrail"].leg == "notification" and "no notification" in results["cloudtrail"].detail
    assert results["vpc-flow-logs"].leg == "notification" and "does not exist" in results["vpc-flow-logs"].detail
    assert results["application-logs"].passed
    assert "waiting on cloudtrail (" in prefect_logs.text and "s of 5 s)" in prefect_logs.text
    assert "confirmed application-logs" in prefect_logs.text
    message = state.message or ""
    assert "\n" not in message and message.startswith("feed-canary: 2 of 3 feeds failed: ")
    assert "cloudtrail: notification leg failed: no notification" in message and "provision-feeds" in message
    assert f"see artifact {FAILURES_ARTIFACT}" in message
    artifacts = artifacts_of(state)
    rows = json.loads(str(artifacts["feed-canary"].data))
    assert [list(row)[:len(CANARY_COLUMNS)] for row in rows] == [CANARY_COLUMNS] * 3
    assert [row["status"] for row in rows] == ["failed", "failed", "passed"]
    assert rows[2]["leg"] == "\u2014" and "None" not in json.dumps(rows), "missing values show as an em dash"
    failures = str(artifacts[FAILURES_ARTIFACT].data)
    assert failures.startswith("# feed-canary: 2 of 3 feeds failed") and "vpc-flow-logs" in failures
    assert "application-logs" not in failures
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    failed = {run.name for run in task_runs if run.state and run.state.is_failed()}
    assert failed == {"canary[cloudtrail]", "canary[vpc-flow-logs]"}


def test_a_passing_canary_publishes_an_all_clear(stack: Stack) -> None:
    with_deadlines(stack, 30, canary_strategy="queue")
    provision_feeds(feeds=["application-logs"])
    ok, results, state = run_state(["application-logs"])
    assert ok, results
    failures = str(artifacts_of(state)[FAILURES_ARTIFACT].data)
    assert failures == "# feed-canary: 0 of 1 feeds failed\n\nAll 1 feeds passed.\n"
