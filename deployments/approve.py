"""Print each paused rotate-reader-keys run's full id and the exact commands that answer it.

`prefect flow-run ls` cuts ids to fit 80 columns; this asks the Prefect API (PREFECT_API_URL) and
takes the allowed approvers from the run's own approval form, so the commands work as printed:

    python -m deployments.approve [--approver NAME] [--reason CHG-1234]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import PrefectHTTPStatusError
from prefect.input import keyset_from_paused_state

FLOW_NAME = "rotate-reader-keys"


@dataclass(frozen=True)
class PausedRotation:
    run_id: str
    name: str
    paused_at: str
    approvers: list[str]  # empty when the form could not be read
    summary: str


def resume_command(run_id: str, approved: bool, approver: str, reason: str) -> str:
    """The README's CLI answer, quoted for a POSIX shell."""
    data = json.dumps({"run_input": {"approved": approved, "approver": approver, "reason": reason}})
    return f"prefect api POST /flow_runs/{run_id}/resume --data {shlex.quote(data)}"


def paused_rotations() -> list[PausedRotation]:
    """Every PAUSED rotate-reader-keys run, newest first, with its form's approvers and first line."""
    found = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])), sort=FlowRunSort.START_TIME_DESC,
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
        for run in runs:
            assert run.state is not None  # the filter matched its state
            keyset = keyset_from_paused_state(run.state)
            try:
                schema: dict[str, Any] = json.loads(client.read_flow_run_input(run.id, keyset["schema"]))
                summary = str(json.loads(client.read_flow_run_input(run.id, keyset["description"])))
            except PrefectHTTPStatusError as missing:  # paused a moment ago: the form is saved right after the state
                if missing.response.status_code != 404:
                    raise
                schema, summary = {}, "(the approval form is not saved yet: run this again in a second)"
            approvers = schema.get("properties", {}).get("approver", {}).get("enum", [])
            found.append(PausedRotation(str(run.id), run.name, run.state.timestamp.isoformat(timespec="seconds"),
                                        [str(a) for a in approvers], summary.split("\n")[0].replace("**", "")))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.approve", description=__doc__.split("\n")[0])
    parser.add_argument("--approver", help="your name, as listed in rotation.approvers (default: each listed name)")
    parser.add_argument("--reason", default="<change ticket>", help="the change ticket, e.g. CHG-1234")
    args = parser.parse_args(argv)
    runs = paused_rotations()
    if not runs:
        print(f"no {FLOW_NAME} run is paused for approval")
        return 0
    for run in runs:
        print(f"{FLOW_NAME} run {run.name}, flow run id {run.run_id}, paused at {run.paused_at}\n  {run.summary}")
        if args.approver and run.approvers and args.approver not in run.approvers:
            print(f"  {args.approver!r} may not answer this run; it accepts: {', '.join(run.approvers)}")
            return 2
        for name in [args.approver] if args.approver else run.approvers or ["<your name>"]:
            print(f"  approve as {name}:\n    {resume_command(run.run_id, True, name, args.reason)}")
        rejecter = args.approver or (run.approvers[0] if len(run.approvers) == 1 else "<your name>")
        print(f"  reject (rolls back):\n    {resume_command(run.run_id, False, rejecter, '<why>')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
