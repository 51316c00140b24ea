"""rotate-reader-keys: rotate XSIAM's reader key with a human approval and no ingestion gap."""

from __future__ import annotations

import contextvars
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast
from uuid import UUID

from botocore.exceptions import BotoCoreError, ClientError
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRunInput, State
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput, filter_flow_run_input
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import Field, create_model

from flows._common import failed_with, fleet_result, leaves_a_record, one_line, target_run
from flows._fleet import Fleet, fan_out, publish_feed_status, report, start_fleet, target_inputs
from socfeeds.aws import AwsClients
from socfeeds.errors import OnCallError
from socfeeds.settings import Settings
from socfeeds.targets import Target
from tasks.keys import (
    Finished,
    KeyInfo,
    RotationBlocked,
    confirm_key_in_use,
    create_pending_key,
    current_key,
    delete_keys,
    finish_rotation,
    inspect_keys,
    read_keys,
    read_secret,
    roll_back,
    try_pending_key,
    user_keys,
)

FLOW = "rotate-reader-keys"
PREPARE = "prepare"  # combined_approval: make and test the pending key, then stop for the fleet's one approval
APPROVAL_KEY = "approval-"  # each pause's key; its form and answer are that run's inputs paused-approval-*


class RotationStopped(RuntimeError, OnCallError):
    """Timed out, or not seen in use: rolled back or left safe; the message says which."""


@dataclass(frozen=True)
class PendingKey:
    """One account's pending key as a combined approval lists it: never a secret, only its id and age."""

    account: str
    user: str
    key_id: str
    age_days: float


def pending_table(pending: list[PendingKey]) -> str:
    rows = "\n".join(f"| {p.account} | {p.user} | {p.key_id} | {p.age_days:.1f} |" for p in pending)
    return f"| account | user | pending key | age (days) |\n|---|---|---|---|\n{rows}"


@dataclass(frozen=True)
class Answer:
    """One answer to the approval form, as the artifact lists it."""

    at: datetime
    approver: str
    approved: bool
    reason: str
    verdict: str  # approved | rejected | refused: <why>


class Rejected(Exception):
    """A listed approver said no: the rotation is rolled back and the run ends Cancelled."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(f"rejected by {answer.approver}: {answer.reason or 'no reason given'}")
        self.answer = answer


@dataclass
class Journal:
    """What the artifact reports, kept as the run goes so that every outcome (even an exception) can show it."""

    keys_before: list[KeyInfo] = field(default_factory=list)
    steps: list[tuple[datetime, str]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    outcome: str = ""
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def step(self, text: str, warn: bool = False) -> None:
        self.steps.append((datetime.now(UTC), text))
        logger = get_run_logger()
        (logger.warning if warn else logger.info)("%s", text)


def _event(settings: Settings, step: str, **payload: object) -> None:
    user = settings.reader.user_name
    emit_event(event=f"socfeeds.rotation.{step}", resource={"prefect.resource.id": f"socfeeds.reader.{user}",
                                                            "prefect.resource.name": user},
               payload={k: str(v) for k, v in payload.items()})


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%SZ")


def _cell(text: str) -> str:
    """A person's free text inside one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _key_table(keys: list[KeyInfo]) -> str:
    rows = "\n".join(f"| {k.key_id} | {k.status} | {k.age_days:.0f} | {k.last_used or 'never'} | "
                     f"{k.last_service or '-'} |" for k in keys)
    return f"| key id | status | age (days) | last used | service |\n|---|---|---|---|---|\n{rows or '| (none) ||||'}"


def _report(aws: AwsClients, settings: Settings, journal: Journal) -> None:
    """The run's markdown artifact: the keys as they are now (re-read), the steps, every answer, the outcome."""
    ended = datetime.now(UTC)
    try:
        now = _key_table(user_keys.fn(aws, settings))
    except (ClientError, BotoCoreError) as error:
        now = f"(could not re-read the keys: {error})"
    create_markdown_artifact(key="rotate-reader-keys", description="reader key rotation", markdown=(
        f"# Reader key rotation: {settings.reader.user_name}\n\n**Outcome: {journal.outcome}**\n\n"
        f"Run {flow_run.get_name()} ({flow_run.get_id()}), {_when(journal.started)} to {_when(ended)}; "
        f"secret {settings.reader.secret_name}; approvers {', '.join(settings.rotation.approvers) or '(none)'}, "
        f"{settings.rotation.required_approvals} needed.\n\n"
        f"## Keys now (read at {_when(ended)})\n\n{now}\n\n## Keys at the start\n\n{_key_table(journal.keys_before)}"
        "\n\n## Steps\n\n" + "\n".join(f"- {_when(at)} {text}" for at, text in journal.steps) + _answers(journal)))


