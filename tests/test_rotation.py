"""rotate-reader-keys on the local stack (IAM auth on), approved through the Prefect API."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from conftest import Stack, prefect_events
from test_xsiam_standin import eventually

from deployments.alerts import ALERTS
from deployments.approve import paused_rotations
from deployments.local.stack import Credentials, LocalXsiam, bootstrap_reader_key, collector_feeds
from flows.provision import provision_feeds
from flows.rotate import rotate_reader_keys
from socfeeds.settings import ReaderSettings, RotationPolicy
from tasks.keys import (
    CLAIM_KEY_TAG,
    CLAIM_RUN_TAG,
    DEACTIVATED_TAG,
    KeyClaim,
    KeyInfo,
    Plan,
    RotationBlocked,
    SecretState,
    create_pending_key,
    finish_rotation,
    plan_rotation,
    read_secret,
)

NOW = datetime(2026, 11, 27, tzinfo=UTC)
POLICY = RotationPolicy(max_key_age_days=90, warn_age_days=75, grace_days=7, approvers=["alice"])
READER = ReaderSettings(user_name="xsiam", secret_name="reader-key")
ROTATION = {"approvers": ["alice", "bob"], "approval_timeout_seconds": 60, "approval_poll_seconds": 1,
            "confirm_use_seconds": 30, "new_key_ready_seconds": 20, "last_used_resolution_seconds": 0}


def key(key_id: str, age: float, status: str = "Active", used: bool = False) -> KeyInfo:
    return KeyInfo(key_id=key_id, status=status, created=NOW - timedelta(days=age), age_days=age,
                   last_used=NOW - timedelta(hours=1) if used else None, last_service="sqs" if used else None)


def plan(keys: list[KeyInfo], secret: SecretState, **options: Any) -> Plan:
    return plan_rotation(keys, secret, POLICY, NOW, reader=READER, **options)


IN_GRACE = SecretState(True, current_key="B", deactivated_at={"A": NOW - timedelta(days=3)})


@pytest.mark.parametrize(
    ("keys", "secret", "options", "expected"),
    [
        ([key("A", 10)], SecretState(True, current_key="A"), {}, Plan("nothing", "key A is 10 days old; nothing due")),
        ([key("A", 80)], SecretState(True, current_key="A"), {}, "nothing"),
        ([key("A", 91)], SecretState(True, current_key="A"), {}, "rotate"),
        ([key("A", 10)], SecretState(True, current_key="A"), {"emergency": True}, Plan("rotate", "EMERGENCY rotation")),
        ([], SecretState(False), {}, "rotate"),
        ([key("A", 91), key("B", 0)], SecretState(True, current_key="A", pending_key="B"), {}, "resume"),
        ([key("A", 91), key("B", 0)], SecretState(True, current_key="B", pending_key="B", previous_key="A"), {},
         "finish"),
        ([key("A", 91), key("B", 0)], SecretState(True, current_key="A"), {"claim": KeyClaim("run-1", "B")}, Plan(
            "rotate", "key ['B'] was made by run run-1, which stopped before storing it in the secret, and was never "
            "used: deleting it and starting again", ("B",))),
        ([key("A", 100, "Inactive"), key("B", 3)], IN_GRACE, {}, "wait-grace"),
        ([key("A", 100, "Inactive"), key("B", 3)], IN_GRACE, {"force": True}, "wait-grace"),
        ([key("A", 100, "Inactive"), key("B", 3)], IN_GRACE, {"emergency": True}, Plan(
            "rotate", "EMERGENCY: deleting inactive key A (deactivated 3.0 days ago, grace 7.0 days) now, then "
            "rotating", ("A",))),
        ([key("A", 100, "Inactive"), key("B", 8)],
         SecretState(True, current_key="B", deactivated_at={"A": NOW - timedelta(days=8)}), {}, Plan(
             "delete-expired", "grace of 7.0 days passed for ['A']", ("A",))),
        ([key("A", 100, "Inactive"), key("B", 8)],
         SecretState(True, current_key="B", deactivated_at={"A": NOW - timedelta(days=8)}), {"force": True}, Plan(
             "rotate", "grace of 7.0 days passed for ['A']: deleting, then rotating (forced)", ("A",))),
    ],
)
def test_plan(keys: list[KeyInfo], secret: SecretState, options: dict[str, Any], expected: Plan | str) -> None:
    planned = plan(keys, secret, **options)
    assert planned == expected if isinstance(expected, Plan) else planned.action == expected


def test_two_active_keys_nobody_tracks_stop_for_a_human() -> None:
    with pytest.raises(RotationBlocked, match=r"\['A', 'B'\] are both active .* ask the SOC"):
        plan([key("A", 100), key("B", 50)], SecretState(False))


@pytest.mark.parametrize(("claim", "used", "says"), [
    (KeyClaim(), False, "no socfeeds run recorded making it"),
    (KeyClaim("run-1", None), False, "Run run-1 was making a key when it stopped"),  # crashed before tagging the id
    (KeyClaim("run-1", "C"), False, "no socfeeds run recorded making it"),
    (KeyClaim("run-1", "B"), True, "IAM reports it used at"),
])
def test_a_second_key_is_deleted_only_when_a_run_provably_made_it_and_nobody_used_it(
        claim: KeyClaim, used: bool, says: str) -> None:
    with pytest.raises(RotationBlocked) as blocked:
        plan([key("A", 100), key("B", 1, used=used)], SecretState(True, current_key="A"), claim=claim)
    assert says in str(blocked.value)
    assert "key B on IAM user xsiam is active" in str(blocked.value) and "so it was not deleted" in str(blocked.value)
    assert "aws iam update-access-key --user-name xsiam --access-key-id B --status Inactive" in str(blocked.value)


@pytest.mark.parametrize(("policy", "refusal"), [
    ({"approvers": []}, "approvers is empty"),
    ({"max_key_age_days": 60}, "approvers is empty"),  # a rotation section must say who approves
    ({"approvers": ["alice"], "required_approvals": 2}, "required_approvals is 2 but approvers lists 1"),
    ({"approvers": ["alice", "alice"], "required_approvals": 2}, "required_approvals is 2 but approvers lists 1"),
])
def test_an_approval_policy_nobody_can_satisfy_is_refused(policy: dict[str, Any], refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal):
        RotationPolicy(**policy)


def test_satisfiable_policies_and_the_default_are_accepted() -> None:
    assert RotationPolicy().approvers == []  # no rotation section: the flow refuses to make a key instead
    assert RotationPolicy(approvers=["soc-on-call"]).required_approvals == 1  # the local stack's policy
    assert RotationPolicy(approvers=["alice", "bob"], required_approvals=2).required_approvals == 2


def test_a_combined_approval_form_lists_every_accounts_pending_key_and_no_secret() -> None:
    from test_settings import BASE

    from flows.rotate import PendingKey, approval_form
    from socfeeds.settings import Settings

    settings = Settings(**{**BASE, "rotation": {"approvers": ["alice", "bob"], "required_approvals": 2,
                                                 "approval": "combined"}})
    assert settings.rotation.approval == "combined" and RotationPolicy().approval == "per_account"
    pending = [PendingKey("payments (222222222222/eu-west-2)", "xsiam-reader", "AKIAPAYMENTS0000001", 0.02),
               PendingKey("log-archive (111111111111/eu-west-2)", "xsiam-reader", "AKIAARCHIVE00000002", 0.01)]
    form = approval_form(settings, "AKIAPAYMENTS0000001, AKIAARCHIVE00000002", ["alice"], pending)
    description = str(form._description)  # what the UI shows above the form
    assert "rotation of 2 accounts (one answer for all)" in description and "Approval 2 of 2" in description
    assert "| payments (222222222222/eu-west-2) | xsiam-reader | AKIAPAYMENTS0000001 | 0.0 |" in description
    assert "| log-archive (111111111111/eu-west-2) | xsiam-reader | AKIAARCHIVE00000002 | 0.0 |" in description
    assert "--version-stage AWSPENDING" in description and "SecretString" not in description


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
    stack.update(rotation=ROTATION)
    yield xsiam
    xsiam.stop()


@pytest.fixture
def keyed(stack: Stack) -> str:
    """Only the reader user and its hand-made key in the secret: enough for every step before XSIAM's use."""
    reader_settings = stack.settings.reader
    stack.client("iam").create_user(UserName=reader_settings.user_name, Path=reader_settings.path)
    bootstrap_reader_key(stack.local, stack.values["reader"])
    stack.update(rotation=ROTATION)
    [old_key] = keys_of(stack)
    return old_key


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


