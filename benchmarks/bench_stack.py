"""The local stack's start-up, and what running verify-feeds through a deployment costs.

1. Cold start to ready, by phase: local AWS + stand-in, Prefect server on a new SQLite database
   (copied from the migrated template), work pool + deploy (prefect.yaml and alerts), worker
   online. Then a warm restart of the Prefect server, and what migrating a new database costs (the
   template, made once per machine and Prefect version).
2. `prefect deployment run verify-feeds/daily --watch` until Completed, against calling the flow
   function directly in this process (baseline), median of ROUNDS each; and the worker's pick-up
   pick-up delay (run created -> Pending), which the 1 s worker poll keeps under the 2 s target, and
   the flow process's start (Pending -> Running).

    .venv/bin/python benchmarks/bench_stack.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from deployments.local.processes import poll
from deployments.local.stack import LocalPrefect, LocalStack, prefect_api, run_deployment, seed_database

ROUNDS = 5


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def worker_online(api_url: str, pool: str = "socfeeds") -> bool:

    with prefect_api(api_url) as client:
        return any(worker.status == "ONLINE" for worker in client.read_workers_for_work_pool(pool))


def start_delays(api_url: str, deployment: str) -> list[tuple[float, float]]:
    """Per run of this deployment: seconds from creation to the worker's pick-up (Pending), and from
    there to Running (the flow's own process starting)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    delays = []
    with prefect_api(api_url) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))
        for run in runs:
            states = {state.type.value: state.timestamp for state in client.read_flow_run_states(run.id)}
            if run.created and "PENDING" in states and "RUNNING" in states:
                delays.append(((states["PENDING"] - run.created).total_seconds(),
                               (states["RUNNING"] - states["PENDING"]).total_seconds()))
    return delays


def main() -> None:
    with tempfile.TemporaryDirectory() as state, ExitStack() as running:
        start = time.perf_counter()
        stack = running.enter_context(LocalStack(Path(state), with_prefect=False))
        aws_ready = time.perf_counter() - start
        migrate, _ = timed(lambda: seed_database(stack.state_dir / "fresh.db", templates=stack.state_dir / "templates"))
        prefect = stack.prefect = LocalPrefect(stack.state_dir)
        running.callback(prefect.stop)
        server_cold, _ = timed(prefect.start)
        env = stack.env()
        stack.apply_env()  # before this process first imports prefect, which reads its settings then
        deploy, _ = timed(lambda: prefect.deploy(env))
        worker_start = time.perf_counter()
        worker = prefect.start_worker(env, stack.state_dir / "logs")
        running.callback(worker.stop)
        poll("worker online", lambda: worker_online(env["PREFECT_API_URL"]), 120)
        worker_ready = time.perf_counter() - worker_start
        assert run_deployment("provision-feeds/on-demand", env).returncode == 0
        stack.hand_reader_key_to_xsiam()
        through_worker = []
        for _ in range(ROUNDS):
            took, answer = timed(lambda: run_deployment("verify-feeds/daily", env))
            assert answer.returncode == 0, answer.stdout[-2000:]
            through_worker.append(took)
        delays = start_delays(env["PREFECT_API_URL"], "daily")
        direct = direct_runs()
        worker.stop()
        prefect.stop()
        server_warm, _ = timed(prefect.start)
    total = aws_ready + server_cold + deploy + worker_ready
    print("\ncold start of the local stack to ready")
    for phase, seconds in (("AWS (moto) + XSIAM stand-in + inbox", aws_ready),
                           ("Prefect server (database copied from the template)", server_cold),
                           ("work pool + deploy (prefect.yaml, alerts)", deploy),
                           ("worker online", worker_ready), ("total", total),
                           ("(warm restart of the Prefect server)", server_warm),
                           ("(migrating a new database: once per machine)", migrate)):
        print(f"  {phase:<52} {seconds:6.1f} s")
    cli, fn = statistics.median(through_worker), statistics.median(direct)
    print(f"\nverify-feeds, median of {ROUNDS}: `prefect deployment run --watch` to Completed {cli:.2f} s; "
          f"flow function called directly {fn:.2f} s; ratio {cli / fn:.2f}")
    pickups, launches = [d[0] for d in delays], [d[1] for d in delays]
    cli_start = statistics.median(timed(lambda: subprocess.run([sys.executable, "-m", "prefect", "--version"],
                                                             capture_output=True, check=True))[0] for _ in range(3))
    print(f"of which: the prefect CLI's own start {cli_start:.2f} s, then")
    print(f"worker pick-up (created -> Pending): median {statistics.median(pickups):.2f} s, max {max(pickups):.2f} s "
          f"(target < 2 s); flow process start (Pending -> Running): median {statistics.median(launches):.2f} s")


def direct_runs() -> list[float]:
    """The baseline: verify_feeds() in this process, against the same stack and server."""
    from deployments.local.stack import flush_prefect_logs
    from flows.verify import verify_feeds

    verify_feeds()  # imports and first-call costs are not the baseline's
    runs = [timed(verify_feeds)[0] for _ in range(ROUNDS)]
    flush_prefect_logs()
    return runs


if __name__ == "__main__":
    main()
