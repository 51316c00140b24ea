"""The target role's documents (socfeeds.target_role): linted, read-only by name, and enough for the flows.

The decisive tests run the flows' own task functions on the local stack (every feed on a customer KMS key) as a
role holding only one document, assumed with STS: the read-only role runs resolve, every check and a dry-run
provision, sees exactly what the admin sees, and is refused writes; the provision role provisions every feed from
empty, reruns with no change, repairs drift, runs the canary's paths and rotates the reader's key. Two things make
that evidence:

- moto enforces the role's identity policies, but only as it can: `as_moto_evaluates` hands it each document in
  the form it evaluates (its own names for a few actions, "*" for the resources it authorises against "*", no
  conditions), so every action name is still enforced, and the resources of S3, CloudWatch Logs, STS, KMS key use,
  SQS queues and IAM roles too;
- every call the tasks make is recorded (botocore's events) and evaluated against the document itself, as the IAM
  action and resource AWS authorises, plus what AWS checks inside a call (iam:PassRole, log delivery, tags on
  create): what moto cannot check is checked against the code. No call may come back refused.
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import Stack
from parliament import iam_definition
from prefect import Task
from test_parliament import CASES, _settings, findings
from test_xsiam_standin import eventually

import tasks.buckets
import tasks.canary
import tasks.firehose
import tasks.keys
import tasks.kms
import tasks.notifications
import tasks.queues
import tasks.rds
import tasks.reader
import tasks.sources
from deployments.local.stack import ACCOUNT_ID, REGION, on_customer_key
from flows.verify import FEED_CHECKS, FIREHOSE_FEED_CHECKS
from socfeeds import policies, target_role
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, new_session
from socfeeds.policies import Document, Statement
from socfeeds.report import Change, Finding, Status
from socfeeds.resolve import resolve
from socfeeds.settings import RdsLogsSource, Settings
from tasks.canary import CanaryResult, Outcome, canary_feed, writer_clients
from tasks.iam import document_of

TOOLING = "arn:aws:iam::111122223333:role/socfeeds-flows"
EXTERNAL_ID = "socfeeds-fleet-7f3a"
QUEUED = "application-logs"  # its canary long-polls the queue: no one else reads it here
# parliament's ARN check wants a 12-digit account; AWS managed policies carry "aws" there (IAM User Guide, "IAM
# identifiers"), and verify reads whatever policy is attached to the roles it reviews
AWS_MANAGED_POLICIES = "arn:aws:iam::aws:policy/*"
PRIVILEGES = {f"{service['prefix']}:{p['privilege']}".lower(): p for service in iam_definition
              for p in service["privileges"]}


def lint(kind: str, document: Document) -> list[str]:
    return [f for f in findings(kind, document) if not (f.startswith("INVALID_ARN:") and AWS_MANAGED_POLICIES in f)]


def actions_of(document: Document) -> set[str]:
    return {a for s in policies.as_list(document["Statement"]) for a in policies.as_list(s["Action"])}


def grants_of(document: Document) -> set[tuple[str, str]]:
    return {(a, r) for s in policies.as_list(document["Statement"]) for a in policies.as_list(s["Action"])
            for r in policies.as_list(s["Resource"])}


def wanted_by_resource(document: Document) -> dict[str, set[str]]:
    """Resource -> the actions the document allows on it (lower-cased, as IAM compares them)."""
    wanted: dict[str, set[str]] = {}
    for action, resource in grants_of(document):
        wanted.setdefault(resource, set()).add(action.lower())
    return wanted


def documents(kms: bool, reader_mode: str) -> dict[str, Document]:
    return target_role.documents(_settings(kms, reader_mode), [TOOLING], EXTERNAL_ID)


# --- the documents ---------------------------------------------------------------------------

@pytest.mark.parametrize(("kms", "reader_mode"), CASES)
def test_every_document_passes_parliament(kms: bool, reader_mode: str) -> None:
    problems = {name: found for name, doc in documents(kms, reader_mode).items()
                if (found := lint("trust" if name == "trust" else "identity", doc))}
    assert problems == {}


def test_keys_named_by_alias_are_refused_until_resolved() -> None:
    """IAM matches a key only by its ARN: provision renders the documents after resolve, as every run starts."""
    settings = _settings(True, "user")
    alias = "arn:aws:kms:eu-west-2:123456789012:alias/socfeeds-feeds"
    aliased = settings.model_copy(update={
        "s3_feeds": {n: f.model_copy(update={"kms_key_arn": alias}) for n, f in settings.s3_feeds.items()}})
    with pytest.raises(ValueError, match="alias"):
        target_role.provision_policy(aliased)
    assert target_role.verify_policy(aliased) == target_role.verify_policy(settings)  # reads any key of the account


@pytest.mark.parametrize(("kms", "reader_mode"), CASES)
def test_verify_actions_only_read(kms: bool, reader_mode: str) -> None:
    """By name (Get, List, Describe, Head) and by IAM's own access level for each action."""
    verify = documents(kms, reader_mode)["verify"]
    assert {a for a in actions_of(verify) if not a.split(":")[1].startswith(("Get", "List", "Describe", "Head"))} \
        == set()
    assert {a for a in actions_of(verify) if PRIVILEGES[a.lower()]["access_level"] not in {"Read", "List"}} == set()
    assert all(s["Effect"] == "Allow" and "Condition" not in s for s in verify["Statement"])