def answer(run_id: str, run_input: dict[str, Any]) -> None:
    """resume_flow_run, once the paused run's form is saved (it is written just after the Paused state)."""
    from prefect.flow_runs import resume_flow_run

    deadline = time.monotonic() + 10
    while True:
        try:
            resume_flow_run(UUID(run_id), run_input=run_input)
            return
        except RuntimeError as refused:
            if "schema not found" not in str(refused) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def approve_with_cli(run_id: str, run_input: dict[str, Any]) -> str:
    """The README's command, from a second process: prefect api POST /flow_runs/<id>/resume."""
    data = json.dumps({"run_input": run_input})
    return cli(["prefect", "api", "POST", f"/flow_runs/{run_id}/resume", "--data", data])


def cli(argv: list[str]) -> str:
    """A command as on-call types it (`prefect ...` or `python ...`), against this session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    program = [sys.executable, "-m", "prefect"] if argv[0] == "prefect" else [sys.executable]
    done = subprocess.run([*program, *argv[1:]], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())})
    return done.stdout + done.stderr


def keys_of(stack: Stack) -> dict[str, str]:
    iam = stack.client("iam")
    return {k["AccessKeyId"]: k["Status"] for k in
            iam.list_access_keys(UserName=stack.settings.reader.user_name)["AccessKeyMetadata"]}


def artifact_of(state: Any) -> str:
    """The rotate-reader-keys markdown this run published."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["rotate-reader-keys"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    return str(artifact.data)


