"""The reader's access-key lifecycle, kept in step with its Secrets Manager secret.

The secret holds {"access_key_id", "secret_access_key"} with the rotation protocol's stages: the
key XSIAM uses is AWSCURRENT, a new one waits as AWSPENDING until it is approved and seen in use.
Every step reads the stages first, so a rerun after a crash resumes where it stopped and never
makes a third key. A key is created only after the IAM user is tagged with the run making it, so a
key the secret does not track is deleted only when a run provably made it and nobody used it.
Only key ids ever leave this module; secret values stay inside the calls.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from socfeeds.aws import AwsClients, absent_on, new_session
from socfeeds.errors import OnCallError
from socfeeds.settings import ReaderSettings, RotationPolicy, Settings
from tasks._task import aws_task
from tasks.queues import queue_url

DEACTIVATED_TAG = "socfeeds:deactivated-at:"
CLAIM_RUN_TAG = "socfeeds:pending-key-run"  # on the IAM user, set before CreateAccessKey: the run making a key
CLAIM_KEY_TAG = "socfeeds:pending-key"  # set right after: the key id, until the secret holds it


class KeyInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    key_id: str
    status: str
    created: datetime
    age_days: float
    last_used: datetime | None
    last_service: str | None


@dataclass(frozen=True)
class SecretState:
    exists: bool
    current_key: str | None = None
    current_version: str | None = None
    pending_key: str | None = None
    pending_version: str | None = None
    previous_key: str | None = None
    deactivated_at: dict[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    action: str  # nothing | rotate | resume | finish | delete-expired | wait-grace
    reason: str
    delete: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyClaim:
    """The user's record of a key being made: the run (before CreateAccessKey), the key id (right after)."""

    run_id: str | None = None
    key_id: str | None = None


NO_CLAIM = KeyClaim()


@dataclass(frozen=True)
class Finished:
    """What finishing did, and what an earlier attempt had already done (a recovery)."""

    old_key: str | None
    done: tuple[str, ...]
    already: tuple[str, ...]


class RotationBlocked(RuntimeError, OnCallError):
    """A state a human must resolve; the message says which keys and what to do."""


def _key_id(aws: AwsClients, secret: str, version: str) -> str:
    value = aws.secrets.get_secret_value(SecretId=secret, VersionId=version)["SecretString"]
    return str(json.loads(value)["access_key_id"])


def read_keys(aws: AwsClients, user: str, now: datetime) -> list[KeyInfo]:
    keys = []
    for meta in aws.iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
        used = aws.iam.get_access_key_last_used(AccessKeyId=meta["AccessKeyId"])["AccessKeyLastUsed"]
        keys.append(KeyInfo(key_id=meta["AccessKeyId"], status=meta["Status"], created=meta["CreateDate"],
                            age_days=(now - meta["CreateDate"]).total_seconds() / 86_400,
                            last_used=used.get("LastUsedDate"), last_service=used.get("ServiceName")))
    return sorted(keys, key=lambda k: k.created)


def read_secret(aws: AwsClients, secret: str) -> SecretState:
    described = absent_on({"ResourceNotFoundException"}, aws.secrets.describe_secret, SecretId=secret)
    if described is None:
        return SecretState(exists=False)
    stages: dict[str, str] = {}
    for version, labels in (described.get("VersionIdsToStages") or {}).items():
        for label in labels:
            stages[label] = version
    tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
    deactivated = {k.removeprefix(DEACTIVATED_TAG): datetime.fromisoformat(v) for k, v in tags.items()
                   if k.startswith(DEACTIVATED_TAG)}
    current, pending, previous = stages.get("AWSCURRENT"), stages.get("AWSPENDING"), stages.get("AWSPREVIOUS")
    return SecretState(exists=True, current_version=current, pending_version=pending, deactivated_at=deactivated,
                       current_key=_key_id(aws, secret, current) if current else None,
                       pending_key=_key_id(aws, secret, pending) if pending else None,
                       previous_key=_key_id(aws, secret, previous) if previous else None)


