"""rotate-reader-keys: rotate XSIAM's reader key with a human approval and no ingestion gap."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from flows._common import start_run
from socfeeds.settings import Settings
from tasks.keys import (
    KeyInfo,
    confirm_key_in_use,
    create_pending_key,
    current_key,
    delete_keys,
    finish_rotation,
    inspect_keys,
    roll_back,
    try_pending_key,
    user_keys,
)


class Approval(RunInput):
    """The SOC's answer once every XSIAM data source holds the pending key."""

    approved: bool = Field(description="Approve (true) or reject (false) the new key.")
    approver: str = Field(description="Your name, as listed in rotation.approvers.")
    reason: str = Field("", description="Change ticket or reason.")


class RotationStopped(RuntimeError):
    """Rejected, timed out, or not seen in use: rolled back or left safe; the message says which."""


def _event(settings: Settings, step: str, **payload: object) -> None:
    user = settings.reader.user_name
    emit_event(event=f"socfeeds.rotation.{step}", resource={"prefect.resource.id": f"socfeeds.reader.{user}",
                                                            "prefect.resource.name": user},
               payload={k: str(v) for k, v in payload.items()})


def _report(settings: Settings, keys: list[KeyInfo], lines: list[str]) -> None:
    table = "\n".join(f"| {k.key_id} | {k.status} | {k.age_days:.0f} | {k.last_used or 'never'} | "
                      f"{k.last_service or '-'} |" for k in keys)
    create_markdown_artifact(key="rotate-reader-keys", description="reader key rotation", markdown=(
        f"# Reader key rotation: {settings.reader.user_name}\n\n| key id | status | age (days) | last used | service |"
        f"\n|---|---|---|---|---|\n{table}\n\n" + "\n".join(f"- {line}" for line in lines)))


def _approve(settings: Settings, new_key: str) -> list[str]:
    """Pause until enough distinct, listed approvers approve; any rejection or the timeout raises."""
    policy, logger = settings.rotation, get_run_logger()
    steps = (f"Pending key {new_key} is in Secrets Manager secret {settings.reader.secret_name} (stage AWSPENDING). "
             "SOC: fetch it (aws secretsmanager get-secret-value --secret-id "
             f"{settings.reader.secret_name} --version-stage AWSPENDING), update every XSIAM Amazon S3 data "
             "source with it, then approve here.")
    approvers: list[str] = []
    attempt = 0
    while len(approvers) < policy.required_approvals:
        attempt += 1  # each pause needs its own input key, or a refused answer would be read again
        logger.info("waiting for approval %d of %d: %s", len(approvers) + 1, policy.required_approvals, steps)
        _event(settings, "awaiting-approval", key=new_key, secret=settings.reader.secret_name,
               approval=len(approvers) + 1, required=policy.required_approvals,
               timeout_seconds=policy.approval_timeout_seconds)  # the on-call alert carries the run link
        answer = pause_flow_run(wait_for_input=Approval.with_initial_data(description=steps, approved=True),
                                timeout=policy.approval_timeout_seconds, poll_interval=policy.approval_poll_seconds,
                                key=f"approval-{attempt}-{new_key.lower()}")
        if answer.approver not in policy.approvers:
            logger.warning("refused: %r is not in rotation.approvers; still waiting", answer.approver)
            continue
        if answer.approver in approvers:
            logger.warning("refused: %s already approved; a different approver is needed", answer.approver)
            continue
        if not answer.approved:
            raise RotationStopped(f"rejected by {answer.approver}: {answer.reason or 'no reason given'}")
        approvers.append(answer.approver)
        _event(settings, "approved", approver=answer.approver, reason=answer.reason, key=new_key)
    return approvers


def _keyless(settings: Settings, keys: list[KeyInfo]) -> str:
    """Role mode: XSIAM assumes a role, there is no key to rotate; leftover user keys are a risk."""
    lines = [f"nothing to rotate: XSIAM assumes role {settings.reader.role_name} (keyless)"]
    if keys:
        lines.append(f"WARNING: user {settings.reader.user_name} still holds keys {[k.key_id for k in keys]}; "
                     "the role is available: once every XSIAM data source uses it, delete these keys")
        get_run_logger().warning(lines[-1])
    _report(settings, keys, lines)
    return "keyless"


@flow(name="rotate-reader-keys")
def rotate_reader_keys(dry_run: bool = False, force: bool = False) -> str:
    """Rotate the XSIAM reader's access key when due: create, test, approve, confirm use, finish.

    Each step resumes safely after a crash; a rejection, a timeout or a key never seen in use rolls
    back (or stops) with the old key still active. The old key is deleted after the grace period,
    by a later scheduled run.

    Args:
        dry_run: Only report what would be done.
        force: Rotate even if the key is not yet due.
    """
    from prefect.exceptions import FlowPauseTimeout

    run = start_run(None)
    settings, aws, logger = run.settings, run.aws, get_run_logger()
    if settings.reader.mode == "role":
        return _keyless(settings, user_keys(aws, settings))
    keys, plan = inspect_keys(aws, settings, force)
    lines = [f"plan: {plan.action} ({plan.reason})"]
    _event(settings, "inspected", action=plan.action, reason=plan.reason)
    logger.info("%s", lines[0])
    if dry_run or plan.action in {"nothing", "wait-grace"}:
        _report(settings, keys, [*lines, "dry run: nothing changed" if dry_run else "nothing changed"])
        return plan.action
    if plan.delete:
        lines.append(f"deleted keys {delete_keys(aws, settings, list(plan.delete))}")
        _event(settings, "deleted", keys=list(plan.delete))
    if plan.action == "delete-expired":
        _report(settings, keys, lines)
        return plan.action
    if plan.action == "finish":  # a crash after promotion: approval and use were already confirmed
        new_key = current_key(aws, settings)
        assert new_key is not None  # the plan saw it
        old = finish_rotation(aws, settings, new_key)
        _event(settings, "finished", deactivated=old)
        _report(settings, keys, [*lines, f"old key {old} deactivated"])
        return plan.action

    new_key = create_pending_key(aws, settings)
    _event(settings, "created", key=new_key)
    try_pending_key(aws, settings)
    _event(settings, "tested", key=new_key)
    try:
        approvers = _approve(settings, new_key)
    except (RotationStopped, FlowPauseTimeout) as stop:
        roll_back(aws, settings, new_key)
        _event(settings, "rolled-back", key=new_key, reason=stop)
        _report(settings, keys, [*lines, f"rolled back: new key {new_key} deleted, old key still active ({stop})"])
        raise RotationStopped(f"rotation rolled back, old key still active: {stop or 'approval timed out'}") from None
    approved_at = datetime.now(UTC)
    if settings.rotation.require_new_key_in_use:
        used = confirm_key_in_use(aws, settings, new_key, approved_at)
        lines.append(f"XSIAM used {new_key} against SQS at {used}")
    old = finish_rotation(aws, settings, new_key)
    _event(settings, "finished", key=new_key, deactivated=old, approvers=approvers)
    _report(settings, keys, [*lines, f"new key {new_key} is AWSCURRENT, approved by {', '.join(approvers)}",
                             f"old key {old} deactivated; deleted after {settings.rotation.grace_days} days"])
    return "rotated"
