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
from pydantic import SecretStr

from deployments.local.processes import free_port
from deployments.local.stack import Credentials, LocalXsiam, collector_feeds
from deployments.xsiam.firehose import MAX_BODY_BYTES
from deployments.xsiam.xql import EXECUTION_SECONDS
from flows._common import items_of
from flows.canary import feed_canary
from socfeeds import formats
from tasks.buckets import ensure_bucket
from tasks.canary import backup_wait_seconds, stream_timing
from tasks.notifications import ensure_notification
from tasks.queues import ensure_queues, queue_url
from tasks.reader import ensure_reader
from tasks.xql import NEEDLES_PER_QUERY, RESULT_LIMIT, XqlClient, XqlError

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


# --- XQL query API ---------------------------------------------------------------------------

def xql(xsiam: LocalXsiam, call: str, data: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": key or xsiam.api_key, "x-xdr-auth-id": xsiam.api_key_id,
               "Content-Type": "application/json"}
    return post(f"{xsiam.api_url}/xql/{call}", json.dumps({"request_data": data}).encode(), headers)


def start_query(xsiam: LocalXsiam, query: str) -> tuple[int, dict[str, Any]]:
    now = int(time.time() * 1000)
    return xql(xsiam, "start_xql_query", {"query": query, "tenants": [],
                                         "timeframe": {"from": now - 3_600_000, "to": now + 60_000}})


def started(xsiam: LocalXsiam, query: str) -> str:
    status, answer = start_query(xsiam, query)
    assert status == 200, answer
    return str(answer["reply"])


def outcome(xsiam: LocalXsiam, query_id: str) -> dict[str, Any] | None:
    """The query's reply once it is no longer PENDING."""
    reply: dict[str, Any] = xql(xsiam, "get_query_results", {"query_id": query_id, "limit": 1000})[1]["reply"]
    return None if reply["status"] == "PENDING" else reply


def deliver(xsiam: LocalXsiam, messages: list[str], timestamp_ms: int | None = None) -> None:
    """EKS events through the Firehose endpoint, stamped now (XQL's timeframe is on the events' time)."""
    record = cloudwatch_record(messages)
    if timestamp_ms is not None:
        payload = json.loads(gzip.decompress(base64.b64decode(record["data"])))
        for event in payload["logEvents"]:
            event["timestamp"] = timestamp_ms
        record = {"data": base64.b64encode(gzip.compress(json.dumps(payload).encode())).decode()}
    body, headers = firehose_request([record], xsiam.firehose_token)
    assert post(xsiam.firehose_url, body, headers)[0] == 200


@pytest.fixture
def slow_queries(xsiam: LocalXsiam) -> Iterator[Callable[[float], float]]:
    """Lets a test make every XQL query run longer; restores the default and waits out what it started."""
    yield xsiam.query_execution
    xsiam.query_execution(EXECUTION_SECONDS)
    eventually("the stand-in's 4 query slots free", lambda: all_slots_free(xsiam))


def all_slots_free(xsiam: LocalXsiam) -> bool:
    """4 queries start, and are waited out: the next test finds every slot free."""
    probes = [start_query(xsiam, 'dataset = aws_s3_raw | filter _raw_log contains "probe"') for _ in range(4)]
    eventually("probes done", lambda: all(outcome(xsiam, str(answer["reply"])) for status, answer in probes
                                          if status == 200))
    return all(status == 200 for status, _ in probes)


def test_a_query_is_pending_while_it_runs_then_finds_the_marker(xsiam: LocalXsiam) -> None:
    marker = uuid.uuid4().hex
    deliver(xsiam, [f"canary {marker}"], int(time.time() * 1000))
    query_id = started(xsiam, f'dataset = amazon_eks_raw | filter _raw_log contains "{marker}"')
    assert outcome(xsiam, query_id) is None, "PENDING first: the query runs on the server"
    reply = eventually("query done", lambda: outcome(xsiam, query_id))
    assert reply["status"] == "SUCCESS" and reply["number_of_results"] == 1
    assert reply["results"]["data"][0]["_raw_log"] == f"canary {marker}"