def rotation_events(step: str, **payload: str) -> list[dict[str, Any]]:
    """Polled while the rotation's flow thread may still emit: never drains (and so stops) its emitter."""
    return [e for e in prefect_events(f"socfeeds.rotation.{step}", drain=False)
            if e["event"] == f"socfeeds.rotation.{step}" and payload.items() <= e["payload"].items()]


def alert_text(name: str, event: dict[str, Any], run_id: str) -> str:
    """An automation's subject and body as Prefect renders them for this event."""
    from prefect.server.events.jinja_filters import all_filters
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.server.schemas.core import FlowRun
    from prefect.server.utilities.user_templates import register_user_template_filters, render_user_template_sync

    [alert] = [a for a in ALERTS if a.name == name]
    assert event["event"] in alert.expect
    register_user_template_filters(all_filters)
    context = {"event": ReceivedEvent.model_validate(event), "flow_run": FlowRun(id=UUID(run_id), flow_id=uuid.uuid4())}
    return render_user_template_sync(alert.subject + "\n" + alert.body, context)


def test_a_run_paused_before_its_form_is_saved_is_listed_as_not_ready(prefect_server: None) -> None:
    """The rotation's state turns Paused a moment before its form is written: listing then must not fail."""
    from prefect.client.orchestration import get_client
    from prefect.states import Paused

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(rotate_reader_keys, state=Paused(timeout_seconds=60, pause_key="no-form-yet"))
        try:
            [listed] = [r for r in paused_rotations() if r.run_id == str(run.id)]
        finally:
            client.delete_flow_run(run.id)
    assert listed.summary == "(the approval form is not saved yet: run this again in a second)" and not listed.approvers


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
    refused = approve_with_cli(run_id, {"approved": True, "approver": "Mallory"})
    assert "REJECT" in refused and "'Mallory' is not one of ['alice', 'bob']" in refused, refused
    assert rotation.paused_run_id() == run_id, "an approver not on the list leaves the run paused"
    assert reader.reload("AWSPENDING") == new_key  # the SOC pastes the pending key into XSIAM
    helper = cli(["python", "-m", "deployments.approve", "--reason", "CHG-1234"])  # the full id, ready commands
    [command] = [line.strip() for line in helper.splitlines() if line.strip().startswith(
        f"prefect api POST /flow_runs/{run_id}/resume") and '"approver": "alice"' in line]
    assert "ACCEPT" in cli(shlex.split(command)), helper
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
    report = artifact_of(state)
    now = report.split("## Keys now")[1].split("## Keys at the start")[0]  # re-read after the last step
    assert f"| {new_key} | Active |" in now and f"| {old_key} | Inactive |" in now, report
    assert "| alice | approve | CHG-1234 | approved |" in report and "**Outcome: rotated:" in report
    steps = {"socfeeds.rotation.created", "socfeeds.rotation.tested", "socfeeds.rotation.approved",
             "socfeeds.rotation.finished"}
    eventually("an event for every rotation step", lambda: steps <= {
        e["event"] for e in prefect_events("socfeeds.rotation.") if e["payload"].get("key") == new_key})
    assert secret not in json.dumps(prefect_events("socfeeds."))
    [ask] = eventually("the approval request's event", lambda: rotation_events("awaiting-approval", key=new_key))
    assert "approval 1 of 1, from: alice, bob" in alert_text("socfeeds: rotation awaits approval", ask, run_id)