def _answers(journal: Journal) -> str:
    """The artifact's table of every answer to the approval form ("" when nobody answered)."""
    rows = "\n".join(f"| {_when(a.at)} | {a.approver} | {'approve' if a.approved else 'reject'} | "
                     f"{_cell(a.reason) or '-'} | {a.verdict} |" for a in journal.answers)
    return ("\n\n## Answers\n\n| time | approver | answer | ticket / reason | verdict |\n|---|---|---|---|---|\n"
            f"{rows}" if rows else "")


def approval_form(settings: Settings, new_key: str, approved_by: list[str],
                  pending: list[PendingKey] | None = None) -> type[RunInput]:
    """The form for one pause: who may answer, how many must, and the SOC's steps. Rejecting is the default.
    `pending`: a fleet's combined approval, listing every account's pending key (ids only, never a secret).

    The approver is a choice of the listed names, so the UI offers only them and the API refuses
    any other name (REJECT, naming the allowed ones) instead of accepting and pausing again.
    """
    policy, secret = settings.rotation, settings.reader.secret_name
    names = ", ".join(policy.approvers)
    given = (f" Already approved by {', '.join(approved_by)}: a different approver must answer."
             if approved_by else "")
    subject = f"`{settings.reader.user_name}`" if pending is None else f"{len(pending)} accounts (one answer for all)"
    fetch = (f"1. Fetch the pending key {new_key}: `aws secretsmanager get-secret-value --secret-id {secret} "
             "--version-stage AWSPENDING`\n2. Put it in every XSIAM Amazon S3 data source.\n" if pending is None else
             "1. In each account below, fetch its pending key: `aws secretsmanager get-secret-value --secret-id "
             f"{secret} --version-stage AWSPENDING`\n2. Put each in that account's XSIAM Amazon S3 data "
             "source.\n")
    description = (
        f"**Approval {len(approved_by) + 1} of {policy.required_approvals}** for the XSIAM reader key rotation of "
        f"{subject}. May approve (rotation.approvers): **{names}**; "
        f"{policy.required_approvals} distinct approval(s) needed.{given}\n\n{fetch}"
        "3. Answer: turn **approved** on to approve. Left off, the answer REJECTS the rotation: the new key is "
        "deleted and the old key stays active (if XSIAM already holds the new key, put the AWSCURRENT one back)."
        + (f"\n\n{pending_table(pending)}" if pending else ""))
    listed: Any = Literal[tuple(policy.approvers)]  # the JSON schema's enum: the UI's choice, the API's check
    form = create_model(
        "Approval", __base__=RunInput, __doc__="The SOC's answer once every XSIAM data source holds the pending key.",
        approved=(bool, Field(False, description="On: approve the new key. Off (default): reject and roll back.")),
        approver=(listed, Field(description=f"Your name, one of: {names}.")),
        reason=(str, Field("", description="The change ticket (e.g. CHG-1234), or why you reject.")))
    return form.with_initial_data(description=description)


def _approve(settings: Settings, new_key: str, journal: Journal, pending: list[PendingKey] | None = None) -> list[str]:
    """Pause until enough distinct listed approvers approve; a rejection or the timeout raises.
    `pending`: one approval for a fleet's accounts, `new_key` then naming each account's key."""
    policy = settings.rotation
    approved_by: list[str] = []
    attempt = 0
    while len(approved_by) < policy.required_approvals:
        attempt += 1  # each pause needs its own input key, or a refused answer would be read again
        journal.step(f"paused for approval {len(approved_by) + 1} of {policy.required_approvals} "
                     f"(approvers: {', '.join(policy.approvers)}; timeout {policy.approval_timeout_seconds} s)")
        _event(settings, "awaiting-approval", key=new_key, secret=settings.reader.secret_name,
               approval=len(approved_by) + 1, required=policy.required_approvals,
               approvers=", ".join(policy.approvers), timeout_seconds=policy.approval_timeout_seconds)
        answer: Any = pause_flow_run(
            wait_for_input=approval_form(settings, new_key, approved_by, pending),
            timeout=policy.approval_timeout_seconds, poll_interval=policy.approval_poll_seconds,
            key=f"{APPROVAL_KEY}{attempt}-{hashlib.sha256(new_key.encode()).hexdigest()[:16]}")
        at, who, reason = datetime.now(UTC), str(answer.approver), str(answer.reason)
        if not answer.approved:
            journal.answers.append(Answer(at, who, False, reason, "rejected"))
            raise Rejected(journal.answers[-1])
        if who in approved_by:
            why = f"{who} already approved; {policy.required_approvals} distinct approvers are needed"
            journal.answers.append(Answer(at, who, True, reason, f"refused: {why}"))
            journal.step(f"answer refused: {why}; waiting again", warn=True)
            _event(settings, "answer-refused", key=new_key, approver=who, why=why, approval=len(approved_by) + 1,
                   required=policy.required_approvals, approvers=", ".join(policy.approvers))
            continue
        approved_by.append(who)
        journal.answers.append(Answer(at, who, True, reason, "approved"))
        journal.step(f"approved by {who} ({reason or 'no ticket given'})")
        _event(settings, "approved", approver=who, reason=reason, key=new_key)
    return approved_by


