"""XSIAM's Firehose HTTP endpoint (`POST /logs/v1/aws`), per the Firehose delivery protocol.

200 stores every log event; 401 (no key) / 403 (wrong key), 400 (malformed) and 413 (too large)
store nothing. The answer always echoes the request id with a millisecond timestamp.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hmac
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deployments.xsiam.store import Event, Store, now_ms

EKS_DATASET = "amazon_eks_raw"
MAX_BODY_BYTES = 8 * 1024 * 1024  # above Firehose's largest buffer once gzip is undone


class Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def _decode_records(records: list[Any]) -> list[Event]:
    events: list[Event] = []
    for index, record in enumerate(records):
        try:
            payload = json.loads(gzip.decompress(base64.b64decode(record["data"], validate=True)))
        except (KeyError, TypeError, binascii.Error, OSError, EOFError, zlib.error, ValueError) as error:
            raise Rejected(400, f"record {index}: not base64(gzip(JSON)) CloudWatch Logs data: {error}") from None
        if payload.get("messageType") == "CONTROL_MESSAGE":
            continue
        if payload.get("messageType") != "DATA_MESSAGE" or not isinstance(payload.get("logEvents"), list):
            raise Rejected(400, f"record {index}: not a CloudWatch Logs subscription payload")
        group, stream = str(payload.get("logGroup", "")), str(payload.get("logStream", ""))
        events += [Event(EKS_DATASET, group, stream, int(e.get("timestamp", 0)), str(e.get("message", "")))
                   for e in payload["logEvents"]]
    return events


def handle(headers: Mapping[str, str], body: bytes, token: str, store: Store) -> Answer:
    """`headers` with lower-case names."""
    request_id = headers.get("x-amz-firehose-request-id", "")
    try:
        key = headers.get("x-amz-firehose-access-key")
        if not key:
            raise Rejected(401, "missing X-Amz-Firehose-Access-Key")
        if not hmac.compare_digest(key.encode(), token.encode()):
            store.add_failure("firehose", "auth", "wrong access key", key_id=f"...{key[-4:]}" if len(key) > 8 else None)
            raise Rejected(403, "invalid access key")
        if len(body) > MAX_BODY_BYTES:
            raise Rejected(413, f"request body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
        if headers.get("content-encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as error:
                raise Rejected(400, f"body is not valid gzip: {error}") from None
        if len(body) > MAX_BODY_BYTES:
            raise Rejected(413, f"decompressed body exceeds {MAX_BODY_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError as error:
            raise Rejected(400, f"body is not JSON: {error}") from None
        records = document.get("records") if isinstance(document, dict) else None
        if not isinstance(records, list) or not 1 <= len(records) <= 10_000:
            raise Rejected(400, "body must hold 1-10000 records")
        request_id = str(document.get("requestId") or request_id)
        store.add_events(_decode_records(records), firehose_request_id=request_id or None)
    except Rejected as rejected:
        return Answer(rejected.status, {"requestId": request_id, "timestamp": now_ms(),
                                        "errorMessage": str(rejected)})
    return Answer(200, {"requestId": request_id, "timestamp": now_ms()})
