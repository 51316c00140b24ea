"""`make demo`: start the local stack, provision, verify and canary every feed, print the tables, clean up.

Exits non-zero when any verification check or canary fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deployments.local.stack import LocalStack

STATE_DIR = Path(".state/local")


def flush_prefect_logs() -> None:
    """Send buffered run logs and events while the server is still up (else exit hangs retrying)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    EventsWorker.drain_all(timeout=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR)
    args = parser.parse_args()
    with LocalStack(args.state_dir) as stack:
        stack.apply_env()  # before Prefect is imported, so it reads the stack's API URL and home
        print(f"local stack up: AWS {stack.aws.endpoint_url}, Prefect {stack.prefect and stack.prefect.api_url}",
              flush=True)
        try:
            return run_main_job(stack)
        finally:
            flush_prefect_logs()


def run_main_job(stack: LocalStack) -> int:
    """provision-feeds, verify-feeds, feed-canary; the exit status says whether everything passed."""
    from flows.canary import CANARY_COLUMNS, CanaryFailed, feed_canary
    from flows.provision import provision_feeds
    from flows.verify import ChecksFailed, verify_feeds
    from socfeeds.report import render_table, table_rows

    provision_feeds()
    key_id = stack.hand_reader_key_to_xsiam()
    print(f"XSIAM stand-in at {stack.xsiam and stack.xsiam.url} collecting every S3 feed with reader key {key_id}",
          flush=True)
    state = verify_feeds(return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, Exception) and not isinstance(outcome, ChecksFailed):
        raise outcome
    findings = outcome.findings if isinstance(outcome, ChecksFailed) else outcome
    print("\nverify-feeds:\n" + render_table(table_rows(findings), ["feed", "resource", "check", "status",
                                                                    "detail", "fix"]))
    print(f"\nverify-feeds finished {state.name}")
    canary = feed_canary(return_state=True)
    canary_outcome = canary.result(raise_on_failure=False)
    if isinstance(canary_outcome, Exception) and not isinstance(canary_outcome, CanaryFailed):
        raise canary_outcome
    results = canary_outcome.results if isinstance(canary_outcome, CanaryFailed) else canary_outcome
    print("\nfeed-canary:\n" + render_table(table_rows(results), CANARY_COLUMNS))
    print(f"\nfeed-canary finished {canary.name}")
    return 0 if state.is_completed() and canary.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
