"""Every IAM and resource policy document socfeeds writes, and the analysis verify applies to them.

Provision writes these documents and verify compares AWS against the same functions, so there is
one source of truth. Statements socfeeds owns carry a `Socfeeds` Sid prefix; statements of other
owners in a shared policy (a production bucket's existing policy) are kept untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from socfeeds.arns import Arns, partition
from socfeeds.settings import CloudTrailSource, FlowLogSource, ResolverQueryLogSource, S3Feed, Settings

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
    logs_prefix = f"{bucket_arn}/AWSLogs/{settings.account_id}/*"
    source = feed.source
    if isinstance(source, CloudTrailSource):
        trail = {"aws:SourceArn": arns.trail(source.trail_name)}
        principal = {"Service": "cloudtrail.amazonaws.com"}
        return [
            {"Sid": "SocfeedsCloudTrailAclCheck", "Effect": "Allow", "Principal": principal,
             "Action": "s3:GetBucketAcl", "Resource": bucket_arn, "Condition": {"StringEquals": trail}},
            {"Sid": "SocfeedsCloudTrailWrite", "Effect": "Allow", "Principal": principal,
             "Action": "s3:PutObject", "Resource": logs_prefix,
             "Condition": {"StringEquals": {"s3:x-amz-acl": "bucket-owner-full-control", **trail}}},
        ]
    if isinstance(source, FlowLogSource | ResolverQueryLogSource):
        principal = {"Service": "delivery.logs.amazonaws.com"}
        scope = {
            "StringEquals": {"aws:SourceAccount": settings.account_id},
            "ArnLike": {"aws:SourceArn": arns.log_delivery_sources()},
        }
        return [
            {"Sid": "SocfeedsLogDeliveryAclCheck", "Effect": "Allow", "Principal": principal,
             "Action": ["s3:GetBucketAcl", "s3:ListBucket"], "Resource": bucket_arn, "Condition": scope},
            {"Sid": "SocfeedsLogDeliveryWrite", "Effect": "Allow", "Principal": principal,
             "Action": "s3:PutObject", "Resource": logs_prefix,
             "Condition": {**scope, "StringEquals": {**scope["StringEquals"],
                                                     "s3:x-amz-acl": "bucket-owner-full-control"}}},
        ]
    return []


def merge_owned(existing: Document, owned: list[Statement]) -> Document:
    """Replace the statements socfeeds owns and keep everybody else's."""
    others = [s for s in as_list(existing.get("Statement", [])) if not is_owned(s)]
    return {**existing, "Version": VERSION, "Statement": [*others, *owned]}


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
    """Sids of expected statements not present (compared canonically) in the document."""
    present = [canonical(s) for s in as_list(doc.get("Statement", []))]
    return [str(s["Sid"]) for s in expected if canonical(s) not in present]


# --- queues ----------------------------------------------------------------------------------


def queue_policy(queue_arn: str, bucket_arn: str, account_id: str) -> Document:
    """Only S3, only from this bucket in this account (the confused-deputy guard), may send."""
    return {
        "Version": VERSION,
        "Statement": [{
            "Sid": "SocfeedsS3Notifications",
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {
                "ArnEquals": {"aws:SourceArn": bucket_arn},
                "StringEquals": {"aws:SourceAccount": account_id},
            },
        }],
    }


def queue_policy_problems(doc: Document, queue_arn: str, bucket_arn: str, account_id: str) -> list[str]:
    """Why a queue policy is not 'exactly S3 from this bucket and account'; empty when it is."""
    allows = [s for s in as_list(doc.get("Statement", [])) if s.get("Effect") == "Allow"]
    if not allows:
        return ["no statement allows s3.amazonaws.com to send (notifications are dropped)"]
    problems: list[str] = []
    if len(allows) > 1:
        problems.append(f"{len(allows)} Allow statements; expected exactly one for S3")
    for statement in allows:
        sid = statement.get("Sid", "(no Sid)")
        if canonical(statement.get("Principal")) != {"Service": "s3.amazonaws.com"}:
            problems.append(f"{sid}: principal {statement.get('Principal')!r} is not only s3.amazonaws.com")
        if canonical(statement.get("Action")) != "sqs:SendMessage":
            problems.append(f"{sid}: actions {statement.get('Action')!r} are not only sqs:SendMessage")
        if canonical(statement.get("Resource")) != queue_arn:
            problems.append(f"{sid}: resource {statement.get('Resource')!r} is not {queue_arn}")
        conditions = _flatten_conditions(statement.get("Condition", {}))
        if conditions.get("aws:sourcearn") != bucket_arn:
            problems.append(f"{sid}: aws:SourceArn condition is {conditions.get('aws:sourcearn')!r}, "
                            f"expected {bucket_arn}")
        if conditions.get("aws:sourceaccount") != account_id:
            problems.append(f"{sid}: aws:SourceAccount condition is {conditions.get('aws:sourceaccount')!r}, "
                            f"expected {account_id}")
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
         "Resource": sorted(f"{arns.bucket(f.bucket)}/*" for f in feeds)},
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
    return trust("firehose.amazonaws.com", {"StringEquals": {"sts:ExternalId": account_id}})


def firehose_role_policy(bucket_arn: str, log_stream_arn: str, secret_arn: str, kms_key_arn: str | None) -> Document:
    """Only the error bucket, the stream's error log stream, the token secret and the KMS key."""
    statements: list[Statement] = [
        {"Sid": "SocfeedsErrorBucket", "Effect": "Allow",
         "Action": ["s3:AbortMultipartUpload", "s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket",
                    "s3:ListBucketMultipartUploads", "s3:PutObject"],
         "Resource": [bucket_arn, f"{bucket_arn}/*"]},
        {"Sid": "SocfeedsErrorLogging", "Effect": "Allow", "Action": "logs:PutLogEvents", "Resource": log_stream_arn},
        {"Sid": "SocfeedsEndpointToken", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": secret_arn},
    ]
    if kms_key_arn:
        statements.append({"Sid": "SocfeedsStreamKey", "Effect": "Allow",
                           "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": kms_key_arn})
    return document(statements)


# --- the canary writer -----------------------------------------------------------------------


def canary_writer_trust(settings: Settings) -> Document:
    """Only the flows' own identity (or, undeclared, this account's identities) may assume the writer."""
    trusted = settings.canary.writer_trusted_principals or [f"arn:{partition(settings.region)}:iam::"
                                                            f"{settings.account_id}:root"]
    return document([{"Effect": "Allow", "Principal": {"AWS": sorted(trusted)}, "Action": "sts:AssumeRole"}])


def canary_writer_policy(settings: Settings) -> Document:
    """Write (and clean up) synthetic log objects and events; read nothing, change nothing else."""
    arns = Arns(settings.region, settings.account_id)
    statements: list[Statement] = []
    buckets = sorted(f"{arns.bucket(f.bucket)}/*" for f in settings.s3_feeds.values())
    if buckets:
        statements.append({"Sid": "SocfeedsCanaryObjects", "Effect": "Allow",
                           "Action": ["s3:DeleteObject", "s3:PutObject"], "Resource": buckets})
    groups = sorted(arns.log_group(f.log_group) for f in settings.firehose_feeds.values())
    if groups:
        statements += [
            {"Sid": "SocfeedsCanaryStreams", "Effect": "Allow", "Action": "logs:CreateLogStream", "Resource": groups},
            {"Sid": "SocfeedsCanaryEvents", "Effect": "Allow", "Action": "logs:PutLogEvents",
             "Resource": [f"{group}:log-stream:canary-*" for group in groups]},
        ]
    return document(statements)