@pytest.mark.parametrize(("kms", "reader_mode"), CASES)
def test_provision_includes_every_verify_statement(kms: bool, reader_mode: str) -> None:
    docs = documents(kms, reader_mode)
    verify, provision = docs["verify"]["Statement"], docs["provision"]["Statement"]
    assert provision[:len(verify)] == verify
    assert all(policies.allows(provision, action, resource) for action, resource in grants_of(docs["verify"]))
    writes = {a for a in actions_of(docs["provision"]) - actions_of(docs["verify"])
              if PRIVILEGES[a.lower()]["access_level"] not in {"Read", "List"}}
    assert {"s3:PutBucketPolicy", "iam:PutRolePolicy", "firehose:CreateDeliveryStream", "sts:AssumeRole"} <= writes


@pytest.mark.parametrize(("kms", "reader_mode"), CASES)
def test_every_action_exists_and_star_only_where_iam_scopes_nothing(kms: bool, reader_mode: str) -> None:
    """Every action is one IAM knows; "*" only for actions the Service Authorization Reference gives no resource
    type (every other grant names the settings' resources, or the account's resources of a type)."""
    provision = documents(kms, reader_mode)["provision"]
    assert {a for a in actions_of(provision) if a.lower() not in PRIVILEGES} == set()
    scoped_by_iam = {action for action, resource in grants_of(provision) if resource == "*" and any(
        r["resource_type"].endswith("*") for r in PRIVILEGES[action.lower()]["resource_types"])}
    assert scoped_by_iam == set()
    account = {r for _, r in grants_of(provision) if r != "*"}
    assert all(":123456789012:" in r or r.startswith(("arn:aws:s3:::", AWS_MANAGED_POLICIES)) for r in account)


def test_resources_are_the_declared_names() -> None:
    settings = _settings(False, "user")
    arns = Arns(settings.region, settings.account_id)
    wanted = wanted_by_resource(target_role.provision_policy(settings))
    cloudtrail = settings.s3_feeds["cloudtrail"]
    assert {"s3:createbucket", "s3:putbucketpolicy", "s3:putbucketversioning"} <= wanted[arns.bucket(cloudtrail.bucket)]
    assert "s3:putbucketversioning" not in wanted[arns.bucket(settings.s3_feeds["vpc-flow-logs"].bucket)]
    assert {"sqs:createqueue", "sqs:setqueueattributes"} <= wanted[arns.queue(cloudtrail.dlq_name)]
    assert "iam:passrole" in wanted[arns.role("socfeeds-firehose-live")]
    assert "iam:passrole" not in wanted.get(arns.role(settings.canary.writer_role), set())
    assert "sts:assumerole" in wanted[arns.role(settings.canary.writer_role)]
    assert {"iam:createaccesskey", "iam:deleteaccesskey"} <= wanted[arns.user(settings.reader.path,
                                                                               settings.reader.user_name)]
    assert "secretsmanager:putsecretvalue" in wanted[arns.secret(settings.reader.secret_name)]
    assert "secretsmanager:putsecretvalue" not in wanted[arns.secret("socfeeds/xsiam-firehose-token")]


def test_terraform_owned_resources_get_reads_only() -> None:
    """provision never writes what Terraform owns, so the role may not either; verify still reads it all."""
    settings = Settings(**{**_settings(False, "user").declared, "managed_by": "terraform"})
    provision, verify = target_role.provision_policy(settings), target_role.verify_policy(settings)
    extra = [s for s in provision["Statement"] if s not in verify["Statement"]]
    assert {s["Sid"] for s in extra} == {"SocfeedsCanaryAssumeWriter", "SocfeedsCanaryReads",
                                         "SocfeedsRotationReaderKeys", "SocfeedsRotationReaderSecret",
                                         # replay-feed sends and moves messages; it changes no resource
                                         "SocfeedsReplayObjects", "SocfeedsReplayBucketOwner", "SocfeedsReplaySend",
                                         "SocfeedsReplayRedrive",
                                         # audit-feeds reads log data (keys only when a feed uses one)
                                         "SocfeedsAuditObjects", "SocfeedsAuditLogEvents"}


