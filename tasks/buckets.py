"""Feed buckets: private, encrypted, TLS-only, writable by their log source, kept long enough."""

from __future__ import annotations

import json
from typing import Any, cast

from botocore.exceptions import ClientError

from socfeeds import policies
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, absent_on, error_code
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor, Status
from socfeeds.settings import XSIAM_MIN_RETENTION_DAYS, S3Feed, Settings, log_key_prefix
from tasks._task import aws_task

RETENTION_RULE_ID = "socfeeds-retention"
PUBLIC_ACCESS_BLOCKED = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def _encryption_rule(feed: S3Feed) -> dict[str, Any]:
    if feed.kms_key_arn:
        default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": feed.kms_key_arn}
        return {"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": True}
    return {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}


def _retention_rule(feed: S3Feed) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "ID": RETENTION_RULE_ID,
        "Filter": {"Prefix": ""},
        "Status": "Enabled",
        "Expiration": {"Days": feed.retention_days},
    }
    if feed.versioning:
        rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": feed.retention_days}
    return rule


def bucket_exists(aws: AwsClients, bucket: str) -> bool:
    try:
        aws.s3.head_bucket(Bucket=bucket)
    except ClientError as error:
        if error_code(error) in {"404", "NoSuchBucket", "NotFound"}:
            return False
        raise
    return True


def _public_access(aws: AwsClients, bucket: str) -> dict[str, Any]:
    answer = absent_on({"NoSuchPublicAccessBlockConfiguration"}, aws.s3.get_public_access_block, Bucket=bucket)
    return dict(answer["PublicAccessBlockConfiguration"]) if answer else {}


def _encryption_rules(aws: AwsClients, bucket: str) -> list[dict[str, Any]]:
    answer = absent_on({"ServerSideEncryptionConfigurationNotFoundError"}, aws.s3.get_bucket_encryption,
                       Bucket=bucket)
    return [dict(r) for r in answer["ServerSideEncryptionConfiguration"]["Rules"]] if answer else []


def _lifecycle_rules(aws: AwsClients, bucket: str) -> list[dict[str, Any]]:
    answer = absent_on({"NoSuchLifecycleConfiguration"}, aws.s3.get_bucket_lifecycle_configuration,
                       Bucket=bucket)
    return [dict(r) for r in answer["Rules"]] if answer else []


def _policy(aws: AwsClients, bucket: str) -> policies.Document:
    answer = absent_on({"NoSuchBucketPolicy"}, aws.s3.get_bucket_policy, Bucket=bucket)
    return policies.parse(answer["Policy"] if answer else None)


@aws_task("ensure-bucket")
def ensure_bucket(aws: AwsClients, settings: Settings, feed_name: str, dry_run: bool) -> list[Change]:
    """Create or adopt the feed's bucket and bring its guard rails to the declared state."""
    feed = settings.s3_feeds[feed_name]
    bucket = feed.bucket
    changes = ChangesFor(feed_name, f"s3://{bucket}", dry_run)
    exists = bucket_exists(aws, bucket)
    if not exists:
        location = {} if settings.region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": settings.region}}
        changes.make("create bucket", f"in {settings.region}",
                     lambda: aws.s3.create_bucket(Bucket=bucket, **location))  # type: ignore[arg-type]

    if not exists or _public_access(aws, bucket) != PUBLIC_ACCESS_BLOCKED:
        changes.make("block public access", "all four public access block settings on",
                     lambda: aws.s3.put_public_access_block(
                         Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCKED))  # type: ignore[arg-type]

    rule = _encryption_rule(feed)
    defaults = [r["ApplyServerSideEncryptionByDefault"] for r in _encryption_rules(aws, bucket)] if exists else []
    if defaults != [rule["ApplyServerSideEncryptionByDefault"]]:
        algorithm = rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
        changes.make("set default encryption", algorithm,
                     lambda: aws.s3.put_bucket_encryption(
                         Bucket=bucket, ServerSideEncryptionConfiguration=cast(Any, {"Rules": [rule]})))

    if feed.versioning and (not exists or aws.s3.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled"):
        changes.make("enable versioning", "the feed asks for versioning",
                     lambda: aws.s3.put_bucket_versioning(
                         Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}))

    current_rules = _lifecycle_rules(aws, bucket) if exists else []
    wanted = _retention_rule(feed)
    if wanted not in current_rules:
        rules = [r for r in current_rules if r.get("ID") != RETENTION_RULE_ID] + [wanted]
        note = "" if feed.retention_days >= XSIAM_MIN_RETENTION_DAYS else (
            f" (below XSIAM's advised {XSIAM_MIN_RETENTION_DAYS} days, as settings ask)")
        changes.make("set retention", f"objects expire after {feed.retention_days} days{note}",
                     lambda: aws.s3.put_bucket_lifecycle_configuration(
                         Bucket=bucket, LifecycleConfiguration={"Rules": rules}))  # type: ignore[typeddict-item]

    current = _policy(aws, bucket) if exists else policies.document([])
    merged = policies.merge_owned(current, policies.bucket_statements(feed, settings))
    if policies.canonical(merged) != policies.canonical(current):
        sids = [s["Sid"] for s in policies.bucket_statements(feed, settings)]
        changes.make("write bucket policy", f"statements {', '.join(sids)}; other statements kept",
                     lambda: aws.s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(merged)))
    return changes.changes


