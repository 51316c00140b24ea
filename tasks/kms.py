"""Customer KMS keys: the key-policy statements AWS services need, and whether each identity can use a key.

moto does not evaluate key policies (AWS does), so verify reads and parses them, as it does queue policies.
Checks start from the key a resource *actually* uses (its default encryption or KmsMasterKeyId), whatever the
settings say: a bucket switched to another key is caught by the identities that could no longer read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from socfeeds import policies
from socfeeds.aws import AwsClients, absent_on
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor
from socfeeds.settings import Settings
from tasks._task import aws_task
from tasks.iam import granted_statements
from tasks.reader import reader_principal

KEY_POLICY_NAME = "default"  # the only key policy name KMS has


@dataclass(frozen=True)
class KeyUser:
    """An IAM identity that uses a key through its own policies (the key policy must delegate to IAM)."""

    label: str
    kind: Literal["user", "role"]
    name: str
    actions: tuple[str, ...]


def reader(settings: Settings) -> KeyUser:
    kind, name = reader_principal(settings)
    return KeyUser("reader", kind, name, ("kms:Decrypt",))


def canary_writer(settings: Settings) -> KeyUser:
    return KeyUser("canary writer", "role", settings.canary.writer_role, ("kms:GenerateDataKey",))


def describe_key(aws: AwsClients, key: str) -> dict[str, Any] | None:
    answer = absent_on({"NotFoundException"}, aws.kms.describe_key, KeyId=key)
    return dict(answer["KeyMetadata"]) if answer else None


def key_policy(aws: AwsClients, key_arn: str) -> policies.Document:
    return policies.parse(aws.kms.get_key_policy(KeyId=key_arn, PolicyName=KEY_POLICY_NAME)["Policy"])


def feed_keys(settings: Settings) -> list[str]:
    return sorted({f.kms_key_arn for f in settings.s3_feeds.values() if f.kms_key_arn})


@aws_task("ensure-key-policies", per_feed=False)
def ensure_key_policies(aws: AwsClients, settings: Settings, dry_run: bool) -> list[Change]:
    """Add the statements services need to each feed key's policy (kept apart by Sid; others untouched),
    or, for keys the platform owns (`kms_key_policies = "report"`), list them without writing."""
    return [change for key_arn in feed_keys(settings) for change in _ensure_key_policy(aws, settings, key_arn, dry_run)]


def _ensure_key_policy(aws: AwsClients, settings: Settings, key_arn: str, dry_run: bool) -> list[Change]:
    wanted = policies.key_service_statements(settings, [f for f in settings.s3_feeds.values()
                                                        if f.kms_key_arn == key_arn])
    current = key_policy(aws, key_arn)
    missing = [s for s in wanted if not policies.grants_service(current, s, key_arn)]
    if not missing:
        return []
    report_only = settings.kms_key_policies == "report"
    record = ChangesFor("kms", f"kms:{key_arn}", dry_run or report_only)
    if report_only:
        record.make("add to key policy (the platform owns the key: not written)",
                    f"add these statements: {json.dumps(missing)}", lambda: None)
    else:
        merged = policies.merge_owned(current, wanted)
        record.make("merge key policy", f"statements {', '.join(str(s['Sid']) for s in missing)} for the services "
                    "that write and notify; other statements kept", lambda: aws.kms.put_key_policy(
                        KeyId=key_arn, PolicyName=KEY_POLICY_NAME, Policy=json.dumps(merged)))
    return record.changes


@aws_task("check-key-policies", per_feed=False)
def check_key_policies(aws: AwsClients, settings: Settings) -> list[Finding]:
    """Each declared feed key exists, delegates to IAM, and lets each service do what the feeds need."""
    findings: list[Finding] = []
    for key_arn in feed_keys(settings):
        check = FindingsFor("kms", f"kms:{key_arn}")
        feeds = [f for f in settings.s3_feeds.values() if f.kms_key_arn == key_arn]
        check_key_use(aws, settings, check, key_arn, [], policies.key_service_statements(settings, feeds), key_arn)
        findings += check.findings
    return findings


def check_key_use(aws: AwsClients, settings: Settings, check: FindingsFor, key: str, users: list[KeyUser],
                  services: list[policies.Statement], declared: str | None) -> None:
    """The key a resource actually uses (`declared`: the one settings name): each identity may use it, each
    service statement is granted."""
    metadata = describe_key(aws, key)
    if not check.expect("kms key", metadata is not None, f"{key} exists" if metadata else f"{key} does not exist",
                        "the resource is encrypted with a key that is gone: re-encrypt it with a feed key "
                        "(run provision-feeds) or correct kms_key_arn in settings"):
        return
    assert metadata is not None
    if metadata.get("KeyManager") == "AWS":
        return  # AWS-managed keys have fixed policies: usable by this account's principals through the service
    key_arn = str(metadata["Arn"])
    current = key_policy(aws, key_arn)
    who = "provision-feeds adds it" if settings.kms_key_policies == "merge" else "the key's owner must add it"
    delegated = policies.delegates_to_iam(current, settings.account_id)
    if users:
        check.expect("key policy delegates to IAM", delegated, "IAM policies may grant this key" if delegated else
                     "no statement lets IAM policies of this account grant the key, so no grant below takes effect",
                     f"add to the key policy of {key_arn}: {json.dumps(policies.iam_delegation_statement(settings))}")
    regrant = "run provision-feeds (it grants {})" if key_arn == declared else (
        f"the resource uses {key_arn} but settings declare {declared or 'no key'}: run provision-feeds to put the "
        "declared encryption back, or declare this key as the feed's kms_key_arn and run provision-feeds "
        "(it grants {})")
    for user in users:
        grants = _grants_of(aws, user)
        missing = [action for action in user.actions if not policies.allows(grants, action, key_arn)]
        check.expect(f"{user.label} may use key", not missing, f"{user.kind} {user.name}: " + (
            f"lacks {', '.join(missing)} on {key_arn}" if missing else f"{', '.join(user.actions)} on {key_arn}"),
            regrant.format(", ".join(missing)))
    for statement in services:
        service = policies.services_of(statement)[0]
        ok = policies.grants_service(current, statement, key_arn)
        check.expect(f"key policy: {service}", ok, f"{service} may {', '.join(policies.as_list(statement['Action']))}"
                     if ok else f"{service} may not use {key_arn}: its writes or notifications fail (S3 drops "
                     "notifications to an encrypted queue silently)",
                     f"add to the key policy of {key_arn} ({who}): {json.dumps(statement)}")


def _grants_of(aws: AwsClients, user: KeyUser) -> list[policies.Statement]:
    """A missing identity holds nothing (its own check reports it missing)."""
    return absent_on({"NoSuchEntity"}, granted_statements, aws, user.kind, user.name) or []