def _finished(journal: Journal, finished: Finished) -> None:
    for text in finished.done:
        journal.step(text)
    if finished.already:
        journal.step(f"recovered an interrupted finish: {'; '.join(finished.already)}")


def _keyless(settings: Settings, keys: list[KeyInfo], journal: Journal) -> str:
    """Role mode: XSIAM assumes a role, there is no key to rotate; leftover user keys are a risk."""
    journal.outcome = f"nothing to rotate: XSIAM assumes role {settings.reader.role_name} (keyless)"
    if keys:
        journal.step(f"WARNING: user {settings.reader.user_name} still holds keys {[k.key_id for k in keys]}; the "
                     "role is available: once every XSIAM data source uses it, delete these keys", warn=True)
    return "keyless"


@flow(name=FLOW)
@leaves_a_record(FLOW)
def rotate_reader_keys(dry_run: bool = False, force: bool = False, emergency: bool = False,
                       accounts: list[str] | None = None, combined_approval: str | None = None) -> str | State[Any]:
    """Rotate the XSIAM reader's access key when due: create, test, approve, confirm use, finish.

    Each step resumes safely after a crash; a rejection (run Cancelled), a timeout or a key never
    seen in use rolls back (or stops) with the old key still active. The old key is deleted after
    the grace period, by a later scheduled run. The artifact is written whatever the outcome.

    Args:
        dry_run: Only report what would be done.
        force: Rotate even if the key is not yet due.
        emergency: A leaked key: delete an inactive old key inside its grace period, then rotate now.
        accounts: Fleet accounts (id, name, or id/region); None means every account, each asking for its own
            approval, or (rotation.approval = "combined") this run asking once for all.
        combined_approval: Set by a fleet run asking one approval for all, not by people: "prepare" makes and
            tests the pending key and stops; that run's id then goes on (or rolls back) by the answers it got.
    """
    fleet = start_fleet(None, accounts)
    options: dict[str, Any] = {"dry_run": dry_run, "force": force, "emergency": emergency}
    if fleet.fans_out and combined_approval is None and not dry_run and fleet.settings.rotation.approval == "combined":
        return cast(str, combined_rotation(fleet, options))
    if fleet.fans_out:
        return cast(str, fleet_result(FLOW, fleet, {**options, "combined_approval": combined_approval},
                                      rotate_reader_keys))
    run = target_run(fleet, None, FLOW)
    settings, aws, journal = run.settings, run.aws, Journal()
    try:
        if settings.reader.mode == "role":
            journal.keys_before = user_keys(aws, settings)
            return _keyless(settings, journal.keys_before, journal)
        return _rotate(settings, aws, journal, dry_run, force, emergency, combined_approval)
    except BaseException as error:
        journal.outcome = journal.outcome or f"FAILED: {error}"
        raise
    finally:
        _report(aws, settings, journal)
        publish_feed_status(FLOW, run.target, {
            "reader": ("fail" if journal.outcome.startswith(("FAILED", "CANCELLED")) else "pass", journal.outcome)})