def read_claim(aws: AwsClients, user: str) -> KeyClaim:
    tags = {t["Key"]: t["Value"] for t in aws.iam.list_user_tags(UserName=user)["Tags"]}
    return KeyClaim(run_id=tags.get(CLAIM_RUN_TAG) or None, key_id=tags.get(CLAIM_KEY_TAG) or None)


def plan_rotation(keys: list[KeyInfo], secret: SecretState, policy: RotationPolicy, now: datetime,
                  force: bool = False, *, reader: ReaderSettings, claim: KeyClaim = NO_CLAIM,
                  emergency: bool = False) -> Plan:
    """What this run should do, from IAM's keys, the user's claim tags and the secret's stages (pure, unit-tested)."""
    ids = {k.key_id for k in keys}
    if secret.pending_key and secret.pending_key in ids:
        if secret.pending_key == secret.current_key:
            return Plan("finish", f"key {secret.pending_key} is already AWSCURRENT but still labelled AWSPENDING "
                        "(an earlier run stopped while finishing): finishing")
        return Plan("resume", f"key {secret.pending_key} is pending from an earlier run: resuming")
    previous = next((k for k in keys if k.key_id == secret.previous_key and k.status == "Active"), None)
    if previous and secret.current_key in ids:
        return Plan("finish", f"the secret already holds the new key {secret.current_key} but the previous key "
                    f"{previous.key_id} is still active: finishing (deactivating it)")
    inactive = [k for k in keys if k.status == "Inactive"]
    expired = tuple(k.key_id for k in inactive if k.key_id in secret.deactivated_at
                    and now - secret.deactivated_at[k.key_id] >= timedelta(days=policy.grace_days))
    if emergency and inactive:
        notes = "; ".join(_grace_note(k, secret, policy, now) for k in inactive)
        return Plan("rotate", f"EMERGENCY: deleting inactive key {notes} now, then rotating",
                    tuple(k.key_id for k in inactive))
    if expired:
        if force:
            return Plan("rotate", f"grace of {policy.grace_days} days passed for {list(expired)}: deleting, then "
                        "rotating (forced)", expired)
        return Plan("delete-expired", f"grace of {policy.grace_days} days passed for {list(expired)}", expired)
    if len(keys) >= 2 and inactive:
        waiting = [k.key_id for k in inactive]
        return Plan("wait-grace", f"old key {waiting} is inactive, deleted after the {policy.grace_days}-day grace. "
                    "A leaked key cannot wait: prefect deployment run rotate-reader-keys/on-demand "
                    "--param emergency=true deletes it now and rotates")
    active = [k for k in keys if k.status == "Active"]
    untracked = [k for k in active if k.key_id not in {secret.current_key, secret.pending_key}]
    if len(active) >= 2 and secret.current_key in ids and len(untracked) == len(active) - 1:
        return _leftover(untracked, secret, claim, reader)
    if len(active) >= 2:
        raise RotationBlocked(
            f"{[k.key_id for k in active]} are both active and the secret does not say which one XSIAM uses. "
            "Fix: ask the SOC which key their data sources hold, store it in the secret as AWSCURRENT, deactivate "
            "the other, then rerun")
    if not active:
        return Plan("rotate", "the reader has no active key")
    age = active[0].age_days
    if force or emergency:
        return Plan("rotate", "EMERGENCY rotation" if emergency else "rotation forced")
    if age >= policy.max_key_age_days:
        return Plan("rotate", f"key {active[0].key_id} is {age:.0f} days old (max {policy.max_key_age_days})")
    if age >= policy.warn_age_days:
        return Plan("nothing", f"key {active[0].key_id} is {age:.0f} days old: rotation due at "
                    f"{policy.max_key_age_days} days")
    return Plan("nothing", f"key {active[0].key_id} is {age:.0f} days old; nothing due")


