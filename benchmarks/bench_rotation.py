"""rotate-reader-keys on the local stack: the automated steps' own time, excluding the approval wait,
the window with two active keys, and the AWS calls made. The approval is given the moment the run
pauses (with the SOC's key swap in the stand-in just before), so the numbers are the flow's.
Target: automated steps within 5 s plus IAM's propagation wait (none locally); two-keys window no
longer than approval + confirmation.

    .venv/bin/python benchmarks/bench_rotation.py
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import boto3

from deployments.local.stack import LocalStack, bootstrap_reader_key, write_settings
from socfeeds.aws import AwsClients
from socfeeds.settings import Settings

calls = 0
_original = AwsClients.from_settings


def counting_from_settings(cls: type[AwsClients], settings: Settings,
                           session: boto3.session.Session | None = None) -> AwsClients:
    def count(**_: Any) -> None:
        global calls
        calls += 1

    session = session or boto3.session.Session()
    session.events.register("before-send.*.*", count)
    return _original(settings, session=session)


def main() -> None:
    with tempfile.TemporaryDirectory() as state, LocalStack(Path(state)) as stack:
        stack.apply_env()
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType
        from prefect.flow_runs import resume_flow_run

        from deployments.local.stack import flush_prefect_logs
        from flows.provision import provision_feeds
        from flows.rotate import rotate_reader_keys

        values: dict[str, Any] = json.loads(stack.settings_file.read_text())
        values["rotation"] = {"approvers": ["alice"], "confirm_use_seconds": 60, "last_used_resolution_seconds": 0}
        write_settings(values, stack.settings_file)
        provision_feeds()
        assert stack.xsiam is not None
        bootstrap_reader_key(stack.aws, values["reader"])
        stack.xsiam.reload()
        AwsClients.from_settings = classmethod(counting_from_settings)  # type: ignore[method-assign,assignment]

        started = time.perf_counter()
        outcome: dict[str, Any] = {}
        runner = threading.Thread(target=lambda: outcome.update(result=rotate_reader_keys(force=True)))
        runner.start()
        with get_client(sync_client=True) as client:
            while not (paused := client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))):
                time.sleep(0.05)
        paused_at = time.perf_counter()
        stack.xsiam.reload("AWSPENDING")  # the SOC pastes the pending key
        resumed_at = time.perf_counter()
        resume_flow_run(UUID(str(paused[0].id)), run_input={"approved": True, "approver": "alice"})
        runner.join()
        ended = time.perf_counter()
        iam, secrets = stack.aws.client("iam"), stack.aws.client("secretsmanager")
        user = Settings().reader.user_name
        keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        new = max(keys, key=lambda k: k["CreateDate"])
        tags = {t["Key"]: t["Value"] for t in secrets.describe_secret(SecretId=Settings().reader.secret_name)["Tags"]}
        deactivated = datetime.fromisoformat(next(v for k, v in tags.items() if k.startswith("socfeeds:deactivated")))
        window = (deactivated - new["CreateDate"]).total_seconds()
        flush_prefect_logs()
    automated = (paused_at - started) + (ended - resumed_at)
    print(f"\nrotation result: {outcome.get('result')}")
    print(f"automated steps: {automated:.2f} s (before approval {paused_at - started:.2f} s, after "
          f"{ended - resumed_at:.2f} s incl. confirming XSIAM's use); AWS calls: {calls}")
    print(f"two active keys for {window:.2f} s; approval + confirmation took {ended - paused_at:.2f} s "
          f"(target: window <= approval + confirmation + the steps around them)")


if __name__ == "__main__":
    main()
