"""The local stack's Firehose delivery follows the AWS HTTP endpoint protocol (deployments/local/firehose_fidelity).

A recording receiver in this process stands in for the endpoint, so every header, body and retry
is observed exactly as the moto server process sent it.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import Stack
from test_xsiam_standin import eventually


class Receiver:
    """Answers each request with the next scripted status (then 200s) and records what it got."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                document = json.loads(body)
                receiver.requests.append({"headers": headers, "body": document, "at": time.time()})
                status = receiver.script.pop(0) if receiver.script else 200
                answer = json.dumps({"requestId": document["requestId"], "timestamp": int(time.time() * 1000)})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/logs/v1/aws"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def make_stream(stack: Stack, receiver: Receiver, name: str, secret_arn: str | None = None,
                access_key: str = "static-key") -> tuple[str, str]:
    """An HTTP-endpoint stream with GZIP, a short retry window and a backup bucket."""
    s3 = stack.client("s3")
    bucket = f"{name}-backup"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    role = f"arn:aws:iam::123456789012:role/{name}"
    endpoint: dict[str, Any] = {"Url": receiver.url, "Name": "receiver"}
    secrets: dict[str, Any] = {}
    if secret_arn:
        secrets = {"SecretsManagerConfiguration": {"SecretARN": secret_arn, "RoleARN": role, "Enabled": True}}
    else:
        endpoint["AccessKey"] = access_key
    arn = stack.client("firehose").create_delivery_stream(
        DeliveryStreamName=name, DeliveryStreamType="DirectPut",
        HttpEndpointDestinationConfiguration={
            "EndpointConfiguration": endpoint, "RequestConfiguration": {"ContentEncoding": "GZIP"},
            "RetryOptions": {"DurationInSeconds": 300}, "S3BackupMode": "FailedDataOnly", "RoleARN": role,
            "S3Configuration": {"RoleARN": role, "BucketARN": f"arn:aws:s3:::{bucket}"}, **secrets,
        })["DeliveryStreamARN"]
    return arn, bucket


def backups(stack: Stack, bucket: str) -> list[dict[str, Any]]:
    s3 = stack.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return [json.loads(line) for key in keys
            for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()]


def test_delivery_carries_the_protocol_headers_and_a_gzip_body(stack: Stack, receiver: Receiver) -> None:
    arn, _ = make_stream(stack, receiver, stack.values["reader"]["user_name"].replace("_", "-") + "-hdr")
    stack.client("firehose").put_record_batch(DeliveryStreamName=arn.split("/")[-1],
                                              Records=[{"Data": b"one"}, {"Data": b"two"}])
    [request] = eventually("delivery", lambda: receiver.requests)
    headers, body = request["headers"], request["body"]
    assert headers["x-amz-firehose-protocol-version"] == "1.0"
    assert headers["x-amz-firehose-source-arn"] == arn
    assert headers["x-amz-firehose-access-key"] == "static-key"
    assert headers["content-encoding"] == "gzip" and headers["content-type"] == "application/json"
    assert headers["x-amz-firehose-request-id"] == body["requestId"]
    assert body["timestamp"] > 10**12, "milliseconds"
    assert [base64.b64decode(r["data"]) for r in body["records"]] == [b"one", b"two"]


def test_access_key_comes_from_the_secret_and_retries_keep_the_request_id(stack: Stack, receiver: Receiver) -> None:
    secret = stack.client("secretsmanager").create_secret(
        Name=stack.values["reader"]["user_name"] + "-fh", SecretString=json.dumps({"api_key": "from-secret"}))
    arn, bucket = make_stream(stack, receiver, stack.values["reader"]["user_name"].replace("_", "-") + "-retry",
                              secret_arn=secret["ARN"])
    receiver.script = [500, 503]
    stack.client("firehose").put_record(DeliveryStreamName=arn.split("/")[-1], Record={"Data": b"x"})
    requests = eventually("third attempt", lambda: receiver.requests if len(receiver.requests) >= 3 else None)
    assert len({r["headers"]["x-amz-firehose-request-id"] for r in requests}) == 1
    assert {r["headers"]["x-amz-firehose-access-key"] for r in requests} == {"from-secret"}
    assert requests[1]["at"] - requests[0]["at"] > 0.005, "backoff between attempts"
    assert backups(stack, bucket) == []


def test_records_go_to_the_backup_when_the_retry_window_ends(stack: Stack, receiver: Receiver) -> None:
    arn, bucket = make_stream(stack, receiver, stack.values["reader"]["user_name"].replace("_", "-") + "-fail")
    receiver.script = [500] * 1000
    stack.client("firehose").put_record(DeliveryStreamName=arn.split("/")[-1], Record={"Data": b"lost?"})
    [failed] = eventually("backup object", lambda: backups(stack, bucket), deadline_s=30)
    assert base64.b64decode(failed["rawData"]) == b"lost?"
    assert failed["errorCode"] == "HttpEndpoint.ResponseReceivedWithErrorCode" and failed["attemptsMade"] >= 2
    key = stack.client("s3").list_objects_v2(Bucket=bucket)["Contents"][0]["Key"]
    assert key.startswith("http-endpoint-failed/")


def test_413_is_permanent_not_retried_and_not_backed_up(stack: Stack, receiver: Receiver) -> None:
    arn, bucket = make_stream(stack, receiver, stack.values["reader"]["user_name"].replace("_", "-") + "-big")
    receiver.script = [413]
    stack.client("firehose").put_record(DeliveryStreamName=arn.split("/")[-1], Record={"Data": b"big"})
    eventually("one attempt", lambda: receiver.requests)
    # The retry window is 3 s at this time scale: wait past it (polling), then nothing more may have happened.
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and len(receiver.requests) == 1:
        time.sleep(0.2)
    assert len(receiver.requests) == 1 and backups(stack, bucket) == []
