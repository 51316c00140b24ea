"""The XSIAM stand-in over real HTTP, collecting through a real moto server with the reader's key."""

from __future__ import annotations

import base64
import gzip
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import Stack

from deployments.local.stack import Credentials, LocalXsiam, collector_feeds
from deployments.xsiam.firehose import MAX_BODY_BYTES
from socfeeds import formats
from tasks.buckets import ensure_bucket
from tasks.notifications import ensure_notification
from tasks.queues import ensure_queues, queue_url
from tasks.reader import ensure_reader

T = TypeVar("T")


def eventually(what: str, probe: Callable[[], T | None], deadline_s: float = 20) -> T:
    """Poll with backoff until probe() returns something truthy; fail naming `what` at the deadline."""
    deadline, interval = time.monotonic() + deadline_s, 0.05
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {deadline_s} s")
        time.sleep(interval)
        interval = min(interval * 2, 0.5)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def cloudwatch_record(messages: list[str], kind: str = "DATA_MESSAGE") -> dict[str, str]:
    payload = {"messageType": kind, "owner": "123456789012", "logGroup": "/aws/eks/live/cluster",
               "logStream": "kube-apiserver-audit-abc", "subscriptionFilters": ["firehose-delivery"],
               "logEvents": [{"id": str(i), "timestamp": 1_764_000_000_000 + i, "message": m}
                             for i, m in enumerate(messages)]}
    return {"data": base64.b64encode(gzip.compress(json.dumps(payload).encode())).decode()}


def firehose_request(records: list[dict[str, str]], key: str, request_id: str | None = None,
                     compress: bool = True) -> tuple[bytes, dict[str, str]]:
    request_id = request_id or str(uuid.uuid4())
    body = json.dumps({"requestId": request_id, "timestamp": 1_764_000_000_000, "records": records}).encode()
    headers = {"X-Amz-Firehose-Protocol-Version": "1.0", "X-Amz-Firehose-Request-Id": request_id,
               "X-Amz-Firehose-Source-Arn": "arn:aws:firehose:eu-west-2:123456789012:deliverystream/x",
               "X-Amz-Firehose-Access-Key": key, "Content-Type": "application/json"}
    if compress:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    return body, headers


@pytest.fixture
def xsiam(standin: LocalXsiam) -> LocalXsiam:
    return standin


# --- Firehose endpoint -------------------------------------------------------------------------

def test_firehose_delivery_is_stored_and_answered_per_protocol(xsiam: LocalXsiam) -> None:
    marker = uuid.uuid4().hex
    records = [cloudwatch_record([f"audit {marker} 1", f"audit {marker} 2"]), cloudwatch_record([], "CONTROL_MESSAGE")]
    body, headers = firehose_request(records, xsiam.firehose_token)
    before = int(time.time() * 1000)
    status, answer = post(xsiam.firehose_url, body, headers)
    assert status == 200 and answer["requestId"] == headers["X-Amz-Firehose-Request-Id"]
    assert answer["timestamp"] >= before and "errorMessage" not in answer  # milliseconds, not seconds
    stored = [e for e in xsiam.events("amazon_eks_raw") if marker in e["raw"]]
    assert [(e["source"], e["origin"], e["raw"]) for e in stored] == [
        ("/aws/eks/live/cluster", "kube-apiserver-audit-abc", f"audit {marker} 1"),
        ("/aws/eks/live/cluster", "kube-apiserver-audit-abc", f"audit {marker} 2")]
    assert post(xsiam.firehose_url, body, headers)[0] == 200  # Firehose retries reuse the request id
    assert len([e for e in xsiam.events("amazon_eks_raw") if marker in e["raw"]]) == 2


def test_plain_body_is_accepted(xsiam: LocalXsiam) -> None:
    body, headers = firehose_request([cloudwatch_record(["plain"])], xsiam.firehose_token, compress=False)
    assert post(xsiam.firehose_url, body, headers)[0] == 200


def _bad_gzip(token: str) -> tuple[bytes, dict[str, str]]:
    body, headers = firehose_request([cloudwatch_record(["x"])], token)
    return body[:20], headers


def _bad_json(token: str) -> tuple[bytes, dict[str, str]]:
    _, headers = firehose_request([], token)
    return gzip.compress(b"{not json"), headers


def _bad_record(token: str) -> tuple[bytes, dict[str, str]]:
    return firehose_request([{"data": "!!not base64!!"}], token)


def _oversized(token: str) -> tuple[bytes, dict[str, str]]:
    _, headers = firehose_request([], token, compress=False)
    return b"x" * (MAX_BODY_BYTES + 1), headers


