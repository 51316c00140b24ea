"""Feed buckets: private, encrypted, TLS-only, writable by their log source, kept long enough."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, cast

from botocore.exceptions import ClientError

from socfeeds import policies
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, absent_on, error_code
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor, Status
from socfeeds.settings import CANARY_KEY_PREFIX, XSIAM_MIN_RETENTION_DAYS, S3Feed, Settings, log_key_prefix
from tasks._task import aws_task
from tasks.kms import KeyUser, canary_writer, check_key_use, reader

RETENTION_RULE_ID = "socfeeds-retention"
CANARY_RULE_ID = "socfeeds-canary-expiry"
UPLOADS_RULE_ID = "socfeeds-abort-incomplete-uploads"
OWNER_ENFORCED = "BucketOwnerEnforced"  # ACLs off: the bucket owner owns every object, whoever wrote it
PUBLIC_ACCESS_BLOCKED = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


@dataclass(frozen=True)
class BucketSpec:
    """One bucket's guard rails, whatever feed shape it serves (S3 feed, Firehose error bucket)."""

    name: str
    retention_days: int | Literal["keep"]
    versioning: bool
    kms_key_arn: str | None
    source_statements: list[policies.Statement]  # what the writing service needs
    log_prefix: str  # the keys whose retention matters
    omit_conditional_denies: bool
    region: str
    account_id: str
    has_canary_objects: bool = False  # a canary prefix to expire after a day
    key_users: tuple[KeyUser, ...] = ()  # who must be able to use the bucket's KMS key, if it has one
    key_services: tuple[policies.Statement, ...] = ()  # key-policy statements its writing service needs

    @property
    def arn(self) -> str:
        return Arns(self.region, self.account_id).bucket(self.name)

    def owned_statements(self) -> list[policies.Statement]:
        tls = [] if self.omit_conditional_denies else [policies.tls_only_statement(self.arn)]
        return [*tls, *self.source_statements]


def feed_bucket(feed: S3Feed, settings: Settings, bucket: str | None = None) -> BucketSpec:
    """The feed's bucket (or one of its additional buckets): the source writes and the canary writes only into
    the first; every one is read by XSIAM."""
    name = bucket or feed.bucket
    primary = name == feed.bucket
    services = [s for s in policies.key_service_statements(settings, [feed])
                if "s3.amazonaws.com" not in policies.services_of(s)] if primary else []  # S3's own: the queue's
    users = (reader(settings), canary_writer(settings)) if primary else (reader(settings),)
    return BucketSpec(name, feed.retention_days, feed.versioning, feed.kms_key_arn,
                      policies.source_write_statements(feed, settings) if primary else [],
                      log_key_prefix(feed, settings.account_id), settings.omit_conditional_denies, settings.region,
                      settings.account_id, has_canary_objects=primary, key_users=users, key_services=tuple(services))


def feed_buckets(feed: S3Feed, settings: Settings) -> list[BucketSpec]:
    return [feed_bucket(feed, settings, bucket) for bucket in feed.buckets]


def _encryption_rule(spec: BucketSpec) -> dict[str, Any]:
    if spec.kms_key_arn:
        default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": spec.kms_key_arn}
        return {"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": True}
    return {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}


def _retention_rule(spec: BucketSpec) -> dict[str, Any] | None:
    if spec.retention_days == "keep":
        return None
    rule: dict[str, Any] = {
        "ID": RETENTION_RULE_ID,
        "Filter": {"Prefix": ""},
        "Status": "Enabled",
        "Expiration": {"Days": spec.retention_days},
    }
    if spec.versioning:
        rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": spec.retention_days}
    return rule


