"""The fleet's target role in the account the flows run in: the one account whose role provision can create.

Other accounts get the role from their platform (StackSets, Terraform) using the documents provision
publishes; in the tooling account the flows' own identity can make it, so a fleet that includes the tooling
account needs no hand-made role there.
"""

from __future__ import annotations

from collections.abc import Callable

from socfeeds import target_role
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients
from socfeeds.report import Change, ChangesFor
from socfeeds.settings import Settings
from tasks._task import aws_task
from tasks.iam import ensure_managed_policy
from tasks.roles import ensure_role

TARGET_ROLE = "fleet"


def policy_names(role_name: str, count: int) -> list[str]:
    return [f"{role_name}-provision-{index + 1}" for index in range(count)]


@aws_task("ensure-target-role", per_feed=False)
def ensure_target_role(aws: AwsClients, settings: Settings, principals: list[str], dry_run: bool) -> list[Change]:
    """The role with its trust (the tooling principals, the external id) and the provision grant, as managed
    policies of IAM's size, attached; `settings` are the tooling account's own, resolved."""
    assert settings.fleet is not None
    fleet = settings.fleet
    changes = ChangesFor(TARGET_ROLE, f"iam-role:{fleet.role_name}", dry_run)
    external_id = fleet.external_id.get_secret_value() if fleet.external_id else None
    ensure_role(aws, changes, fleet.role_name, target_role.trust_policy(principals, external_id), None,
                "socfeeds fleet: the flows act here through this role")
    parts = target_role.attachable(target_role.provision_policy(settings))
    arns = Arns(settings.region, settings.account_id)
    created = any(change.action == "create role" for change in changes.changes)
    attached = set() if created else {p["PolicyArn"] for p in aws.iam.list_attached_role_policies(
        RoleName=fleet.role_name)["AttachedPolicies"]}
    for name, part in zip(policy_names(fleet.role_name, len(parts)), parts, strict=True):
        policy_arn = arns.iam_policy(fleet.role_path, name)
        ensure_managed_policy(aws, changes, policy_arn, part, "socfeeds provision grant")
        if policy_arn not in attached:
            changes.make("attach policy", f"{name} to role {fleet.role_name}", attach(aws, fleet.role_name, policy_arn))
    return changes.changes


def attach(aws: AwsClients, role: str, policy_arn: str) -> Callable[[], object]:
    return lambda: aws.iam.attach_role_policy(RoleName=role, PolicyArn=policy_arn)
