"""Service roles: a trust policy and one inline policy, both owned and compared exactly."""

from __future__ import annotations

import json

from socfeeds import policies
from socfeeds.aws import AwsClients, absent_on
from socfeeds.report import ChangesFor, FindingsFor
from tasks.iam import document_of, granted_statements

INLINE_POLICY = "socfeeds"


def ensure_role(aws: AwsClients, changes: ChangesFor, name: str, trust: policies.Document,
                permissions: policies.Document | None, purpose: str) -> None:
    """Permissions None: the role's grants come from an attached managed policy instead."""
    role = absent_on({"NoSuchEntity"}, aws.iam.get_role, RoleName=name)
    if role is None:
        changes.make("create role", f"{name}: {purpose}", lambda: aws.iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Description=purpose[:1000]))
    elif policies.canonical(document_of(role["Role"]["AssumeRolePolicyDocument"])) != policies.canonical(trust):
        changes.make("set role trust", name, lambda: aws.iam.update_assume_role_policy(
            RoleName=name, PolicyDocument=json.dumps(trust)))
    if permissions is None:
        return
    current = absent_on({"NoSuchEntity"}, aws.iam.get_role_policy, RoleName=name,
                        PolicyName=INLINE_POLICY) if role else None
    if current is None or policies.canonical(document_of(current["PolicyDocument"])) != policies.canonical(permissions):
        changes.make("set role permissions", f"{name}: {INLINE_POLICY} inline policy",
                     lambda: aws.iam.put_role_policy(RoleName=name, PolicyName=INLINE_POLICY,
                                                     PolicyDocument=json.dumps(permissions)))


def check_role(aws: AwsClients, check: FindingsFor, name: str, trust: policies.Document,
               permissions: policies.Document) -> None:
    fix = "run provision-feeds for this feed"
    role = absent_on({"NoSuchEntity"}, aws.iam.get_role, RoleName=name)
    if not check.expect(f"role {name}", role is not None, "exists", f"role {name} is missing: {fix}"):
        return
    assert role is not None
    same_trust = policies.canonical(document_of(role["Role"]["AssumeRolePolicyDocument"])) == policies.canonical(trust)
    check.expect(f"role {name} trust", same_trust, "trust as declared" if same_trust else
                 "trust policy differs from the declared one (principals or conditions)", fix)
    review = policies.review_grants(granted_statements(aws, "role", name), permissions)
    problems = [f"missing {m}" for m in review.missing] + review.excess
    check.expect(f"role {name} permissions", not problems, "; ".join(problems) or "exactly as declared", fix)
