"""verify-feeds over a fleet: the fan-out through the deployment on two workers vs account by account in one process.

The local fleet (deployments/local/fleet.py) with N accounts (default 50) and a five-feed catalog (four S3 feeds
and the EKS feed), provisioned first. Then every AWS request waits 50 ms in the emulator (LocalAws.slow_down,
server side, so it applies to the workers' child processes too) and the same checks run twice:
- baseline: this process runs `verify_feeds(accounts=[one])` for each account in turn (each a flow run here);
- fan-out: `prefect deployment run verify-feeds/daily` (one parent; child runs of `fleet.accounts_per_run`
  accounts each, worked on concurrently in threads, on two process workers; `fleet.max_concurrent_accounts`
  accounts at once).
Prints fan-out/baseline (target <= 0.25) and the floor this machine puts under it (the fan-out's CPU seconds,
emulator and Prefect server included, spread over every core), each worker's peak memory (the worker and its
flow-run processes, summed, sampled every 0.25 s), the fixed cost of a child run: its time from created to finished
not spent on its accounts (process start, imports, run bookkeeping, the exit), the whole stack's CPU seconds per
account in each phase (how many of the cores the fan-out kept busy), and the pool-wide API limit's cost per call.

    .venv/bin/python benchmarks/bench_fleet.py [--accounts 50] [--concurrency 16 50] [--per-run N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from deployments.local.fleet import FLEET_EXTERNAL_ID
from deployments.local.processes import ManagedProcess, stop_together
from deployments.local.stack import LocalStack, prefect_api, run_deployment

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

LATENCY_MS = 50
FEEDS = ("cloudtrail", "vpc-flow-logs", "route53-resolver", "application-logs")  # and eks-control-plane


def limit_concurrency(stack: LocalStack, concurrency: int, per_run: int | None) -> None:
    values = json.loads(stack.settings_file.read_text())
    values["fleet"].update(max_concurrent_accounts=concurrency, accounts_per_run=per_run)
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


def stack_cpu_seconds() -> float:
    """CPU seconds used so far by this process and everything it started (Prefect server, moto, stand-in,
    workers and their flow runs): live descendants from /proc, exited ones through their parents' counts."""
    mine = os.times()
    total = mine.user + mine.system + mine.children_user + mine.children_system
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in _descendants(os.getpid(), _parents()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15]) / ticks  # utime, stime, cutime, cstime
    return total


def _rss_kib(pid: int) -> int:
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1])


@dataclass(frozen=True)
class ChildRun:
    accounts: int
    seconds: float  # created to finished
    fixed: float  # of which not spent on its accounts: created to the first account's start, last account's end to end


