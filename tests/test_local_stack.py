"""The local stack enforces IAM like AWS does, so least privilege is tested for real.

Also pins the emulator gaps the README documents, so a moto upgrade that changes them is noticed.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from botocore.exceptions import ClientError
from conftest import Stack

from deployments.local.stack import Credentials
from socfeeds.aws import error_code
from tasks.buckets import ensure_bucket
from tasks.notifications import ensure_notification
from tasks.queues import ensure_queues, queue_url
from tasks.reader import ensure_reader


@pytest.fixture
def reader_key(stack: Stack) -> Credentials:
    """The application-logs feed provisioned, and an access key for the XSIAM reader."""
    aws, settings = stack.aws, stack.settings
    ensure_reader.fn(aws, settings, False)
    for step in (ensure_bucket, ensure_queues, ensure_notification):
        step.fn(aws, settings, "application-logs", False)
    key = stack.client("iam").create_access_key(UserName=settings.reader.user_name)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


def test_reader_can_collect_but_not_write(stack: Stack, reader_key: Credentials) -> None:
    feed = stack.settings.s3_feeds["application-logs"]
    stack.client("s3").put_object(Bucket=feed.bucket, Key="logs/2026/11/27/app.log", Body=b'{"log":"x"}\n')
    sqs, s3 = stack.local.client("sqs", reader_key), stack.local.client("s3", reader_key)
    url = queue_url(stack.aws, feed.queue)
    bodies = []
    for _ in range(3):  # the S3 test event, then the object; long polling, never a sleep
        messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2, MaxNumberOfMessages=10).get("Messages", [])
        bodies += [json.loads(m["Body"]) for m in messages]
        for m in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if any("Records" in b for b in bodies):
            break
    [key] = [unquote_plus(r["s3"]["object"]["key"]) for b in bodies for r in b.get("Records", [])]
    assert s3.get_object(Bucket=feed.bucket, Key=key)["Body"].read() == b'{"log":"x"}\n'

    with pytest.raises(ClientError) as put:
        s3.put_object(Bucket=feed.bucket, Key="logs/forged.log", Body=b"x")
    with pytest.raises(ClientError) as send:
        sqs.send_message(QueueUrl=url, MessageBody="forged")
    assert error_code(put.value) == "AccessDenied"
    # Emulator gap: moto answers SQS's JSON protocol with an XML 403, so botocore sees code "403".
    assert send.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "not authorized to perform: sqs:SendMessage" in str(send.value)


def test_emulator_gap_get_queue_url_is_refused_despite_the_grant(stack: Stack, reader_key: Credentials) -> None:
    """moto 5.2.5 refuses sqs:GetQueueUrl granted on the queue ARN (AWS allows it): readers take queue URLs,
    as XSIAM's data source configuration does anyway."""
    with pytest.raises(ClientError) as raised:
        stack.local.client("sqs", reader_key).get_queue_url(QueueName=stack.settings.s3_feeds["application-logs"].queue)
    assert "not authorized to perform: sqs:GetQueueUrl" in str(raised.value)


def test_deleted_key_is_rejected(stack: Stack, reader_key: Credentials) -> None:
    stack.client("iam").delete_access_key(UserName=stack.settings.reader.user_name,
                                          AccessKeyId=reader_key.access_key_id)
    with pytest.raises(ClientError) as raised:
        stack.local.client("sts", reader_key).get_caller_identity()
    assert error_code(raised.value) == "InvalidClientTokenId"


def test_emulator_gap_inactive_keys_are_still_accepted(stack: Stack, reader_key: Credentials) -> None:
    """moto 5.2.5 accepts an Inactive key (AWS refuses it): prove deactivation by status, not by a call."""
    stack.client("iam").update_access_key(UserName=stack.settings.reader.user_name,
                                          AccessKeyId=reader_key.access_key_id, Status="Inactive")
    identity = stack.local.client("sts", reader_key).get_caller_identity()
    assert identity["Arn"].endswith(stack.settings.reader.user_name)


def test_the_secret_value_follows_awscurrent_when_a_rotation_moves_it(stack: Stack) -> None:
    """deployments/local/secrets_fidelity: moto kept answering with the first version."""
    secrets = stack.client("secretsmanager")
    name = stack.values["reader"]["secret_name"] + "-fidelity"
    first = secrets.create_secret(Name=name, SecretString="old")["VersionId"]
    second = secrets.put_secret_value(SecretId=name, SecretString="new", VersionStages=["AWSPENDING"])["VersionId"]
    assert secrets.get_secret_value(SecretId=name)["SecretString"] == "old"
    secrets.update_secret_version_stage(SecretId=name, VersionStage="AWSCURRENT", MoveToVersionId=second,
                                        RemoveFromVersionId=first)
    assert secrets.get_secret_value(SecretId=name)["SecretString"] == "new"
    assert secrets.get_secret_value(SecretId=name, VersionStage="AWSPREVIOUS")["SecretString"] == "old"


def test_the_on_call_inbox_answers_as_an_incoming_webhook(tmp_path: Path) -> None:
    """Only the secret path is a channel; what arrives is kept in order and in the JSONL file."""
    import urllib.error
    import urllib.request

    from deployments.local.chat import ChatInbox

    inbox = ChatInbox(tmp_path / "channel.jsonl").start()
    try:
        def post(url: str) -> int:
            request = urllib.request.Request(url, data=json.dumps({"text": "hello"}).encode(), method="POST",  # noqa: S310
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (127.0.0.1)
                    return int(answer.status)
            except urllib.error.HTTPError as refused:
                return refused.code

        assert post(inbox.url.rsplit("/", 1)[0] + "/guessed") == 404
        assert inbox.messages() == []
        assert post(inbox.url) == 200
        assert inbox.wait_for(lambda text: text == "hello", 5, "hello") == "hello"
        assert [json.loads(line)["text"] for line in (tmp_path / "channel.jsonl").read_text().splitlines()] == ["hello"]
    finally:
        inbox.stop()