@pytest.mark.parametrize("query", [
    "dataset = amazon_eks_raw | fields _raw_log | limit 5",
    'dataset = amazon_eks_raw | filter _raw_log contains "a*b"',
    'dataset = amazon_eks_raw | filter _raw_log contains "a" and _raw_log contains "b"',
    'dataset = amazon_eks_raw | filter _raw_log = "a"',
    "dataset = amazon_eks_raw | comp sum(_time) as total",
    'dataset = amazon_eks_raw | filter _raw_log contains "a" | fields _time',
], ids=["limit", "wildcard", "and", "equals", "sum", "other-field"])
def test_queries_outside_the_subset_fail_saying_what_is_accepted(xsiam: LocalXsiam, query: str) -> None:
    reply = eventually("query done", lambda: outcome(xsiam, started(xsiam, query)))
    assert reply["status"] == "FAIL" and "accepts only" in reply["error"] and "comp max(_time)" in reply["error"]


def test_queries_complete_on_their_own_and_hold_a_slot_only_while_running(
        xsiam: LocalXsiam, slow_queries: Callable[[float], float]) -> None:
    """XSIAM's 4-query limit: nobody polls these, yet their slots free once they have run."""
    status, answer = xql(xsiam, "start_xql_query", {"query": "x"}, key="wrong")
    assert status == 401 and "unauthorized" in answer["reply"]["err_msg"]
    slow_queries(0.5)
    for i in range(4):
        started(xsiam, f'dataset = aws_s3_raw | filter _raw_log contains "q{i}"')
    status, answer = start_query(xsiam, 'dataset = aws_s3_raw | filter _raw_log contains "q5"')
    assert status == 500 and "maximum of 4 parallel running queries" in answer["reply"]["err_msg"]
    eventually("a slot freed without any poll", lambda: start_query(
        xsiam, 'dataset = aws_s3_raw | filter _raw_log contains "q6"')[0] == 200)


# --- the XQL client (tasks.xql) against the stand-in --------------------------------------------

@pytest.fixture
def client(xsiam: LocalXsiam) -> Iterator[XqlClient]:
    with XqlClient(xsiam.api_url, xsiam.api_key_id, SecretStr(xsiam.api_key)) as xql_client:
        yield xql_client


def window() -> tuple[int, int, float]:
    """(from_ms, to_ms, deadline): the last hour, 20 s to answer."""
    now = int(time.time() * 1000)
    return now - 3_600_000, now + 60_000, time.monotonic() + 20


def test_find_batches_needles_and_matches_them_in_the_rows(xsiam: LocalXsiam, client: XqlClient) -> None:
    run = uuid.uuid4().hex[:8]
    held = [f"held-{run}-{i}" for i in range(NEEDLES_PER_QUERY * 2 + 1)]
    deliver(xsiam, [f"GET /x id={needle.upper()} 200" for needle in held[:5]] + [f"event {n}" for n in held[5:]],
            int(time.time() * 1000))
    absent = [f"absent-{run}-{i}" for i in range(5)]
    found = client.find("amazon_eks_raw", [*held, *absent, held[0]], *window())
    assert found == set(held), "contains is case-insensitive, as XQL's default"
    assert client.queries_started == 3  # 2 full batches, then the rest: absent needles and the last held one


def test_find_asks_again_for_needles_a_full_page_of_rows_may_hide(xsiam: LocalXsiam, client: XqlClient) -> None:
    run = uuid.uuid4().hex[:8]
    now = int(time.time() * 1000)
    deliver(xsiam, [f"noisy-{run} line {i}" for i in range(RESULT_LIMIT + 1)], now)
    deliver(xsiam, [f"rare-{run}"], now)
    assert client.find("amazon_eks_raw", [f"noisy-{run}", f"rare-{run}"], *window()) == {f"noisy-{run}", f"rare-{run}"}
    assert client.queries_started == 2, "the first answer was cut at 1,000 rows: rare was asked again on its own"


def test_newest_ms_is_the_newest_event_time(xsiam: LocalXsiam, client: XqlClient) -> None:
    marker, now = uuid.uuid4().hex, int(time.time() * 1000)
    deliver(xsiam, [f"old {marker}"], now - 120_000)
    deliver(xsiam, [f"new {marker}"], now - 60_000)
    assert client.newest_ms("amazon_eks_raw", *window(), contains=marker) == now - 60_000
    assert client.newest_ms("amazon_eks_raw", *window(), contains=uuid.uuid4().hex) is None
    newest = client.newest_ms("amazon_eks_raw", *window())
    assert newest is not None and newest >= now - 60_000


