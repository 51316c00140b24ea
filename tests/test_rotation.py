"""rotate-reader-keys on the local stack (IAM auth on), approved through the Prefect API."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from conftest import Stack, prefect_events
from test_xsiam_standin import eventually

from deployments.local.stack import LocalXsiam, bootstrap_reader_key, collector_feeds
from flows.provision import provision_feeds
from flows.rotate import rotate_reader_keys
from socfeeds.settings import RotationPolicy
from tasks.keys import KeyInfo, Plan, RotationBlocked, SecretState, plan_rotation, read_secret

NOW = datetime(2026, 11, 27, tzinfo=UTC)
POLICY = RotationPolicy(max_key_age_days=90, warn_age_days=75, grace_days=7, approvers=["alice"])


def key(key_id: str, age: float, status: str = "Active") -> KeyInfo:
    return KeyInfo(key_id=key_id, status=status, created=NOW - timedelta(days=age), age_days=age, last_used=None,
                   last_service=None)


@pytest.mark.parametrize(
    ("keys", "secret", "expected"),
    [
        ([key("A", 10)], SecretState(True, current_key="A"), Plan("nothing", "key A is 10 days old; nothing due")),
        ([key("A", 80)], SecretState(True, current_key="A"), "nothing"),
        ([key("A", 91)], SecretState(True, current_key="A"), "rotate"),
        ([], SecretState(False), "rotate"),
        ([key("A", 91), key("B", 0)], SecretState(True, current_key="A", pending_key="B"), "resume"),
        ([key("A", 91), key("B", 0)], SecretState(True, current_key="A"), Plan(
            "rotate", "key ['B'] was created by a crashed run and never handed out: deleting it and starting again",
            ("B",))),
        ([key("A", 100, "Inactive"), key("B", 3)],
         SecretState(True, current_key="B", deactivated_at={"A": NOW - timedelta(days=3)}), "wait-grace"),
        ([key("A", 100, "Inactive"), key("B", 8)],
         SecretState(True, current_key="B", deactivated_at={"A": NOW - timedelta(days=8)}), Plan(
             "delete-expired", "grace of 7.0 days passed for ['A']", ("A",))),
    ],
)
def test_plan(keys: list[KeyInfo], secret: SecretState, expected: Plan | str) -> None:
    plan = plan_rotation(keys, secret, POLICY, NOW)
    assert plan == expected if isinstance(expected, Plan) else plan.action == expected


def test_two_active_keys_nobody_tracks_stop_for_a_human() -> None:
    with pytest.raises(RotationBlocked, match=r"\['A', 'B'\] are both active .* ask the SOC"):
        plan_rotation([key("A", 100), key("B", 50)], SecretState(False), POLICY, NOW)


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture
def reader(stack: Stack, tmp_path: Path) -> Iterator[LocalXsiam]:
    """Provisioned S3 feeds, a hand-made reader key in the secret, and XSIAM collecting with it."""
    provision_feeds(feeds=["application-logs"])
    bootstrap_reader_key(stack.local, stack.values["reader"])
    xsiam = LocalXsiam(tmp_path / "tenant", stack.local)
    feeds = [f for f in collector_feeds(stack.local, stack.values) if f["name"] == "application-logs"]
    xsiam.collect(feeds, reader_secret_id=stack.settings.reader.secret_name)
    xsiam.start()
    stack.update(rotation={"approvers": ["alice", "bob"], "approval_timeout_seconds": 60, "approval_poll_seconds": 1,
                           "confirm_use_seconds": 30, "new_key_ready_seconds": 20, "last_used_resolution_seconds": 0})
    yield xsiam
    xsiam.stop()


class Rotation:
    """The flow run in a thread of this process, as a worker would run it."""

    def __init__(self, **parameters: Any) -> None:
        self.state: Any = None
        self.thread = threading.Thread(target=self._run, kwargs=parameters, daemon=True)
        self.thread.start()

    def _run(self, **parameters: Any) -> None:
        self.state = rotate_reader_keys(return_state=True, **parameters)

    def paused_run_id(self) -> str:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType

        def paused() -> list[Any]:
            with get_client(sync_client=True) as client:
                return client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))

        [run] = eventually("rotation paused for approval", paused, deadline_s=60)
        return str(run.id)

    def finish(self) -> Any:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()
        return self.state


def approve_with_cli(run_id: str, run_input: dict[str, Any]) -> str:
    """The README's command, from a second process: prefect api POST /flow_runs/<id>/resume."""
    from prefect.settings import PREFECT_API_URL

    answer = subprocess.run(
        [sys.executable, "-m", "prefect", "api", "POST", f"/flow_runs/{run_id}/resume",
         "--data", json.dumps({"run_input": run_input})],
        capture_output=True, text=True, timeout=60, check=False,
        env={**__import__("os").environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())})
    return answer.stdout + answer.stderr