def _grace_note(key: KeyInfo, secret: SecretState, policy: RotationPolicy, now: datetime) -> str:
    deactivated = secret.deactivated_at.get(key.key_id)
    if deactivated is None:
        return f"{key.key_id} (deactivated outside socfeeds, time unknown)"
    days = (now - deactivated).total_seconds() / 86_400
    return f"{key.key_id} (deactivated {days:.1f} days ago, grace {policy.grace_days} days)"


def _leftover(untracked: list[KeyInfo], secret: SecretState, claim: KeyClaim, reader: ReaderSettings) -> Plan:
    """Delete an active key the secret does not track only when a run provably made it and nobody used it."""
    user, name = reader.user_name, reader.secret_name
    for key in untracked:
        fix = (f"Fix: ask the SOC which access key id their XSIAM Amazon S3 data sources hold. If {key.key_id}: "
               f"store it in secret {name} as AWSCURRENT (aws secretsmanager put-secret-value --secret-id {name} "
               "--secret-string file://key.json, the file holding {\"access_key_id\", \"secret_access_key\"}) and "
               f"deactivate {secret.current_key} (aws iam update-access-key --user-name {user} --access-key-id "
               f"{secret.current_key} --status Inactive). If not: deactivate it (aws iam update-access-key --user-name "
               f"{user} --access-key-id {key.key_id} --status Inactive) and delete it once nothing breaks (aws iam "
               f"delete-access-key --user-name {user} --access-key-id {key.key_id}). Then rerun rotate-reader-keys")
        if key.last_used:
            raise RotationBlocked(
                f"key {key.key_id} on IAM user {user} is active and IAM reports it used at {key.last_used} "
                f"({key.last_service or 'unknown service'}), but secret {name} does not track it: someone holds it, "
                f"so it was not deleted and nothing changed. {fix}")
        if key.key_id != claim.key_id:
            crashed = (f" Run {claim.run_id} was making a key when it stopped (user tag {CLAIM_RUN_TAG}): if nobody "
                       f"made {key.key_id} by hand, it is that run's and may be deleted." if claim.run_id else "")
            raise RotationBlocked(
                f"key {key.key_id} on IAM user {user} is active, but secret {name} does not track it and no socfeeds "
                f"run recorded making it (made by a person?). XSIAM may be using it, so it was not deleted and "
                f"nothing changed.{crashed} {fix}")
    return Plan("rotate", f"key {[k.key_id for k in untracked]} was made by run {claim.run_id}, which stopped before "
                "storing it in the secret, and was never used: deleting it and starting again",
                tuple(k.key_id for k in untracked))


def current_key(aws: AwsClients, settings: Settings) -> str | None:
    return read_secret(aws, settings.reader.secret_name).current_key


@aws_task("list-user-keys", per_feed=False, retries=3)
def user_keys(aws: AwsClients, settings: Settings) -> list[KeyInfo]:
    """The reader user's keys, if the user exists at all."""
    if absent_on({"NoSuchEntity"}, aws.iam.get_user, UserName=settings.reader.user_name) is None:
        return []
    return read_keys(aws, settings.reader.user_name, datetime.now(UTC))


@aws_task("inspect-reader-keys", per_feed=False, retries=3)
def inspect_keys(aws: AwsClients, settings: Settings, force: bool, emergency: bool = False
                 ) -> tuple[list[KeyInfo], Plan]:
    now, user = datetime.now(UTC), settings.reader.user_name
    keys = read_keys(aws, user, now)
    return keys, plan_rotation(keys, read_secret(aws, settings.reader.secret_name), settings.rotation, now, force,
                               reader=settings.reader, claim=read_claim(aws, user), emergency=emergency)


@aws_task("delete-keys", per_feed=False, retries=3)
def delete_keys(aws: AwsClients, settings: Settings, key_ids: list[str]) -> list[str]:
    for key_id in key_ids:
        absent_on({"NoSuchEntity"}, aws.iam.delete_access_key, UserName=settings.reader.user_name, AccessKeyId=key_id)
        absent_on({"ResourceNotFoundException"}, aws.secrets.untag_resource, SecretId=settings.reader.secret_name,
                  TagKeys=[DEACTIVATED_TAG + key_id])
    return key_ids


