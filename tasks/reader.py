"""The identity XSIAM reads with: an IAM user holding exactly one least-privilege managed policy.

No access key is made here; keys belong to the rotation flow and live only in Secrets Manager.
"""

from __future__ import annotations

import json

from socfeeds import policies
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, absent_on
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor
from socfeeds.settings import Settings
from tasks._task import aws_task
from tasks.iam import default_document, granted_statements

IAM_MAX_POLICY_VERSIONS = 5
READER = "reader"


def _policy_arn(settings: Settings) -> str:
    reader = settings.reader
    return Arns(settings.region, settings.account_id).iam_policy(reader.path, reader.policy_name)


def _make_room_for_a_version(aws: AwsClients, policy_arn: str) -> None:
    versions = aws.iam.list_policy_versions(PolicyArn=policy_arn)["Versions"]
    old = sorted((v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"])
    if len(versions) >= IAM_MAX_POLICY_VERSIONS and old:
        aws.iam.delete_policy_version(PolicyArn=policy_arn, VersionId=old[0]["VersionId"])


@aws_task("ensure-reader", per_feed=False)
def ensure_reader(aws: AwsClients, settings: Settings, dry_run: bool) -> list[Change]:
    reader = settings.reader
    changes = ChangesFor(READER, f"iam-user:{reader.user_name}", dry_run)
    wanted = policies.reader_policy(settings)
    policy_arn = _policy_arn(settings)

    user_exists = absent_on({"NoSuchEntity"}, aws.iam.get_user, UserName=reader.user_name) is not None
    if not user_exists:
        changes.make("create user", f"{reader.path}{reader.user_name} (no access key: rotation makes those)",
                     lambda: aws.iam.create_user(UserName=reader.user_name, Path=reader.path))

    policy = absent_on({"NoSuchEntity"}, aws.iam.get_policy, PolicyArn=policy_arn)
    if policy is None:
        changes.make("create policy", f"{reader.policy_name}: read feed queues and objects only",
                     lambda: aws.iam.create_policy(PolicyName=reader.policy_name, Path=reader.path,
                                                   PolicyDocument=json.dumps(wanted)))
    elif policies.canonical(default_document(aws, policy_arn)) != policies.canonical(wanted):
        def new_version() -> None:
            _make_room_for_a_version(aws, policy_arn)
            aws.iam.create_policy_version(PolicyArn=policy_arn, PolicyDocument=json.dumps(wanted),
                                          SetAsDefault=True)

        changes.make("update policy", f"{reader.policy_name}: new default version for the current feeds", new_version)

    attached = [p["PolicyArn"] for p in aws.iam.list_attached_user_policies(
        UserName=reader.user_name)["AttachedPolicies"]] if user_exists or not dry_run else []
    if policy_arn not in attached:
        changes.make("attach policy", f"{reader.policy_name} to {reader.user_name}",
                     lambda: aws.iam.attach_user_policy(UserName=reader.user_name, PolicyArn=policy_arn))
    return changes.changes


@aws_task("check-reader", per_feed=False)
def check_reader(aws: AwsClients, settings: Settings) -> list[Finding]:
    reader = settings.reader
    check = FindingsFor(READER, f"iam-user:{reader.user_name}")
    fix = "run provision-feeds"
    user = absent_on({"NoSuchEntity"}, aws.iam.get_user, UserName=reader.user_name)
    if not check.expect("exists", user is not None, f"{reader.path}{reader.user_name}",
                        f"reader user missing: {fix}"):
        return check.findings
    review = policies.review_grants(granted_statements(aws, "user", reader.user_name), policies.reader_policy(settings))
    check.expect("grants needed", not review.missing,
                 f"missing: {'; '.join(review.missing)}" if review.missing else "XSIAM can read every feed",
                 f"{fix} (updates {reader.policy_name})")
    check.expect("least privilege", not review.excess,
                 "; ".join(review.excess) if review.excess else "nothing beyond what XSIAM needs",
                 f"remove the extra grants from {reader.user_name}'s policies; {reader.policy_name} is rewritten "
                 "by provision-feeds")
    return check.findings
