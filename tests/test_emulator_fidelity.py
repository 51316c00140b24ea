"""The emulator refuses what AWS refuses: CloudWatch Logs resource forms and KMS permission for SSE-KMS.

Pins deployments/local/auth_fidelity (Logs) and deployments/local/kms_fidelity. Every test pairs a refusal with
the grant AWS wants, so it fails both when the patch is off (moto allows or refuses everything alike) and when
it is wrong. Principals and resources carry unique names: the session's moto server is shared.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote_plus

import boto3
import pytest
from botocore.exceptions import ClientError

from deployments.local.stack import ACCOUNT_ID, REGION, Credentials, LocalAws
from socfeeds.aws import error_code


def _name(kind: str) -> str:
    return f"fid-{kind}-{uuid.uuid4().hex[:10]}"


def _allow(actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": resources}


def _user(aws: LocalAws, *statements: dict[str, Any]) -> tuple[str, Credentials]:
    """A new IAM user with exactly these statements, and its access key (usable at once)."""
    iam, name = aws.client("iam"), _name("user")
    iam.create_user(UserName=name)
    _grant(aws, name, "base", *statements)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return name, Credentials(key["AccessKeyId"], key["SecretAccessKey"])


def _grant(aws: LocalAws, user: str, policy: str, *statements: dict[str, Any]) -> None:
    aws.client("iam").put_user_policy(UserName=user, PolicyName=policy, PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": list(statements)}))


def _refused(call: Callable[[], Any]) -> ClientError:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value


# --- Wildcards: `?` is one character, everything but `*` and `?` is itself ------------------------------


def test_a_question_mark_matches_one_character_and_a_dot_only_a_dot(local_aws: LocalAws) -> None:
    """As in a Secrets Manager ARN pattern's `-??????` (the six random characters AWS appends); moto authorises
    S3 object calls on the object's ARN, so an object stands in."""
    s3, bucket = local_aws.client("s3"), _name("bucket")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=bucket, Key="secret-Ab12Cd", Body=b"x")

    def reads(pattern: str) -> bool:
        _, creds = _user(local_aws, _allow(["s3:GetObject"], [f"arn:aws:s3:::{bucket}/{pattern}"]))
        try:
            local_aws.client("s3", creds).get_object(Bucket=bucket, Key="secret-Ab12Cd")
        except ClientError as error:
            assert error_code(error) == "AccessDenied", error
            return False
        return True

    assert reads("secret-??????")
    assert not reads("secret-?????"), "one '?' is one character"
    assert not reads("secret.Ab12Cd"), "'.' is a dot, not any character"


# --- CloudWatch Logs: the resource forms AWS evaluates ---------------------------------------------


@pytest.fixture
def log_group(local_aws: LocalAws) -> str:
    name = "/socfeeds/" + _name("group")
    local_aws.client("logs").create_log_group(logGroupName=name)
    return name


def _group_arn(group: str) -> str:
    return f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:{group}"


def _logs_refusal(call: Callable[[], Any], action: str) -> None:
    error = _refused(call)
    # Emulator gap: moto answers the JSON protocol with an XML 403, so botocore sees code "403".
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert f"not authorized to perform: logs:{action}" in str(error)


def test_create_log_stream_is_refused_on_the_bare_group_arn_and_allowed_on_group_star(
        local_aws: LocalAws, log_group: str) -> None:
    _, bare = _user(local_aws, _allow(["logs:CreateLogStream"], [_group_arn(log_group)]))
    _logs_refusal(lambda: local_aws.client("logs", bare).create_log_stream(logGroupName=log_group,
                                                                           logStreamName="a"), "CreateLogStream")
    _, star = _user(local_aws, _allow(["logs:CreateLogStream"], [f"{_group_arn(log_group)}:*"]))
    local_aws.client("logs", star).create_log_stream(logGroupName=log_group, logStreamName="b")


def test_stream_actions_are_allowed_on_the_log_stream_arn(local_aws: LocalAws, log_group: str) -> None:
    streams = f"{_group_arn(log_group)}:log-stream:canary-*"
    _, writer = _user(local_aws, _allow(["logs:CreateLogStream", "logs:PutLogEvents"], [streams]))
    logs = local_aws.client("logs", writer)
    logs.create_log_stream(logGroupName=log_group, logStreamName="canary-1")
    logs.put_log_events(logGroupName=log_group, logStreamName="canary-1",
                        logEvents=[{"timestamp": 1_700_000_000_000, "message": "canary"}])
    _logs_refusal(lambda: logs.create_log_stream(logGroupName=log_group, logStreamName="real-1"), "CreateLogStream")