def test_a_query_reaching_the_deadline_is_polled_to_its_end(
        xsiam: LocalXsiam, client: XqlClient, slow_queries: Callable[[float], float]) -> None:
    """Issue 15 part 6: the slot is given back when XSIAM's is, so 4 queries can start the moment search returns."""
    slow_queries(0.5)
    from_ms, to_ms, _ = window()
    started_at = time.monotonic()
    assert client.search("amazon_eks_raw", uuid.uuid4().hex, from_ms, to_ms, deadline=started_at + 0.1) == []
    assert time.monotonic() - started_at >= 0.5, "the query was still running at the deadline"
    answers = [start_query(xsiam, f'dataset = aws_s3_raw | filter _raw_log contains "after-{i}"') for i in range(4)]
    assert [status for status, _ in answers] == [200] * 4, answers


def test_client_errors_name_what_to_check_and_never_the_key(xsiam: LocalXsiam) -> None:
    key = SecretStr("not-the-key-" + uuid.uuid4().hex)
    with XqlClient(xsiam.api_url, xsiam.api_key_id, key) as wrong:
        with pytest.raises(XqlError, match=r"answered 401.*check xsiam_api_key") as refused:
            wrong.search("amazon_eks_raw", "x", *window())
        assert key.get_secret_value() not in str(refused.value) and key.get_secret_value() not in repr(wrong)
    with XqlClient(f"http://127.0.0.1:{free_port()}/public_api/v1", "1", key) as nowhere, \
            pytest.raises(XqlError, match="unreachable"):
        nowhere.newest_ms("amazon_eks_raw", *window())


@pytest.mark.parametrize("needle", ['say "hi"', "C:\\path", "wild*card", "two\nlines", ""])
def test_needles_an_xql_literal_cannot_hold_are_refused_before_any_query(needle: str) -> None:
    with XqlClient("http://127.0.0.1:9/public_api/v1", "1", SecretStr("k")) as unused:
        with pytest.raises(XqlError, match="cannot be searched with XQL contains"):
            unused.find("amazon_eks_raw", ["fine", needle], 0, 1, time.monotonic() + 1)
        assert unused.queries_started == 0


def test_find_never_reports_needles_it_could_not_ask_as_missing() -> None:
    with XqlClient("http://127.0.0.1:9/public_api/v1", "1", SecretStr("k")) as late, \
            pytest.raises(XqlError, match="deadline passed before 1 needles were asked"):
        late.find("amazon_eks_raw", ["needle"], 0, 1, time.monotonic() - 1)


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
def reading(stack: Stack, tmp_path: Path) -> Iterator[tuple[LocalXsiam, Credentials]]:
    """A stand-in that only collects the S3 feeds, with the reader's key given directly."""
    reader = provision_s3_feeds(stack)
    collector = LocalXsiam(tmp_path, stack.local).collect(collector_feeds(stack.local, stack.values),
                                                          reader_key=reader).start()
    yield collector, reader
    collector.stop()


def put(stack: Stack, feed: str, obj: formats.LogObject) -> None:
    extra = {"ContentEncoding": obj.content_encoding} if obj.content_encoding else {}
    stack.client("s3").put_object(Bucket=stack.settings.s3_feeds[feed].bucket, Key=obj.key, Body=obj.body,
                                  ContentType=obj.content_type, **extra)


def test_each_s3_log_format_is_collected(stack: Stack, reading: tuple[LocalXsiam, Credentials]) -> None:
    standin, _ = reading
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
    fields = dict(zip(formats.FLOW_LOG_FIELDS, flow["raw"].split(" "), strict=True))  # the line, as written
    assert fields["instance-id"] == f"i-{marker}-vpc-flow-logs"
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


def test_junk_messages_do_not_stop_collection(stack: Stack, reading: tuple[LocalXsiam, Credentials]) -> None:
    standin, _ = reading
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
        stack: Stack, reading: tuple[LocalXsiam, Credentials]) -> None:
    standin, reader = reading
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


