"""Make moto's Firehose deliver to HTTP endpoints the way AWS does. Local stack only; moto 5.2.5.

moto posts HTTP records once, synchronously, without the X-Amz-Firehose-* headers, access key,
gzip or S3 backup, and CloudWatch Logs subscriptions reach only S3-destination streams
(emulator.md). Applied inside the moto server process, this module makes the local path:

    put_log_events -> subscription payload (gzip JSON) -> delivery stream -> HTTP endpoint

follow the Firehose HTTP endpoint delivery protocol: headers (protocol version, request id kept
across retries, source ARN, access key from the stream's configuration or its Secrets Manager
secret's `api_key`, common attributes), GZIP content encoding, millisecond timestamps, the response
checked (status 200 and the same requestId), retries with backoff (1 s doubling, 15 % jitter, 2 min
cap) within RetryOptions.DurationInSeconds, then the records written to the S3 backup bucket under
`http-endpoint-failed/` as AWS writes them, and an error event in the stream's CloudWatch Logs
error logging. 413 is a permanent failure: not retried.

Delivery is asynchronous (PutRecord returns at once) and not buffered: records leave within
milliseconds, not after the buffering interval. SOCFEEDS_EMULATOR_TIME_SCALE (default 1) scales
the retry window and backoff, so tests can see a 300 s retry duration end in seconds.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import requests
from moto.firehose.models import FirehoseBackend, firehose_backends
from moto.logs.models import logs_backends
from moto.s3.models import s3_backends
from moto.secretsmanager.models import secretsmanager_backends

PATCHED_MOTO = "5.2.5"
FAILED_PREFIX = "http-endpoint-failed/"


def _time_scale() -> float:
    return float(os.environ.get("SOCFEEDS_EMULATOR_TIME_SCALE", "1"))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _access_key(backend: FirehoseBackend, destination: dict[str, Any]) -> str:
    secret_config = destination.get("SecretsManagerConfiguration") or {}
    if secret_config.get("Enabled") and secret_config.get("SecretARN"):
        secrets: Any = secretsmanager_backends[backend.account_id][backend.region_name]
        value = secrets.get_secret_value(secret_config["SecretARN"], None, "AWSCURRENT")
        return str(json.loads(value["SecretString"]).get("api_key", ""))
    return str(destination.get("EndpointConfiguration", {}).get("AccessKey", ""))


class Delivery:
    """One batch of records on its way to one HTTP endpoint, with AWS's retry and backup rules."""

    def __init__(self, backend: FirehoseBackend, stream: Any, destination: dict[str, Any],
                 records: list[bytes]) -> None:
        self.backend, self.stream, self.destination, self.records = backend, stream, destination, records
        self.request_id = str(uuid.uuid4())
        self.arrival_ms = _now_ms()
        self.attempts = 0

    def run(self) -> None:
        retry_s = float(self.destination.get("RetryOptions", {}).get("DurationInSeconds", 300)) * _time_scale()
        deadline = time.monotonic() + retry_s
        backoff = 1.0 * _time_scale()
        while True:
            self.attempts += 1
            ok, permanent, code, message = self._attempt()
            if ok:
                return
            if permanent or time.monotonic() + backoff > deadline:
                self._log_error(code, message)
                if not permanent:
                    self._back_up(code, message)
                return
            time.sleep(backoff * random.uniform(0.85, 1.15))
            backoff = min(backoff * 2, 120.0 * _time_scale())

    def _attempt(self) -> tuple[bool, bool, str, str]:
        endpoint = self.destination["EndpointConfiguration"]
        request = self.destination.get("RequestConfiguration", {})
        body = json.dumps({"requestId": self.request_id, "timestamp": _now_ms(),
                           "records": [{"data": base64.b64encode(r).decode()} for r in self.records]}).encode()
        headers = {
            "X-Amz-Firehose-Protocol-Version": "1.0",
            "X-Amz-Firehose-Request-Id": self.request_id,
            "X-Amz-Firehose-Source-Arn": self.stream.delivery_stream_arn,
            "X-Amz-Firehose-Access-Key": _access_key(self.backend, self.destination),
            "Content-Type": "application/json",
        }
        attributes = request.get("CommonAttributes") or []
        if attributes:
            headers["X-Amz-Firehose-Common-Attributes"] = json.dumps(
                {"commonAttributes": {a["AttributeName"]: a["AttributeValue"] for a in attributes}})
        if request.get("ContentEncoding") == "GZIP":
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        try:
            answer = requests.post(endpoint["Url"], data=body, headers=headers, timeout=30)
        except requests.RequestException as error:
            return False, False, "HttpEndpoint.RequestTimeout", f"Unable to reach the endpoint: {error}"
        if answer.status_code == 413:
            return False, True, "HttpEndpoint.PayloadTooLarge", "The endpoint answered 413 (payload too large)"
        if answer.status_code != 200:
            return False, False, "HttpEndpoint.ResponseReceivedWithErrorCode", \
                f"The endpoint answered {answer.status_code}: {answer.text[:500]}"
        try:
            echoed = answer.json().get("requestId")
        except ValueError:
            echoed = None
        if echoed != self.request_id:
            return False, False, "HttpEndpoint.InvalidResponseFromDestination", \
                "The response did not carry the request's requestId"
        return True, False, "", ""

    def _back_up(self, code: str, message: str) -> None:
        backup = self.destination.get("S3DestinationDescription") or self.destination.get("S3Configuration") or {}
        bucket_arn = backup.get("BucketARN")
        if not bucket_arn:
            return
        ending = _now_ms()
        lines = [json.dumps({
            "attemptsMade": self.attempts, "arrivalTimestamp": self.arrival_ms, "errorCode": code,
            "errorMessage": message, "attemptEndingTimestamp": ending,
            "rawData": base64.b64encode(record).decode(), "subsequenceNumber": 0,
            "dataId": f"{self.request_id}.{index}",
        }) for index, record in enumerate(self.records)]
        now = datetime.now(UTC)
        key = (f"{backup.get('Prefix', '')}{backup.get('ErrorOutputPrefix') or FAILED_PREFIX}"
               f"{now:%Y/%m/%d/%H}/{self.stream.delivery_stream_name}-{self.stream.version_id}-"
               f"{now:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}")
        data = "\n".join(lines).encode() + b"\n"
        if backup.get("CompressionFormat") == "GZIP":
            data = gzip.compress(data)
        s3_backends[self.backend.account_id][self.backend.partition].put_object(bucket_arn.split(":")[-1], key, data)

    def _log_error(self, code: str, message: str) -> None:
        options = self.destination.get("CloudWatchLoggingOptions") or {}
        if not options.get("Enabled"):
            return
        event = {"timestamp": _now_ms(), "message": json.dumps({
            "deliveryStreamARN": self.stream.delivery_stream_arn,
            "destination": self.destination["EndpointConfiguration"].get("Url"), "deliveryStreamVersionId": 1,
            "message": message, "errorCode": code})}
        logs = logs_backends[self.backend.account_id][self.backend.region_name]
        with contextlib.suppress(Exception):  # error logging must never break delivery, as in AWS
            logs.put_log_events(options["LogGroupName"], options["LogStreamName"], [event])