def effective_expiry_days(rules: list[dict[str, Any]], key_prefix: str) -> int | None:
    """The shortest expiration among enabled rules that reach the feed's log keys."""
    days = [
        int(rule["Expiration"]["Days"])
        for rule in rules
        if rule.get("Status") == "Enabled" and "Days" in rule.get("Expiration", {})
        and key_prefix.startswith(rule.get("Filter", {}).get("Prefix", rule.get("Prefix", "")))
    ]
    return min(days) if days else None


@aws_task("check-bucket")
def check_bucket(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    feed = settings.s3_feeds[feed_name]
    bucket = feed.bucket
    bucket_arn = Arns(settings.region, settings.account_id).bucket(bucket)
    fix = "run provision-feeds for this feed"
    check = FindingsFor(feed_name, f"s3://{bucket}")
    if not check.expect("exists", bucket_exists(aws, bucket), "bucket exists",
                        f"bucket {bucket} is missing: {fix}, or correct s3_feeds.{feed_name}.bucket"):
        return check.findings

    encryption = [r["ApplyServerSideEncryptionByDefault"] for r in _encryption_rules(aws, bucket)]
    algorithms = [e["SSEAlgorithm"] for e in encryption]
    if feed.kms_key_arn:
        ok = any(e.get("KMSMasterKeyID") == feed.kms_key_arn for e in encryption)
        check.expect("encryption", ok, f"default encryption {algorithms or 'none'}; want SSE-KMS "
                     f"with {feed.kms_key_arn}", fix)
    else:
        check.expect("encryption", bool(algorithms), f"default encryption {algorithms or 'none'}", fix)

    blocked = _public_access(aws, bucket)
    off = sorted(k for k in PUBLIC_ACCESS_BLOCKED if not blocked.get(k))
    check.expect("public access block", not off, f"off: {', '.join(off)}" if off else "all four on", fix)

    policy = _policy(aws, bucket)
    if settings.omit_conditional_denies:
        check.add("tls-only policy", Status.WARN, "omitted: omit_conditional_denies is set (emulator only)",
                  "unset omit_conditional_denies outside the local stack")
    else:
        check.expect("tls-only policy", policies.has_tls_only_deny(policy, bucket_arn),
                     "bucket policy denies aws:SecureTransport=false", fix)
    missing = policies.missing_statements(policy, policies.source_write_statements(feed, settings))
    check.expect("source write access", not missing,
                 f"missing statements {missing}" if missing else "log source may write", fix)

    if feed.versioning:
        status = aws.s3.get_bucket_versioning(Bucket=bucket).get("Status", "never enabled")
        check.expect("versioning", status == "Enabled", f"versioning {status}", fix)

    expiry = effective_expiry_days(_lifecycle_rules(aws, bucket), log_key_prefix(feed, settings.account_id))
    _check_retention(check, feed, expiry)
    return check.findings


def _check_retention(check: FindingsFor, feed: S3Feed, expiry: int | None) -> None:
    wanted = feed.retention_days
    shown = "never expire" if expiry is None else f"expire after {expiry} days"
    if expiry is not None and expiry < XSIAM_MIN_RETENTION_DAYS:
        deliberate = expiry == wanted
        check.add("retention", Status.WARN if deliberate else Status.FAIL,
                  f"log objects {shown}; XSIAM needs at least {XSIAM_MIN_RETENTION_DAYS} days",
                  f"raise s3_feeds.<feed>.retention_days to >= {XSIAM_MIN_RETENTION_DAYS}" if deliberate
                  else "run provision-feeds to restore the retention rule")
    else:
        check.expect("retention", expiry == wanted, f"log objects {shown} (settings: {wanted} days)",
                     "run provision-feeds to restore the retention rule", failing=Status.WARN)