def test_describe_log_streams_is_evaluated_on_group_star(local_aws: LocalAws, log_group: str) -> None:
    _, bare = _user(local_aws, _allow(["logs:DescribeLogStreams"], [_group_arn(log_group)]))
    _logs_refusal(lambda: local_aws.client("logs", bare).describe_log_streams(logGroupName=log_group),
                  "DescribeLogStreams")
    _, star = _user(local_aws, _allow(["logs:DescribeLogStreams"], [f"{_group_arn(log_group)}:*"]))
    assert local_aws.client("logs", star).describe_log_streams(logGroupName=log_group)["logStreams"] == []


def test_tagging_actions_are_evaluated_on_the_bare_group_arn(local_aws: LocalAws, log_group: str) -> None:
    _, star = _user(local_aws, _allow(["logs:ListTagsForResource"], [f"{_group_arn(log_group)}:*"]))
    _logs_refusal(lambda: local_aws.client("logs", star).list_tags_for_resource(resourceArn=_group_arn(log_group)),
                  "ListTagsForResource")
    _, bare = _user(local_aws, _allow(["logs:ListTagsForResource"], [_group_arn(log_group)]))
    local_aws.client("logs", bare).list_tags_for_resource(resourceArn=_group_arn(log_group))


# --- KMS: SSE-KMS buckets and queues need the caller's KMS permission --------------------------------


@dataclass(frozen=True)
class Encrypted:
    key_arn: str
    alias: str
    bucket: str
    queue_url: str


def _bucket(aws: LocalAws, default: dict[str, str] | None) -> str:
    """A bucket with this default encryption (SSEAlgorithm, KMSMasterKeyID), or moto's default (none)."""
    s3, name = aws.client("s3"), _name("bucket")
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    if default:
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": default}]})
    return name


def _queue(aws: LocalAws, attributes: dict[str, str]) -> str:
    return str(aws.client("sqs").create_queue(QueueName=_name("queue"), Attributes=attributes)["QueueUrl"])


@pytest.fixture
def encrypted(local_aws: LocalAws) -> Encrypted:
    """A customer managed key with an alias, a bucket whose default encryption is that key, a queue using it."""
    kms = local_aws.client("kms")
    key = kms.create_key(Description="socfeeds fidelity test")["KeyMetadata"]
    alias = "alias/" + _name("key")
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    bucket = _bucket(local_aws, {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key["Arn"]})
    return Encrypted(key["Arn"], alias, bucket, _queue(local_aws, {"KmsMasterKeyId": key["Arn"]}))


# Emulator gap: moto authorises SendMessageBatch as sqs:SendMessageBatch; AWS as sqs:SendMessage.
_DATA_ACTIONS = ["s3:PutObject", "s3:GetObject", "sqs:SendMessage", "sqs:SendMessageBatch", "sqs:ReceiveMessage"]
_KEY_ACTIONS = ["kms:GenerateDataKey", "kms:Decrypt"]


def _s3_kms_refusal(call: Callable[[], Any], action: str, key_arn: str) -> None:
    error = _refused(call)
    assert (error_code(error), error.response["ResponseMetadata"]["HTTPStatusCode"]) == ("AccessDenied", 403)
    assert f"not authorized to perform: kms:{action} on resource: {key_arn}" in str(error)


def _sqs_kms_refusal(call: Callable[[], Any], action: str, key_arn: str) -> None:
    error = _refused(call)
    assert (error_code(error), error.response["ResponseMetadata"]["HTTPStatusCode"]) == (
        "KMS.AccessDeniedException", 400)
    assert f"not authorized to perform: kms:{action} on resource: {key_arn}" in str(error)


def test_sse_kms_bucket_and_queue_need_kms_permission_on_the_key(local_aws: LocalAws, encrypted: Encrypted) -> None:
    local_aws.client("s3").put_object(Bucket=encrypted.bucket, Key="by-admin", Body=b"x")
    local_aws.client("sqs").send_message(QueueUrl=encrypted.queue_url, MessageBody="by-admin")
    user, creds = _user(local_aws, _allow(_DATA_ACTIONS, ["*"]))
    s3, sqs = local_aws.client("s3", creds), local_aws.client("sqs", creds)
    key = encrypted.key_arn
    _s3_kms_refusal(lambda: s3.put_object(Bucket=encrypted.bucket, Key="a", Body=b"x"), "GenerateDataKey", key)
    _s3_kms_refusal(lambda: s3.get_object(Bucket=encrypted.bucket, Key="by-admin"), "Decrypt", key)
    _sqs_kms_refusal(lambda: sqs.send_message(QueueUrl=encrypted.queue_url, MessageBody="x"), "GenerateDataKey", key)
    _sqs_kms_refusal(lambda: sqs.send_message_batch(QueueUrl=encrypted.queue_url, Entries=[
        {"Id": "1", "MessageBody": "x"}]), "GenerateDataKey", key)
    _sqs_kms_refusal(lambda: sqs.receive_message(QueueUrl=encrypted.queue_url), "Decrypt", key)

    _grant(local_aws, user, "key", _allow(_KEY_ACTIONS, [encrypted.key_arn]))
    s3.put_object(Bucket=encrypted.bucket, Key="a", Body=b"x")
    assert s3.get_object(Bucket=encrypted.bucket, Key="by-admin")["Body"].read() == b"x"
    sqs.send_message(QueueUrl=encrypted.queue_url, MessageBody="x")
    assert sqs.receive_message(QueueUrl=encrypted.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)["Messages"]