def test_a_repeated_approval_is_refused_and_a_rejection_cancels_the_rotation(stack: Stack, keyed: str) -> None:
    """Two-person rule: alice's second approval is refused (event, alert, artifact); bob's rejection rolls back."""
    stack.update(rotation={**ROTATION, "required_approvals": 2})
    rotation = Rotation(force=True)
    run_id = rotation.paused_run_id()
    [new_key] = set(keys_of(stack)) - {keyed}
    [form] = eventually("the approval form", lambda: [r for r in paused_rotations() if r.approvers])
    assert form.approvers == ["alice", "bob"], "the UI offers only the listed names"
    assert form.summary.startswith("Approval 1 of 2 for the XSIAM reader key rotation") and \
        "May approve (rotation.approvers): alice, bob; 2 distinct approval(s) needed" in form.summary, form.summary
    answer(run_id, {"approved": True, "approver": "alice", "reason": "CHG-1"})
    [form] = eventually("the second form", lambda: [r for r in paused_rotations() if "2 of 2" in r.summary])
    assert "Already approved by alice: a different approver must answer" in form.summary
    answer(rotation.paused_run_id(), {"approved": True, "approver": "alice", "reason": "CHG-1 again"})
    [refused] = eventually("the refused answer's event", lambda: rotation_events("answer-refused", key=new_key))
    assert rotation.paused_run_id() == run_id, "still paused, for a different approver"
    alert = alert_text("socfeeds: rotation answer refused", refused, run_id)
    assert "approval from alice for new key" in alert and "alice already approved; 2 distinct approvers" in alert
    assert "paused again for approval 2 of 2" in alert, alert
    answer(run_id, {"approver": "bob", "reason": "not today"})  # `approved` left at its default: a rejection
    state = rotation.finish()
    assert state.is_cancelled(), state
    assert state.message.startswith("rotation rejected by bob: not today. Rolled back:"), state.message
    assert keys_of(stack) == {keyed: "Active"}
    secret = read_secret(stack.aws, stack.settings.reader.secret_name)
    assert (secret.current_key, secret.pending_key) == (keyed, None)
    report = artifact_of(state)
    assert "| alice | approve | CHG-1 | approved |" in report
    assert "| alice | approve | CHG-1 again | refused: alice already approved" in report
    assert "| bob | reject | not today | rejected |" in report and "**Outcome: CANCELLED: rejected by bob" in report
    [rejected] = eventually("the rejection's event", lambda: rotation_events("rejected", key=new_key))
    assert alert_text("socfeeds: rotation rejected", rejected, run_id).startswith(
        f"socfeeds: reader key rotation for {stack.settings.reader.user_name} rejected by bob\n"
        f"bob rejected the rotation: not today.\nRolled back: new key {new_key} deleted, old key {keyed} still active")
    [failed_alert] = [a for a in ALERTS if a.name == "socfeeds: run failed or crashed"]
    assert "prefect.flow-run.Cancelled" not in failed_alert.expect


def test_approved_but_never_used_by_xsiam_keeps_the_old_key_active(stack: Stack, reader: LocalXsiam) -> None:
    """The flow's own test read of the new key (just before the pause) must not pass for XSIAM's use."""
    stack.update(rotation={**ROTATION, "confirm_use_seconds": 3})
    [old_key] = keys_of(stack)
    rotation = Rotation(force=True)
    run_id = rotation.paused_run_id()
    answer(run_id, {"approved": True, "approver": "alice"})  # XSIAM keeps the old key
    state = rotation.finish()
    assert state.is_failed() and "XSIAM has not used key" in str(state.result(raise_on_failure=False))
    assert keys_of(stack)[old_key] == "Active"
    assert read_secret(stack.aws, stack.settings.reader.secret_name).current_key == old_key
    report = artifact_of(state)  # written on a failure too
    assert "**Outcome: FAILED: XSIAM has not used key" in report and "| alice | approve | - | approved |" in report


def test_timeout_rolls_back(stack: Stack, keyed: str) -> None:
    stack.update(rotation={**ROTATION, "approval_timeout_seconds": 2})
    state = rotate_reader_keys(force=True, return_state=True)
    assert keys_of(stack) == {keyed: "Active"}
    assert state.is_failed()
    assert f"**Outcome: FAILED: approval timed out after 2 s; rolled back, old key {keyed} still active" in artifact_of(
        state)


