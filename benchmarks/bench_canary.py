"""Canary latency (write -> confirmed) per feed, minus the bare latency of the same leg with plain boto3.

S3 feeds use the `queue` strategy here (no collector competes for the messages): the bare leg is
put_object then a long-poll receive until the notification arrives. The EKS feed goes through the
emulated Firehose to the stand-in and is confirmed with the XQL API. Also times a five-feed run
against its slowest feed plus Prefect's fixed per-run cost (an empty flow run, measured here), and the part of
that run spent publishing `feed-slos` (the SLO history: an events query started while the feeds run, then one
artifact), which replaced a Prefect Variable read and rewritten on the critical path.
Targets: median overhead <= 100 ms per S3 feed; five-feed run <= 1.3x (slowest + fixed cost).

    .venv/bin/python benchmarks/bench_canary.py
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote_plus

from deployments.local.stack import LocalStack, write_settings

ROUNDS = 5
P = ParamSpec("P")
R = TypeVar("R")


def bare_leg(stack: LocalStack, bucket: str, queue: str) -> float:
    s3, sqs = stack.aws.client("s3"), stack.aws.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    key = f"bench/{uuid.uuid4().hex}.log"
    start = time.perf_counter()
    s3.put_object(Bucket=bucket, Key=key, Body=b"{}\n")
    while time.perf_counter() - start < 30:
        for message in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20, MaxNumberOfMessages=10).get(
                "Messages", []):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            keys = [unquote_plus(r["s3"]["object"]["key"]) for r in json.loads(message["Body"]).get("Records", [])]
            if key in keys:
                elapsed = time.perf_counter() - start
                s3.delete_object(Bucket=bucket, Key=key)
                return elapsed
    raise RuntimeError(f"no notification for {key} on {queue} within 30 s")


def main() -> None:
    with tempfile.TemporaryDirectory() as state, LocalStack(Path(state), collect=False) as stack:
        stack.apply_env()
        from prefect import flow

        import flows._slo
        import flows.canary
        from deployments.local.stack import flush_prefect_logs
        from flows.canary import feed_canary
        from flows.provision import provision_feeds
        from socfeeds.settings import Settings

        values: dict[str, Any] = json.loads(stack.settings_file.read_text())
        for feed in values["s3_feeds"].values():
            feed["canary_strategy"] = "queue"
        write_settings(values, stack.settings_file)
        provision_feeds()
        feeds = Settings().s3_feeds
        sqs = stack.aws.client("sqs")
        for feed in feeds.values():  # S3's test events
            sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=feed.queue)["QueueUrl"])

        @flow(name="bench-empty")
        def empty() -> None:
            """Prefect's fixed cost of a flow run."""

        rows = []
        for name, feed in feeds.items():
            bare = statistics.median(bare_leg(stack, feed.bucket, feed.queue) for _ in range(ROUNDS)) * 1000
            canary = statistics.median(feed_canary(feeds=[name])[0].latency_ms or 0 for _ in range(ROUNDS))
            rows.append((name, canary, bare))
        eks = statistics.median(feed_canary(feeds=["eks-control-plane"])[0].latency_ms or 0 for _ in range(ROUNDS))
        fixed = statistics.median(_timed(empty) for _ in range(3))
        walls, slowest = [], []
        publishing: list[float] = []
        flows.canary.publish_feed_slos = timed_into(publishing, flows._slo.publish_feed_slos)  # type: ignore[attr-defined]
        for _ in range(5):
            start = time.perf_counter()
            results = feed_canary()
            walls.append(time.perf_counter() - start)
            slowest.append(max(r.latency_ms or 0 for r in results) / 1000)
        flush_prefect_logs()
    print(f"\ncanary latency vs the bare leg (plain boto3 put + long-poll receive), median of {ROUNDS}")
    print(f"{'feed':<18} {'canary ms':>10} {'bare ms':>8} {'overhead ms':>12}")
    for name, canary, bare in rows:
        print(f"{name:<18} {canary:>10.0f} {bare:>8.0f} {canary - bare:>12.0f}")
    print(f"{'eks-control-plane':<18} {eks:>10.0f} {'-':>8} {'(siem)':>12}")
    overheads = [canary - bare for _, canary, bare in rows]
    print(f"median overhead per S3 feed: {statistics.median(overheads):.0f} ms (target <= 100)")
    wall, best, slow = statistics.median(walls), min(walls), statistics.median(slowest)
    print(f"five-feed run median {wall:.2f} s, best {best:.2f} s; slowest feed {slow:.2f} s + Prefect fixed "
          f"cost {fixed:.2f} s; ratio median {wall / (slow + fixed):.2f}, best {best / (slow + fixed):.2f} "
          "(target <= 1.3)")
    print(f"feed-slos publication inside that run: median {statistics.median(publishing) * 1000:.0f} ms, "
          f"max {max(publishing) * 1000:.0f} ms")


def timed_into(seconds: list[float], call: Callable[P, R]) -> Callable[P, R]:
    """`call`, appending each call's duration to `seconds`."""
    def timed(*args: P.args, **kwargs: P.kwargs) -> R:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    return timed


def _timed(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