@pytest.mark.parametrize(
    ("make", "key", "status", "message"),
    [
        (lambda t: firehose_request([cloudwatch_record(["x"])], ""), None, 401, "missing X-Amz-Firehose-Access-Key"),
        (lambda t: firehose_request([cloudwatch_record(["x"])], "wrong-token"), None, 403, "invalid access key"),
        (_bad_gzip, "token", 400, "not valid gzip"),
        (_bad_json, "token", 400, "not JSON"),
        (_bad_record, "token", 400, "record 0"),
        (_oversized, "token", 413, "too large"),
    ],
    ids=["missing-key", "wrong-key", "bad-gzip", "bad-json", "bad-record", "oversized"],
)
def test_bad_requests_get_the_protocol_answer_and_store_nothing(
        xsiam: LocalXsiam, make: Callable[[str], tuple[bytes, dict[str, str]]], key: str | None, status: int,
        message: str) -> None:
    before = len(xsiam.events())
    body, headers = make(xsiam.firehose_token)
    got, answer = post(xsiam.firehose_url, body, headers)
    assert got == status and message in answer["errorMessage"]
    assert answer["requestId"] == headers["X-Amz-Firehose-Request-Id"] and answer["timestamp"] > 10**12
    assert len(xsiam.events()) == before


# --- XQL query API -----------------------------------------------------------------------------

def xql(xsiam: LocalXsiam, call: str, data: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": key or xsiam.api_key, "x-xdr-auth-id": xsiam.api_key_id,
               "Content-Type": "application/json"}
    return post(f"{xsiam.api_url}/xql/{call}", json.dumps({"request_data": data}).encode(), headers)


def start_query(xsiam: LocalXsiam, query: str) -> str:
    now = int(time.time() * 1000)
    status, answer = xql(xsiam, "start_xql_query", {"query": query, "tenants": [],
                                                     "timeframe": {"from": now - 3_600_000, "to": now + 60_000}})
    assert status == 200
    return str(answer["reply"])


def test_query_finds_the_marker_after_pending(xsiam: LocalXsiam) -> None:
    marker = uuid.uuid4().hex
    body, headers = firehose_request([cloudwatch_record([f"canary {marker}"])], xsiam.firehose_token)
    assert post(xsiam.firehose_url, body, headers)[0] == 200
    query_id = start_query(xsiam, f'dataset = amazon_eks_raw | filter _raw_log contains "{marker}"')
    request = {"query_id": query_id, "pending_flag": True, "limit": 100, "format": "json"}
    assert xql(xsiam, "get_query_results", request)[1]["reply"]["status"] == "PENDING"
    reply = xql(xsiam, "get_query_results", request)[1]["reply"]
    assert reply["status"] == "SUCCESS" and reply["number_of_results"] == 1
    assert reply["results"]["data"][0]["_raw_log"] == f"canary {marker}"


def test_unknown_query_shape_fails_clearly(xsiam: LocalXsiam) -> None:
    query_id = start_query(xsiam, "dataset = amazon_eks_raw | fields _raw_log | limit 5")
    reply = xql(xsiam, "get_query_results", {"query_id": query_id})[1]["reply"]
    assert reply["status"] == "FAIL" and "accepts only" in reply["error"]


def test_query_api_checks_the_key_and_limits_parallel_queries(xsiam: LocalXsiam) -> None:
    status, answer = xql(xsiam, "start_xql_query", {"query": "x"}, key="wrong")
    assert status == 401 and "unauthorized" in answer["reply"]["err_msg"]
    running = [start_query(xsiam, f'dataset = aws_s3_raw | filter _raw_log contains "q{i}"') for i in range(4)]
    now = int(time.time() * 1000)
    status, answer = xql(xsiam, "start_xql_query", {"query": 'dataset = aws_s3_raw | filter _raw_log contains "q5"',
                                                    "timeframe": {"from": now, "to": now}})
    assert status == 500 and "4 parallel" in answer["reply"]["err_msg"]
    for query_id in running:  # finish them so other tests can query
        for _ in range(2):
            xql(xsiam, "get_query_results", {"query_id": query_id})


# --- S3 collector over SQS ---------------------------------------------------------------------

def provision_s3_feeds(stack: Stack) -> Credentials:
    aws, settings = stack.aws, stack.settings
    ensure_reader.fn(aws, settings, False)
    for feed in settings.s3_feeds:
        for step in (ensure_bucket, ensure_queues, ensure_notification):
            step.fn(aws, settings, feed, False)
    key = stack.client("iam").create_access_key(UserName=settings.reader.user_name)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture
def collecting(stack: Stack, tmp_path: Path) -> Iterator[tuple[LocalXsiam, Credentials]]:
    reader = provision_s3_feeds(stack)
    collector = LocalXsiam(tmp_path, stack.local).collect(collector_feeds(stack.local, stack.values),
                                                          reader_key=reader).start()
    yield collector, reader
    collector.stop()


def put(stack: Stack, feed: str, obj: formats.LogObject) -> None:
    extra = {"ContentEncoding": obj.content_encoding} if obj.content_encoding else {}
    stack.client("s3").put_object(Bucket=stack.settings.s3_feeds[feed].bucket, Key=obj.key, Body=obj.body,
                                  ContentType=obj.content_type, **extra)