def _put_record_batch(self: FirehoseBackend, delivery_stream_name: str,
                      records: list[dict[str, bytes]]) -> dict[str, Any]:
    stream = self.delivery_streams.get(delivery_stream_name)
    destinations = stream.destinations if stream else []
    http = [d["HttpEndpoint"] for d in destinations if "HttpEndpoint" in d]
    if not http:
        return _original_put_record_batch(self, delivery_stream_name, records)
    for destination in http:
        delivery = Delivery(self, stream, destination, [r["Data"] for r in records])
        threading.Thread(target=delivery.run, name=f"firehose-{delivery_stream_name}", daemon=True).start()
    return {"FailedPutCount": 0, "Encrypted": False,
            "RequestResponses": [{"RecordId": str(uuid.uuid4())} for _ in records]}


def _send_log_event(self: FirehoseBackend, delivery_stream_arn: str, filter_name: str, log_group_name: str,
                    log_stream_name: str, log_events: list[dict[str, Any]]) -> None:
    """The subscription payload AWS sends, delivered through the stream's real destination."""
    payload = {"messageType": "DATA_MESSAGE", "owner": self.account_id, "logGroup": log_group_name,
               "logStream": log_stream_name, "subscriptionFilters": [filter_name],
               "logEvents": [{"id": str(e.get("id") or uuid.uuid4().int)[:56], "timestamp": e["timestamp"],
                              "message": e["message"]} for e in log_events]}
    stream = self.lookup_name_from_arn(delivery_stream_arn)
    if stream is not None:
        data = gzip.compress(json.dumps(payload, separators=(",", ":")).encode())
        self.put_record_batch(stream.delivery_stream_name, [{"Data": data}])


_original_put_record_batch = FirehoseBackend.put_record_batch


def apply() -> None:
    """Patch moto's Firehose backend class (every account and region) in this process."""
    import moto

    if moto.__version__ != PATCHED_MOTO:
        raise RuntimeError(f"firehose_fidelity is written for moto {PATCHED_MOTO}, not {moto.__version__}")
    FirehoseBackend.put_record_batch = _put_record_batch  # type: ignore[method-assign]
    FirehoseBackend.send_log_event = _send_log_event  # type: ignore[method-assign]
    assert firehose_backends is not None