def keys_of(stack: Stack) -> dict[str, str]:
    iam = stack.client("iam")
    return {k["AccessKeyId"]: k["Status"] for k in
            iam.list_access_keys(UserName=stack.settings.reader.user_name)["AccessKeyMetadata"]}


def test_rotation_end_to_end_loses_no_message(stack: Stack, reader: LocalXsiam,
                                              prefect_logs: pytest.LogCaptureFixture) -> None:
    settings, s3 = stack.settings, stack.client("s3")
    bucket = settings.s3_feeds["application-logs"].bucket
    [old_key] = keys_of(stack)
    written: list[str] = []
    stop = threading.Event()

    def write_logs() -> None:  # application logs keep arriving during the whole rotation
        while not stop.wait(0.2):
            marker = uuid.uuid4().hex
            s3.put_object(Bucket=bucket, Key=f"logs/rotation/{marker}", Body=json.dumps({"log": marker}).encode())
            written.append(marker)

    writer = threading.Thread(target=write_logs, daemon=True)
    writer.start()
    rotation = Rotation(force=True)
    run_id = rotation.paused_run_id()
    [new_key] = set(keys_of(stack)) - {old_key}
    assert "REJECT" in approve_with_cli(run_id, {"approved": True}), "an answer without approver is refused"
    assert "Mallory" not in approve_with_cli(run_id, {"approved": True, "approver": "Mallory"})
    assert rotation.paused_run_id() == run_id, "an approver not on the list leaves the run paused"
    assert reader.reload("AWSPENDING") == new_key  # the SOC pastes the pending key into XSIAM
    approve_with_cli(run_id, {"approved": True, "approver": "alice", "reason": "CHG-1234"})
    state = rotation.finish()
    stop.set()
    writer.join()
    assert state.is_completed(), state
    assert keys_of(stack) == {old_key: "Inactive", new_key: "Active"}
    assert read_secret(stack.aws, settings.reader.secret_name).current_key == new_key
    def all_collected() -> bool:
        return set(written) <= {e["raw"]["log"] for e in reader.events("amazon_aws_raw")}

    eventually("every object written during the rotation collected", all_collected)
    assert [f for f in reader.failures() if f["kind"] == "auth"] == []
    secret = json.loads(stack.client("secretsmanager").get_secret_value(
        SecretId=settings.reader.secret_name)["SecretString"])["secret_access_key"]
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = json.dumps([a.data for a in client.read_artifacts()], default=str)
    assert secret not in prefect_logs.text and secret not in artifacts and secret not in repr(state)
    assert new_key in artifacts and "alice" in artifacts
    steps = {"socfeeds.rotation.created", "socfeeds.rotation.tested", "socfeeds.rotation.approved",
             "socfeeds.rotation.finished"}
    eventually("an event for every rotation step", lambda: steps <= {
        e["event"] for e in prefect_events("socfeeds.rotation.") if e["payload"].get("key") == new_key})
    assert secret not in json.dumps(prefect_events("socfeeds."))


def test_reject_rolls_back(stack: Stack, reader: LocalXsiam) -> None:
    [old_key] = keys_of(stack)
    rotation = Rotation(force=True)
    run_id = rotation.paused_run_id()
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(UUID(run_id), run_input={"approved": False, "approver": "bob", "reason": "not today"})
    state = rotation.finish()
    assert state.is_failed() and "rejected by bob: not today" in str(state.result(raise_on_failure=False))
    assert keys_of(stack) == {old_key: "Active"}
    secret = read_secret(stack.aws, stack.settings.reader.secret_name)
    assert (secret.current_key, secret.pending_key) == (old_key, None)


def test_approved_but_never_used_by_xsiam_keeps_the_old_key_active(stack: Stack, reader: LocalXsiam) -> None:
    """The flow's own test read of the new key (just before the pause) must not pass for XSIAM's use."""
    stack.update(rotation={**stack.values["rotation"], "confirm_use_seconds": 3})
    [old_key] = keys_of(stack)
    rotation = Rotation(force=True)
    run_id = rotation.paused_run_id()
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(UUID(run_id), run_input={"approved": True, "approver": "alice"})  # XSIAM keeps the old key
    state = rotation.finish()
    assert state.is_failed() and "XSIAM has not used key" in str(state.result(raise_on_failure=False))
    assert keys_of(stack)[old_key] == "Active"
    assert read_secret(stack.aws, stack.settings.reader.secret_name).current_key == old_key