def test_an_explicit_deny_on_the_key_wins(local_aws: LocalAws, encrypted: Encrypted) -> None:
    _, creds = _user(local_aws, _allow([*_DATA_ACTIONS, "kms:*"], ["*"]),
                     {"Effect": "Deny", "Action": "kms:GenerateDataKey", "Resource": encrypted.key_arn})
    _s3_kms_refusal(lambda: local_aws.client("s3", creds).put_object(Bucket=encrypted.bucket, Key="a", Body=b"x"),
                    "GenerateDataKey", encrypted.key_arn)
    local_aws.client("sqs", creds).receive_message(QueueUrl=encrypted.queue_url, WaitTimeSeconds=0)


def test_an_alias_in_the_bucket_default_resolves_to_the_key(local_aws: LocalAws, encrypted: Encrypted) -> None:
    """The grant must name the key ARN: an alias ARN in Resource does not reach the key (KMS developer guide)."""
    bucket = _bucket(local_aws, {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": encrypted.alias})
    alias_arn = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:{encrypted.alias}"
    _, by_alias = _user(local_aws, _allow(["s3:PutObject"], ["*"]), _allow(["kms:GenerateDataKey"], [alias_arn]))
    _s3_kms_refusal(lambda: local_aws.client("s3", by_alias).put_object(Bucket=bucket, Key="a", Body=b"x"),
                    "GenerateDataKey", encrypted.key_arn)
    _, by_key = _user(local_aws, _allow(["s3:PutObject"], ["*"]),
                      _allow(["kms:GenerateDataKey"], [encrypted.key_arn]))
    local_aws.client("s3", by_key).put_object(Bucket=bucket, Key="a", Body=b"x")


def test_only_customer_managed_keys_need_a_grant(local_aws: LocalAws, encrypted: Encrypted) -> None:
    """SSE-S3, SSE-SQS and the AWS managed keys aws/s3 and aws/sqs: their key policies admit the account."""
    _, creds = _user(local_aws, _allow(_DATA_ACTIONS, ["*"]))
    s3, sqs = local_aws.client("s3", creds), local_aws.client("sqs", creds)
    _s3_kms_refusal(lambda: s3.put_object(Bucket=encrypted.bucket, Key="a", Body=b"x"),
                    "GenerateDataKey", encrypted.key_arn)
    for default in (None, {"SSEAlgorithm": "AES256"}, {"SSEAlgorithm": "aws:kms"},
                    {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/aws/s3"}):
        bucket = _bucket(local_aws, default)
        s3.put_object(Bucket=bucket, Key="a", Body=b"x")
        assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == b"x"
    s3.put_object(Bucket=encrypted.bucket, Key="sse-s3", Body=b"x", ServerSideEncryption="AES256")
    for attributes in ({"SqsManagedSseEnabled": "true"}, {"KmsMasterKeyId": "alias/aws/sqs"}):
        url = _queue(local_aws, attributes)
        sqs.send_message(QueueUrl=url, MessageBody="x")
        assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)["Messages"]


def test_a_missing_key_fails_as_aws_does(local_aws: LocalAws) -> None:
    missing = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/{uuid.uuid4()}"
    bucket = _bucket(local_aws, {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": missing})
    url = _queue(local_aws, {"KmsMasterKeyId": missing})
    _, creds = _user(local_aws, _allow([*_DATA_ACTIONS, "kms:*"], ["*"]))
    put = _refused(lambda: local_aws.client("s3", creds).put_object(Bucket=bucket, Key="a", Body=b"x"))
    send = _refused(lambda: local_aws.client("sqs", creds).send_message(QueueUrl=url, MessageBody="x"))
    for error in (put, send):
        assert (error_code(error), error.response["ResponseMetadata"]["HTTPStatusCode"]) == (
            "KMS.NotFoundException", 400)


def test_s3_notifications_still_reach_an_sse_kms_queue(local_aws: LocalAws, encrypted: Encrypted) -> None:
    """S3's delivery is no signed request of the writer's: only the consumer needs kms:Decrypt to read it."""
    sqs = local_aws.client("sqs")
    queue_arn = sqs.get_queue_attributes(QueueUrl=encrypted.queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"]
    local_aws.client("s3").put_bucket_notification_configuration(Bucket=encrypted.bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]})
    _, writer = _user(local_aws, _allow(["s3:PutObject"], ["*"]), _allow(["kms:GenerateDataKey"], [encrypted.key_arn]))
    local_aws.client("s3", writer).put_object(Bucket=encrypted.bucket, Key="logs/app.log", Body=b"x")
    consumer, reader = _user(local_aws, _allow(["sqs:ReceiveMessage"], [queue_arn]))
    receive = local_aws.client("sqs", reader).receive_message
    _sqs_kms_refusal(lambda: receive(QueueUrl=encrypted.queue_url), "Decrypt", encrypted.key_arn)

    _grant(local_aws, consumer, "key", _allow(["kms:Decrypt"], [encrypted.key_arn]))
    messages = receive(QueueUrl=encrypted.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    keys = [unquote_plus(r["s3"]["object"]["key"]) for m in messages for r in json.loads(m["Body"]).get("Records", [])]
    assert keys == ["logs/app.log"]


def _session_client(aws: LocalAws, service: str, session: dict[str, Any]) -> Any:
    return cast(Any, boto3).client(service, region_name=REGION, endpoint_url=aws.endpoint_url,
                                   aws_access_key_id=session["AccessKeyId"],
                                   aws_secret_access_key=session["SecretAccessKey"],
                                   aws_session_token=session["SessionToken"])


def test_an_assumed_role_session_needs_the_grant_too(local_aws: LocalAws, encrypted: Encrypted) -> None:
    iam, role = local_aws.client("iam"), _name("role")
    admin = local_aws.client("sts").get_caller_identity()["Arn"]
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": admin}, "Action": "sts:AssumeRole"}]}))
    iam.put_role_policy(RoleName=role, PolicyName="put", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [_allow(["s3:PutObject"], [f"arn:aws:s3:::{encrypted.bucket}/*"])]}))
    session = local_aws.client("sts").assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{role}",
                                                  RoleSessionName="fidelity")["Credentials"]
    s3 = _session_client(local_aws, "s3", session)
    _s3_kms_refusal(lambda: s3.put_object(Bucket=encrypted.bucket, Key="by-role", Body=b"x"),
                    "GenerateDataKey", encrypted.key_arn)
    iam.put_role_policy(RoleName=role, PolicyName="key", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [_allow(["kms:GenerateDataKey"], [encrypted.key_arn])]}))
    s3.put_object(Bucket=encrypted.bucket, Key="by-role", Body=b"x")