def _rotate(settings: Settings, aws: AwsClients, journal: Journal, dry_run: bool, force: bool,
            emergency: bool, combined_approval: str | None = None) -> str | State[Any]:
    journal.keys_before, plan = inspect_keys(aws, settings, force, emergency)
    journal.step(f"plan: {plan.action} ({plan.reason})", warn=emergency)
    _event(settings, "inspected", action=plan.action, reason=plan.reason, emergency=emergency)
    if dry_run or plan.action in {"nothing", "wait-grace"}:
        journal.outcome = "dry run: nothing changed" if dry_run else f"nothing changed: {plan.reason}"
        return plan.action
    if plan.action in {"rotate", "resume"} and not settings.rotation.approvers:
        raise RotationBlocked("rotation.approvers is not set, so nobody could approve a new key; none was made and "
                              "nothing changed. Fix: list who may approve in the settings (rotation.approvers, e.g. "
                              "SOCFEEDS_ROTATION__APPROVERS='[\"soc-on-call\"]'), then rerun rotate-reader-keys")
    if plan.delete:
        deleted = delete_keys(aws, settings, list(plan.delete))
        journal.step(f"{'EMERGENCY: ' if emergency else ''}deleted keys {deleted}", warn=emergency)
        _event(settings, "deleted", keys=", ".join(deleted), emergency=emergency)
    if plan.action == "delete-expired":
        journal.outcome = f"deleted keys {list(plan.delete)} after their grace"
        return plan.action
    if plan.action == "finish":  # a crash after promotion: approval and use were already confirmed
        new_key = current_key(aws, settings)
        assert new_key is not None  # the plan saw it
        finished = finish_rotation(aws, settings, new_key)
        _finished(journal, finished)
        _event(settings, "finished", key=new_key, deactivated=finished.old_key, recovered="; ".join(finished.already))
        journal.outcome = f"finished an interrupted rotation: key {new_key} is AWSCURRENT"
        return plan.action

    new_key = create_pending_key(aws, settings, str(flow_run.get_id()))
    journal.step(f"pending key {new_key} in secret {settings.reader.secret_name} (stage AWSPENDING)")
    _event(settings, "created", key=new_key, emergency=emergency)
    try_pending_key(aws, settings)
    journal.step(f"tested: key {new_key} signs in and reads every feed queue")
    _event(settings, "tested", key=new_key)
    if combined_approval == PREPARE:
        journal.outcome = f"pending key {new_key} tested; waiting for the fleet's one approval"
        return "awaiting-approval"
    try:
        approvers = (_approve(settings, new_key, journal) if combined_approval is None
                     else _fleet_answer(settings, new_key, UUID(combined_approval), journal))
    except (Rejected, FlowPauseTimeout) as stop:
        roll_back(aws, settings, new_key)
        old = current_key(aws, settings)
        why = (str(stop) if isinstance(stop, Rejected)
               else f"approval timed out after {settings.rotation.approval_timeout_seconds} s")
        journal.step(f"rolled back ({why}): new key {new_key} deleted, AWSPENDING cleared, old key {old} still active")
        _event(settings, "rolled-back", key=new_key, reason=why)
        if isinstance(stop, Rejected):
            _event(settings, "rejected", key=new_key, current=old, approver=stop.answer.approver,
                   reason=stop.answer.reason or "no reason given")
            journal.outcome = f"CANCELLED: {why}; rolled back, old key {old} still active"
            return Cancelled(message=f"rotation {why}. Rolled back: new key {new_key} deleted, old key {old} still "
                             f"active. If an XSIAM data source already holds {new_key}, put the AWSCURRENT key back "
                             f"(aws secretsmanager get-secret-value --secret-id {settings.reader.secret_name}). "
                             "To rotate later: prefect deployment run 'rotate-reader-keys/on-demand'")
        journal.outcome = f"FAILED: {why}; rolled back, old key {old} still active"
        raise RotationStopped(f"rotation rolled back, old key {old} still active: {why}. Fix: answer the approval "
                              "within rotation.approval_timeout_seconds, then rerun rotate-reader-keys") from None
    approved_at = datetime.now(UTC)
    if settings.rotation.require_new_key_in_use:
        used = confirm_key_in_use(aws, settings, new_key, approved_at)
        journal.step(f"XSIAM used key {new_key} against SQS at {_when(used)}")
    finished = finish_rotation(aws, settings, new_key)
    _finished(journal, finished)
    _event(settings, "finished", key=new_key, deactivated=finished.old_key, approvers=", ".join(approvers),
           recovered="; ".join(finished.already), emergency=emergency)
    journal.outcome = (f"rotated: key {new_key} is AWSCURRENT, approved by {', '.join(approvers)}; old key "
                       f"{finished.old_key or '(none)'} inactive, deleted after {settings.rotation.grace_days} days")
    return "rotated"