def child_runs(api_url: str, parent_id: str) -> list[ChildRun]:
    """The parent's child runs, each with its accounts' subflows (a one-account child is its own account)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    def under(run_id: UUID) -> list[FlowRun]:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])), limit=200)

    found = []
    with prefect_api(api_url) as client:
        for child in under(UUID(parent_id)):
            accounts = under(child.id) or [child]
            starts = [a.start_time for a in accounts if a.start_time]
            ends = [a.end_time for a in accounts if a.end_time]
            if not (child.end_time and child.created and starts and ends):
                continue
            worked = (max(ends) - min(starts)).total_seconds() if accounts[0] is not child else (
                child.end_time - min(starts)).total_seconds()
            total = (child.end_time - child.created).total_seconds()
            found.append(ChildRun(len(accounts), total, total - worked))
    return found


def limiter_overhead(stack: LocalStack, calls: int = 300) -> tuple[float, float, int]:
    """Seconds per STS call in one fleet account without and with the pool's rate limit (at a rate that never makes
    a call wait: the cost is the hook and the leases), and the Prefect round trips (leases) the limited calls took."""
    import boto3

    from socfeeds.aws import AwsClients, PoolRateLimits, api_limit_name

    assert stack.fleet is not None and stack.aws.admin is not None
    account = stack.fleet.accounts[-1]
    rate = 1000.0
    with prefect_api(stack.env()["PREFECT_API_URL"]) as client:
        client.upsert_global_concurrency_limit_by_name(api_limit_name(account.account_id, "sts"), int(rate), rate)
    tooling = AwsClients(boto3.session.Session(aws_access_key_id=stack.aws.admin.access_key_id,
                                               aws_secret_access_key=stack.aws.admin.secret_access_key),
                         "eu-west-2", stack.aws.endpoint_url)
    limits = PoolRateLimits({"sts": rate})
    seconds = []
    for paced in (None, limits):
        aws = tooling.assume(account.role_arn, "eu-west-2", FLEET_EXTERNAL_ID, "socfeeds-bench", 900, paced)
        aws.sts.get_caller_identity()  # the assumed credentials, fetched once
        started = time.monotonic()
        for _ in range(calls):
            aws.sts.get_caller_identity()
        seconds.append((time.monotonic() - started) / calls)
    return seconds[0], seconds[1], sum(limits.leases.values())


@dataclass(frozen=True)
class FanOut:
    concurrency: int
    seconds: float
    exit_code: int
    message: str  # the parent's state message when it did not complete
    cpu_seconds: float  # of the whole stack, while it ran
    children: list[ChildRun]
    peak_kib: dict[str, int]


def fan_out(stack: LocalStack, env: dict[str, str], workers: list[ManagedProcess], concurrency: int,
            per_run: int | None) -> FanOut:
    """One `verify-feeds/daily` run over every account, through the deployments on the two workers."""
    limit_concurrency(stack, concurrency, per_run)
    cpu = stack_cpu_seconds()
    with PeakMemory(workers) as memory:
        started = time.monotonic()
        fanned = run_deployment("verify-feeds/daily", env, timeout_s=3600)
        seconds = time.monotonic() - started
    parent = next(line.split("UUID: ")[1].strip() for line in fanned.stdout.splitlines() if "UUID: " in line)
    with prefect_api(env["PREFECT_API_URL"]) as client:
        state = client.read_flow_run(UUID(parent)).state
    message = str(state.message) if state and fanned.returncode else ""
    return FanOut(concurrency, seconds, fanned.returncode, message, stack_cpu_seconds() - cpu,
                  child_runs(env["PREFECT_API_URL"], parent), memory.peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 50],
                        help="fleet.max_concurrent_accounts; one fan-out run for each value")
    parser.add_argument("--per-run", type=int, default=None, help="fleet.accounts_per_run (default: sized from "
                        "the account count and the concurrency)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state, LocalStack(
            Path(state), fleet=args.accounts, s3_feeds=FEEDS, collect=False) as stack:  # verify needs no SIEM
        assert stack.prefect is not None
        env = stack.env()
        stack.apply_env()
        stack.prefect.deploy(env)
        workers = [stack.prefect.start_worker(env, Path(state) / "logs", name=f"bench-worker-{n}") for n in (1, 2)]
        try:
            started = time.monotonic()
            provision = run_deployment("provision-feeds/on-demand", env, timeout_s=3600)
            print(f"{args.accounts} accounts provisioned in {time.monotonic() - started:.0f} s "
                  f"(exit {provision.returncode})", flush=True)
            plain, limited, leases = limiter_overhead(stack)
            stack.aws.slow_down("*", LATENCY_MS)

            from flows.verify import verify_feeds
            from socfeeds.settings import load_settings
            from socfeeds.targets import declared_targets

            keys = [t.key for t in declared_targets(load_settings())]
            per_account = []
            cpu, started = stack_cpu_seconds(), time.monotonic()
            for key in keys:
                one = time.monotonic()
                verify_feeds(accounts=[key], return_state=True)
                per_account.append(time.monotonic() - one)
            baseline, baseline_cpu = time.monotonic() - started, stack_cpu_seconds() - cpu
            runs = [fan_out(stack, env, workers, concurrency, args.per_run) for concurrency in args.concurrency]
        finally:
            stop_together(workers)
    print(f"verify-feeds, {len(keys)} accounts x 5 feeds, {LATENCY_MS} ms per AWS call, {os.cpu_count()} cores:")
    print(f"  baseline, account by account in one process: {baseline:7.1f} s "
          f"(median {statistics.median(per_account):.2f} s per account); the stack's CPU {baseline_cpu:.0f} s, "
          f"{baseline_cpu / len(keys):.1f} s per account")
    for run in runs:
        sizes = sorted({c.accounts for c in run.children})
        print(f"  fan-out, {len(run.children)} child runs of {sizes} accounts on 2 workers (max {run.concurrency} "
              f"accounts at once): {run.seconds:7.1f} s (exit {run.exit_code}); ratio fan-out/baseline: "
              f"{run.seconds / baseline:.2f}  (target <= 0.25)")
        if run.message:
            print(f"    failed: {run.message[:1500]}")
        cores = os.cpu_count() or 1
        print(f"    the stack's CPU {run.cpu_seconds:.0f} s, {run.cpu_seconds / len(keys):.1f} s per account; "
              f"{run.cpu_seconds / run.seconds:.2f} of {cores} cores busy on average; that CPU on every core with "
              f"no wait at all would still take {run.cpu_seconds / cores:.1f} s: a floor of "
              f"{run.cpu_seconds / cores / baseline:.2f}x on this machine")
        if run.children:
            print(f"    child run, created to finished: median {statistics.median(c.seconds for c in run.children):.1f}"
                  f" s, of which fixed (start, imports, bookkeeping, exit; not its accounts): median "
                  f"{statistics.median(c.fixed for c in run.children):.1f} s")
        for name, kib in run.peak_kib.items():
            print(f"    peak memory, {name} and its flow-run processes: {kib / 1024:.0f} MiB")
    print(f"  pool-wide API limit (fleet.api_calls_per_second), per STS call, no waiting: {plain * 1000:.2f} ms "
          f"without, {limited * 1000:.2f} ms with ({(limited - plain) * 1000:+.2f} ms; {leases} Prefect round trips "
          "for 300 calls)")


if __name__ == "__main__":
    main()