def test_a_feed_delivering_into_another_accounts_bucket_gets_its_source_only() -> None:
    """A member account's flow log into the central log-archive bucket: the flow log here, the bucket there."""
    declared = _settings(False, "user").declared
    flow_logs = {"log_type": "Flow Logs", "bucket": "cp-central-flow-logs", "bucket_account": "999999999999",
                 "queue": "cp-central-flow-logs-xsiam", "retention_days": 90, "source": {"kind": "vpc_flow_log"}}
    settings = Settings(**{**declared, "s3_feeds": {"vpc-flow-logs": flow_logs}})
    assert list(settings.delivering_feeds) == ["vpc-flow-logs"]
    wanted = wanted_by_resource(target_role.provision_policy(settings))
    assert "ec2:createflowlogs" in wanted["arn:aws:ec2:eu-west-2:123456789012:vpc/vpc-0abc12345678"]
    assert "ec2:describeflowlogs" in wanted["*"]
    assert not [r for r in wanted if "cp-central-flow-logs" in r]  # the bucket and queue are the other account's


def test_an_organization_trail_gets_the_organization_reads_and_the_linked_role_where_it_is_made() -> None:
    """The management account (its trail into the archive) reads the Organization and may create CloudTrail's
    service-linked role; the archive, whose bucket the trail writes, gets neither, nor any trail write."""
    declared = _settings(False, "user").declared
    trail = {"log_type": "Audit Logs", "bucket": "cp-org-trail-999999999999", "queue": "cp-org-trail-xsiam",
             "retention_days": 730, "source": {"kind": "cloudtrail", "trail_name": "org-trail",
                                              "organization_id": "o-a1b2c3d4e5"}}
    management = Settings(**{**declared, "s3_feeds": {"cloudtrail": {**trail, "bucket_account": "999999999999"}}})
    archive = Settings(**{**declared, "account_id": "999999999999",
                          "s3_feeds": {"cloudtrail": {**trail, "source_accounts": ["123456789012"]}}})
    linked = "arn:aws:iam::123456789012:role/aws-service-role/cloudtrail.amazonaws.com/AWSServiceRoleForCloudTrail"
    made = {name: target_role.documents(management, [TOOLING], EXTERNAL_ID)[name] for name in ("verify", "provision")}
    assert {"organizations:DescribeOrganization", "organizations:ListAWSServiceAccessForOrganization"} \
        <= actions_of(made["verify"])
    wanted = wanted_by_resource(made["provision"])
    assert {"cloudtrail:createtrail", "cloudtrail:updatetrail"} <= wanted[
        "arn:aws:cloudtrail:eu-west-2:123456789012:trail/org-trail"]
    assert {"iam:createservicelinkedrole", "iam:getrole"} <= wanted[linked]
    assert {name: found for name, doc in made.items() if (found := lint("identity", doc))} == {}
    received = target_role.documents(archive, [TOOLING], EXTERNAL_ID)
    granted = actions_of(received["verify"]) | actions_of(received["provision"])
    assert not {a for a in granted if a.startswith("organizations:") or a.startswith("cloudtrail:")}, granted


def test_trust_names_exactly_the_tooling_principals_and_the_external_id() -> None:
    [statement] = target_role.trust_policy([TOOLING, TOOLING], EXTERNAL_ID)["Statement"]
    assert statement["Principal"] == {"AWS": [TOOLING]} and statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}}
    assert "Condition" not in target_role.trust_policy([TOOLING], None)["Statement"][0]
    for refused in ([], ["arn:aws:iam::111122223333:root"], ["*"], ["arn:aws:iam::111122223333:role/*"]):
        with pytest.raises(ValueError, match=r"tooling_principals|not IAM role or user ARNs"):
            target_role.trust_policy(refused, EXTERNAL_ID)


@pytest.mark.parametrize(("kms", "reader_mode"), CASES)
def test_each_document_attaches_as_managed_policies_within_iams_quota(kms: bool, reader_mode: str) -> None:
    for document in documents(kms, reader_mode).values():
        parts = target_role.attachable(document)
        assert all(target_role.size(part) <= target_role.MANAGED_POLICY_MAX_CHARS for part in parts)
        assert [s for part in parts for s in part["Statement"]] == document["Statement"]
    assert len(target_role.attachable(documents(kms, reader_mode)["verify"])) == 1


def test_the_flows_tasks_are_all_exercised_below() -> None:
    """A new ensure_* or check_* task fails here until the stack tests (and so the documents) cover it."""
    modules = (tasks.buckets, tasks.canary, tasks.firehose, tasks.kms, tasks.notifications, tasks.queues, tasks.rds,
               tasks.reader, tasks.sources)
    found = {name for module in modules for name in vars(module) if name.startswith(("ensure_", "check_"))
             and hasattr(getattr(module, name), "fn")}
    exercised: list[Task[Any, Any]] = [*PROVISION_TASKS, *FEED_PROVISION_TASKS, *FIREHOSE_PROVISION_TASKS,
                                       *SHARED_CHECKS, *FEED_CHECKS, *FIREHOSE_FEED_CHECKS]
    assert found == {task.fn.__name__ for task in exercised}


# --- the emulator's view, and the code's ------------------------------------------------------

