"""The stand-in's S3 collector vs a bare boto3 receive/get/delete loop, in one run.

1,000 notified objects of mixed formats (250 per S3 feed) are collected by each, alternately,
twice; both use the reader's key against the same moto server and handle feeds one after another.
Prints objects per second and collector/bare (target: within 1.2x).

    .venv/bin/python benchmarks/bench_collector.py
"""

from __future__ import annotations

import gzip
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from deployments.local.stack import Credentials, LocalAws, LocalXsiam, collector_feeds, local_settings
from deployments.xsiam.collector import Collector, FeedSource, ReaderIdentity
from deployments.xsiam.store import Store
from socfeeds import formats
from socfeeds.aws import AwsClients
from socfeeds.settings import Settings
from tasks.buckets import ensure_bucket
from tasks.notifications import ensure_notification
from tasks.queues import ensure_queues
from tasks.reader import ensure_reader

PER_FEED = 250


def write_objects(aws: LocalAws, settings: Settings) -> None:
    s3 = aws.client("s3")
    origin = formats.Origin(settings.account_id, settings.region, vpc_id=settings.vpc_id or "vpc-00000000")
    now = datetime.now(UTC)
    for feed in settings.s3_feeds.values():
        for _ in range(PER_FEED):
            obj = formats.synthetic_object(feed.log_type, origin, uuid.uuid4().hex, now)
            s3.put_object(Bucket=feed.bucket, Key=obj.key, Body=obj.body)


def bare_loop(sqs: Any, s3: Any, feeds: list[FeedSource]) -> None:
    import json
    from urllib.parse import unquote_plus

    for feed in feeds:
        handled = 0
        while handled < PER_FEED:
            for message in sqs.receive_message(QueueUrl=feed.queue_url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1).get("Messages", []):
                for record in json.loads(message["Body"]).get("Records", []):
                    data = s3.get_object(Bucket=record["s3"]["bucket"]["name"],
                                         Key=unquote_plus(record["s3"]["object"]["key"]))["Body"].read()
                    if data[:2] == b"\x1f\x8b":
                        gzip.decompress(data)
                    handled += 1
                sqs.delete_message(QueueUrl=feed.queue_url, ReceiptHandle=message["ReceiptHandle"])


def collector_loop(collector: Collector, feeds: list[FeedSource]) -> None:
    for feed in feeds:
        handled = 0
        while handled < PER_FEED:
            handled += collector.collect_once(feed)


def timed(call: Callable[[], None]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as state_dir:
        aws = LocalAws(Path(state_dir)).start()
        try:
            values = local_settings(aws, Path(state_dir), LocalXsiam(Path(state_dir), aws))
            settings = Settings(**values)
            assert aws.admin is not None
            clients = AwsClients.from_settings(settings, session=boto3.session.Session(
                aws.admin.access_key_id, aws.admin.secret_access_key))
            ensure_reader.fn(clients, settings, False)
            for name in settings.s3_feeds:
                for step in (ensure_bucket, ensure_queues, ensure_notification):  # S3 feeds only
                    step.fn(clients, settings, name, False)
                aws.client("sqs").purge_queue(QueueUrl=aws.client("sqs").get_queue_url(
                    QueueName=settings.s3_feeds[name].queue)["QueueUrl"])  # S3's TestEvent
            key = aws.client("iam").create_access_key(UserName=settings.reader.user_name)["AccessKey"]
            reader = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
            feeds = [FeedSource(f["name"], f["queue_url"], f["log_type"]) for f in collector_feeds(aws, values)]
            collector = Collector(Store(Path(state_dir) / "xsiam"), feeds,
                                  ReaderIdentity(reader.access_key_id, reader.secret_access_key),
                                  settings.region, aws.endpoint_url)
            collector.reload()
            sqs, s3 = aws.client("sqs", reader), aws.client("s3", reader)
            bare, collected = [], []
            for _ in range(2):
                write_objects(aws, settings)
                bare.append(timed(lambda: bare_loop(sqs, s3, feeds)))
                write_objects(aws, settings)
                collected.append(timed(lambda: collector_loop(collector, feeds)))
        finally:
            aws.stop()
    objects = PER_FEED * 4
    bare_s, collector_s = statistics.median(bare), statistics.median(collected)
    print(f"\n{objects} notified objects, mixed formats, reader key, median of 2 rounds each")
    print(f"bare boto3 loop: {objects / bare_s:7.0f} objects/s ({bare_s:.2f} s)")
    print(f"collector      : {objects / collector_s:7.0f} objects/s ({collector_s:.2f} s)")
    print(f"collector/bare time ratio: {collector_s / bare_s:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