def test_timeout_rolls_back(stack: Stack, reader: LocalXsiam) -> None:
    stack.update(rotation={**stack.values["rotation"], "approval_timeout_seconds": 2})
    [old_key] = keys_of(stack)
    state = rotate_reader_keys(force=True, return_state=True)
    assert keys_of(stack) == {old_key: "Active"}
    assert state.is_failed()


def test_a_crash_after_creating_the_key_resumes_without_a_third_key(stack: Stack, reader: LocalXsiam) -> None:
    from tasks.keys import create_pending_key

    [old_key] = keys_of(stack)
    pending = create_pending_key.fn(stack.aws, stack.settings)  # then the worker died
    rotation = Rotation(force=True)
    run_id = rotation.paused_run_id()
    assert set(keys_of(stack)) == {old_key, pending}
    reader.reload("AWSPENDING")
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(UUID(run_id), run_input={"approved": True, "approver": "alice"})
    assert rotation.finish().is_completed()
    assert keys_of(stack) == {old_key: "Inactive", pending: "Active"}


def test_dry_run_and_not_due_change_nothing(stack: Stack, reader: LocalXsiam) -> None:
    before = keys_of(stack)
    assert rotate_reader_keys(dry_run=True, force=True) == "rotate"
    assert rotate_reader_keys() == "nothing"
    assert keys_of(stack) == before


# --- keyless: XSIAM assumes a role -------------------------------------------------------------


def test_role_mode_is_provisioned_verified_and_has_nothing_to_rotate(stack: Stack) -> None:
    from flows.verify import verify_feeds
    from tasks.reader import MissingExternalId, check_reader, ensure_reader

    stack.update(reader={**stack.values["reader"], "mode": "role", "role_name": stack.values["reader"]["user_name"]
                         .replace("_", "-") + "-role", "external_id_parameter": "/" + stack.values["reader"]
                         ["user_name"] + "/external-id"})
    settings = stack.settings
    with pytest.raises(MissingExternalId, match="aws ssm put-parameter --name"):
        ensure_reader.fn(stack.aws, settings, False)
    stack.client("ssm").put_parameter(Name=settings.reader.external_id_parameter, Type="SecureString",
                                      Value="tenant-external-id-123")
    provision_feeds(feeds=["application-logs"])
    role = stack.client("iam").get_role(RoleName=settings.reader.role_name)["Role"]
    [statement] = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::006742885340:root"}
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": "tenant-external-id-123"}}
    reader_findings = [f for f in verify_feeds(feeds=["application-logs"]) if f.feed == "reader"]
    assert reader_findings and all(f.status == "pass" for f in reader_findings)
    assert "tenant-external-id-123" not in repr(reader_findings)

    no_external_id = {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::006742885340:root"},
                      "Action": "sts:AssumeRole"}
    stack.client("iam").update_assume_role_policy(RoleName=settings.reader.role_name, PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [no_external_id]}))
    trust = [f for f in check_reader.fn(stack.aws, settings) if f.check == "trust"]
    assert [f.status for f in trust] == ["fail"]

    iam = stack.client("iam")  # the old user still holds a key: the rotation says so
    iam.create_user(UserName=settings.reader.user_name)
    iam.create_access_key(UserName=settings.reader.user_name)
    assert rotate_reader_keys() == "keyless"


def test_a_crash_between_promotion_and_deactivation_is_finished_by_the_rerun(stack: Stack, reader: LocalXsiam) -> None:
    from tasks.keys import create_pending_key

    [old_key] = keys_of(stack)
    new_key = create_pending_key.fn(stack.aws, stack.settings)
    state = read_secret(stack.aws, stack.settings.reader.secret_name)
    secrets = stack.client("secretsmanager")  # the promotion happened, then the worker died
    name = stack.settings.reader.secret_name
    secrets.update_secret_version_stage(SecretId=name, VersionStage="AWSCURRENT", MoveToVersionId=state.pending_version,
                                        RemoveFromVersionId=state.current_version)
    secrets.update_secret_version_stage(SecretId=name, VersionStage="AWSPENDING",
                                        RemoveFromVersionId=state.pending_version)
    assert rotate_reader_keys() == "finish"
    assert keys_of(stack) == {old_key: "Inactive", new_key: "Active"}
    assert rotate_reader_keys() == "wait-grace"
