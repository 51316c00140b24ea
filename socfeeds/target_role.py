"""The role the flows assume in each target account (`fleet.role_name`): its trust and its two permission sets.

A security team grants `verify_policy` first: every read of the read-only flow, verify-feeds (every check_* task,
and socfeeds.resolve at the start of every run), which are also all the reads of a dry-run provision-feeds, so the
read-only grant alone runs verify and previews every change (it reads no log data). `provision_policy` is those
statements unchanged, then every write of provision-feeds (the ensure_* tasks), audit-feeds' reads of log data
(sampled objects, the EKS log group's events), the canary's needs (feed-canary: assume the canary writer, take its
notification off a queue it long-polls, read the objects that say which leg failed), replay-feed's (send to the feed
queues, move dead letters back) and the reader-key rotation's (rotate-reader-keys). Both are rendered from resolved
settings (a KMS key named by alias is refused: IAM matches a key only by its ARN), so every write names the declared
resources: buckets and their objects, queues, roles, the reader user, policy and secret, log groups and streams,
delivery streams, trails, the cluster. Terraform-owned feeds and shared resources get no write, as provision never
writes them. Reads of things the checks find by what they do, not by name (a role or stream adopted under another
name, the key a bucket actually uses, a trail's home region), are granted on the account's resources of that type;
actions IAM authorises on no resource take "*". No sts:TagSession: the fleet passes no session tags. The role's
MaxSessionDuration must cover `fleet.session_seconds`. A full catalog's provision grant is about twice a managed
policy's quota: `attachable`.

Known limits: a Firehose stream adopted under another name (with its backup bucket and token secret), and the RDS
stream found by its destination, need their names added for verify's reads and provision's in-place updates; and
the role writes the inline policy of the canary writer it also assumes, as provision must (a permissions boundary
on the roles it creates would close that, and needs provision to set one).

Tested on the local stack (moto 5.2.5, IAM authentication on; tests/test_target_role.py): a role holding only one
document runs the flows' tasks. moto enforces every action name against the role's identity policies, and the
resource ARNs of S3, CloudWatch Logs (deployments/local/auth_fidelity.py), sts:AssumeRole, kms:Decrypt and
kms:GenerateDataKey (kms_fidelity.py), SQS on existing queues and IAM on existing roles. Checked against the code,
not the emulator (the test records every call the tasks make and evaluates it, as the IAM action and resource AWS
authorises, against the document; moto does not check these itself):
- the resources of every other service (moto authorises them against "*"), and every Condition (moto reads an Allow
  whose condition key the request lacks as a Deny);
- s3:GetEncryptionConfiguration, s3:GetBucketOwnershipControls, s3:GetBucketPublicAccessBlock (moto asks for
  s3:ListBucket), s3:PutEncryptionConfiguration, s3:PutBucketOwnershipControls, s3:PutBucketPublicAccessBlock (moto
  asks for s3:CreateBucket), s3:ListBucket for HeadBucket and sqs:ChangeMessageVisibility for its batch (moto asks
  for s3:HeadBucket and sqs:ChangeMessageVisibilityBatch, which IAM does not have);
- what AWS authorises inside a call, never as a request of its own: iam:PassRole (CreateDeliveryStream,
  UpdateDestination, PutSubscriptionFilter), ec2:CreateTags (CreateFlowLogs' tags), logs:CreateLogDelivery and its
  siblings (flow logs and query logs to S3), cloudfront:AllowVendedLogDeliveryForResource (PutDeliverySource),
  kms:CreateGrant (a stream on a customer key), ec2:DescribeVpcs (the Resolver's dependent action);
- sts:GetCallerIdentity, which moto, as AWS, always allows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from socfeeds import policies
from socfeeds.arns import CLOUDTRAIL_SERVICE, Arns
from socfeeds.policies import Document, Statement
from socfeeds.settings import (
    _PRINCIPAL_ARN_RE,
    CloudFrontSource,
    CloudTrailSource,
    FirehoseFeed,
    FlowLogSource,
    RdsLogsSource,
    ResolverQueryLogSource,
    S3Feed,
    Settings,
)
from tasks.buckets import feed_buckets
from tasks.firehose import ERROR_LOG_STREAM, FAILED_PREFIX, error_bucket
from tasks.kms import feed_keys
from tasks.rds import distribution_arn, error_log_group, rendered
from tasks.reader import _policy_arn, reader_principal

BUCKET_READS = ("s3:GetBucketLocation", "s3:GetBucketNotification", "s3:GetBucketOwnershipControls",
                "s3:GetBucketPolicy", "s3:GetBucketPublicAccessBlock", "s3:GetBucketVersioning",
                "s3:GetEncryptionConfiguration", "s3:GetLifecycleConfiguration", "s3:ListBucket")
BUCKET_WRITES = ("s3:CreateBucket", "s3:PutBucketOwnershipControls", "s3:PutBucketPolicy",
                 "s3:PutBucketPublicAccessBlock", "s3:PutEncryptionConfiguration", "s3:PutLifecycleConfiguration")
ROLE_READS = ("iam:GetRole", "iam:GetRolePolicy", "iam:ListAttachedRolePolicies", "iam:ListRolePolicies")
ROLE_WRITES = ("iam:CreateRole", "iam:PutRolePolicy", "iam:UpdateAssumeRolePolicy")
USER_READS = ("iam:GetUser", "iam:GetUserPolicy", "iam:ListAttachedUserPolicies", "iam:ListUserPolicies")
LOG_DELIVERY_TO_S3 = ("logs:CreateLogDelivery", "logs:DeleteLogDelivery")  # VPC User Guide, flow logs to S3
QUERY_LOG_DELIVERY = (*LOG_DELIVERY_TO_S3, "logs:GetLogDelivery", "logs:ListLogDeliveries", "logs:UpdateLogDelivery")
ROTATION_KEY_ACTIONS = ("iam:CreateAccessKey", "iam:DeleteAccessKey", "iam:ListUserTags", "iam:TagUser",
                        "iam:UntagUser", "iam:UpdateAccessKey")
ROTATION_SECRET_ACTIONS = ("secretsmanager:CreateSecret", "secretsmanager:DescribeSecret",
                           "secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue",
                           "secretsmanager:TagResource", "secretsmanager:UntagResource",
                           "secretsmanager:UpdateSecretVersionStage")

MANAGED_POLICY_MAX_CHARS = 6_144  # IAM quota: a managed policy's document, whitespace not counted
Wanted = dict[str, set[str]]  # resource -> the actions needed on it


class Grants:
    """Statements built by Sid from (actions, resources) in any order, then grouped so each statement names the
    resources that need exactly the same actions: every resource gets what the code does to it, nothing more."""

    def __init__(self) -> None:
        self._wanted: dict[str, Wanted] = {}
        self._conditions: dict[str, dict[str, Any]] = {}

    def allow(self, sid: str, actions: Iterable[str], resources: Iterable[str],
              condition: dict[str, Any] | None = None) -> None:
        wanted = set(actions)
        for resource in resources:
            self._wanted.setdefault(sid, {}).setdefault(resource, set()).update(wanted)
        if condition:
            self._conditions[sid] = condition

    def statements(self) -> list[Statement]:
        statements: list[Statement] = []
        for sid, wanted in self._wanted.items():
            by_actions: dict[tuple[str, ...], list[str]] = {}
            for resource, needed in wanted.items():
                if needed:
                    by_actions.setdefault(tuple(sorted(needed)), []).append(resource)
            for n, (actions, resources) in enumerate(sorted(by_actions.items())):
                statement: Statement = {"Sid": sid if n == 0 else f"{sid}{n + 1}", "Effect": "Allow",
                                        "Action": list(actions), "Resource": sorted(resources)}
                if sid in self._conditions:
                    statement["Condition"] = self._conditions[sid]
                statements.append(statement)
        return statements


def trust_policy(tooling_principals: list[str], external_id: str | None) -> Document:
    """Only these tooling-account roles or users may assume the target role; with the external id when given
    (the confused-deputy guard for a role a third party's tooling assumes)."""
    if not tooling_principals:
        raise ValueError("tooling_principals is empty: name the role ARN(s) the flows run as in the tooling account")
    bad = [arn for arn in tooling_principals if not _PRINCIPAL_ARN_RE.match(arn)]
    if bad:
        raise ValueError(f"{bad} are not IAM role or user ARNs (arn:aws:iam::<account>:role/<name>); the account "
                         "root and wildcards are refused")
    statement: Statement = {"Sid": "SocfeedsToolingAssumesTarget", "Effect": "Allow",
                            "Principal": {"AWS": sorted(set(tooling_principals))}, "Action": "sts:AssumeRole"}
    if external_id:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return policies.document([statement])


def verify_policy(settings: Settings) -> Document:
    """Reads only (Get, List, Describe): what verify-feeds, resolve and a dry-run provision-feeds call."""
    return policies.document(_verify(settings).statements())


def provision_policy(settings: Settings) -> Document:
    """The verify statements as they are, then provision's writes, the canary's and the rotation's needs."""
    return policies.document([*verify_policy(settings)["Statement"], *_provision(settings).statements()])


def documents(settings: Settings, tooling_principals: list[str], external_id: str | None) -> dict[str, Document]:
    """Everything a security team needs to create the target role: its trust, then the read-only grant, then the
    grant that also provisions."""
    return {"trust": trust_policy(tooling_principals, external_id), "verify": verify_policy(settings),
            "provision": provision_policy(settings)}


def attachable(document: Document, max_chars: int = MANAGED_POLICY_MAX_CHARS) -> list[Document]:
    """The document as managed policies within IAM's size quota, statements whole and in order: a full catalog's
    provision grant is about twice the quota (and more than a role's 10,240 characters of inline policy)."""
    parts: list[list[Statement]] = [[]]
    for statement in policies.as_list(document["Statement"]):
        if parts[-1] and size(policies.document([*parts[-1], statement])) > max_chars:
            parts.append([])
        parts[-1].append(statement)
    documents = [policies.document(part) for part in parts]
    too_large = [str(d["Statement"][0].get("Sid")) for d in documents if size(d) > max_chars]
    if too_large:
        raise ValueError(f"statement {too_large} alone is over {max_chars} characters")
    return documents


def size(document: Document) -> int:
    """Characters as IAM counts them for its quotas (no whitespace; none occurs inside these documents' strings)."""
    return len(json.dumps(document, separators=(",", ":")))


# --- what the settings name ------------------------------------------------------------------

def _rds(settings: Settings, feeds: Iterable[S3Feed]) -> list[tuple[S3Feed, RdsLogsSource]]:
    return [(feed, rendered(feed.source, settings, feed)) for feed in feeds if isinstance(feed.source, RdsLogsSource)]


def _sources(feeds: Iterable[S3Feed], kind: type) -> list[Any]:
    return [feed.source for feed in feeds if isinstance(feed.source, kind)]


def _trails(settings: Settings, feeds: Iterable[S3Feed]) -> list[CloudTrailSource]:
    """The trails this account wires (not another account's organization trail writing its bucket)."""
    return _sources((f for f in feeds if f.wires_source(settings.account_id)), CloudTrailSource)


def _group(arns: Arns, name: str) -> str:
    """AWS authorises a log group's own actions on `log-group:NAME:*` (auth_fidelity.py has the sources)."""
    return f"{arns.log_group(name)}:*"


def _queues(arns: Arns, feeds: Iterable[S3Feed]) -> list[str]:
    return [arns.queue(name) for feed in feeds for name in (feed.queue, feed.dlq_name)]


def _keys(grants: Grants, sid: str, actions: Iterable[str], keys: Iterable[str],
          condition: dict[str, Any] | None = None) -> None:
    """Keys by ARN: IAM authorises a key only by its own ARN, never an alias's, so the settings must be resolved."""
    keys = sorted(set(keys))
    aliases = [key for key in keys if ":key/" not in key]
    if aliases:
        raise ValueError(f"{aliases} name KMS keys by alias, which IAM never matches: render the documents from "
                         "resolved settings (socfeeds.resolve.resolve, as every flow run does)")
    grants.allow(sid, actions, keys, condition)


# --- read-only: verify-feeds, every run's start, a dry-run provision --------------------------

def _verify(settings: Settings) -> Grants:
    arns = Arns(settings.region, settings.account_id)
    p, account = arns.partition, settings.account_id
    s3 = list(settings.s3_feeds.values())
    sourced = [*s3, *settings.delivering_feeds.values()]  # those deliver into another account's bucket
    firehose = list(settings.firehose_feeds.values())
    rds = _rds(settings, s3)
    grants = Grants()

    unscoped = {"sts:GetCallerIdentity", "iam:ListPolicies", "logs:DescribeLogGroups"}
    if s3:
        unscoped.add("cloudwatch:GetMetricData")  # the feed queues' AWS/SQS metrics: a stalled consumer shows by age
    trails = _trails(settings, sourced)
    if trails:
        unscoped.add("cloudtrail:DescribeTrails")
        grants.allow("SocfeedsVerifyTrails", ("cloudtrail:GetTrail", "cloudtrail:GetTrailStatus"),
                      [f"arn:{p}:cloudtrail:*:{account}:trail/*"])  # a multi-region trail's home may be elsewhere
    if any(trail.organization_id for trail in trails):  # the Organization an organization trail needs
        unscoped |= {"organizations:DescribeOrganization", "organizations:ListAWSServiceAccessForOrganization"}
    if _sources(sourced, FlowLogSource):
        unscoped.add("ec2:DescribeFlowLogs")
    if _sources(sourced, ResolverQueryLogSource):
        unscoped |= {"route53resolver:ListResolverQueryLogConfigs",
                     "route53resolver:ListResolverQueryLogConfigAssociations", "ec2:DescribeVpcs"}
    if _sources(s3, CloudFrontSource):
        unscoped |= {"logs:DescribeDeliveries", "logs:DescribeDeliveryDestinations", "logs:DescribeDeliverySources"}
    if rds:
        unscoped.add("firehose:ListDeliveryStreams")
    grants.allow("SocfeedsVerifyWithoutResources", unscoped, ["*"])  # actions AWS authorises on no resource

    buckets = [arns.bucket(bucket) for feed in s3 for bucket in feed.buckets]
    grants.allow("SocfeedsVerifyBuckets", BUCKET_READS, [*buckets, *(arns.bucket(f.error_bucket) for f in firehose)])
    grants.allow("SocfeedsVerifyQueues", ("sqs:GetQueueAttributes", "sqs:GetQueueUrl"), _queues(arns, s3))
    # checks start from the key a resource actually uses, whichever key of the account that is
    grants.allow("SocfeedsVerifyKeys", ("kms:DescribeKey", "kms:GetKeyPolicy"),
                 [f"arn:{p}:kms:{arns.region}:{account}:key/*"])
    grants.allow("SocfeedsVerifyRoles", ROLE_READS, [arns.role("*")])  # adopted roles are found by what they do
    grants.allow("SocfeedsVerifyPolicies", ("iam:GetPolicy", "iam:GetPolicyVersion"),
                 [arns.iam_policy("/", "*"), f"arn:{p}:iam::aws:policy/*"])  # whatever is attached to a role
    kind, name = reader_principal(settings)
    if kind == "user":
        grants.allow("SocfeedsVerifyReaderUser", USER_READS, [arns.user(settings.reader.path, name)])

    groups: Wanted = {}
    for feed in firehose:
        groups.setdefault(_group(arns, feed.log_group), set()).add("logs:DescribeSubscriptionFilters")
        groups.setdefault(_group(arns, feed.error_log_group), set()).add("logs:DescribeLogStreams")
    for _, source in rds:
        for group in source.log_groups:
            groups.setdefault(_group(arns, group), set()).add("logs:DescribeSubscriptionFilters")
        groups.setdefault(_group(arns, error_log_group(source.delivery_stream)), set()).add("logs:DescribeLogStreams")
    for resource, actions in groups.items():
        grants.allow("SocfeedsVerifyLogGroups", actions, [resource])
    if firehose or rds:  # streams are found by the log group feeding them or the bucket they fill
        grants.allow("SocfeedsVerifyStreams", ("firehose:DescribeDeliveryStream",), [arns.delivery_stream("*")])
    grants.allow("SocfeedsVerifyClusters", ("eks:DescribeCluster",),
                 [arns.cluster(str(f.cluster_name)) for f in firehose])
    # the only secret read-only runs read: the XSIAM HTTP token, to see that it has an api_key
    grants.allow("SocfeedsVerifyEndpointTokens", ("secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"),
                 [arns.secret(f.token_secret_name) for f in firehose])
    parameters = [settings.xsiam.firehose_url_parameter] if settings.xsiam.firehose_url_parameter and any(
        f.endpoint_url is None for f in firehose) else []
    if kind == "role":
        parameters.append(settings.reader.external_id_parameter)
    grants.allow("SocfeedsVerifyParameters", ("ssm:GetParameter",), [arns.parameter(n) for n in parameters])
    return grants


def _audit(grants: Grants, settings: Settings, arns: Arns) -> None:
    """audit-feeds reads log data, so it is not in the read-only grant: the sampled objects (listing is
    BUCKET_READS' s3:ListBucket) with their keys, and the EKS log group's events."""
    feeds = list(settings.s3_feeds.values())
    grants.allow("SocfeedsAuditObjects", ("s3:GetObject",),
                 [f"{arns.bucket(bucket)}/*" for feed in feeds for bucket in feed.buckets])
    _keys(grants, "SocfeedsAuditDecrypt", ("kms:Decrypt",), [feed.kms_key_arn for feed in feeds if feed.kms_key_arn])
    grants.allow("SocfeedsAuditLogEvents", ("logs:FilterLogEvents",),
                 [_group(arns, feed.log_group) for feed in settings.firehose_feeds.values()])


# --- provision-feeds, feed-canary, rotate-reader-keys ------------------------------------------

def _provision(settings: Settings) -> Grants:
    arns = Arns(settings.region, settings.account_id)
    shared = settings.managed_by != "terraform"  # the reader, the canary writer, key policies
    s3 = [feed for feed in settings.s3_feeds.values() if feed.managed_by != "terraform"]
    delivering = [feed for feed in settings.delivering_feeds.values() if feed.managed_by != "terraform"]
    firehose = [feed for feed in settings.firehose_feeds.values() if feed.managed_by != "terraform"]
    rds = _rds(settings, s3)
    grants = Grants()
    _provision_feeds(grants, settings, arns, s3, firehose, rds)
    _provision_sources(grants, settings, arns, [*s3, *delivering])

    roles: Wanted = {}
    if shared:
        roles[arns.role(settings.canary.writer_role)] = set(ROLE_WRITES)
    for feed in firehose:  # tagged at creation: socfeeds converges only roles it made
        for role in (feed.logs_role, feed.firehose_role):
            roles[arns.role(role)] = {*ROLE_WRITES, "iam:TagRole"}
    for _, source in rds:
        for role in (source.logs_role, source.firehose_role):
            roles[arns.role(role)] = set(ROLE_WRITES)
    kind, name = reader_principal(settings)
    reader_arn = arns.role(name) if kind == "role" else arns.user(settings.reader.path, name)
    if shared and kind == "role":
        roles[reader_arn] = {"iam:CreateRole", "iam:UpdateAssumeRolePolicy"}  # permissions: the managed policy
    for resource, actions in roles.items():
        grants.allow("SocfeedsProvisionRoles", actions, [resource])
    grants.allow("SocfeedsProvisionPassRoles", ("iam:PassRole",),  # to Firehose and to CloudWatch Logs, never more
                 [arns.role(role) for feed in firehose for role in (feed.logs_role, feed.firehose_role)]
                 + [arns.role(role) for _, source in rds for role in (source.logs_role, source.firehose_role)])
    if shared:
        policy_arn = _policy_arn(settings)
        if kind == "user":
            grants.allow("SocfeedsProvisionReaderUser", ("iam:CreateUser",), [reader_arn])
        grants.allow("SocfeedsProvisionReaderPolicy", ("iam:CreatePolicy", "iam:CreatePolicyVersion",
                                                       "iam:DeletePolicyVersion", "iam:ListPolicyVersions"),
                     [policy_arn])
        grants.allow("SocfeedsProvisionAttachReaderPolicy",  # the reader's own policy only: no other grant reaches it
                     ("iam:AttachRolePolicy" if kind == "role" else "iam:AttachUserPolicy",), [reader_arn],
                     {"ArnEquals": {"iam:PolicyARN": policy_arn}})
        if settings.kms_key_policies == "merge":
            _keys(grants, "SocfeedsProvisionKeyPolicies", ("kms:PutKeyPolicy",), feed_keys(settings))

    _audit(grants, settings, arns)
    _canary(grants, settings, arns)
    _replay(grants, settings, arns)
    grants.allow("SocfeedsRotationReaderKeys", ("iam:GetAccessKeyLastUsed", "iam:GetUser", "iam:ListAccessKeys",
                                                *(ROTATION_KEY_ACTIONS if kind == "user" else ())),
                 [arns.user(settings.reader.path, settings.reader.user_name)])  # role mode: reports leftover keys
    if kind == "user":
        grants.allow("SocfeedsRotationReaderSecret", ROTATION_SECRET_ACTIONS,
                     [arns.secret(settings.reader.secret_name)])
    return grants


def _provision_feeds(grants: Grants, settings: Settings, arns: Arns, s3: list[S3Feed], firehose: list[FirehoseFeed],
                     rds: list[tuple[S3Feed, RdsLogsSource]]) -> None:
    """Buckets, queues, and the EKS and RDS paths through CloudWatch Logs and Firehose."""
    for feed in s3:
        for spec in feed_buckets(feed, settings):
            grants.allow("SocfeedsProvisionBuckets", [*BUCKET_WRITES, "s3:PutBucketNotification",
                                                      *(["s3:PutBucketVersioning"] if spec.versioning else [])],
                         [spec.arn])
    for stream_feed in firehose:
        backup = error_bucket(stream_feed, settings)
        grants.allow("SocfeedsProvisionBuckets", [*BUCKET_WRITES, *(["s3:PutBucketVersioning"] if backup.versioning
                                                                    else [])], [backup.arn])
    grants.allow("SocfeedsProvisionQueues", ("sqs:CreateQueue", "sqs:SetQueueAttributes"), _queues(arns, s3))

    groups: Wanted = {}
    streams: list[str] = []
    for stream_feed in firehose:
        groups[_group(arns, stream_feed.log_group)] = {"logs:CreateLogGroup", "logs:PutRetentionPolicy",
                                                       "logs:PutSubscriptionFilter"}
        groups[_group(arns, stream_feed.error_log_group)] = {"logs:CreateLogGroup", "logs:PutRetentionPolicy"}
        groups[arns.log_stream(stream_feed.error_log_group, ERROR_LOG_STREAM)] = {"logs:CreateLogStream"}
        streams.append(stream_feed.delivery_stream)
    for _, source in rds:
        for group in source.log_groups:  # adopted, or made before RDS exports to it
            groups[_group(arns, group)] = {"logs:CreateLogGroup", "logs:PutSubscriptionFilter",
                                           *(["logs:PutRetentionPolicy"] if source.log_retention_days else [])}
        error_group = error_log_group(source.delivery_stream)
        groups[_group(arns, error_group)] = {"logs:CreateLogGroup", "logs:PutRetentionPolicy"}
        groups[arns.log_stream(error_group, ERROR_LOG_STREAM)] = {"logs:CreateLogStream"}
        streams.append(source.delivery_stream)
    for resource, actions in groups.items():
        grants.allow("SocfeedsProvisionLogGroups", actions, [resource])
    grants.allow("SocfeedsProvisionStreams", ("firehose:CreateDeliveryStream", "firehose:StartDeliveryStreamEncryption",
                                              "firehose:UpdateDestination"), [arns.delivery_stream(s) for s in streams])
    grants.allow("SocfeedsProvisionClusterLogging", ("eks:UpdateClusterConfig",),
                 [arns.cluster(str(feed.cluster_name)) for feed in firehose])
    _keys(grants, "SocfeedsProvisionStreamKeys", ("kms:CreateGrant",),  # Firehose's grant on a customer key
          [feed.kms_key_arn for feed in firehose if feed.kms_key_arn], {"Bool": {"kms:GrantIsForAWSResource": "true"}})


def _provision_sources(grants: Grants, settings: Settings, arns: Arns, s3: list[S3Feed]) -> None:
    """The AWS services that write into the feed buckets (this account's, or another's for a delivering feed):
    trails, flow logs, query logging, CloudFront's delivery."""
    p, account, region = arns.partition, arns.account_id, arns.region
    unscoped: set[str] = set()
    sources = _trails(settings, s3)
    trails = [name for source in sources for name in (source.trail_name, source.adopted_trail) if name]
    grants.allow("SocfeedsProvisionTrails", ("cloudtrail:CreateTrail", "cloudtrail:StartLogging",
                                             "cloudtrail:UpdateTrail"), [arns.trail(name) for name in trails])
    if any(source.organization_id for source in sources):
        # CloudTrail User Guide, "Prepare to create a trail for your organization": the Organization's accounts, and
        # CloudTrail's service-linked role, which the first organization trail creates.
        unscoped.add("organizations:ListAccounts")
        linked = f"arn:{p}:iam::{account}:role/aws-service-role/{CLOUDTRAIL_SERVICE}/AWSServiceRoleForCloudTrail"
        grants.allow("SocfeedsProvisionOrganizationTrail", ("iam:GetRole",), [linked])
        grants.allow("SocfeedsProvisionCloudTrailLinkedRole", ("iam:CreateServiceLinkedRole",), [linked],
                     {"StringEquals": {"iam:AWSServiceName": CLOUDTRAIL_SERVICE}})
    flow_logs = _sources(s3, FlowLogSource)
    if flow_logs:
        flow_log = f"arn:{p}:ec2:{region}:{account}:vpc-flow-log/*"
        grants.allow("SocfeedsProvisionFlowLogs", ("ec2:CreateFlowLogs",),
                     [flow_log, *(f"arn:{p}:ec2:{region}:{account}:vpc/{s.vpc_id}" for s in flow_logs)])
        if any(s.replace_mismatched for s in flow_logs):
            grants.allow("SocfeedsProvisionFlowLogs", ("ec2:DeleteFlowLogs",), [flow_log])
        grants.allow("SocfeedsProvisionFlowLogTags", ("ec2:CreateTags",), [flow_log],
                     {"StringEquals": {"ec2:CreateAction": "CreateFlowLogs"}})  # tags only as a flow log is made
        unscoped |= set(LOG_DELIVERY_TO_S3)
    if _sources(s3, ResolverQueryLogSource):
        unscoped |= {"route53resolver:CreateResolverQueryLogConfig", *QUERY_LOG_DELIVERY}
        grants.allow("SocfeedsProvisionQueryLogging", ("route53resolver:AssociateResolverQueryLogConfig",),
                     [f"arn:{p}:route53resolver:{region}:{account}:resolver-query-log-config/*"])
    grants.allow("SocfeedsProvisionWithoutResources", unscoped, ["*"])
    for feed in s3:
        source = feed.source
        if not isinstance(source, CloudFrontSource) or source.distribution_id is None:
            continue
        logs = f"arn:{p}:logs:{CloudFrontSource.LOGS_REGION}:{account}"  # CloudFront delivers from us-east-1
        grants.allow("SocfeedsProvisionCloudFrontDelivery", ("logs:PutDeliverySource",),
                     [f"{logs}:delivery-source:socfeeds-{source.distribution_id}"])
        grants.allow("SocfeedsProvisionCloudFrontDelivery", ("logs:PutDeliveryDestination",),
                     [f"{logs}:delivery-destination:{f'socfeeds-{feed.bucket}'[:60]}"])
        grants.allow("SocfeedsProvisionCloudFrontDelivery", ("logs:CreateDelivery", "logs:UpdateDeliveryConfiguration"),
                     [f"{logs}:delivery:*", f"{logs}:delivery-source:*", f"{logs}:delivery-destination:*"])
        grants.allow("SocfeedsProvisionCloudFrontLogging", ("cloudfront:AllowVendedLogDeliveryForResource",),
                     [distribution_arn(settings, source.distribution_id)])


def _canary(grants: Grants, settings: Settings, arns: Arns) -> None:
    """feed-canary: it writes as the writer role; as itself it only reads what tells it which leg failed, and takes
    its own notification off the queue of a feed no one else reads."""
    grants.allow("SocfeedsCanaryAssumeWriter", ("sts:AssumeRole",), [arns.role(settings.canary.writer_role)])
    queued = [feed for feed in settings.s3_feeds.values() if feed.canary_strategy == "queue"]
    grants.allow("SocfeedsCanaryQueues", ("sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage"),
                 [arns.queue(feed.queue) for feed in queued])
    rds = [(feed, source) for feed, source in _rds(settings, settings.s3_feeds.values())
           if policies.rds_canary_group(source)]
    firehose = list(settings.firehose_feeds.values())
    grants.allow("SocfeedsCanaryReads", ("s3:GetObject",), [
        *policies.canary_object_arns(settings),
        *(f"{arns.bucket(feed.bucket)}/{source.key_prefix}/*" for feed, source in rds),
        *(f"{arns.bucket(feed.error_bucket)}/{FAILED_PREFIX}*" for feed in firehose)])
    _keys(grants, "SocfeedsCanaryDecrypt", ("kms:Decrypt",), [key for key in (
        *(feed.kms_key_arn for feed in queued), *(feed.kms_key_arn for feed, _ in rds),
        *(feed.kms_key_arn for feed in firehose)) if key])


def _replay(grants: Grants, settings: Settings, arns: Arns) -> None:
    """replay-feed: head the window's objects and read each bucket's owner (the notification names both), send to
    the feed queue (also granted by the queue's SocfeedsReplay statement), move the dead-letter queue's messages back
    (StartMessageMoveTask, or receive and delete where it is unavailable), with the queue keys' data keys."""
    feeds = list(settings.s3_feeds.values())
    buckets = [arns.bucket(bucket) for feed in feeds for bucket in feed.buckets]
    grants.allow("SocfeedsReplayObjects", ("s3:GetObject",), [f"{bucket}/*" for bucket in buckets])
    grants.allow("SocfeedsReplayBucketOwner", ("s3:GetBucketAcl",), buckets)
    grants.allow("SocfeedsReplaySend", ("sqs:SendMessage",), [arns.queue(feed.queue) for feed in feeds])
    grants.allow("SocfeedsReplayRedrive", ("sqs:DeleteMessage", "sqs:ListMessageMoveTasks", "sqs:ReceiveMessage",
                                           "sqs:StartMessageMoveTask"), [arns.queue(feed.dlq_name) for feed in feeds])
    _keys(grants, "SocfeedsReplayQueueKeys", ("kms:Decrypt", "kms:GenerateDataKey"),
          [feed.kms_key_arn for feed in feeds if feed.kms_key_arn])