def test_the_collector_pauses_and_drops_on_request(stack: Stack, reading: tuple[LocalXsiam, Credentials]) -> None:
    """For the audit and replay tests: paused leaves notifications queued, dropping deletes them unread."""
    standin, _ = reading
    settings = stack.settings
    origin, queue = formats.Origin(settings.account_id, settings.region), settings.s3_feeds["application-logs"].queue
    eventually("S3's test event consumed", lambda: queue_depth(stack, queue) == 0)
    assert standin.collector_mode("paused") == "paused"
    lost, kept = uuid.uuid4().hex, uuid.uuid4().hex
    put(stack, "application-logs", formats.fluent_bit(origin, lost, datetime.now(UTC)))
    url = queue_url(stack.aws, queue)
    eventually("the notification waits, visible", lambda: stack.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"]
        == "1")
    assert standin.collector_mode("dropping") == "dropping"
    eventually("the notification deleted unread", lambda: queue_depth(stack, queue) == 0)
    assert standin.collector_mode("running") == "running"
    put(stack, "application-logs", formats.fluent_bit(origin, kept, datetime.now(UTC)))
    eventually("collected again", lambda: standin.count("amazon_aws_raw", kept) == 1)
    assert standin.count("amazon_aws_raw", lost) == 0, "a dropped object is lost: only a replay brings it back"
    with pytest.raises(urllib.error.HTTPError, match="400"):
        standin.collector_mode("sleeping")


# --- the canary's queries always finish (issue 15 part 6) ---------------------------------------

def test_canary_deadlines_under_xsiam_query_limits_and_firehose_retries(stack: Stack, collecting: LocalXsiam) -> None:
    """A feed failing by its deadline leaves no query behind: with queries 2.5 s long its deadline (5 s) falls while
    its second query runs (started >= 2.7 s after the write, after a 0.2 s pause), and the next run, at once,
    takes all 4 of XSIAM's query slots for 5 feeds and must find every marker. Then the EKS canary's wait follows
    the stream it is subscribed to (sharing the provisioning)."""
    feeds = ["cloudtrail", "vpc-flow-logs", "route53-resolver", "application-logs", "modsecurity"]
    stack.update(s3_feeds={name: {**feed, "canary_deadline_seconds": 5} for name, feed in
                           stack.values["s3_feeds"].items()})
    collecting.collector_mode("paused")
    collecting.query_execution(2.5)
    state = feed_canary(feeds=["application-logs"], return_state=True)
    [failed] = items_of(state)
    assert (failed.status, failed.leg) == ("failed", "collection") and "not reading the queue" in failed.detail
    collecting.query_execution(EXECUTION_SECONDS)
    collecting.collector_mode("running")
    state = feed_canary(feeds=feeds, return_state=True)
    results = items_of(state)
    assert state.is_completed() and {r.feed for r in results if r.passed} == set(feeds), results

    settings = stack.settings
    feed = settings.firehose_feeds["eks-control-plane"]
    stack.client("firehose").update_destination(**retry_of(stack, feed.delivery_stream, 900))
    assert stream_timing(stack.aws, settings, feed) == (feed.buffering_seconds, 900), "the stream's, not settings'"
    stack.client("logs").delete_subscription_filter(logGroupName=feed.log_group, filterName=feed.subscription_filter)
    assert stream_timing(stack.aws, settings, feed) is None, "nothing reaches Firehose: no backup to wait for"


# --- the EKS canary waits as long as Firehose's retries (issue 15 part 6) -----------------------

@pytest.mark.parametrize(("deadline", "buffering", "retry", "waited"), [
    (240, 60, 300, 420),  # the defaults: 60 s buffer + 300 s of retries + 60 s margin outlast the 240 s deadline
    (240, 900, 7200, 8160),  # the longest a stream can take
    (600, 60, 300, 600),  # a deadline already long enough is kept
    (240, 0, 0, 240),  # no retries: nothing more to wait for
])
def test_the_backup_wait_covers_buffering_and_retries(deadline: int, buffering: int, retry: int, waited: int) -> None:
    assert backup_wait_seconds(deadline, buffering, retry) == waited


def retry_of(stack: Stack, stream: str, seconds: int) -> dict[str, Any]:
    """The update_destination call that changes only the stream's retry duration (as an operator might)."""
    description = stack.client("firehose").describe_delivery_stream(DeliveryStreamName=stream)[
        "DeliveryStreamDescription"]
    destination = description["Destinations"][0]
    return {"DeliveryStreamName": stream, "CurrentDeliveryStreamVersionId": description["VersionId"],
            "DestinationId": destination["DestinationId"],
            "HttpEndpointDestinationUpdate": {"RetryOptions": {"DurationInSeconds": seconds}}}