# CloudWatch Logs actions carrying a log group, which deployments/local/auth_fidelity.py authorises by its ARN
MOTO_LOG_GROUP_ACTIONS = {"CreateLogGroup", "PutRetentionPolicy", "DescribeLogStreams", "CreateLogStream",
                          "DescribeSubscriptionFilters", "PutSubscriptionFilter", "PutLogEvents", "DeleteLogStream"}
MOTO_NAMES = {  # moto asks for the operation's name where IAM has none of its own
    "s3:ListBucket": ("s3:ListBucket", "s3:HeadBucket"),
    "sqs:ChangeMessageVisibility": ("sqs:ChangeMessageVisibility", "sqs:ChangeMessageVisibilityBatch"),
}


def moto_scopes(action: str) -> bool:
    """Whether moto 5.2.5 authorises the action against the resource's ARN; against "*" otherwise, where a scoped
    grant never matches. SQS and IAM: only existing queues and roles (CreateQueue, GetQueueUrl, CreateRole and
    GetRole of a role not made yet are "*"). KMS: the key uses deployments/local/kms_fidelity.py checks."""
    service, name = action.split(":")
    if service == "logs":
        return name in MOTO_LOG_GROUP_ACTIONS
    if service == "sqs":
        return name not in {"CreateQueue", "GetQueueUrl"}
    if service == "iam":
        return "Role" in name and name not in {"CreateRole", "GetRole", "PassRole"}
    return service == "s3" or action in {"sts:AssumeRole", "kms:Decrypt", "kms:GenerateDataKey"}


def as_moto_evaluates(document: Document) -> Document:
    """The same grants in the form moto evaluates: no conditions (moto treats an Allow whose condition key the
    request lacks as a Deny), its name for HeadBucket, "*" for the actions it authorises against "*"."""
    statements: list[Statement] = []
    for statement in policies.as_list(document["Statement"]):
        actions = [name for a in policies.as_list(statement["Action"]) for name in MOTO_NAMES.get(a, (a,))]
        scoped = [a for a in actions if moto_scopes(a)]
        if scoped:
            statements.append({"Effect": "Allow", "Action": scoped, "Resource": statement["Resource"]})
        if unscoped := [a for a in actions if not moto_scopes(a)]:
            statements.append({"Effect": "Allow", "Action": unscoped, "Resource": "*"})
    return policies.document(statements)


RENAMED = {  # boto3 operations whose IAM action has another name (Service Authorization Reference)
    "s3:HeadBucket": "s3:ListBucket", "s3:ListObjectsV2": "s3:ListBucket", "s3:HeadObject": "s3:GetObject",
    "s3:GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "s3:PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "s3:GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "s3:PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "s3:GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "s3:PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "s3:GetBucketNotificationConfiguration": "s3:GetBucketNotification",
    "s3:PutBucketNotificationConfiguration": "s3:PutBucketNotification",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "monitoring:GetMetricData": "cloudwatch:GetMetricData",  # CloudWatch signs as monitoring, IAM's prefix differs
}
LOG_STREAM_ACTIONS = {"CreateLogStream", "PutLogEvents", "DeleteLogStream"}
REFUSALS = {"AccessDenied", "AccessDeniedException", "403", "UnauthorizedOperation", "KmsAccessDenied",
            "KMS.AccessDeniedException"}