def lifecycle_rules(spec: BucketSpec) -> list[dict[str, Any]]:
    """The rules socfeeds owns (by ID): retention; abandoned multipart uploads; canary objects after a day.

    The canary rule expires current and noncurrent versions, and with a current-version expiration S3 also
    removes the delete marker left behind (S3 User Guide, "Managing delete markers"), so in a versioned
    bucket no canary object, version or marker outlives two days.
    """
    retention = _retention_rule(spec)
    rules = [*([retention] if retention else []), {"ID": UPLOADS_RULE_ID, "Filter": {"Prefix": ""},
                                                   "Status": "Enabled",
                                                   "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]
    if spec.has_canary_objects:
        rules.append({"ID": CANARY_RULE_ID, "Filter": {"Prefix": CANARY_KEY_PREFIX}, "Status": "Enabled",
                      "Expiration": {"Days": 1}, "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                      "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}})
    return rules


def _has_rule(current: list[dict[str, Any]], wanted: dict[str, Any]) -> bool:
    """S3 may add members it defaults (e.g. NewerNoncurrentVersions); every member we set must match."""
    return any(all(rule.get(k) == v for k, v in wanted.items()) for rule in current)


def _ownership(aws: AwsClients, bucket: str) -> str | None:
    answer = absent_on({"OwnershipControlsNotFoundError"}, aws.s3.get_bucket_ownership_controls, Bucket=bucket)
    rules = answer["OwnershipControls"]["Rules"] if answer else []
    return str(rules[0]["ObjectOwnership"]) if rules else None


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
    """Create or adopt the feed's buckets and bring their guard rails to the declared state."""
    changes: list[Change] = []
    for spec in feed_buckets(settings.s3_feeds[feed_name], settings):
        record = ChangesFor(feed_name, f"s3://{spec.name}", dry_run)
        ensure_bucket_state(aws, spec, record)
        changes += record.changes
    return changes


def ensure_bucket_state(aws: AwsClients, spec: BucketSpec, changes: ChangesFor) -> None:
    bucket = spec.name
    exists = bucket_exists(aws, bucket)
    if not exists:
        location = {} if spec.region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": spec.region}}
        changes.make("create bucket", f"in {spec.region}",
                     lambda: aws.s3.create_bucket(Bucket=bucket, **location),  # type: ignore[arg-type]
                     wanted={"bucket": bucket})

    if not exists or _ownership(aws, bucket) != OWNER_ENFORCED:
        changes.make("enforce bucket owner", f"Object Ownership {OWNER_ENFORCED} (ACLs off)",
                     lambda: aws.s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=cast(Any, {
                         "Rules": [{"ObjectOwnership": OWNER_ENFORCED}]})), wanted={"object_ownership": OWNER_ENFORCED})

    if not exists or _public_access(aws, bucket) != PUBLIC_ACCESS_BLOCKED:
        changes.make("block public access", "all four public access block settings on",
                     lambda: aws.s3.put_public_access_block(
                         Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCKED),  # type: ignore[arg-type]
                     wanted=PUBLIC_ACCESS_BLOCKED)

    rule = _encryption_rule(spec)
    defaults = [r["ApplyServerSideEncryptionByDefault"] for r in _encryption_rules(aws, bucket)] if exists else []
    if defaults != [rule["ApplyServerSideEncryptionByDefault"]]:
        algorithm = rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
        changes.make("set default encryption", algorithm,
                     lambda: aws.s3.put_bucket_encryption(
                         Bucket=bucket, ServerSideEncryptionConfiguration=cast(Any, {"Rules": [rule]})), wanted=rule)

    if spec.versioning and (not exists or aws.s3.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled"):
        changes.make("enable versioning", "the feed asks for versioning",
                     lambda: aws.s3.put_bucket_versioning(
                         Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}), wanted={"status": "Enabled"})

    current_rules = _lifecycle_rules(aws, bucket) if exists else []
    wanted = lifecycle_rules(spec)
    owned = {RETENTION_RULE_ID, UPLOADS_RULE_ID, CANARY_RULE_ID}
    stale = [rule["ID"] for rule in wanted if not _has_rule(current_rules, rule)] + [
        f"{r['ID']} (removed)" for r in current_rules if r.get("ID") in owned - {w["ID"] for w in wanted}]
    if stale:
        others = [r for r in current_rules if r.get("ID") not in owned]
        rules = others + wanted
        if spec.retention_days == "keep":
            expiry = "no expiry (retention_days = keep)"
        else:
            note = "" if spec.retention_days >= XSIAM_MIN_RETENTION_DAYS else (
                f" (below XSIAM's advised {XSIAM_MIN_RETENTION_DAYS} days, as settings ask)")
            expiry = f"objects expire after {spec.retention_days} days{note}"
        canary = "; canary objects expire after 1 day" if spec.has_canary_objects else ""
        changes.make("set lifecycle rules", f"{', '.join(stale)}: {expiry}; incomplete uploads aborted{canary}; "
                     f"{len(others)} other rules kept",
                     lambda: aws.s3.put_bucket_lifecycle_configuration(
                         Bucket=bucket, LifecycleConfiguration={"Rules": rules}),  # type: ignore[typeddict-item]
                     wanted={"rules": wanted})

    current = _policy(aws, bucket) if exists else policies.document([])
    merged = policies.merge_owned(current, spec.owned_statements())
    if policies.canonical(merged) != policies.canonical(current):
        changes.make("write bucket policy", policies.describe_merge(current, merged),
                     lambda: aws.s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(merged)), wanted=merged)


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
    findings: list[Finding] = []
    for spec in feed_buckets(settings.s3_feeds[feed_name], settings):
        check = FindingsFor(feed_name, f"s3://{spec.name}")
        check_bucket_state(aws, settings, spec, check)
        findings += check.findings
    return findings


