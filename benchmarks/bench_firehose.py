"""Events per second from put_log_events to the XSIAM stand-in's store through the local EKS path,
against posting the same records straight to the stand-in with a bare HTTP client, in one run.

Path: CloudWatch Logs (moto) -> subscription payload (gzip) -> Firehose fidelity delivery (headers,
GZIP body) -> stand-in /logs/v1/aws -> SQLite. Batch sizes 1, 100 and 10,000 events; median of 3.
Target: the local path costs at most 2x the direct post for batches of 100 or more. moto's own
put_log_events (CloudWatch Logs ingestion, IAM evaluation) is reported apart from the delivery.

    .venv/bin/python benchmarks/bench_firehose.py
"""

from __future__ import annotations

import base64
import gzip
import json
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import boto3

from deployments.local.stack import LocalAws, LocalXsiam, local_settings
from socfeeds.aws import AwsClients
from socfeeds.settings import Settings
from tasks.firehose import ensure_cluster_logging, ensure_delivery_stream, ensure_subscription

FEED = "eks-control-plane"
SIZES = (1, 100, 10_000)


def events(marker: str, count: int) -> list[dict[str, object]]:
    now = int(time.time() * 1000)
    return [{"timestamp": now, "message": f'{{"kind":"Event","auditID":"{marker}-{i}"}}'} for i in range(count)]


def through_local_path(aws: LocalAws, xsiam: LocalXsiam, group: str, count: int) -> tuple[float, float]:
    """(whole path, delivery alone): the delivery starts when moto's put_log_events has returned."""
    logs = aws.client("logs")
    stream, marker = f"kube-apiserver-audit-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    start = time.perf_counter()
    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events(marker, count))
    accepted = time.perf_counter()
    pause = 0.002
    while xsiam.count("amazon_eks_raw", marker) < count:
        time.sleep(pause)
        pause = min(pause * 1.5, 0.05)
    done = time.perf_counter()
    return done - start, done - accepted


def direct_post(xsiam: LocalXsiam, group: str, count: int) -> float:
    marker = uuid.uuid4().hex
    payload = {"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": group,
               "logStream": "kube-apiserver-audit-direct", "subscriptionFilters": ["direct"],
               "logEvents": [{"id": str(i), **e} for i, e in enumerate(events(marker, count))]}
    start = time.perf_counter()
    record = base64.b64encode(gzip.compress(json.dumps(payload, separators=(",", ":")).encode())).decode()
    request_id = str(uuid.uuid4())
    body = gzip.compress(json.dumps({"requestId": request_id, "timestamp": int(time.time() * 1000),
                                     "records": [{"data": record}]}).encode())
    request = urllib.request.Request(xsiam.firehose_url, data=body, method="POST", headers={  # noqa: S310
        "X-Amz-Firehose-Request-Id": request_id, "X-Amz-Firehose-Access-Key": xsiam.firehose_token,
        "Content-Type": "application/json", "Content-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 (http://127.0.0.1)
        assert answer.status == 200
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as state:
        aws = LocalAws(Path(state)).start()
        xsiam = LocalXsiam(Path(state), aws).start()
        try:
            values = local_settings(aws, Path(state), xsiam)
            token_secret = values["firehose_feeds"][FEED]["token_secret_name"]
            aws.put_token_secret(token_secret, xsiam.firehose_token)
            settings = Settings(**values)
            assert aws.admin is not None
            clients = AwsClients.from_settings(settings, session=boto3.session.Session(
                aws.admin.access_key_id, aws.admin.secret_access_key))
            for step in (ensure_cluster_logging, ensure_delivery_stream, ensure_subscription):
                step.fn(clients, settings, FEED, False)
            group = settings.firehose_feeds[FEED].log_group
            rows = []
            for size in SIZES:
                runs = [through_local_path(aws, xsiam, group, size) for _ in range(3)]
                local = statistics.median(r[0] for r in runs)
                delivery = statistics.median(r[1] for r in runs)
                direct = statistics.median(direct_post(xsiam, group, size) for _ in range(3))
                rows.append((size, local, delivery, direct))
        finally:
            xsiam.stop()
            aws.stop()
    print("\nput_log_events -> Firehose (emulated) -> stand-in store, vs a direct POST of the same records")
    print("(delivery = from put_log_events returning to stored: the Firehose emulation's own cost)")
    print(f"{'batch':>6} {'local ev/s':>11} {'direct ev/s':>12} {'local/direct':>13} {'delivery/direct':>16}")
    for size, local, delivery, direct in rows:
        print(f"{size:>6} {size / local:>11.0f} {size / direct:>12.0f} {local / direct:>13.2f} "
              f"{delivery / direct:>16.2f}")


if __name__ == "__main__":
    main()
