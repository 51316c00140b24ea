"""verify-feeds vs a bare sequential run of the same boto3 calls, with a fixed delay per AWS call.

Every AWS request is delayed 50 ms by a botocore `before-send` hook (standing in for the round
trip to AWS), in both runs. The baseline calls the same check functions one after another with
no Prefect; the flow runs them as concurrent tasks. Prints flow/baseline for 4 and 40 feeds.

    .venv/bin/python benchmarks/bench_verify.py
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3

from deployments.local.stack import LocalStack, local_settings, write_settings
from socfeeds.aws import AwsClients
from socfeeds.settings import SETTINGS_FILE_ENV, Settings

DELAY_S = 0.05


class DelayedAws:
    """Installs the per-call delay on every session AwsClients makes, and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self._original = AwsClients.from_settings

    def _delay(self, **_: Any) -> None:
        with self._lock:
            self.calls += 1
        time.sleep(DELAY_S)

    def session(self) -> boto3.session.Session:
        session = boto3.session.Session()
        session.events.register("before-send.*.*", self._delay)
        return session

    def install(self) -> None:
        bench = self

        def from_settings(cls: type[AwsClients], settings: Settings,
                          session: boto3.session.Session | None = None) -> AwsClients:
            return bench._original(settings, session=bench.session())

        AwsClients.from_settings = classmethod(from_settings)  # type: ignore[method-assign,assignment]


def catalog(stack: LocalStack, extra_feeds: int) -> dict[str, Any]:
    assert stack.xsiam is not None
    values = local_settings(stack.aws, stack.state_dir, stack.xsiam)
    for n in range(extra_feeds):
        values["s3_feeds"][f"bench-{n:02d}"] = {
            "log_type": "Generic", "bucket": f"bench-feed-{n:02d}-{{account_id}}", "queue": f"bench-feed-{n:02d}",
            "retention_days": 30}
    return values


def baseline(aws: AwsClients, settings: Settings) -> None:
    from flows.verify import FEED_CHECKS
    from tasks.reader import check_reader

    check_reader.fn(aws, settings)
    for name in settings.s3_feeds:
        for check in FEED_CHECKS:
            check.fn(aws, settings, name)


def measure(stack: LocalStack, feeds: int, delayed: DelayedAws) -> tuple[float, float, int]:
    from flows.provision import provision_feeds
    from flows.verify import verify_feeds

    write_settings(catalog(stack, feeds - 4), stack.settings_file)
    provision_feeds()
    settings = Settings()
    delayed.calls = 0
    start = time.perf_counter()
    baseline(AwsClients.from_settings(settings, session=delayed.session()), settings)
    base_s, calls = time.perf_counter() - start, delayed.calls
    start = time.perf_counter()
    verify_feeds()
    return base_s, time.perf_counter() - start, calls


def main() -> None:
    with tempfile.TemporaryDirectory() as state, LocalStack(Path(state)) as stack:
        stack.apply_env()
        os.environ[SETTINGS_FILE_ENV] = str(stack.settings_file)
        delayed = DelayedAws()
        delayed.install()
        rows = [(feeds, *measure(stack, feeds, delayed)) for feeds in (4, 40)]
        from deployments.local.stack import flush_prefect_logs

        flush_prefect_logs()
    print(f"\nverify-feeds vs sequential boto3, {DELAY_S * 1000:.0f} ms per AWS call")
    print(f"{'feeds':>5} {'aws calls':>9} {'baseline s':>10} {'flow s':>7} {'flow/baseline':>13}")
    for feeds, base_s, flow_s, calls in rows:
        print(f"{feeds:>5} {calls:>9} {base_s:>10.2f} {flow_s:>7.2f} {flow_s / base_s:>13.2f}")


if __name__ == "__main__":
    main()
