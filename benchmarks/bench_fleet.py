"""verify-feeds over a fleet: the fan-out through the deployment on two workers vs account by account in one process.

The local fleet (deployments/local/fleet.py) with N accounts (default 50) and a five-feed catalog (four S3 feeds
and the EKS feed), provisioned first. Then every AWS request waits 50 ms in the emulator (LocalAws.slow_down,
server side, so it applies to the workers' child processes too) and the same checks run twice:
- baseline: this process runs `verify_feeds(accounts=[one])` for each account in turn (each a flow run here);
- fan-out: `prefect deployment run verify-feeds/daily` (one parent, one child run per account on two process
  workers, `fleet.max_concurrent_accounts` at once).
Prints fan-out/baseline (target <= 0.25), each worker's peak memory (the worker and its flow-run processes,
summed, sampled every 0.25 s), and the fixed cost of a child run (its median duration minus the median
in-process account's).

    .venv/bin/python benchmarks/bench_fleet.py [--accounts 50] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from uuid import UUID

from deployments.local.processes import ManagedProcess
from deployments.local.stack import LocalStack, prefect_api, run_deployment

LATENCY_MS = 50
FEEDS = ("cloudtrail", "vpc-flow-logs", "route53-resolver", "application-logs")  # and eks-control-plane


def limit_concurrency(stack: LocalStack, concurrency: int) -> None:
    values = json.loads(stack.settings_file.read_text())
    values["fleet"]["max_concurrent_accounts"] = concurrency
    stack.settings_file.write_text(json.dumps(values))


class PeakMemory:
    """The largest summed RSS of each worker and its descendants, sampled in a thread."""

    def __init__(self, workers: list[ManagedProcess]) -> None:
        self.pids = {worker.name: worker.process.pid for worker in workers if worker.process}
        self.peak = dict.fromkeys(self.pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            parents = _parents()
            for name, pid in self.pids.items():
                tree = _descendants(pid, parents) | {pid}
                self.peak[name] = max(self.peak[name], sum(_rss_kib(p) for p in tree))


def _parents() -> dict[int, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                found[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    return found


def _descendants(pid: int, parents: dict[int, int]) -> set[int]:
    children = {child for child, parent in parents.items() if parent == pid}
    return children.union(*(_descendants(child, parents) for child in children)) if children else set()


def _rss_kib(pid: int) -> int:
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1])


def child_durations(api_url: str, parent_id: str) -> list[float]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with prefect_api(api_url) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(parent_id)])), limit=200)
    return [(c.end_time - c.created).total_seconds() for c in children if c.end_time and c.created]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16, help="fleet.max_concurrent_accounts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state, LocalStack(
            Path(state), fleet=args.accounts, s3_feeds=FEEDS, collect=False) as stack:  # verify needs no SIEM
        assert stack.prefect is not None
        limit_concurrency(stack, args.concurrency)
        env = stack.env()
        stack.apply_env()
        stack.prefect.deploy(env)
        workers = [stack.prefect.start_worker(env, Path(state) / "logs", name=f"bench-worker-{n}") for n in (1, 2)]
        try:
            started = time.monotonic()
            provision = run_deployment("provision-feeds/on-demand", env, timeout_s=3600)
            print(f"{args.accounts} accounts provisioned in {time.monotonic() - started:.0f} s "
                  f"(exit {provision.returncode})", flush=True)
            stack.aws.slow_down("*", LATENCY_MS)

            from flows.verify import verify_feeds
            from socfeeds.settings import load_settings
            from socfeeds.targets import declared_targets

            keys = [t.key for t in declared_targets(load_settings())]
            per_account = []
            started = time.monotonic()
            for key in keys:
                one = time.monotonic()
                verify_feeds(accounts=[key], return_state=True)
                per_account.append(time.monotonic() - one)
            baseline = time.monotonic() - started

            with PeakMemory(workers) as memory:
                started = time.monotonic()
                fanned = run_deployment("verify-feeds/daily", env, timeout_s=3600)
                fan_out = time.monotonic() - started
            parent = next(line.split("UUID: ")[1].strip() for line in fanned.stdout.splitlines() if "UUID: " in line)
            children = child_durations(env["PREFECT_API_URL"], parent)
        finally:
            for worker in workers:
                worker.stop()
    print(f"verify-feeds, {len(keys)} accounts x 5 feeds, {LATENCY_MS} ms per AWS call, {os.cpu_count()} cores:")
    print(f"  baseline, account by account in one process: {baseline:7.1f} s "
          f"(median {statistics.median(per_account):.2f} s per account)")
    print(f"  fan-out, one child per account on 2 workers (max {args.concurrency} at once): {fan_out:7.1f} s "
          f"(exit {fanned.returncode})")
    print(f"  ratio fan-out/baseline: {fan_out / baseline:.2f}  (target <= 0.25)")
    if children:
        print(f"  child run, created to finished: median {statistics.median(children):.1f} s; fixed cost per child "
              f"~{statistics.median(children) - statistics.median(per_account):.1f} s over the in-process account")
    for name, kib in memory.peak.items():
        print(f"  peak memory, {name} and its flow-run processes: {kib / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