@dataclass(frozen=True)
class Call:
    service: str
    operation: str
    region: str
    params: dict[str, Any]
    error: str

    @property
    def refused(self) -> bool:
        code, _, message = self.error.partition(": ")
        return code in REFUSALS or "not authorized" in message

    def requests(self, settings: Settings) -> list[tuple[str, str]]:
        """(IAM action, resource ARN) pairs AWS authorises this call as, with those it checks inside it."""
        action = f"{self.service}:{self.operation}"
        pairs = [(RENAMED.get(action, action), resource) for resource in self._resources(settings)]
        return pairs + self._implied()

    def _resources(self, settings: Settings) -> list[str]:
        p, arns = self.params, Arns(self.region, ACCOUNT_ID)
        partition, prefix = arns.partition, f"{self.region}:{ACCOUNT_ID}"
        match self.service:
            case "s3":
                bucket = arns.bucket(p["Bucket"]) if "Bucket" in p else "*"
                return [f"{bucket}/{p['Key']}" if "Key" in p else bucket]
            case "sqs":
                return [arns.queue(str(p.get("QueueName") or p["QueueUrl"]).rsplit("/", 1)[-1])]
            case "iam":
                if "RoleName" in p:
                    return [arns.role(p["RoleName"])]
                if "UserName" in p or self.operation == "GetAccessKeyLastUsed":  # the reader is the only user
                    return [arns.user(settings.reader.path, settings.reader.user_name)]
                if "PolicyArn" in p:
                    return [p["PolicyArn"]]
                if self.operation == "CreatePolicy":
                    return [arns.iam_policy(p.get("Path", "/"), p["PolicyName"])]
            case "sts" if self.operation == "AssumeRole":
                return [p["RoleArn"]]
            case "logs" if "logGroupName" in p:
                group = p["logGroupName"]
                return [arns.log_stream(group, p["logStreamName"]) if self.operation in LOG_STREAM_ACTIONS
                        else f"{arns.log_group(group)}:*"]
            case "logs" if self.operation == "PutDeliverySource":
                return [f"arn:{partition}:logs:{prefix}:delivery-source:{p['name']}"]
            case "logs" if self.operation == "PutDeliveryDestination":
                return [f"arn:{partition}:logs:{prefix}:delivery-destination:{p['name']}"]
            case "logs" if self.operation == "CreateDelivery":
                return [f"arn:{partition}:logs:{prefix}:delivery:new", p["deliveryDestinationArn"],
                        f"arn:{partition}:logs:{prefix}:delivery-source:{p['deliverySourceName']}"]
            case "logs" if self.operation == "UpdateDeliveryConfiguration":
                return [f"arn:{partition}:logs:{prefix}:delivery:{p['id']}"]
            case "firehose" if "DeliveryStreamName" in p:
                return [arns.delivery_stream(p["DeliveryStreamName"])]
            case "eks":
                return [arns.cluster(p["name"])]
            case "cloudtrail" if "Name" in p:
                return [p["Name"] if p["Name"].startswith("arn:") else arns.trail(p["Name"])]
            case "ec2" if self.operation == "CreateFlowLogs":
                return [f"arn:{partition}:ec2:{prefix}:vpc-flow-log/fl-new",
                        *(f"arn:{partition}:ec2:{prefix}:vpc/{vpc}" for vpc in p["ResourceIds"])]
            case "ec2" if self.operation == "DeleteFlowLogs":
                return [f"arn:{partition}:ec2:{prefix}:vpc-flow-log/{i}" for i in p["FlowLogIds"]]
            case "route53resolver" if self.operation == "AssociateResolverQueryLogConfig":
                return [f"arn:{partition}:route53resolver:{prefix}:resolver-query-log-config/"
                        f"{p['ResolverQueryLogConfigId']}"]
            case "secretsmanager":
                secret = str(p.get("SecretId") or p["Name"])
                return [secret if secret.startswith("arn:") else arns.secret(secret).replace("??????", "AbCdEf")]
            case "kms":  # an alias reaches the key it names, and IAM authorises that key's ARN
                key = str(p["KeyId"])
                return [f"arn:{partition}:kms:{prefix}:key/named-by-alias" if ":alias/" in key else key]
            case "ssm":
                return [arns.parameter(p["Name"])]
        return ["*"]  # IAM authorises it on no resource

    def _implied(self) -> list[tuple[str, str]]:
        """What AWS authorises inside the call: passing roles, log delivery to S3, tags on create, vended logs."""
        p, partition, prefix = self.params, Arns(self.region, ACCOUNT_ID).partition, f"{self.region}:{ACCOUNT_ID}"
        key = (p.get("DeliveryStreamEncryptionConfigurationInput") or {})
        implied = [("kms:CreateGrant", key["KeyARN"])] if key.get("KeyType") == "CUSTOMER_MANAGED_CMK" else []
        match (self.service, self.operation):
            case ("firehose", "CreateDeliveryStream" | "UpdateDestination"):
                return implied + [("iam:PassRole", role) for role in sorted(set(_role_arns(p)))]
            case ("firehose", "StartDeliveryStreamEncryption"):
                return implied
            case ("logs", "PutSubscriptionFilter"):
                return [("iam:PassRole", p["roleArn"])]
            case ("ec2", "CreateFlowLogs"):
                tags = [("ec2:CreateTags", f"arn:{partition}:ec2:{prefix}:vpc-flow-log/fl-new")] \
                    if p.get("TagSpecifications") else []
                return [("logs:CreateLogDelivery", "*"), *tags]
            case ("ec2", "DeleteFlowLogs"):
                return [("logs:DeleteLogDelivery", "*")]
            case ("route53resolver", "CreateResolverQueryLogConfig" | "AssociateResolverQueryLogConfig"):
                return [("logs:CreateLogDelivery", "*"), ("logs:GetLogDelivery", "*"), ("ec2:DescribeVpcs", "*")]
            case ("logs", "PutDeliverySource"):
                return [("cloudfront:AllowVendedLogDeliveryForResource", p["resourceArn"])]
        return []


