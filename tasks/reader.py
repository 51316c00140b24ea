"""The identity XSIAM reads with: an IAM user holding exactly one least-privilege managed policy.

No access key is made here; keys belong to the rotation flow and live only in Secrets Manager.
"""

from __future__ import annotations

from typing import Literal

from socfeeds import policies
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, absent_on
from socfeeds.errors import OnCallError
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor
from socfeeds.settings import Settings
from tasks._task import aws_task
from tasks.iam import document_of, ensure_managed_policy, granted_statements
from tasks.roles import ensure_role

READER = "reader"


def _policy_path(settings: Settings) -> str:
    return settings.reader.policy_path or settings.reader.path


def _policy_arn(settings: Settings) -> str:
    return Arns(settings.region, settings.account_id).iam_policy(_policy_path(settings), settings.reader.policy_name)


class PolicyNameTaken(RuntimeError, OnCallError):
    """IAM refuses a second managed policy of the same name in an account, whatever its path."""


def _same_name_elsewhere(aws: AwsClients, settings: Settings) -> str | None:
    """The ARN of a customer-managed policy with the reader policy's name at another path, if any."""
    pages = aws.iam.get_paginator("list_policies").paginate(Scope="Local")
    wanted = _policy_arn(settings)
    return next((str(p["Arn"]) for page in pages for p in page["Policies"]
                 if p["PolicyName"] == settings.reader.policy_name and p["Arn"] != wanted), None)


class MissingExternalId(RuntimeError, OnCallError):
    """Role mode needs XSIAM's external id in SSM; only a person holding it can store it."""


def external_id(aws: AwsClients, settings: Settings) -> str:
    name = settings.reader.external_id_parameter
    answer = absent_on({"ParameterNotFound"}, aws.ssm.get_parameter, Name=name, WithDecryption=True)
    if answer is None:
        raise MissingExternalId(f"SSM parameter {name} does not exist. Fix: copy the external id from XSIAM's "
                                f"Amazon S3 data source (assumed role) page: aws ssm put-parameter --name {name} "
                                "--type SecureString --value <external id>, then rerun provision-feeds")
    return str(answer["Parameter"]["Value"])


def reader_principal(settings: Settings) -> tuple[Literal["user", "role"], str]:
    reader = settings.reader
    return ("role", reader.role_name) if reader.mode == "role" else ("user", reader.user_name)


@aws_task("ensure-reader", per_feed=False)
def ensure_reader(aws: AwsClients, settings: Settings, dry_run: bool) -> list[Change]:
    reader = settings.reader
    kind, name = reader_principal(settings)
    changes = ChangesFor(READER, f"iam-{kind}:{name}", dry_run)
    wanted = policies.reader_policy(settings)
    policy_arn = _policy_arn(settings)

    if kind == "role":
        trust = policies.reader_role_trust(reader.trusted_account, external_id(aws, settings))
        ensure_role(aws, changes, name, trust, None, "XSIAM reads the feeds (keyless)")
        principal_exists = absent_on({"NoSuchEntity"}, aws.iam.get_role, RoleName=name) is not None
    else:
        principal_exists = absent_on({"NoSuchEntity"}, aws.iam.get_user, UserName=name) is not None
        if not principal_exists:
            changes.make("create user", f"{reader.path}{name} (no access key: rotation makes those)",
                         lambda: aws.iam.create_user(UserName=name, Path=reader.path))

    policy = absent_on({"NoSuchEntity"}, aws.iam.get_policy, PolicyArn=policy_arn)
    if policy is None and (elsewhere := _same_name_elsewhere(aws, settings)):
        path = elsewhere.split(":policy", 1)[1].rsplit("/", 1)[0] + "/"
        raise PolicyNameTaken(f"managed policy {reader.policy_name} already exists as {elsewhere} (IAM allows one "
                              f"policy of a name per account). Fix: set reader.policy_path = {path!r} to adopt it, "
                              "or choose another reader.policy_name, then rerun provision-feeds")
    ensure_managed_policy(aws, changes, policy_arn, wanted, "read feed queues and objects only")

    attached = _attached(aws, kind, name) if principal_exists or not dry_run else []
    if policy_arn not in attached:
        def attach() -> None:
            if kind == "role":
                aws.iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
            else:
                aws.iam.attach_user_policy(UserName=name, PolicyArn=policy_arn)

        changes.make("attach policy", f"{reader.policy_name} to {kind} {name}", attach)
    return changes.changes


def _attached(aws: AwsClients, kind: str, name: str) -> list[str]:
    if kind == "role":
        return [p["PolicyArn"] for p in aws.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]]
    return [p["PolicyArn"] for p in aws.iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]]


@aws_task("check-reader", per_feed=False)
def check_reader(aws: AwsClients, settings: Settings) -> list[Finding]:
    reader = settings.reader
    kind, name = reader_principal(settings)
    check = FindingsFor(READER, f"iam-{kind}:{name}")
    fix = "run provision-feeds"
    if kind == "role":
        role = absent_on({"NoSuchEntity"}, aws.iam.get_role, RoleName=name)
        if not check.expect("exists", role is not None, name, f"reader role missing: {fix}"):
            return check.findings
        assert role is not None
        trust = policies.reader_role_trust(reader.trusted_account, external_id(aws, settings))
        same = policies.canonical(document_of(role["Role"]["AssumeRolePolicyDocument"])) == policies.canonical(trust)
        check.expect("trust", same, f"only {reader.trusted_account} with the external id" if same else
                     "trust differs: it must allow only Palo Alto's account with the external id", fix)
    else:
        user = absent_on({"NoSuchEntity"}, aws.iam.get_user, UserName=name)
        if not check.expect("exists", user is not None, f"{reader.path}{name}", f"reader user missing: {fix}"):
            return check.findings
    review = policies.review_grants(granted_statements(aws, kind, name), policies.reader_policy(settings))
    check.expect("grants needed", not review.missing,
                 f"missing: {'; '.join(review.missing)}" if review.missing else "XSIAM can read every feed",
                 f"{fix} (updates {reader.policy_name})")
    check.expect("least privilege", not review.excess,
                 "; ".join(review.excess) if review.excess else "nothing beyond what XSIAM needs",
                 f"remove the extra grants from {name}'s policies; {reader.policy_name} is rewritten "
                 "by provision-feeds")
    return check.findings