@aws_task("create-pending-key", per_feed=False, retries=3)
def create_pending_key(aws: AwsClients, settings: Settings, run_id: str) -> str:
    """A new key stored straight into the secret as AWSPENDING; an existing pending key is reused.

    The user is tagged with run_id before the key exists and with its id right after, so a crash
    before the secret holds it leaves proof that a rerun may delete it (see plan_rotation).
    """
    secret_name, user = settings.reader.secret_name, settings.reader.user_name
    state = read_secret(aws, secret_name)
    if state.pending_key:
        return state.pending_key
    if not state.exists:
        aws.secrets.create_secret(Name=secret_name, Description="XSIAM reader access key (socfeeds rotation)")
    aws.iam.tag_user(UserName=user, Tags=[{"Key": CLAIM_RUN_TAG, "Value": run_id}, {"Key": CLAIM_KEY_TAG, "Value": ""}])
    key = aws.iam.create_access_key(UserName=user)["AccessKey"]
    aws.iam.tag_user(UserName=user, Tags=[{"Key": CLAIM_KEY_TAG, "Value": key["AccessKeyId"]}])
    value = json.dumps({"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]})
    aws.secrets.put_secret_value(SecretId=secret_name, SecretString=value, VersionStages=["AWSPENDING"],
                                 ClientRequestToken=str(uuid.uuid4()))
    aws.iam.untag_user(UserName=user, TagKeys=[CLAIM_RUN_TAG, CLAIM_KEY_TAG])  # the secret tracks it now
    return str(key["AccessKeyId"])


def _session_for(aws: AwsClients, settings: Settings, stage: str) -> boto3.session.Session:
    value = json.loads(aws.secrets.get_secret_value(SecretId=settings.reader.secret_name,
                                                    VersionStage=stage)["SecretString"])
    return new_session(value["access_key_id"], value["secret_access_key"])


@aws_task("try-pending-key", per_feed=False, retries=2)
def try_pending_key(aws: AwsClients, settings: Settings) -> str:
    """The new key signs in and may read every feed queue (new keys take seconds to work)."""
    reader = AwsClients(_session_for(aws, settings, "AWSPENDING"), settings.region, settings.endpoint_url)
    urls = [url for feed in settings.s3_feeds.values() if (url := queue_url(aws, feed.queue))]
    deadline, pause, last = time.monotonic() + settings.rotation.new_key_ready_seconds, 0.5, ""
    while True:
        try:
            arn = reader.sts.get_caller_identity()["Arn"]
            for url in urls:
                reader.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            return str(arn)
        except (ClientError, BotoCoreError) as error:
            last = str(error)[:300]
        if time.monotonic() + pause > deadline:
            raise RuntimeError(f"the new key does not work after {settings.rotation.new_key_ready_seconds} s: {last}")
        time.sleep(pause)
        pause = min(pause * 2, 10.0)


@aws_task("confirm-key-in-use", per_feed=False)
def confirm_key_in_use(aws: AwsClients, settings: Settings, key_id: str, approved_at: datetime) -> datetime:
    """Wait until XSIAM has used the new key against SQS after the approval.

    Only a use reported later than the approval plus IAM's resolution counts: the flow's own test
    of the key (before the approval) must never pass for XSIAM's, or the old key XSIAM still
    uses would be deactivated.
    """
    policy = settings.rotation
    after = approved_at + timedelta(seconds=policy.last_used_resolution_seconds)
    deadline, pause = time.monotonic() + policy.confirm_use_seconds, 0.25
    while True:
        used = aws.iam.get_access_key_last_used(AccessKeyId=key_id)["AccessKeyLastUsed"]
        when = used.get("LastUsedDate")
        if when and when > after and used.get("ServiceName") == "sqs":
            return when
        if time.monotonic() + pause > deadline:
            raise RuntimeError(
                f"XSIAM has not used key {key_id} against SQS within {settings.rotation.confirm_use_seconds} s "
                f"(last use: {when or 'never'} {used.get('ServiceName') or ''}). The old key stays active. Fix: "
                "update every XSIAM Amazon S3 data source with the pending key, then rerun rotate-reader-keys")
        time.sleep(pause)
        pause = min(pause * 1.5, 30.0)


@aws_task("finish-rotation", per_feed=False, retries=3)
def finish_rotation(aws: AwsClients, settings: Settings, new_key: str) -> Finished:
    """Promote the pending version, then deactivate the old key (deleted after the grace period).

    Every step checks first, so a rerun after a crash (or a key someone already deleted) finishes
    instead of failing, and says what was already done.
    """
    secret_name, user = settings.reader.secret_name, settings.reader.user_name
    state = read_secret(aws, secret_name)
    done: list[str] = []
    already: list[str] = []
    if state.current_key == new_key:
        already.append(f"AWSCURRENT was already on key {new_key}")
        old = state.previous_key
    elif state.pending_key == new_key and state.pending_version:
        move: dict[str, Any] = {"RemoveFromVersionId": state.current_version} if state.current_version else {}
        aws.secrets.update_secret_version_stage(SecretId=secret_name, VersionStage="AWSCURRENT",
                                                MoveToVersionId=state.pending_version, **move)
        done.append(f"AWSCURRENT moved to key {new_key}")
        old = state.current_key
    else:
        raise RotationBlocked(
            f"key {new_key} is neither AWSCURRENT nor AWSPENDING in secret {secret_name}, so it was not promoted and "
            f"the old key stays active. Fix: check the secret's stages (aws secretsmanager describe-secret --secret-id "
            f"{secret_name}); if XSIAM already uses {new_key}, store it as AWSCURRENT, then rerun rotate-reader-keys")
    if state.pending_version:
        aws.secrets.update_secret_version_stage(SecretId=secret_name, VersionStage="AWSPENDING",
                                                RemoveFromVersionId=state.pending_version)
        done.append("AWSPENDING cleared")
    if not old or old == new_key:
        return Finished(None, tuple(done), tuple(already))
    status = {k["AccessKeyId"]: k["Status"] for k in aws.iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
              }.get(old)
    if status == "Inactive":
        already.append(f"old key {old} was already inactive")
    elif status and absent_on({"NoSuchEntity"}, aws.iam.update_access_key, UserName=user, AccessKeyId=old,
                              Status="Inactive") is not None:
        done.append(f"old key {old} deactivated")
    else:
        already.append(f"old key {old} was already deleted")
        absent_on({"ResourceNotFoundException"}, aws.secrets.untag_resource, SecretId=secret_name,
                  TagKeys=[DEACTIVATED_TAG + old])
        return Finished(None, tuple(done), tuple(already))
    if old not in state.deactivated_at:  # the grace counts from the first deactivation
        aws.secrets.tag_resource(SecretId=secret_name, Tags=[
            {"Key": DEACTIVATED_TAG + old, "Value": datetime.now(UTC).isoformat()}])
    return Finished(old, tuple(done), tuple(already))


@aws_task("roll-back-rotation", per_feed=False, retries=3)
def roll_back(aws: AwsClients, settings: Settings, new_key: str) -> None:
    """Undo a rotation before promotion: the new key is deleted and the old one keeps working."""
    state = read_secret(aws, settings.reader.secret_name)
    if state.pending_version:
        aws.secrets.update_secret_version_stage(SecretId=settings.reader.secret_name, VersionStage="AWSPENDING",
                                                RemoveFromVersionId=state.pending_version)
    absent_on({"NoSuchEntity"}, aws.iam.delete_access_key, UserName=settings.reader.user_name, AccessKeyId=new_key)