def _role_arns(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from ([item] if key == "RoleARN" else _role_arns(item))
    elif isinstance(value, list):
        for item in value:
            yield from _role_arns(item)


class Calls:
    """Every call a session's clients make, with its parameters and any error AWS answered."""

    def __init__(self, session: boto3.session.Session) -> None:
        self.made: list[Call] = []
        session.events.register("provide-client-params", self._params)
        session.events.register("after-call", self._answer)

    def _params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["recorded_params"] = dict(params)

    def _answer(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        error = parsed.get("Error") or {}
        self.made.append(Call(model.service_model.signing_name, model.name, str(context.get("client_region")),
                              context.get("recorded_params", {}),
                              f"{error.get('Code')}: {error.get('Message')}" if error else ""))

    def refused(self) -> list[str]:
        return [f"{c.service}:{c.operation} {c.error}" for c in self.made if c.refused]

    def beyond(self, document: Document, settings: Settings) -> list[str]:
        """Each call (or permission checked inside one) the document does not allow, as IAM decides it."""
        statements = policies.as_list(document["Statement"])
        return sorted({f"{action} on {resource} ({c.service}:{c.operation})" for c in self.made
                       for action, resource in c.requests(settings)
                       if not policies.allows(statements, action, resource)})


def admin_arn(stack: Stack) -> str:
    return str(stack.client("sts").get_caller_identity()["Arn"])


def as_role(stack: Stack, document: Document) -> tuple[AwsClients, Calls, str]:
    """A role in the stack's account trusting the stack's admin (with the external id), holding only `document` (as
    moto evaluates it, in managed policies of IAM's size), assumed with STS: its clients, their calls, its ARN."""
    iam, name = stack.client("iam"), f"socfeeds-target-{uuid.uuid4().hex[:8]}"
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(
        target_role.trust_policy([admin_arn(stack)], EXTERNAL_ID)))["Role"]
    for n, part in enumerate(target_role.attachable(as_moto_evaluates(document))):
        arn = iam.create_policy(PolicyName=f"{name}-{n}", PolicyDocument=json.dumps(part))["Policy"]["Arn"]
        iam.attach_role_policy(RoleName=name, PolicyArn=arn)
    credentials = stack.client("sts").assume_role(RoleArn=role["Arn"], RoleSessionName="socfeeds-test",
                                                  ExternalId=EXTERNAL_ID)["Credentials"]
    session = new_session(credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"])
    calls = Calls(session)
    return AwsClients(session, REGION, stack.local.endpoint_url), calls, str(role["Arn"])


# --- the flows' tasks, as the flows run them ---------------------------------------------------

PROVISION_TASKS = (tasks.kms.ensure_key_policies, tasks.reader.ensure_reader, tasks.canary.ensure_canary_writer)
FEED_PROVISION_TASKS = (tasks.buckets.ensure_bucket, tasks.queues.ensure_queues,
                        tasks.notifications.ensure_notification, tasks.sources.ensure_source)
FIREHOSE_PROVISION_TASKS = (tasks.firehose.ensure_cluster_logging, tasks.firehose.ensure_delivery_stream,
                            tasks.firehose.ensure_subscription)
SHARED_CHECKS = (tasks.reader.check_reader, tasks.canary.check_canary_writer, tasks.kms.check_key_policies)


def provision(aws: AwsClients, settings: Settings, dry_run: bool) -> list[Change]:
    """provision-feeds' steps in its order (those that wait on others after them)."""
    changes = [c for task in PROVISION_TASKS for c in task.fn(aws, settings, dry_run)]
    for name in settings.s3_feeds:
        changes += [c for task in FEED_PROVISION_TASKS for c in task.fn(aws, settings, name, dry_run)]
    for name in settings.delivering_feeds:  # into another account's bucket: only the source is wired here
        changes += tasks.sources.ensure_source.fn(aws, settings, name, dry_run)
    for name in settings.firehose_feeds:
        changes += [c for task in FIREHOSE_PROVISION_TASKS for c in task.fn(aws, settings, name, dry_run)]
    return changes


def verify(aws: AwsClients, settings: Settings) -> list[Finding]:
    """verify-feeds' checks."""
    found = [f for task in SHARED_CHECKS for f in task.fn(aws, settings)]
    found += [f for name in settings.s3_feeds for task in FEED_CHECKS for f in task.fn(aws, settings, name)]
    found += [f for name in settings.delivering_feeds for f in tasks.sources.check_source.fn(aws, settings, name)]
    return found + [f for name in settings.firehose_feeds for task in FIREHOSE_FEED_CHECKS
                    for f in task.fn(aws, settings, name)]


def plans(changes: list[Change]) -> list[tuple[str, str, str, str]]:
    return [(c.feed, c.resource, c.action, c.detail) for c in changes]


def on_feed_key(stack: Stack) -> None:
    """Every feed on one customer key, declared by its alias (as test_kms): resolve, key policies, kms: grants."""
    values = on_customer_key(stack.local, stack.values, alias=f"alias/{stack.values['reader']['user_name']}-feeds")
    stack.update(s3_feeds=values["s3_feeds"], firehose_feeds=values["firehose_feeds"])


def without(document: Document, action: str) -> Document:
    return policies.document([{**s, "Action": [a for a in policies.as_list(s["Action"]) if a != action]}
                              for s in policies.as_list(document["Statement"])])


# --- the decisive tests ------------------------------------------------------------------------

def test_the_verify_role_reads_everything_the_checks_and_a_dry_run_read_and_writes_nothing(stack: Stack) -> None:
    on_feed_key(stack)
    settings = stack.settings
    role, calls, role_arn = as_role(stack, target_role.verify_policy(settings))
    with pytest.raises(ClientError, match="AccessDenied"):  # the trust's external id, as AWS requires it
        stack.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="socfeeds-test")
    assert resolve(Settings(), role).model_dump(exclude={"canary"}) == settings.model_dump(exclude={"canary"})

    planned = provision(role, settings, dry_run=True)
    assert planned and plans(planned) == plans(provision(stack.aws, settings, dry_run=True))
    provision(stack.aws, settings, dry_run=False)
    eventually("the new queues' first AWS/SQS metrics (the local stack publishes each second)", lambda: not [
        f for f in verify(stack.aws, settings) if f.detail.startswith("no data: CloudWatch has no AWS/SQS")])
    assert verify(role, settings) == verify(stack.aws, settings)  # the role sees exactly what the admin sees
    assert provision(role, settings, dry_run=True) == []
    assert calls.refused() == []
    assert calls.beyond(target_role.verify_policy(settings), settings) == []
    short = without(target_role.verify_policy(settings), "s3:GetEncryptionConfiguration")  # moto asks ListBucket
    assert any(line.startswith("s3:GetEncryptionConfiguration on ") for line in calls.beyond(short, settings))

    feed = settings.s3_feeds["cloudtrail"]
    refusals: dict[str, Callable[[], object]] = {
        "s3:PutBucketPolicy": lambda: role.s3.put_bucket_policy(Bucket=feed.bucket, Policy=json.dumps(
            policies.document([]))),
        "sqs:SetQueueAttributes": lambda: role.sqs.set_queue_attributes(
            QueueUrl=stack.local.queue_url(feed.queue), Attributes={"DelaySeconds": "1"}),
        "iam:PutRolePolicy": lambda: role.iam.put_role_policy(
            RoleName=settings.canary.writer_role, PolicyName="x", PolicyDocument=json.dumps(policies.document([]))),
        "sts:AssumeRole": lambda: role.sts.assume_role(RoleArn=Arns(REGION, ACCOUNT_ID).role(
            settings.canary.writer_role), RoleSessionName="socfeeds-test"),
    }
    for action, write in refusals.items():
        with pytest.raises(ClientError) as refused:
            write()
        assert refused.value.response["Error"]["Code"] in REFUSALS, action


def test_the_provision_role_provisions_from_empty_runs_the_canary_and_rotates(stack: Stack) -> None:
    on_feed_key(stack)
    feeds = stack.values["s3_feeds"]
    group = f"{RdsLogsSource.LOG_GROUP_PREFIX}{feeds['rds']['bucket'].split('-')[0]}-db/postgresql"
    stack.client("logs").create_log_group(logGroupName=group)  # as RDS makes it before exporting
    distribution = "E" + uuid.uuid4().hex[:13].upper()
    rds, cloudfront = feeds["rds"], feeds["cloudfront"]
    stack.update(s3_feeds={
        **feeds, "rds": {**rds, "source": {**rds["source"], "log_groups": [group]}},
        "cloudfront": {**cloudfront, "source": {**cloudfront["source"], "distribution_id": distribution}},
        QUEUED: {**feeds[QUEUED], "canary_strategy": "queue", "canary_deadline_seconds": 30}})
    document = target_role.provision_policy(stack.settings)  # names only: whoever resolves them
    role, calls, role_arn = as_role(stack, document)
    settings = resolve(Settings(), role)  # as a flow run starts: the writer will trust this role
    assert settings.canary.writer_trusted_principals == [role_arn]

    made = provision(role, settings, dry_run=False)
    assert {(c.feed, c.action) for c in made} >= {
        ("cloudtrail", "create trail"), ("vpc-flow-logs", "create flow log"), ("rds", "create delivery stream"),
        ("route53-resolver", "associate query logging"), ("cloudfront", "create delivery"),
        ("eks-control-plane", "create delivery stream"), ("reader", "attach policy"), ("canary", "create role")}
    failed = [f for f in verify(stack.aws, settings) if f.status is Status.FAIL]
    assert failed == []
    assert provision(role, settings, dry_run=False) == []  # converged, read back as the role

    results = canary(stack, role, settings)
    assert [(r.feed, r.status, r.leg) for r in results] == [
        (QUEUED, "passed", "-"), ("rds", "failed", "collection"), ("eks-control-plane", "failed", "collection")]
    canary_reads(stack, role, settings)
    drift(stack, settings)
    repaired = {(c.resource, c.action) for c in provision(role, settings, dry_run=False)}
    assert {(f"iam-role:{settings.canary.writer_role}", "set role trust"),
            (f"iam-user:{settings.reader.user_name}", "update policy"),
            (f"firehose:{settings.firehose_feeds['eks-control-plane'].delivery_stream}", "update delivery stream")
            } <= repaired
    rotate(role, settings)

    assert calls.refused() == []
    assert calls.beyond(document, settings) == []


def canary(stack: Stack, role: AwsClients, settings: Settings) -> list[CanaryResult]:
    """feed-canary as the role: it assumes the writer (deployments/local/trust_fidelity.py matches a role's sessions
    to the role named in a trust, as AWS does); the writer writes; the role takes the notification off the queue.
    Without an XSIAM API the RDS and EKS canaries stop once written, at the collection leg."""
    writer = writer_clients(role, settings, "t1")  # its trust names the role; the role's session assumes it
    return [r for name in (QUEUED, "rds", "eks-control-plane")
            for r in canary_feed.fn(role, writer, None, settings, name, "t1")]


def canary_reads(stack: Stack, role: AwsClients, settings: Settings) -> None:
    """The reads that tell the canary which leg failed: the canary's object, the RDS stream's objects, the EKS
    stream's failed deliveries (objects put there as the services would)."""
    s3, now = stack.client("s3"), datetime.now(UTC)
    feed = settings.s3_feeds["cloudtrail"]
    key = f"socfeeds-canary/cloudtrail/{uuid.uuid4().hex}.json.gz"
    s3.put_object(Bucket=feed.bucket, Key=key, Body=b"{}")
    diagnosis = tasks.canary._diagnose_s3(role, settings, feed, key, Outcome("cloudtrail", "siem"))
    assert diagnosis is None or diagnosis.leg != "write"

    rds = settings.s3_feeds["rds"]
    assert isinstance(rds.source, RdsLogsSource)
    spec = tasks.rds.rendered(rds.source, settings, rds)
    s3.put_object(Bucket=rds.bucket, Key=f"{spec.key_prefix}/2030/01/01/00/object", Body=gzip.compress(b"{}"))
    assert tasks.rds._object_with(role, rds, spec, "no-such-marker", now - timedelta(minutes=1)) is None

    eks = settings.firehose_feeds["eks-control-plane"]
    record = {"rawData": base64.b64encode(b"payload").decode(), "errorMessage": "refused"}
    s3.put_object(Bucket=eks.error_bucket, Key=f"{tasks.firehose.FAILED_PREFIX}2030/object",
                  Body=json.dumps(record).encode())
    found = list(tasks.firehose.backed_up_records(role, eks, now - timedelta(minutes=1), set()))
    assert [(message, payload) for _, message, payload in found] == [("refused", "payload")]


def drift(stack: Stack, settings: Settings) -> None:
    """Someone else's changes provision repairs in place: the writer's trust, the reader's policy, the EKS stream's
    delivery."""
    iam, writer = stack.client("iam"), settings.canary.writer_role
    trust = document_of(iam.get_role(RoleName=writer)["Role"]["AssumeRolePolicyDocument"])
    trust["Statement"][0]["Principal"]["AWS"] = [*policies.as_list(trust["Statement"][0]["Principal"]["AWS"]),
                                                 admin_arn(stack)]
    iam.update_assume_role_policy(RoleName=writer, PolicyDocument=json.dumps(trust))
    stack.client("iam").create_policy_version(
        PolicyArn=tasks.reader._policy_arn(settings), SetAsDefault=True, PolicyDocument=json.dumps(policies.document(
            [{"Effect": "Allow", "Action": "sqs:GetQueueUrl", "Resource": "*"}])))
    firehose, name = stack.client("firehose"), settings.firehose_feeds["eks-control-plane"].delivery_stream
    stream = firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
    firehose.update_destination(DeliveryStreamName=name, CurrentDeliveryStreamVersionId=stream["VersionId"],
                                DestinationId=stream["Destinations"][0]["DestinationId"],
                                HttpEndpointDestinationUpdate={"RequestConfiguration": {"ContentEncoding": "NONE"}})


def rotate(role: AwsClients, settings: Settings) -> None:
    """rotate-reader-keys' steps as the role: two rotations (the second deactivates the first key), the grace's
    deletion, and a third rolled back."""
    keys = tasks.keys
    first = keys.create_pending_key.fn(role, settings, "run-1")
    keys.try_pending_key.fn(role, settings)
    keys.finish_rotation.fn(role, settings, first)
    second = keys.create_pending_key.fn(role, settings, "run-2")
    assert keys.finish_rotation.fn(role, settings, second).old_key == first
    assert keys.delete_keys.fn(role, settings, [first]) == [first]
    third = keys.create_pending_key.fn(role, settings, "run-3")
    keys.roll_back.fn(role, settings, third)
    held, plan = keys.inspect_keys.fn(role, settings, False)
    assert [k.key_id for k in held] == [second] and plan.action == "nothing"
    assert [k.key_id for k in keys.user_keys.fn(role, settings)] == [second]