def test_each_s3_log_format_is_collected(stack: Stack, collecting: tuple[LocalXsiam, Credentials]) -> None:
    standin, _ = collecting
    settings = stack.settings
    origin = formats.Origin(settings.account_id, settings.region, vpc_id=settings.vpc_id or "vpc-00000000")
    marker, now = uuid.uuid4().hex, datetime.now(UTC)
    for name, feed in settings.s3_feeds.items():
        put(stack, name, formats.synthetic_object(feed.log_type, origin, f"{marker}-{name}", now))

    def collected(dataset: str, feed: str) -> list[dict[str, Any]]:
        return [e for e in standin.events(dataset) if f"{marker}-{feed}" in json.dumps(e["raw"])]

    [trail] = eventually("cloudtrail record", lambda: collected("aws_s3_raw", "cloudtrail"))
    assert trail["raw"]["userAgent"] == f"socfeeds-canary/{marker}-cloudtrail"
    assert trail["raw"]["eventType"] == "AwsApiCall" and trail["source"] == "cloudtrail"
    [flow] = eventually("flow log record", lambda: collected("aws_s3_raw", "vpc-flow-logs"))
    assert flow["raw"]["instance-id"] == f"i-{marker}-vpc-flow-logs" and len(flow["raw"]) == 26
    [dns] = eventually("resolver record", lambda: collected("amazon_route53_raw", "route53-resolver"))
    assert dns["raw"]["query_name"].startswith(f"{marker}-route53-resolver.") and dns["raw"]["query_class"] == "IN"
    [app] = eventually("fluent bit record", lambda: collected("amazon_aws_raw", "application-logs"))
    assert "date" in app["raw"] and app["raw"]["kubernetes"]["namespace_name"] == "logging"
    queues = [feed.queue for feed in settings.s3_feeds.values()]
    # every notification (and S3's TestEvent) was deleted
    eventually("queues drained", lambda: all(queue_depth(stack, queue) == 0 for queue in queues))
    assert [f for f in standin.failures() if f["kind"] == "auth"] == []


def queue_depth(stack: Stack, queue: str) -> int:
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=queue_url(stack.aws, queue),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def test_junk_messages_do_not_stop_collection(stack: Stack, collecting: tuple[LocalXsiam, Credentials]) -> None:
    standin, _ = collecting
    settings = stack.settings
    url = queue_url(stack.aws, settings.s3_feeds["application-logs"].queue)
    stack.client("sqs").send_message(QueueUrl=url, MessageBody="this is not json")
    failure = eventually("processing failure recorded", lambda: [
        f for f in standin.failures() if f["kind"] == "processing" and "JSONDecodeError" in f["detail"]])
    assert failure[0]["component"] == "collector:application-logs"
    marker = uuid.uuid4().hex
    put(stack, "application-logs", formats.fluent_bit(formats.Origin(settings.account_id, settings.region), marker,
                                                      datetime.now(UTC)))
    eventually("object after junk collected", lambda: [e for e in standin.events("amazon_aws_raw")
                                                       if marker in json.dumps(e["raw"])])
    attributes = stack.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1", "the junk message waits for redelivery"


def test_deleted_reader_key_is_an_auth_failure_not_a_crash(
        stack: Stack, collecting: tuple[LocalXsiam, Credentials]) -> None:
    standin, reader = collecting
    stack.client("iam").delete_access_key(UserName=stack.settings.reader.user_name, AccessKeyId=reader.access_key_id)
    [failure, *_] = eventually("auth failure recorded", lambda: [
        f for f in standin.failures() if f["kind"] == "auth"])
    assert failure["key_id"] == reader.access_key_id and "InvalidClientTokenId" in failure["detail"]
    assert standin.process is not None and standin.process.process is not None
    assert standin.process.process.poll() is None, "the collector keeps running"


def test_collector_reloads_the_key_from_the_rotation_secret(stack: Stack, tmp_path: Path) -> None:
    first = provision_s3_feeds(stack)
    secrets = stack.client("secretsmanager")
    secret_id = stack.settings.reader.secret_name

    def store(key: Credentials) -> None:
        value = json.dumps({"access_key_id": key.access_key_id, "secret_access_key": key.secret_access_key})
        secrets.put_secret_value(SecretId=secret_id, SecretString=value)

    secrets.create_secret(Name=secret_id)
    store(first)
    standin = LocalXsiam(tmp_path, stack.local).collect(collector_feeds(stack.local, stack.values),
                                                        reader_secret_id=secret_id)
    try:
        standin.start()
        assert standin.reload() == first.access_key_id
        key = stack.client("iam").create_access_key(UserName=stack.settings.reader.user_name)["AccessKey"]
        store(Credentials(key["AccessKeyId"], key["SecretAccessKey"]))
        assert standin.reload() == key["AccessKeyId"]
    finally:
        standin.stop()
