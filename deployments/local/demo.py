"""`make demo`: the main job on the local stack, through Prefect for real.

Starts moto (IAM auth on), the XSIAM stand-in, an on-call webhook inbox and a Prefect server;
creates the `socfeeds` process work pool, deploys prefect.yaml with its alerts, starts a worker;
then runs provision-feeds, verify-feeds and feed-canary with `prefect deployment run ... --watch`
and prints their tables (and, when a run fails, what the alert posted). Stops everything it
started on exit or Ctrl-C. Exits non-zero when any run fails. `--keep` (`make up`) leaves the
stack running and prints the UI URL.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from deployments.local.processes import StackError, stop_together
from deployments.local.stack import LocalStack, prefect_api, run_deployment

if TYPE_CHECKING:
    from prefect.client.schemas.objects import ArtifactCollection

STATE_DIR = Path(".state/local")
ALERT_WAIT_S = 60  # automations reach the webhook well under a second after a failure (README, Alerts)
RUNS = [
    ("provision-feeds/on-demand", "provision-feeds", ["feed", "resource", "action", "detail", "applied"]),
    ("verify-feeds/daily", "verify-feeds", ["feed", "resource", "check", "status", "detail", "fix"]),
    ("feed-canary/daily", "feed-canary", ["feed", "strategy", "status", "leg", "latency_ms", "detail", "fix"]),
]


def latest_artifact(key: str, api_url: str) -> ArtifactCollection | None:
    """The newest version of an artifact, from the stack's Prefect API."""
    with prefect_api(api_url) as client:
        return next((a for a in client.read_latest_artifacts() if a.key == key), None)


def latest_table(key: str, api_url: str) -> list[dict[str, str]]:
    """The rows of the newest version of a table artifact."""
    import json

    artifact = latest_artifact(key, api_url)
    rows = artifact.data if artifact else "[]"
    return list(json.loads(rows) if isinstance(rows, str) else rows or [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR)
    parser.add_argument("--keep", action="store_true", help="leave the stack running (Ctrl-C stops it)")
    parser.add_argument("--kms", action="store_true", help="the KMS profile: every feed on one customer-managed key")
    parser.add_argument("--brownfield", action="store_true",
                        help="first build an estate as another team's Terraform would, then adopt it")
    parser.add_argument("--fleet", type=int, default=0, metavar="N",
                        help="an AWS Organization with N target accounts (the tooling account and N-1 more), one more "
                        "account no target covers, and two workers on the pool")
    args = parser.parse_args()
    with LocalStack(args.state_dir, kms=args.kms, brownfield=args.brownfield, fleet=args.fleet) as stack:
        assert stack.prefect is not None
        env = stack.env()
        stack.apply_env()
        print(f"local stack up: AWS {stack.aws.endpoint_url}, Prefect {stack.prefect.api_url}", flush=True)
        started = time.monotonic()
        print(stack.prefect.deploy(env), flush=True)
        workers = [stack.prefect.start_worker(env, stack.state_dir / "logs")]
        if stack.fleet:  # child runs spread across two workers on the pool
            workers.append(stack.prefect.start_worker(env, stack.state_dir / "logs", name="socfeeds-worker-2"))
        stack.phases.append(("work pool, deployments and alerts, worker", stack.phases[-1][1] +
                             time.monotonic() - started))
        print("start-up, seconds since the start (the venv install before it is not counted):\n" + "\n".join(
            f"  {seconds:6.1f}  {phase}" for phase, seconds in stack.phases) +
            f"\nAWS CLI against the stack: source {stack.state_dir / 'aws.env'}", flush=True)
        try:
            status = run_main_job(stack, env)
            if args.keep:
                print(f"\nPrefect UI: {stack.prefect.api_url.removesuffix('/api')}  (Ctrl-C stops everything)\n"
                      f"On-call channel (what the alerts post): {stack.inbox.log_path if stack.inbox else '-'}\n"
                      f"CLI: export PREFECT_API_URL={stack.prefect.api_url}\n"
                      "Try a rotation: prefect deployment run rotate-reader-keys/on-demand; when it pauses, do the "
                      f"SOC's part with curl -X POST '{stack.xsiam.url if stack.xsiam else ''}/standin/reload?stage="
                      "AWSPENDING', then approve as soc-on-call",
                      flush=True)
                signal.signal(signal.SIGINT, lambda *_: None)
                signal.pause()
            return status
        finally:
            stop_together(workers)


def run_main_job(stack: LocalStack, env: dict[str, str]) -> int:
    """The three deployments, as an engineer would run them; the status is 0 only if all completed."""
    from socfeeds.report import render_table

    assert stack.prefect is not None
    failed = []
    for deployment, key, columns in RUNS:
        answer = run_deployment(deployment, env)
        state = "Completed" if answer.returncode == 0 else "Failed"
        if stack.fleet:  # the parent's accounts x feeds matrix; each account's tables are in its child run
            matrix = latest_artifact(f"{key}-fleet", env["PREFECT_API_URL"])
            print(f"\n{deployment}: {state}\n{matrix.data if matrix else '(no matrix published)'}", flush=True)
        else:
            print(f"\n{deployment}: {state}\n" + render_table(latest_table(key, env["PREFECT_API_URL"]), columns),
                  flush=True)
        if answer.returncode != 0:
            failed.append(deployment)
            print(answer.stdout[-3000:] + answer.stderr[-3000:], file=sys.stderr)
        if key == "provision-feeds":
            print(f"XSIAM stand-in collecting every S3 feed with reader key {stack.hand_reader_key_to_xsiam()}",
                  flush=True)
    print(f"\n{'all runs completed' if not failed else 'failed: ' + ', '.join(failed)}")
    if failed and stack.inbox:  # what on-call would have read in the channel
        try:
            stack.inbox.wait_for(lambda _: True, ALERT_WAIT_S, "alert")
        except StackError as missing:
            print(f"\n{missing}", file=sys.stderr)
        print("\non-call channel:\n" + "\n\n".join(stack.inbox.messages()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
