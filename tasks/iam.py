"""Reading IAM documents back: what a user or role is actually granted."""

from __future__ import annotations

from typing import Literal
from urllib.parse import unquote

from socfeeds import policies
from socfeeds.aws import AwsClients


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
