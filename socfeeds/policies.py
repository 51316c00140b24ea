"""Every IAM and resource policy document socfeeds writes, and the analysis verify applies to them.

Provision writes these documents and verify compares AWS against the same functions, so there is
one source of truth. Statements socfeeds owns carry a `Socfeeds` Sid prefix; statements of other
owners in a shared policy (a production bucket's existing policy) are kept untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from socfeeds.arns import CLOUDTRAIL_SERVICE, Arns
from socfeeds.formats import EKS_AUDIT_STREAM_PREFIX, RDS_CANARY_LOG_TYPES
from socfeeds.settings import (
    CloudFrontSource,
    CloudTrailSource,
    FlowLogSource,
    RdsLogsSource,
    ResolverQueryLogSource,
    S3Feed,
    Settings,
    canary_key_prefix,
)

Statement = dict[str, Any]
Document = dict[str, Any]

OWNED_SID_PREFIX = "Socfeeds"
VERSION = "2012-10-17"
READER_QUEUE_ACTIONS = (
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
)
READER_OBJECT_ACTIONS = ("s3:GetObject",)
READER_KEY_ACTIONS = ("kms:Decrypt",)
TLS_ONLY_SID = "SocfeedsDenyInsecureTransport"


def document(statements: list[Statement]) -> Document:
    return {"Version": VERSION, "Statement": statements}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def one_or_list(values: list[str]) -> str | list[str]:
    """A policy element of one value is written as the value itself (as AWS's examples and Terraform write it)."""
    return values[0] if len(values) == 1 else values


def canonical(doc: Any) -> Any:
    """A comparable form: one-element lists become scalars and string lists are sorted."""
    if isinstance(doc, dict):
        return {k: canonical(v) for k, v in sorted(doc.items())}
    if isinstance(doc, list):
        items = [canonical(v) for v in doc]
        if len(items) == 1:
            return items[0]
        if all(isinstance(v, str) for v in items):
            return sorted(items)
        return items
    return doc


def parse(policy: str | Mapping[str, Any] | None) -> Document:
    if policy is None:
        return document([])
    return dict(json.loads(policy)) if isinstance(policy, str) else dict(policy)


# --- buckets ---------------------------------------------------------------------------------


def tls_only_statement(bucket_arn: str) -> Statement:
    return {
        "Sid": TLS_ONLY_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def source_write_statements(feed: S3Feed, settings: Settings) -> list[Statement]:
    """The statements that let the feed's AWS log source write into its bucket."""
    arns = Arns(settings.region, settings.account_id)
    bucket_arn = arns.bucket(feed.bucket)
    source = feed.source
    if isinstance(source, CloudTrailSource):
        # An organization trail also writes every member account under AWSLogs/<organization id>/ (CloudTrail User
        # Guide, "Amazon S3 bucket policy for an organization trail"), from the account the trail lives in.
        trail_account = feed.trail_account(settings.account_id)
        trail = {"aws:SourceArn": feed.trail_arn(settings.account_id, settings.region)}
        principal = {"Service": CLOUDTRAIL_SERVICE}
        writes = [f"{bucket_arn}/AWSLogs/{trail_account}/*"]
        if source.organization_id:
            writes.append(f"{bucket_arn}/AWSLogs/{source.organization_id}/*")
        return [
            {"Sid": "SocfeedsCloudTrailAclCheck", "Effect": "Allow", "Principal": principal,
             "Action": "s3:GetBucketAcl", "Resource": bucket_arn, "Condition": {"StringEquals": trail}},
            {"Sid": "SocfeedsCloudTrailWrite", "Effect": "Allow", "Principal": principal,
             "Action": "s3:PutObject", "Resource": one_or_list(writes),
             "Condition": {"StringEquals": {"s3:x-amz-acl": "bucket-owner-full-control", **trail}}},
        ]
    if isinstance(source, FlowLogSource | ResolverQueryLogSource):
        # A central bucket names every account that delivers into it (VPC User Guide, "Amazon S3 bucket
        # permissions for flow logs": aws:SourceAccount and aws:SourceArn lists, one AWSLogs/<account>/ each).
        accounts = [settings.account_id, *feed.source_accounts]
        sources = [Arns(settings.region, account).log_delivery_sources() for account in accounts]
        scope = {
            "StringEquals": {"aws:SourceAccount": one_or_list(accounts)},
            "ArnLike": {"aws:SourceArn": one_or_list(sources)},
        }
        principal = {"Service": "delivery.logs.amazonaws.com"}
        writes = [f"{bucket_arn}/AWSLogs/{account}/*" for account in accounts]
        return [
            {"Sid": "SocfeedsLogDeliveryAclCheck", "Effect": "Allow", "Principal": principal,
             "Action": ["s3:GetBucketAcl", "s3:ListBucket"], "Resource": bucket_arn, "Condition": scope},
            {"Sid": "SocfeedsLogDeliveryWrite", "Effect": "Allow", "Principal": principal,
             "Action": "s3:PutObject", "Resource": one_or_list(writes),
             "Condition": {**scope, "StringEquals": {**scope["StringEquals"],
                                                     "s3:x-amz-acl": "bucket-owner-full-control"}}},
        ]
    if isinstance(source, CloudFrontSource):
        # Standard logging (v2): CloudWatch Logs delivers from a delivery source in us-east-1, under AWSLogs/<acct>/
        # CloudFront/ (CloudWatch Logs User Guide, "Logs sent to Amazon S3"); the bucket ACL is only read.
        principal = {"Service": "delivery.logs.amazonaws.com"}
        delivery = Arns(CloudFrontSource.LOGS_REGION, settings.account_id).log_delivery_sources()
        scope = {"StringEquals": {"aws:SourceAccount": settings.account_id}, "ArnLike": {"aws:SourceArn": delivery}}
        return [
            {"Sid": "SocfeedsCloudFrontAclCheck", "Effect": "Allow", "Principal": principal,
             "Action": "s3:GetBucketAcl", "Resource": bucket_arn, "Condition": scope},
            {"Sid": "SocfeedsCloudFrontWrite", "Effect": "Allow", "Principal": principal, "Action": "s3:PutObject",
             "Resource": f"{bucket_arn}/AWSLogs/{settings.account_id}/CloudFront/*",
             "Condition": {**scope, "StringEquals": {**scope["StringEquals"],
                                                     "s3:x-amz-acl": "bucket-owner-full-control"}}},
        ]
    return []


def merge_owned(existing: Document, owned: list[Statement]) -> Document:
    """Replace the statements socfeeds owns and keep everybody else's; an owned statement another owner already
    wrote (the same grant under another Sid) is recognised and not added again."""
    others = [s for s in as_list(existing.get("Statement", [])) if not is_owned(s)]
    theirs = [_grant(s) for s in others]
    return {**existing, "Version": VERSION, "Statement": [*others, *(s for s in owned if _grant(s) not in theirs)]}


def _grant(statement: Statement) -> Any:
    return canonical({k: v for k, v in statement.items() if k != "Sid"})


def describe_merge(current: Document, merged: Document) -> str:
    """What a policy write does, statement by statement, so a plan shows nothing of other owners is lost."""
    before = as_list(current.get("Statement", []))
    after = as_list(merged.get("Statement", []))
    kept = [str(s.get("Sid", "(no Sid)")) for s in before if not is_owned(s)]
    ours = [str(s.get("Sid")) for s in after if is_owned(s)]
    return f"writes {', '.join(ours) or 'no socfeeds statement'}; keeps {', '.join(kept) or 'nothing else'}"


SERVICE_WRITERS = {"cloudtrail.amazonaws.com", "delivery.logs.amazonaws.com", "logging.s3.amazonaws.com",
                   "firehose.amazonaws.com", "config.amazonaws.com"}


def unscoped_service_writes(doc: Document) -> list[str]:
    """Statements (whoever wrote them) letting an AWS service write objects without aws:SourceArn or
    aws:SourceAccount: the confused deputy, another account's trail or flow log could write here."""
    found = []
    for statement in as_list(doc.get("Statement", [])):
        services = set(services_of(statement)) & SERVICE_WRITERS
        writes = any(fnmatchcase("s3:putobject", str(a).lower()) for a in as_list(statement.get("Action", [])))
        conditions = _flatten_conditions(statement.get("Condition", {}))
        if statement.get("Effect") == "Allow" and services and writes and not (
                {"aws:sourcearn", "aws:sourceaccount"} & set(conditions)):
            found.append(f"{statement.get('Sid', '(no Sid)')} ({', '.join(sorted(services))})")
    return found


def is_owned(statement: Statement) -> bool:
    return str(statement.get("Sid", "")).startswith(OWNED_SID_PREFIX)


def has_tls_only_deny(doc: Document, bucket_arn: str) -> bool:
    """Any Deny on insecure transport covering the bucket and its objects, whoever wrote it."""
    for statement in as_list(doc.get("Statement", [])):
        condition = statement.get("Condition", {}).get("Bool", {})
        resources = set(as_list(statement.get("Resource", [])))
        if (statement.get("Effect") == "Deny" and str(condition.get("aws:SecureTransport")).lower() == "false"
                and {bucket_arn, f"{bucket_arn}/*"} <= resources):
            return True
    return False


def missing_statements(doc: Document, expected: Iterable[Statement]) -> list[str]:
    """Sids of expected statements whose grant (compared canonically, whatever its Sid) is not in the document."""
    present = [_grant(s) for s in as_list(doc.get("Statement", []))]
    return [str(s["Sid"]) for s in expected if _grant(s) not in present]


# --- queues ----------------------------------------------------------------------------------


QUEUE_SID = "SocfeedsS3Notifications"


def queue_statement(queue_arn: str, bucket_arns: list[str], account_id: str) -> Statement:
    """Only S3, only from the feed's buckets in this account (the confused-deputy guard), may send."""
    return {
        "Sid": QUEUE_SID,
        "Effect": "Allow",
        "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {
            "ArnEquals": {"aws:SourceArn": one_or_list(sorted(bucket_arns))},
            "StringEquals": {"aws:SourceAccount": account_id},
        },
    }


def queue_policy(queue_arn: str, bucket_arns: list[str], account_id: str) -> Document:
    return document([queue_statement(queue_arn, bucket_arns, account_id)])


REPLAY_SID = "SocfeedsReplay"


def replay_statement(queue_arn: str, senders: Sequence[str]) -> Statement:
    """replay-feed re-announces objects as the flows' own identity: exactly these principals, SendMessage only, this
    queue only. The one sender besides S3 that queue_policy_problems accepts."""
    return {"Sid": REPLAY_SID, "Effect": "Allow", "Principal": {"AWS": sorted(senders)},
            "Action": "sqs:SendMessage", "Resource": queue_arn}


def replay_senders(settings: Settings) -> list[str]:
    """Who replays: the flows' identity as the settings declare it (canary.writer_trusted_principals, which every run
    resolves to the identity the flows run as when unset). Unresolved settings (a step called outside a flow run)
    name nobody, and no replay statement is written or expected."""
    return list(settings.canary.writer_trusted_principals or [])


def has_replay_statement(doc: Document, queue_arn: str, senders: Sequence[str]) -> bool:
    wanted = _grant(replay_statement(queue_arn, senders))
    return any(_grant(s) == wanted for s in as_list(doc.get("Statement", [])))


def merged_queue_policy(current: Document, queue_arn: str, bucket_arns: list[str], account_id: str,
                        senders: Sequence[str] = ()) -> Document:
    """Every other owner's statement kept; socfeeds' statement added, unless another statement already admits
    exactly what it would (S3, these buckets, this account): recognised, never duplicated. With `senders`, the
    replay statement too (likewise recognised when another owner wrote it)."""
    foreign = [s for s in as_list(current.get("Statement", [])) if not is_owned(s)]
    owned = [queue_statement(queue_arn, bucket_arns, account_id)] if queue_policy_problems(
        document(foreign), queue_arn, bucket_arns, account_id, senders) else []
    if senders:
        owned.append(replay_statement(queue_arn, senders))
    if not owned:
        return {**current, "Version": VERSION, "Statement": foreign}
    return merge_owned(current, owned)


def _s3_sends(statement: Statement) -> bool:
    principal = statement.get("Principal")
    services = as_list(principal.get("Service", [])) if isinstance(principal, dict) else []
    return statement.get("Effect") == "Allow" and "s3.amazonaws.com" in services and any(
        fnmatchcase("sqs:sendmessage", str(a).lower()) for a in as_list(statement.get("Action", [])))


def queue_policy_problems(doc: Document, queue_arn: str, bucket_arns: list[str], account_id: str,
                          senders: Sequence[str] = ()) -> list[str]:
    """Why a queue policy does not let S3 send from each feed bucket, only for this account; empty when it does.

    Statements of other owners are judged too: one that lets S3 send without aws:SourceAccount, or from a bucket
    that is not the feed's, is the confused deputy this guards against; one that lets any other principal send
    could forge notifications, except exactly the replay statement for `senders` (replay_statement)."""
    problems: list[str] = []
    admitted: set[str] = set()
    replay = _grant(replay_statement(queue_arn, senders)) if senders else None
    for statement in as_list(doc.get("Statement", [])):
        sid = statement.get("Sid", "(no Sid)")
        if statement.get("Effect") != "Allow" or _grant(statement) == replay:
            continue
        if not _s3_sends(statement):
            if any(fnmatchcase("sqs:sendmessage", str(a).lower()) for a in as_list(statement.get("Action", []))):
                problems.append(f"{sid}: lets {statement.get('Principal')!r} send messages (forged notifications)")
            continue
        conditions = _flatten_conditions(statement.get("Condition", {}))
        sources = set(as_list(conditions.get("aws:sourcearn", [])))
        if not sources:
            problems.append(f"{sid}: lets S3 send with no aws:SourceArn (any bucket of any account)")
        elif sources - set(bucket_arns):
            problems.append(f"{sid}: aws:SourceArn {sorted(sources - set(bucket_arns))} is not a feed bucket")
        if conditions.get("aws:sourceaccount") != account_id:
            problems.append(f"{sid}: aws:SourceAccount condition is {conditions.get('aws:sourceaccount')!r}, "
                            f"expected {account_id}")
        elif canonical(statement.get("Resource")) in {queue_arn, "*"}:
            admitted |= sources
    missing = [arn for arn in bucket_arns if arn not in admitted]
    if missing:
        problems.append(f"no statement lets s3.amazonaws.com send for {missing} with aws:SourceAccount "
                        f"{account_id} (their notifications are dropped)")
    return problems


def _flatten_conditions(condition: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Condition keys (lower-cased) to their single value, across Equals/Like operators."""
    flat: dict[str, Any] = {}
    for operator, pairs in condition.items():
        if operator.removesuffix("IfExists") in {"ArnEquals", "ArnLike", "StringEquals", "StringLike"}:
            for key, value in pairs.items():
                flat[key.lower()] = canonical(value)
    return flat


# --- the reader ------------------------------------------------------------------------------


def reader_policy(settings: Settings) -> Document:
    """Exactly what XSIAM's S3 data source needs on every feed, and nothing more."""
    arns = Arns(settings.region, settings.account_id)
    feeds = settings.s3_feeds.values()
    statements: list[Statement] = [
        {"Sid": "SocfeedsReadQueues", "Effect": "Allow", "Action": list(READER_QUEUE_ACTIONS),
         "Resource": sorted(arns.queue(f.queue) for f in feeds)},
        {"Sid": "SocfeedsReadObjects", "Effect": "Allow", "Action": list(READER_OBJECT_ACTIONS),
         "Resource": sorted(f"{arns.bucket(bucket)}/*" for f in feeds for bucket in f.buckets)},
    ]
    keys = sorted({f.kms_key_arn for f in feeds if f.kms_key_arn})
    if keys:
        statements.append({"Sid": "SocfeedsDecrypt", "Effect": "Allow", "Action": list(READER_KEY_ACTIONS),
                           "Resource": keys})
    return document(statements)


def reader_role_trust(trusted_account: str, external_id: str) -> Document:
    """Only Palo Alto's account, and only with this tenant's external id (the confused-deputy guard)."""
    return document([{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{trusted_account}:root"},
                      "Action": "sts:AssumeRole", "Condition": {"StringEquals": {"sts:ExternalId": external_id}}}])


@dataclass
class GrantReview:
    """How a principal's Allow statements compare with the grants it should have."""

    missing: list[str] = field(default_factory=list)
    excess: list[str] = field(default_factory=list)


def review_grants(statements: Iterable[Statement], expected: Document) -> GrantReview:
    """Compare effective Allow grants with the expected document: missing, and anything more.

    Wildcards, NotAction/NotResource and actions or resources outside the expected document are
    all 'excess'. Deny statements only narrow access and are ignored.
    """
    wanted = _grants(as_list(expected["Statement"]))
    review = GrantReview()
    held: set[tuple[str, str]] = set()
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        sid = statement.get("Sid", "(no Sid)")
        for key in ("NotAction", "NotResource"):
            if key in statement:
                review.excess.append(f"{sid}: {key} grants everything not listed")
        for action, resource in _grants([statement]):
            if "*" in action or resource == "*":
                review.excess.append(f"{sid}: wildcard grant {action} on {resource}")
            elif (action, resource) not in wanted:
                review.excess.append(f"{sid}: {action} on {resource} is not needed by XSIAM")
            held.add((action, resource))
    review.missing = [f"{action} on {resource}" for action, resource in sorted(wanted - held)]
    return review


def _grants(statements: Iterable[Statement]) -> set[tuple[str, str]]:
    """(action, resource) pairs; IAM action names are case-insensitive, so they are lower-cased."""
    return {
        (action.lower(), resource)
        for s in statements
        for action in as_list(s.get("Action", []))
        for resource in as_list(s.get("Resource", []))
    }


# --- the EKS -> Firehose feed ----------------------------------------------------------------


def trust(service: str, conditions: dict[str, Any]) -> Document:
    return document([{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole",
                      "Condition": conditions}])


def logs_role_trust(region: str, account_id: str) -> Document:
    """CloudWatch Logs in this region, acting for this account's log groups only."""
    return trust(f"logs.{region}.amazonaws.com",
                 {"StringLike": {"aws:SourceArn": Arns(region, account_id).log_delivery_sources()}})


def logs_role_policy(stream_arn: str) -> Document:
    return document([{"Sid": "SocfeedsPutToStream", "Effect": "Allow",
                      "Action": ["firehose:PutRecord", "firehose:PutRecordBatch"], "Resource": stream_arn}])


def firehose_role_trust(account_id: str) -> Document:
    """Firehose acting for this account only: the external id Firehose passes, and aws:SourceAccount (the
    confused-deputy guard, Firehose developer guide "Cross-service confused deputy prevention")."""
    return trust("firehose.amazonaws.com", {"StringEquals": {"sts:ExternalId": account_id,
                                                              "aws:SourceAccount": account_id}})


def firehose_role_policy(bucket_arn: str, log_stream_arn: str, secret_arn: str, kms_key_arn: str | None) -> Document:
    """Only the error bucket, the stream's error log stream, the token secret and the KMS key."""
    statements: list[Statement] = [  # bucket-level and object-level actions each on their own resource form
        {"Sid": "SocfeedsErrorBucket", "Effect": "Allow",
         "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"], "Resource": bucket_arn},
        {"Sid": "SocfeedsErrorObjects", "Effect": "Allow",
         "Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"], "Resource": f"{bucket_arn}/*"},
        {"Sid": "SocfeedsErrorLogging", "Effect": "Allow", "Action": "logs:PutLogEvents", "Resource": log_stream_arn},
        {"Sid": "SocfeedsEndpointToken", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": secret_arn},
    ]
    if kms_key_arn:
        statements.append({"Sid": "SocfeedsStreamKey", "Effect": "Allow",
                           "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": kms_key_arn})
    return document(statements)


# --- the canary writer -----------------------------------------------------------------------

CANARY_STREAM_PREFIX = f"{EKS_AUDIT_STREAM_PREFIX}socfeeds-canary-"  # EKS's own audit streams never start so
RDS_CANARY_STREAM_PREFIX = "socfeeds-canary-"  # RDS names its streams after the instance; the canary's are apart


def rds_canary_group(source: RdsLogsSource) -> str | None:
    """The declared RDS log group the canary writes into: the first whose log type it can write a line for."""
    return next((g for g in source.log_groups if source.instance_and_type(g)[1] in RDS_CANARY_LOG_TYPES), None)


def canary_writer_trust(settings: Settings) -> Document:
    """Only the named principals (resolved to the flows' own identity when unset) may assume the writer."""
    trusted = settings.canary.writer_trusted_principals
    if not trusted:
        raise ValueError("canary.writer_trusted_principals is unresolved: call socfeeds.resolve.resolve first")
    return document([{"Effect": "Allow", "Principal": {"AWS": sorted(trusted)}, "Action": "sts:AssumeRole"}])


def canary_object_arns(settings: Settings) -> list[str]:
    arns = Arns(settings.region, settings.account_id)
    return sorted(f"{arns.bucket(f.bucket)}/{canary_key_prefix(name)}*" for name, f in settings.s3_feeds.items())


def canary_stream_arns(settings: Settings) -> list[str]:
    """The canary's own log streams: EKS audit-like streams, and RDS ones in the group each RDS feed writes to."""
    arns = Arns(settings.region, settings.account_id)
    rds = [group for f in settings.s3_feeds.values() if isinstance(f.source, RdsLogsSource)
           and (group := rds_canary_group(f.source))]
    eks = [arns.log_stream(f.log_group, f"{CANARY_STREAM_PREFIX}*") for f in settings.firehose_feeds.values()]
    return sorted([*eks, *(arns.log_stream(group, f"{RDS_CANARY_STREAM_PREFIX}*") for group in rds)])


def canary_writer_policy(settings: Settings) -> Document:
    """Write and clean up synthetic objects under each feed's canary prefix and events in canary streams; read
    nothing, reach no real log object or stream (it can neither forge nor hide audit logs)."""
    statements: list[Statement] = []
    objects = canary_object_arns(settings)
    if objects:
        statements.append({"Sid": "SocfeedsCanaryObjects", "Effect": "Allow",
                           "Action": ["s3:DeleteObject", "s3:PutObject"], "Resource": objects})
    keys = sorted({f.kms_key_arn for f in settings.s3_feeds.values() if f.kms_key_arn})
    if keys:  # S3 asks the writer's own KMS permission to encrypt an SSE-KMS object
        statements.append({"Sid": "SocfeedsCanaryEncrypt", "Effect": "Allow", "Action": "kms:GenerateDataKey",
                           "Resource": keys})
    streams = canary_stream_arns(settings)
    if streams:  # CloudWatch Logs authorises these three on the log-stream ARN (Service Authorization Reference)
        statements.append({"Sid": "SocfeedsCanaryStreams", "Effect": "Allow",
                           "Action": ["logs:CreateLogStream", "logs:DeleteLogStream", "logs:PutLogEvents"],
                           "Resource": streams})
    return document(statements)


def canary_scope_problems(statements: Iterable[Statement], settings: Settings) -> list[str]:
    """Every grant of the writer that reaches beyond canary prefixes, canary streams and feed keys."""
    allowed = [*canary_object_arns(settings), *canary_stream_arns(settings),
               *{f.kms_key_arn for f in settings.s3_feeds.values() if f.kms_key_arn}]
    problems = []
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        sid = statement.get("Sid", "(no Sid)")
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{sid}: NotAction/NotResource reaches beyond the canary's objects")
        for action, resource in _grants([statement]):
            if not any(fnmatchcase(resource, pattern) for pattern in allowed) or "*" in action:
                problems.append(f"{sid}: {action} on {resource}")
    return problems


# --- KMS keys --------------------------------------------------------------------------------

def key_service_statements(settings: Settings, feeds: Iterable[S3Feed]) -> list[Statement]:
    """The key-policy statements AWS services need to use a key for these feeds (their bucket and queue).

    IAM policies cannot grant a service principal, so these must be in the key policy itself:
    - S3 notifying an SSE-KMS queue (S3 User Guide, "Granting permissions to publish event notification
      messages to a destination": without it notifications are dropped silently);
    - CloudTrail writing to an SSE-KMS bucket (CloudTrail User Guide, "Configure AWS KMS key policies for
      CloudTrail": encrypt with aws:SourceArn and the trail encryption context, describe the key);
    - log delivery (flow logs, resolver query logs) writing to an SSE-KMS bucket (CloudWatch Logs User Guide,
      "Enable logging from AWS services", SSE-KMS key policy for delivery.logs.amazonaws.com).
    """
    arns = Arns(settings.region, settings.account_id)
    feeds = list(feeds)
    statements: list[Statement] = []
    if feeds:
        statements.append(s3_notification_key_statement())
    trail_feeds = [f for f in feeds if isinstance(f.source, CloudTrailSource)]
    trails = sorted(f.trail_arn(settings.account_id, settings.region) for f in trail_feeds)
    if trails:
        principal = {"Service": CLOUDTRAIL_SERVICE}
        contexts = sorted({f"arn:{arns.partition}:cloudtrail:*:{f.trail_account(settings.account_id)}:trail/*"
                           for f in trail_feeds})
        statements += [
            {"Sid": "SocfeedsCloudTrailEncrypt", "Effect": "Allow", "Principal": principal,
             "Action": "kms:GenerateDataKey*", "Resource": "*",
             "Condition": {"StringEquals": {"aws:SourceArn": trails}, "StringLike": {
                 "kms:EncryptionContext:aws:cloudtrail:arn": one_or_list(contexts)}}},
            {"Sid": "SocfeedsCloudTrailDescribeKey", "Effect": "Allow", "Principal": principal,
             "Action": "kms:DescribeKey", "Resource": "*", "Condition": {"StringEquals": {"aws:SourceArn": trails}}},
        ]
    if any(isinstance(f.source, CloudFrontSource) for f in feeds):  # CloudFront's deliveries live in us-east-1
        statements.append({"Sid": "SocfeedsCloudFrontDeliveryEncrypt", "Effect": "Allow",
                           "Principal": {"Service": "delivery.logs.amazonaws.com"},
                           "Action": "kms:GenerateDataKey*", "Resource": "*",
                           "Condition": {"StringEquals": {"aws:SourceAccount": settings.account_id},
                                         "ArnLike": {"aws:SourceArn": Arns(CloudFrontSource.LOGS_REGION,
                                                                           settings.account_id).log_delivery_sources()}}})
    if any(isinstance(f.source, FlowLogSource | ResolverQueryLogSource) for f in feeds):
        statements.append({"Sid": "SocfeedsLogDeliveryEncrypt", "Effect": "Allow",
                           "Principal": {"Service": "delivery.logs.amazonaws.com"},
                           "Action": "kms:GenerateDataKey*", "Resource": "*",
                           "Condition": {"StringEquals": {"aws:SourceAccount": settings.account_id},
                                         "ArnLike": {"aws:SourceArn": arns.log_delivery_sources()}}})
    return statements


def s3_notification_key_statement() -> Statement:
    """AWS's documented statement, as written there: S3 encrypts each notification with the queue's key."""
    return {"Sid": "SocfeedsS3NotifyEncryptedQueue", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*"}


def services_of(statement: Statement) -> list[str]:
    principal = statement.get("Principal")
    return [str(p) for p in as_list(principal.get("Service", []))] if isinstance(principal, dict) else []


def grants_service(doc: Document, wanted: Statement, resource: str) -> bool:
    """Whether a key policy (whoever wrote it) lets the wanted statement's service do each of its actions.

    Conditions are not compared: an equivalent foreign statement counts, as it does for AWS."""
    service = services_of(wanted)[0]
    theirs = [s for s in as_list(doc.get("Statement", [])) if service in services_of(s)]
    return all(allows(theirs, action.rstrip("*"), resource) for action in as_list(wanted["Action"]))


def iam_delegation_statement(settings: Settings) -> Statement:
    """AWS's default key-policy statement: without it no IAM policy (the reader's kms:Decrypt, the writer's
    kms:GenerateDataKey, Firehose's role) can grant use of the key (KMS Developer Guide, "Default key policy")."""
    return {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
            "Principal": {"AWS": f"arn:{Arns(settings.region, settings.account_id).partition}:iam::"
                                 f"{settings.account_id}:root"},
            "Action": "kms:*", "Resource": "*"}


def delegates_to_iam(doc: Document, account_id: str) -> bool:
    """Whether the key policy lets IAM policies of this account grant the key (root principal, kms:*)."""
    for statement in as_list(doc.get("Statement", [])):
        principals = as_list((statement.get("Principal") or {}).get("AWS", []) if isinstance(
            statement.get("Principal"), dict) else statement.get("Principal"))
        root = any(p in {account_id, f"arn:aws:iam::{account_id}:root"} or str(p).endswith(f"::{account_id}:root")
                   for p in principals)
        if statement.get("Effect") == "Allow" and root and "kms:*" in as_list(statement.get("Action", [])) \
                and not statement.get("Condition"):
            return True
    return False


def allows(statements: Iterable[Statement], action: str, resource: str) -> bool:
    """Whether identity statements allow an action on a resource, as IAM decides it (an explicit Deny wins;
    wildcards in actions and resources; NotAction/NotResource). Conditions are not evaluated."""
    allowed = False
    for statement in statements:
        if _matches(statement, action, resource):
            if statement.get("Effect") == "Deny":
                return False
            allowed = True
    return allowed


def _matches(statement: Statement, action: str, resource: str) -> bool:
    def any_match(patterns: Any, value: str, fold: bool) -> bool:
        return any(fnmatchcase(value.lower() if fold else value, str(p).lower() if fold else str(p))
                   for p in as_list(patterns))

    action_ok = (any_match(statement["Action"], action, True) if "Action" in statement
                 else not any_match(statement.get("NotAction", []), action, True))
    resource_ok = (any_match(statement["Resource"], resource, False) if "Resource" in statement
                   else not any_match(statement.get("NotResource", []), resource, False))
    return action_ok and resource_ok