def combined_rotation(fleet: Fleet, options: dict[str, Any]) -> Any:
    """One approval for every account's pending key: each account makes and tests its key (child runs), this run
    asks once listing them all, then every account goes on (or, rejected or timed out, rolls back) by that answer.
    The approval, its event and its alert are the single account's; accounts with nothing pending keep their
    first outcome."""
    prepared = fan_out(FLOW, fleet, {**options, "combined_approval": PREPARE}, rotate_reader_keys)
    pending = pending_keys(fleet, [o.target for o in prepared if o.state == "Completed"])
    outcomes, journal, stop = prepared, Journal(), ""
    if pending:
        keys = ", ".join(f"{p.account}: {p.key_id}" for p in pending)
        journal.step(f"{len(pending)} accounts' pending keys tested: {keys}")
        try:
            approvers = _approve(fleet.settings, keys, journal, pending)
            journal.step(f"approved by {', '.join(approvers)}: every account goes on")
        except (Rejected, FlowPauseTimeout) as error:
            stop = (str(error) if isinstance(error, Rejected) else
                    f"approval timed out after {fleet.settings.rotation.approval_timeout_seconds} s")
            journal.step(f"{stop}: every account rolls back", warn=True)
        waiting = [t for t in fleet.targets if t.label in {p.account for p in pending}]
        answered = fan_out(FLOW, replace(fleet, targets=waiting),
                           {**options, "combined_approval": str(flow_run.get_id())}, rotate_reader_keys)
        by_key = {o.target.key: o for o in answered}
        outcomes = [by_key.get(o.target.key, o) for o in prepared]
    journal.outcome = stop or (f"{len(pending)} accounts' keys approved at once" if pending else "nothing pending")
    create_markdown_artifact(key=f"{FLOW}-approval", description="combined reader key approval", markdown=(
        f"# Reader key rotation, one approval for the fleet\n\n**Outcome: {journal.outcome}**\n\n"
        f"{pending_table(pending) if pending else 'No account had a pending key.'}\n\n## Steps\n\n"
        + "\n".join(f"- {_when(at)} {text}" for at, text in journal.steps) + _answers(journal)))
    message = report(FLOW, fleet, outcomes)
    if stop:
        message = f"{FLOW}: {stop}; every account rolled back, its old key still active. {message or ''}"
    return failed_with(one_line(message), outcomes) if message else outcomes


def pending_keys(fleet: Fleet, targets: list[Target]) -> list[PendingKey]:
    """Each target's pending key (AWSPENDING of its reader secret) with its age, read from the account itself."""

    def read(target: Target) -> PendingKey | None:
        settings, aws = target_inputs(fleet, target, FLOW)
        pending = read_secret(aws, settings.reader.secret_name).pending_key
        key = next((k for k in read_keys(aws, settings.reader.user_name, datetime.now(UTC)) if k.key_id == pending),
                   None)
        return PendingKey(target.label, settings.reader.user_name, key.key_id, key.age_days) if key else None

    limit = fleet.settings.fleet.max_concurrent_accounts if fleet.settings.fleet else 1
    with ThreadPoolExecutor(max_workers=limit) as pool:
        futures = [pool.submit(contextvars.copy_context().run, read, target) for target in targets]
        return [found for future in futures if (found := future.result())]


def _fleet_answer(settings: Settings, new_key: str, asking_run: UUID, journal: Journal) -> list[str]:
    """The answers given to the fleet run that asked once for every account: its approvers when enough distinct
    listed approvers approved a form listing this key; a rejection raises Rejected, too few answers the timeout."""
    inputs = cast(list[FlowRunInput], filter_flow_run_input(key_prefix=f"paused-{APPROVAL_KEY}", limit=200,
                                                            flow_run_id=asking_run))
    listed = any(i.key.endswith("-description") and new_key in str(i.decoded_value) for i in inputs)
    answers = [i.decoded_value for i in inputs if i.key.endswith("-response") and isinstance(i.decoded_value, dict)]
    policy, approved_by = settings.rotation, []
    for answer in answers:
        who, reason, at = str(answer.get("approver", "")), str(answer.get("reason", "")), datetime.now(UTC)
        if not answer.get("approved"):
            journal.answers.append(Answer(at, who, False, reason, "rejected"))
            raise Rejected(journal.answers[-1])
        if listed and who in policy.approvers and who not in approved_by:
            approved_by.append(who)
            journal.answers.append(Answer(at, who, True, reason, "approved"))
    if len(approved_by) < policy.required_approvals:
        why = "" if listed else f" (its form did not list key {new_key})"
        raise FlowPauseTimeout(f"fleet run {asking_run} holds {len(approved_by)} of {policy.required_approvals} "
                               f"approvals{why}")
    journal.step(f"approved by {', '.join(approved_by)} in fleet run {asking_run} (one approval for every account)")
    _event(settings, "approved", approver=", ".join(approved_by), reason="combined approval", key=new_key)
    return approved_by
