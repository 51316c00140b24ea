"""CloudTrail trails as AWS has them. Local stack only; moto 5.2.5.

1. AWS reads the bucket policy when a trail is created or pointed at a bucket and refuses it with
   InsufficientS3BucketPolicyException unless cloudtrail.amazonaws.com may call s3:GetBucketAcl on the bucket and
   s3:PutObject under `<prefix>/AWSLogs/<account>/` (an organization trail: also `<prefix>/AWSLogs/<organization
   id>/<account>/`) (CloudTrail API Reference, CreateTrail and UpdateTrail, "Errors"; CloudTrail User Guide,
   "Amazon S3 bucket policy for CloudTrail"). moto checks nothing. Evaluated here: the Allow statements for the
   service principal, their actions and resources, and the aws:SourceArn / aws:SourceAccount / s3:x-amz-acl
   conditions CloudTrail's own requests satisfy; Deny statements are not evaluated. A bucket of another account
   (a central archive's) is found, as moto finds it (CloudTrail User Guide, "Receiving CloudTrail log files from
   multiple accounts").
2. An organization trail: AWS refuses one outside an Organization (OrganizationsNotInUseException), from an account
   that is not the Organization's management account (NotOrganizationMasterAccountException; a delegated
   administrator is not modelled), and while CloudTrail's trusted access is off (CloudTrailAccessNotEnabledException)
   (CloudTrail API Reference, CreateTrail, "Errors"). moto makes one anywhere.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from typing import Any

from moto.cloudtrail.exceptions import S3BucketDoesNotExistException
from moto.cloudtrail.models import CloudTrailBackend, Trail
from moto.core.exceptions import JsonRESTError
from moto.organizations.models import organizations_backends
from moto.s3.exceptions import MissingBucket
from moto.s3.models import FakeBucket, s3_backends

from deployments.local.policy_conditions import ARN_OPERATORS, STRING_OPERATORS, allows_action, listed

SERVICE = "cloudtrail.amazonaws.com"
OPERATORS = {**STRING_OPERATORS, **ARN_OPERATORS}
WRITE_ACL = "bucket-owner-full-control"  # what CloudTrail sets on every object it writes


class TrailRefused(JsonRESTError):
    code = 400

    def __init__(self, error: str, message: str) -> None:
        super().__init__(error, message)


def _bucket(name: str, account_id: str, partition: str) -> FakeBucket:
    try:
        return s3_backends[account_id][partition].get_bucket(name)  # any account's: bucket names are global
    except MissingBucket:
        raise S3BucketDoesNotExistException(f"S3 bucket {name} does not exist!") from None


def _conditions_hold(condition: dict[str, Any], context: dict[str, str]) -> bool:
    """Every condition holds for CloudTrail's request; a key it does not carry fails unless `IfExists`, and an
    operator not modelled (numeric, date, Bool) fails."""
    for operator, tests in condition.items():
        compare = OPERATORS.get(operator.removesuffix("IfExists"))
        for key, wanted in tests.items():
            actual = context.get(key.lower())
            if actual is None:
                if operator.endswith("IfExists"):
                    continue
                return False
            if compare is None or not compare(actual, [str(v) for v in listed(wanted)]):
                return False
    return True


def _allows(policy: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    for statement in listed(policy.get("Statement", [])):
        principal = statement.get("Principal")
        services = listed(principal.get("Service", [])) if isinstance(principal, dict) else []
        if statement.get("Effect") != "Allow" or (principal != "*" and SERVICE not in services):
            continue
        if not allows_action(statement.get("Action", []), action):
            continue
        if not any(fnmatchcase(resource, str(r)) for r in listed(statement.get("Resource", []))):
            continue
        if _conditions_hold(statement.get("Condition", {}), context):
            return True
    return False


def _check_organization(account_id: str, partition: str) -> str:
    owner = organizations_backends.master_accounts.get(account_id)
    backend = organizations_backends[owner[0] if owner else account_id][partition]
    if backend.org is None:
        raise TrailRefused("OrganizationsNotInUseException", f"Account {account_id} is not in an organization.")
    if backend.org.master_account_id != account_id:
        raise TrailRefused("NotOrganizationMasterAccountException",
                           f"Account {account_id} is not the management account of {backend.org.id}.")
    if not any(service["ServicePrincipal"] == SERVICE for service in backend.services):
        raise TrailRefused("CloudTrailAccessNotEnabledException",
                           "Trusted access is not enabled between CloudTrail and Organizations.")
    return str(backend.org.id)


def _check_policy(account_id: str, partition: str, trail_arn: str, bucket_name: str, prefix: str,
                  organization_id: str | None) -> None:
    bucket = _bucket(bucket_name, account_id, partition)
    policy = json.loads(bucket.policy) if bucket.policy else {}
    context = {"aws:sourcearn": trail_arn, "aws:sourceaccount": account_id, "s3:x-amz-acl": WRITE_ACL}
    base = f"arn:{partition}:s3:::{bucket_name}/" + (f"{prefix.strip('/')}/" if prefix else "") + "AWSLogs/"
    writes = [f"{base}{account_id}/CloudTrail/x.json.gz"]
    if organization_id:
        writes.append(f"{base}{organization_id}/{account_id}/CloudTrail/x.json.gz")
    if not (_allows(policy, "s3:GetBucketAcl", f"arn:{partition}:s3:::{bucket_name}", context)
            and all(_allows(policy, "s3:PutObject", write, context) for write in writes)):
        raise TrailRefused("InsufficientS3BucketPolicyException",
                           f"Incorrect S3 bucket policy is detected for bucket: {bucket_name}")


_original_create: Any = CloudTrailBackend.create_trail
_original_update: Any = CloudTrailBackend.update_trail


def _create_trail(self: CloudTrailBackend, name: str, bucket_name: str, s3_key_prefix: str, sns_topic_name: str,
                  is_global: bool, is_multi_region: bool, log_validation: bool, is_org_trail: bool,
                  *rest: Any) -> Trail:
    partition = str(self.partition)
    organization = _check_organization(self.account_id, partition) if is_org_trail else None
    arn = f"arn:{partition}:cloudtrail:{self.region_name}:{self.account_id}:trail/{name}"
    _check_policy(self.account_id, partition, arn, bucket_name, s3_key_prefix, organization)
    created: Trail = _original_create(self, name, bucket_name, s3_key_prefix, sns_topic_name, is_global,
                                      is_multi_region, log_validation, is_org_trail, *rest)
    return created


def _update_trail(self: CloudTrailBackend, name: str, s3_bucket_name: str | None, s3_key_prefix: str | None,
                  is_organization_trail: bool | None, **rest: Any) -> Trail:
    trail = self.get_trail(name)
    partition = str(self.partition)
    bucket = s3_bucket_name if s3_bucket_name is not None else trail.bucket_name
    prefix = s3_key_prefix if s3_key_prefix is not None else trail.s3_key_prefix
    organization = is_organization_trail if is_organization_trail is not None else trail.is_org_trail
    if (bucket, prefix, organization) != (trail.bucket_name, trail.s3_key_prefix, trail.is_org_trail):
        organization_id = _check_organization(self.account_id, partition) if organization else None
        _check_policy(self.account_id, partition, trail.arn, bucket, prefix or "", organization_id)
    updated: Trail = _original_update(self, name=name, s3_bucket_name=s3_bucket_name, s3_key_prefix=s3_key_prefix,
                                      is_organization_trail=is_organization_trail, **rest)
    return updated


def apply() -> None:
    CloudTrailBackend.create_trail = _create_trail  # type: ignore[method-assign,assignment]
    CloudTrailBackend.update_trail = _update_trail  # type: ignore[method-assign,assignment]