def test_a_crash_after_creating_the_key_resumes_without_a_third_key(stack: Stack, reader: LocalXsiam) -> None:
    [old_key] = keys_of(stack)
    pending = create_pending_key.fn(stack.aws, stack.settings, "crashed-run")  # then the worker died
    rotation = Rotation(force=True)
    run_id = rotation.paused_run_id()
    assert set(keys_of(stack)) == {old_key, pending}
    reader.reload("AWSPENDING")
    answer(run_id, {"approved": True, "approver": "alice"})
    assert rotation.finish().is_completed()
    assert keys_of(stack) == {old_key: "Inactive", pending: "Active"}


def test_a_key_the_run_made_but_never_stored_is_deleted_and_the_rotation_goes_on(stack: Stack, keyed: str) -> None:
    aws = stack.aws

    def worker_dies(**_: Any) -> None:
        raise ConnectionError("the worker died")

    aws.secrets.meta.events.register("before-call.secrets-manager.PutSecretValue", worker_dies)
    with pytest.raises(ConnectionError):
        create_pending_key.fn(aws, stack.settings, "crashed-run")
    [orphan] = set(keys_of(stack)) - {keyed}
    user = stack.settings.reader.user_name
    tags = {t["Key"]: t["Value"] for t in stack.client("iam").list_user_tags(UserName=user)["Tags"]}
    assert tags == {CLAIM_RUN_TAG: "crashed-run", CLAIM_KEY_TAG: orphan}, "the intent was recorded first"
    rotation = Rotation(force=True)
    run_id = rotation.paused_run_id()
    [new_key] = set(keys_of(stack)) - {keyed}
    assert new_key != orphan and keys_of(stack) == {keyed: "Active", new_key: "Active"}
    assert read_secret(stack.aws, stack.settings.reader.secret_name).pending_key == new_key
    assert stack.client("iam").list_user_tags(UserName=user)["Tags"] == [], "the secret tracks the new key"
    answer(run_id, {"approver": "alice", "reason": "tested the cleanup"})
    state = rotation.finish()
    assert state.is_cancelled()
    assert f"key ['{orphan}'] was made by run crashed-run, which stopped before storing it" in artifact_of(state)


