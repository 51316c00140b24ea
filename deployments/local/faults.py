"""A test fault injector in the moto server process: throttling and latency on demand, per account and service.

Not a fidelity patch: AWS has nothing to match here. It lets tests and benchmarks see what the flows do when an
account is throttled (botocore must retry, the run must still finish) or slow (a fleet run's wall time with
50 ms per AWS call), without any real AWS.

Control endpoint on the moto server (loopback only, like moto's own /moto-api; an unsigned request, so a signed
S3 request for a bucket of that name is never taken for it):

    POST   /socfeeds-faults  {"account_id": "<12 digits>" | "*", "service": "iam" | "*",
                              "throttle_calls": n, "latency_ms": m}    adds or replaces a fault
    GET    /socfeeds-faults  the faults and what they did: {"faults": [...], "throttled": {...}, "delayed": {...}}
    DELETE /socfeeds-faults  removes every fault and zeroes the counters

`service` is the SigV4 signing name in the request's credential scope (iam, sts, sqs, ec2, s3, logs, firehose, kms,
secretsmanager, eks, organizations, route53resolver, cloudtrail, ssm, monitoring for CloudWatch). The account is
the one moto acts in for the request's access key. A matching request first waits `latency_ms`; then, while the
fault has throttle calls left, it is answered as AWS answers throttling in the service's protocol, so botocore's
retry logic recognises it: query (IAM, STS) HTTP 400 `Throttling`; EC2 HTTP 503 `RequestLimitExceeded` (EC2's own
error document; botocore's legacy retry table names 503 for it); JSON and REST-JSON (Logs, Firehose, KMS, SQS,
EKS, ...) HTTP 400 `ThrottlingException`; RPC v2 CBOR (CloudWatch) the same in CBOR; S3 HTTP 503 `SlowDown`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs

from moto.iam.models import get_account_id_from
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

PATH = "/socfeeds-faults"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/[^/]+/([^/]+)/aws4_request")
StartResponse = Callable[..., Any]


@dataclass
class Fault:
    account_id: str  # "*": every account
    service: str  # signing name, or "*"
    throttle_calls: int = 0  # answers left to throttle
    latency_ms: int = 0

    def matches(self, account_id: str, service: str) -> bool:
        return self.account_id in {"*", account_id} and self.service in {"*", service}


class Faults:
    """The configured faults and their counters; requests arrive on the server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.faults: list[Fault] = []
        self.throttled: dict[str, int] = {}  # "<account>/<service>" -> throttled answers
        self.delayed: dict[str, int] = {}  # "<account>" -> requests that waited

    def set(self, fault: Fault) -> None:
        with self._lock:
            self.faults = [f for f in self.faults if (f.account_id, f.service) != (fault.account_id, fault.service)]
            if fault.throttle_calls > 0 or fault.latency_ms > 0:
                self.faults.append(fault)

    def reset(self) -> None:
        with self._lock:
            self.faults, self.throttled, self.delayed = [], {}, {}

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"faults": [asdict(f) for f in self.faults], "throttled": dict(self.throttled),
                    "delayed": dict(self.delayed)}

    def decide(self, account_id: str, service: str) -> tuple[float, bool]:
        """(seconds to wait, whether to throttle) for one request; counts what it decides."""
        with self._lock:
            matching = [f for f in self.faults if f.matches(account_id, service)]
            latency_ms = max((f.latency_ms for f in matching), default=0)
            throttle = next((f for f in matching if f.throttle_calls > 0), None)
            if throttle is not None:
                throttle.throttle_calls -= 1
                key = f"{account_id}/{service}"
                self.throttled[key] = self.throttled.get(key, 0) + 1
            if latency_ms:
                self.delayed[account_id] = self.delayed.get(account_id, 0) + 1
        return latency_ms / 1000, throttle is not None

    @property
    def active(self) -> bool:
        return bool(self.faults)


FAULTS = Faults()