def test_condition_operators_match_as_iam_documents_them() -> None:
    """deployments/local/policy_conditions, shared by the trust and CloudTrail patches (IAM User Guide, "Condition
    operators"): exact String forms, wildcards in the Like forms and in both Arn forms, the Not forms negated."""
    from deployments.local.policy_conditions import ARN_OPERATORS, STRING_OPERATORS, allows_action, listed

    arn = "arn:aws:cloudtrail:eu-west-2:111122223333:trail/org"
    assert STRING_OPERATORS["StringEquals"](arn, [arn]) and not STRING_OPERATORS["StringEquals"](arn, ["arn:*"])
    assert STRING_OPERATORS["StringLike"](arn, ["arn:aws:cloudtrail:*:111122223333:trail/*"])
    assert not STRING_OPERATORS["StringNotEquals"](arn, [arn]) and STRING_OPERATORS["StringNotEquals"](arn, ["x"])
    assert not STRING_OPERATORS["StringNotLike"](arn, ["arn:*"])
    for name in ("ArnEquals", "ArnLike"):
        assert ARN_OPERATORS[name](arn, ["arn:aws:cloudtrail:*:111122223333:trail/org"])
        assert not ARN_OPERATORS[name](arn, ["arn:aws:cloudtrail:*:444455556666:trail/org"])
    assert not ARN_OPERATORS["ArnNotLike"](arn, ["arn:aws:cloudtrail:*"])
    assert allows_action(["s3:Get*", "s3:PutObject"], "s3:putobject") and not allows_action("s3:Get*", "s3:PutObject")
    assert listed("a") == ["a"] and listed(["a", "b"]) == ["a", "b"]