def test_a_key_a_person_made_is_never_deleted(stack: Stack, keyed: str) -> None:
    """Today's manual process: someone made a second key and may have pasted it into XSIAM."""
    made_by_hand = stack.client("iam").create_access_key(UserName=stack.settings.reader.user_name)["AccessKey"]
    person = made_by_hand["AccessKeyId"]
    state = rotate_reader_keys(force=True, return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert f"key {person} on IAM user {stack.settings.reader.user_name} is active" in message
    assert "no socfeeds run recorded making it" in message and "so it was not deleted and nothing changed" in message
    assert f"--access-key-id {person} --status Inactive" in message
    assert keys_of(stack) == {keyed: "Active", person: "Active"}
    assert f"**Outcome: FAILED: key {person}" in artifact_of(state)

    # even a key tagged as a run's is kept once IAM reports it used: someone holds it
    stack.client("iam").tag_user(UserName=stack.settings.reader.user_name, Tags=[
        {"Key": CLAIM_RUN_TAG, "Value": "some-run"}, {"Key": CLAIM_KEY_TAG, "Value": person}])
    stack.local.client("sts", Credentials(person, made_by_hand["SecretAccessKey"])).get_caller_identity()
    state = rotate_reader_keys(force=True, return_state=True)
    assert state.is_failed() and "IAM reports it used at" in str(state.result(raise_on_failure=False))
    assert keys_of(stack) == {keyed: "Active", person: "Active"}


def test_without_approvers_no_key_is_made(stack: Stack, keyed: str) -> None:
    stack.values.pop("rotation")  # no rotation section: nobody could approve
    stack.update()
    state = rotate_reader_keys(force=True, return_state=True)
    assert state.is_failed() and "rotation.approvers is not set" in str(state.result(raise_on_failure=False))
    assert keys_of(stack) == {keyed: "Active"}


def test_an_emergency_rotation_deletes_the_inactive_key_inside_its_grace(stack: Stack, keyed: str) -> None:
    stack.update(rotation={**ROTATION, "require_new_key_in_use": False})
    current = create_pending_key.fn(stack.aws, stack.settings, "last-week")  # last week's rotation
    finish_rotation.fn(stack.aws, stack.settings, current)
    assert keys_of(stack) == {keyed: "Inactive", current: "Active"}
    assert rotate_reader_keys(force=True) == "wait-grace", "on-demand alone waits out the grace"

    rotation = Rotation(emergency=True)  # the current key leaked
    run_id = rotation.paused_run_id()
    [new_key] = set(keys_of(stack)) - {current}
    assert keyed not in keys_of(stack)
    answer(run_id, {"approved": True, "approver": "bob", "reason": "INC-42 leaked key"})
    state = rotation.finish()
    assert state.is_completed()
    assert keys_of(stack) == {current: "Inactive", new_key: "Active"}
    report = artifact_of(state)
    assert f"EMERGENCY: deleting inactive key {keyed} (deactivated 0.0 days ago" in report
    assert f"EMERGENCY: deleted keys ['{keyed}']" in report
    eventually("the emergency deletion's event", lambda: rotation_events("deleted", keys=keyed, emergency="True"))


def test_a_rerun_after_a_crash_while_finishing_completes(stack: Stack, keyed: str) -> None:
    """AWSCURRENT already moved, AWSPENDING not yet cleared, and the old key deleted by hand meanwhile."""
    stack.update(rotation={**ROTATION, "approval_timeout_seconds": 2})
    name = stack.settings.reader.secret_name
    new_key = create_pending_key.fn(stack.aws, stack.settings, "approved-run")
    state = read_secret(stack.aws, name)
    stack.client("secretsmanager").update_secret_version_stage(
        SecretId=name, VersionStage="AWSCURRENT", MoveToVersionId=state.pending_version,
        RemoveFromVersionId=state.current_version)
    stack.client("iam").delete_access_key(UserName=stack.settings.reader.user_name, AccessKeyId=keyed)
    run = rotate_reader_keys(return_state=True)
    assert run.is_completed() and run.result() == "finish", run
    assert keys_of(stack) == {new_key: "Active"}
    after = read_secret(stack.aws, name)
    assert (after.current_key, after.pending_key) == (new_key, None)
    assert (f"recovered an interrupted finish: AWSCURRENT was already on key {new_key}; old key {keyed} was "
            "already deleted") in artifact_of(run)
    again = finish_rotation.fn(stack.aws, stack.settings, new_key)
    assert again.done == () and again.already[0] == f"AWSCURRENT was already on key {new_key}"


def test_finishing_twice_keeps_the_first_deactivation_time(stack: Stack, keyed: str) -> None:
    new_key = create_pending_key.fn(stack.aws, stack.settings, "a-run")
    first = finish_rotation.fn(stack.aws, stack.settings, new_key)
    assert first.done == (f"AWSCURRENT moved to key {new_key}", "AWSPENDING cleared", f"old key {keyed} deactivated")
    deactivated = read_secret(stack.aws, stack.settings.reader.secret_name).deactivated_at[keyed]
    second = finish_rotation.fn(stack.aws, stack.settings, new_key)
    assert second.already == (f"AWSCURRENT was already on key {new_key}", f"old key {keyed} was already inactive")
    tags = stack.client("secretsmanager").describe_secret(SecretId=stack.settings.reader.secret_name)["Tags"]
    assert [t["Value"] for t in tags if t["Key"] == DEACTIVATED_TAG + keyed] == [deactivated.isoformat()]


def test_dry_run_and_not_due_change_nothing(stack: Stack, keyed: str) -> None:
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


def test_a_crash_between_promotion_and_deactivation_is_finished_by_the_rerun(stack: Stack, keyed: str) -> None:
    new_key = create_pending_key.fn(stack.aws, stack.settings, "a-run")
    state = read_secret(stack.aws, stack.settings.reader.secret_name)
    secrets = stack.client("secretsmanager")  # the promotion happened, then the worker died
    name = stack.settings.reader.secret_name
    secrets.update_secret_version_stage(SecretId=name, VersionStage="AWSCURRENT", MoveToVersionId=state.pending_version,
                                        RemoveFromVersionId=state.current_version)
    secrets.update_secret_version_stage(SecretId=name, VersionStage="AWSPENDING",
                                        RemoveFromVersionId=state.pending_version)
    assert rotate_reader_keys() == "finish"
    assert keys_of(stack) == {keyed: "Inactive", new_key: "Active"}
    assert rotate_reader_keys() == "wait-grace"