def check_bucket_state(aws: AwsClients, settings: Settings, spec: BucketSpec, check: FindingsFor) -> None:
    bucket = spec.name
    fix = "run provision-feeds for this feed"
    if not check.expect("exists", bucket_exists(aws, bucket), "bucket exists",
                        f"bucket {bucket} is missing: {fix}, or correct the bucket name in settings"):
        return

    encryption = [r["ApplyServerSideEncryptionByDefault"] for r in _encryption_rules(aws, bucket)]
    algorithms = [e["SSEAlgorithm"] for e in encryption]
    if spec.kms_key_arn:
        ok = any(e.get("KMSMasterKeyID") == spec.kms_key_arn for e in encryption)
        check.expect("encryption", ok, f"default encryption {algorithms or 'none'}; want SSE-KMS "
                     f"with {spec.kms_key_arn}", fix)
    else:
        check.expect("encryption", bool(algorithms), f"default encryption {algorithms or 'none'}", fix)
    for key in sorted({str(e["KMSMasterKeyID"]) for e in encryption if e.get("KMSMasterKeyID")}):
        check_key_use(aws, settings, check, key, list(spec.key_users), list(spec.key_services), spec.kms_key_arn)

    ownership = _ownership(aws, bucket)
    check.expect("object ownership", ownership == OWNER_ENFORCED, f"Object Ownership {ownership or 'not set'}",
                 f"{fix} (sets {OWNER_ENFORCED}: ACLs off, the bucket owner owns every object)")

    blocked = _public_access(aws, bucket)
    off = sorted(k for k in PUBLIC_ACCESS_BLOCKED if not blocked.get(k))
    check.expect("public access block", not off, f"off: {', '.join(off)}" if off else "all four on", fix)

    policy = _policy(aws, bucket)
    if spec.omit_conditional_denies:
        check.add("tls-only policy", Status.WARN, "omitted: omit_conditional_denies is set (emulator only)",
                  "unset omit_conditional_denies outside the local stack")
    else:
        check.expect("tls-only policy", policies.has_tls_only_deny(policy, spec.arn),
                     "bucket policy denies aws:SecureTransport=false", fix)
    missing = policies.missing_statements(policy, spec.source_statements)
    check.expect("source write access", not missing,
                 f"missing statements {missing}" if missing else "log source may write", fix)
    unscoped = policies.unscoped_service_writes(policy)
    check.expect("confused deputy", not unscoped, f"service writes without aws:SourceArn/aws:SourceAccount: "
                 f"{', '.join(unscoped)}" if unscoped else "every service write is scoped to this account's sources",
                 "add aws:SourceArn (the trail or log sources) and aws:SourceAccount conditions to "
                 f"{', '.join(unscoped)} where that statement is written (socfeeds' own statements carry both)")

    if spec.versioning:
        status = aws.s3.get_bucket_versioning(Bucket=bucket).get("Status", "never enabled")
        check.expect("versioning", status == "Enabled", f"versioning {status}", fix)

    rules = _lifecycle_rules(aws, bucket)
    expiry = effective_expiry_days(rules, spec.log_prefix)
    _check_retention(check, spec.retention_days, expiry)
    by_id = {rule["ID"]: rule for rule in lifecycle_rules(spec)}
    uploads = _has_rule(rules, by_id[UPLOADS_RULE_ID])
    check.expect("incomplete uploads", uploads, "aborted after 7 days" if uploads else
                 "no rule aborts incomplete multipart uploads (their parts are stored and billed forever)", fix)
    if spec.has_canary_objects:
        canary = _has_rule(rules, by_id[CANARY_RULE_ID])
        check.expect("canary expiry", canary, f"{CANARY_KEY_PREFIX} objects and versions expire after 1 day"
                     if canary else f"no rule expires {CANARY_KEY_PREFIX}: canary objects and versions accumulate",
                     fix)


def _check_retention(check: FindingsFor, wanted: int | Literal["keep"], expiry: int | None) -> None:
    shown = "never expire" if expiry is None else f"expire after {expiry} days"
    if wanted == "keep":  # socfeeds sets no expiry; one another owner set still must leave XSIAM its 7 days
        short = expiry is not None and expiry < XSIAM_MIN_RETENTION_DAYS
        check.expect("retention", not short, f"log objects {shown} (settings: keep, socfeeds sets no expiry)",
                     f"XSIAM needs at least {XSIAM_MIN_RETENTION_DAYS} days: lengthen the bucket owner's expiry rule")
        return
    if expiry is not None and expiry < XSIAM_MIN_RETENTION_DAYS:
        deliberate = expiry == wanted
        check.add("retention", Status.WARN if deliberate else Status.FAIL,
                  f"log objects {shown}; XSIAM needs at least {XSIAM_MIN_RETENTION_DAYS} days",
                  f"raise the feed's retention_days to >= {XSIAM_MIN_RETENTION_DAYS}" if deliberate
                  else "run provision-feeds to restore the retention rule")
    else:
        check.expect("retention", expiry == wanted, f"log objects {shown} (settings: {wanted} days)",
                     "run provision-feeds to restore the retention rule", failing=Status.WARN)
