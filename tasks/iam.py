"""IAM documents: what a user or role is actually granted, and a managed policy kept at a wanted document."""

from __future__ import annotations

import json
from typing import Literal
from urllib.parse import unquote

from socfeeds import policies
from socfeeds.aws import AwsClients, absent_on
from socfeeds.report import ChangesFor


def document_of(value: object) -> policies.Document:
    """IAM returns documents URL-encoded text or already parsed, depending on the client."""
    return policies.parse(unquote(value) if isinstance(value, str) else value)  # type: ignore[arg-type]


def default_document(aws: AwsClients, policy_arn: str) -> policies.Document:
    policy = aws.iam.get_policy(PolicyArn=policy_arn)["Policy"]
    version = aws.iam.get_policy_version(PolicyArn=policy_arn, VersionId=policy["DefaultVersionId"])
    return document_of(version["PolicyVersion"]["Document"])


def granted_statements(aws: AwsClients, kind: Literal["user", "role"], name: str) -> list[policies.Statement]:
    """Every statement the principal holds: attached managed policies and inline ones."""
    iam = aws.iam
    if kind == "user":
        attached = iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]
        inline = [iam.get_user_policy(UserName=name, PolicyName=p)["PolicyDocument"]
                  for p in iam.list_user_policies(UserName=name)["PolicyNames"]]
    else:
        attached = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        inline = [iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
                  for p in iam.list_role_policies(RoleName=name)["PolicyNames"]]
    documents = [default_document(aws, a["PolicyArn"]) for a in attached] + [document_of(d) for d in inline]
    return [s for d in documents for s in policies.as_list(d.get("Statement", []))]


IAM_MAX_POLICY_VERSIONS = 5


def ensure_managed_policy(aws: AwsClients, changes: ChangesFor, policy_arn: str, wanted: policies.Document,
                          purpose: str) -> None:
    """A customer-managed policy whose default version is `wanted`: created, or given a new default version
    (the oldest other version deleted when IAM's five are used)."""
    path, name = policy_arn.split(":policy", 1)[1].rsplit("/", 1)
    if absent_on({"NoSuchEntity"}, aws.iam.get_policy, PolicyArn=policy_arn) is None:
        changes.make("create policy", f"{name}: {purpose}", lambda: aws.iam.create_policy(
            PolicyName=name, Path=f"{path}/", PolicyDocument=json.dumps(wanted)), wanted=wanted)
    elif policies.canonical(default_document(aws, policy_arn)) != policies.canonical(wanted):
        def new_version() -> None:
            versions = aws.iam.list_policy_versions(PolicyArn=policy_arn)["Versions"]
            old = sorted((v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"])
            if len(versions) >= IAM_MAX_POLICY_VERSIONS and old:
                aws.iam.delete_policy_version(PolicyArn=policy_arn, VersionId=old[0]["VersionId"])
            aws.iam.create_policy_version(PolicyArn=policy_arn, PolicyDocument=json.dumps(wanted), SetAsDefault=True)

        changes.make("update policy", f"{name}: new default version ({purpose})", new_version)