def caller(environ: dict[str, Any]) -> tuple[str, str] | None:
    """(access key id, signing service) of a SigV4 request: its Authorization header or presigned query."""
    found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if found is None:
        query = parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential", [""])[0]
        found = _CREDENTIAL.search(f"Credential={query},")
    return (found.group(1), found.group(2)) if found else None


def throttle_response(service: str, content_type: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """AWS's throttling answer in the protocol botocore expects for the request (status, headers, body)."""
    request_id = str(uuid.uuid4())
    if service == "s3":
        return 503, [("Content-Type", "application/xml")], (
            f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your "
            f"request rate.</Message><RequestId>{request_id}</RequestId></Error>").encode()
    if service == "ec2":
        return 503, [("Content-Type", "text/xml;charset=UTF-8")], (
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
            f"<Message>Request limit exceeded.</Message></Error></Errors><RequestID>{request_id}</RequestID>"
            "</Response>").encode()
    if "cbor" in content_type:
        return 400, [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor"),
                     ("x-amzn-RequestId", request_id)], _cbor_text_map(
                         {"__type": "ThrottlingException", "message": "Rate exceeded"})
    if content_type.startswith("application/x-www-form-urlencoded"):
        return 400, [("Content-Type", "text/xml")], (
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>"
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>").encode()
    json_type = content_type if content_type.startswith("application/x-amz-json") else "application/json"
    return 400, [("Content-Type", json_type), ("x-amzn-ErrorType", "ThrottlingException"),
                 ("x-amzn-RequestId", request_id)], json.dumps(
                     {"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()


def _cbor_text_map(values: dict[str, str]) -> bytes:
    """The few CBOR bytes of a map of short text strings (RFC 8949: major types 5 and 3)."""
    def head(major: int, length: int) -> bytes:
        if length < 24:
            return bytes([major << 5 | length])
        if length < 256:
            return bytes([major << 5 | 24, length])
        return bytes([major << 5 | 25]) + length.to_bytes(2, "big")

    out = head(5, len(values))
    for key, value in values.items():
        for text in (key.encode(), value.encode()):
            out += head(3, len(text)) + text
    return out


def _drain(environ: dict[str, Any]) -> None:
    """Read the request body we answer without moto, so the connection stays well-formed."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ.get("wsgi.input")
    while stream is not None and length > 0:
        chunk = stream.read(min(length, 1 << 16))
        if not chunk:
            break
        length -= len(chunk)


def _answer(start_response: StartResponse, status: int, headers: list[tuple[str, str]],
            body: bytes) -> Iterable[bytes]:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
    start_response(f"{status} {reasons.get(status, '')}", [*headers, ("Content-Length", str(len(body)))])
    return [body]


def _control(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    if method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            FAULTS.set(Fault(str(body["account_id"]), str(body.get("service", "*")),
                             int(body.get("throttle_calls", 0)), int(body.get("latency_ms", 0))))
        except (ValueError, KeyError, TypeError) as error:
            return _answer(start_response, 400, [("Content-Type", "application/json")],
                           json.dumps({"error": f"{type(error).__name__}: {error}"}).encode())
    elif method == "DELETE":
        FAULTS.reset()
    elif method != "GET":
        return _answer(start_response, 405, [], b"")
    return _answer(start_response, 200, [("Content-Type", "application/json")], json.dumps(FAULTS.state()).encode())


_original_call = DomainDispatcherApplication.__call__


def _call(self: DomainDispatcherApplication, environ: dict[str, Any], start_response: StartResponse) -> Any:
    if environ.get("PATH_INFO") == PATH and "HTTP_AUTHORIZATION" not in environ:
        return _control(environ, start_response)
    if FAULTS.active:
        signed = caller(environ)
        if signed is not None:
            access_key, service = signed
            wait_s, throttle = FAULTS.decide(get_account_id_from(access_key), service)
            if wait_s:
                time.sleep(wait_s)  # the injected latency itself
            if throttle:
                _drain(environ)
                return _answer(start_response, *throttle_response(service, environ.get("CONTENT_TYPE", "")))
    return _original_call(self, environ, start_response)


def apply() -> None:
    DomainDispatcherApplication.__call__ = _call  # type: ignore[method-assign]
