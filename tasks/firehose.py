"""The EKS feed: control-plane logs -> CloudWatch Logs -> subscription -> Firehose -> XSIAM HTTP endpoint.

The cluster exists already and is never created here. The endpoint's access token is never read
by provisioning: Firehose reads it from the Secrets Manager secret through its own configuration,
and verify only checks that the secret has an `api_key` field.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from socfeeds import policies
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, absent_on, until_accepted
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor, Status
from socfeeds.settings import FirehoseFeed, Settings, check_endpoint_url
from tasks._task import aws_task
from tasks.buckets import BucketSpec, check_bucket_state, ensure_bucket_state
from tasks.kms import KeyUser
from tasks.roles import check_role, ensure_role

ERROR_LOG_STREAM = "DestinationDelivery"
FAILED_PREFIX = "http-endpoint-failed/"
FIX = "run provision-feeds for this feed"
IAM_PROPAGATION = {"InvalidArgumentException", "InvalidParameterException"}


class MissingToken(RuntimeError):
    """The endpoint token secret does not exist; only a person holding the XSIAM token can create it."""


def error_bucket(feed: FirehoseFeed, settings: Settings) -> BucketSpec:
    writer = KeyUser("firehose role", "role", feed.firehose_role, ("kms:Decrypt", "kms:GenerateDataKey"))
    return BucketSpec(feed.error_bucket, feed.error_retention_days, False, feed.kms_key_arn, [], "",
                      settings.omit_conditional_denies, settings.region, settings.account_id, key_users=(writer,))


def stream_encryption(feed: FirehoseFeed) -> dict[str, str]:
    """Encrypted at rest always: the customer key when declared, else an AWS-owned key (free, no key policy)."""
    if feed.kms_key_arn:
        return {"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": feed.kms_key_arn}
    return {"KeyType": "AWS_OWNED_CMK"}


def encryption_drift(description: dict[str, Any], wanted: dict[str, str]) -> str | None:
    """How the stream's encryption differs from the declaration, None when it matches (or is being enabled)."""
    current = description.get("DeliveryStreamEncryptionConfiguration") or {}
    status = current.get("Status", "DISABLED")
    if status not in {"ENABLED", "ENABLING"}:
        return f"encryption {status}"
    mismatched = [k for k, v in wanted.items() if current.get(k) != v]
    return f"encryption {', '.join(f'{k} {current.get(k)}' for k in mismatched)}" if mismatched else None


def _arns(settings: Settings) -> Arns:
    return Arns(settings.region, settings.account_id)


def endpoint_url(aws: AwsClients, feed: FirehoseFeed, settings: Settings) -> str:
    if feed.endpoint_url:
        return feed.endpoint_url
    name = settings.xsiam.firehose_url_parameter
    assert name is not None  # settings validation guarantees one of the two
    value = aws.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    return check_endpoint_url(f"SSM parameter {name}", value)


def token_secret_arn(aws: AwsClients, feed: FirehoseFeed) -> str | None:
    answer = absent_on({"ResourceNotFoundException"}, aws.secrets.describe_secret, SecretId=feed.token_secret_name)
    return str(answer["ARN"]) if answer else None


def firehose_role_policy(feed: FirehoseFeed, settings: Settings, secret_arn: str) -> policies.Document:
    arns = _arns(settings)
    return policies.firehose_role_policy(arns.bucket(feed.error_bucket),
                                         arns.log_stream(feed.error_log_group, ERROR_LOG_STREAM), secret_arn,
                                         feed.kms_key_arn)


def http_destination(feed: FirehoseFeed, settings: Settings, url: str, secret_arn: str) -> dict[str, Any]:
    """The HTTP endpoint destination as declared (production shape, XSIAM's 1 MiB / 60 s buffering)."""
    role_arn = _arns(settings).role(feed.firehose_role)
    return {
        "EndpointConfiguration": {"Url": url, "Name": url[:256]},
        "BufferingHints": {"SizeInMBs": feed.buffering_mib, "IntervalInSeconds": feed.buffering_seconds},
        "CloudWatchLoggingOptions": {"Enabled": True, "LogGroupName": feed.error_log_group,
                                     "LogStreamName": ERROR_LOG_STREAM},
        "RequestConfiguration": {"ContentEncoding": "GZIP"},
        "RoleARN": role_arn,
        "RetryOptions": {"DurationInSeconds": feed.retry_seconds},
        "S3BackupMode": "FailedDataOnly",
        "SecretsManagerConfiguration": {"SecretARN": secret_arn, "RoleARN": role_arn, "Enabled": True},
    }


def backup_configuration(feed: FirehoseFeed, settings: Settings) -> dict[str, Any]:
    return {"RoleARN": _arns(settings).role(feed.firehose_role), "BucketARN": _arns(settings).bucket(feed.error_bucket),
            "BufferingHints": {"SizeInMBs": 10, "IntervalInSeconds": 400}, "CompressionFormat": "GZIP"}


def describe_stream(aws: AwsClients, name: str) -> dict[str, Any] | None:
    answer = absent_on({"ResourceNotFoundException"}, aws.firehose.describe_delivery_stream,
                       DeliveryStreamName=name)
    return dict(answer["DeliveryStreamDescription"]) if answer else None


def stream_drift(description: dict[str, Any], wanted: dict[str, Any], backup: dict[str, Any]) -> list[str]:
    """Fields of the stream's HTTP destination that differ from the declaration."""
    destinations = description.get("Destinations", [])
    current = destinations[0].get("HttpEndpointDestinationDescription") if destinations else None
    if current is None:
        return ["destination is not an HTTP endpoint"]
    drift = [key for key, value in wanted.items() if key != "EndpointConfiguration" and current.get(key) != value]
    endpoint = current.get("EndpointConfiguration", {})
    drift += [f"EndpointConfiguration.{k}" for k in ("Url", "Name")
              if endpoint.get(k) != wanted["EndpointConfiguration"][k]]
    current_backup = current.get("S3DestinationDescription", {})
    drift += [f"S3 backup {k}" for k in ("BucketARN", "RoleARN") if current_backup.get(k) != backup[k]]
    return drift


def _wait_active(aws: AwsClients, name: str, deadline_s: float = 300) -> None:
    deadline, pause = time.monotonic() + deadline_s, 0.5
    while (describe_stream(aws, name) or {}).get("DeliveryStreamStatus") != "ACTIVE":
        if time.monotonic() > deadline:
            raise RuntimeError(f"delivery stream {name} not ACTIVE after {deadline_s:.0f} s: check it in the console")
        time.sleep(pause)
        pause = min(pause * 2, 10.0)


# --- cluster logging -------------------------------------------------------------------------

def _enabled_types(aws: AwsClients, cluster: str) -> set[str]:
    logging = aws.eks.describe_cluster(name=cluster)["cluster"].get("logging", {})
    return {t for entry in logging.get("clusterLogging", []) if entry.get("enabled") for t in entry.get("types", [])}


def _log_group(aws: AwsClients, name: str) -> dict[str, Any] | None:
    groups = aws.logs.describe_log_groups(logGroupNamePrefix=name).get("logGroups", [])
    return next((dict(g) for g in groups if g.get("logGroupName") == name), None)


def _ensure_log_group(aws: AwsClients, changes: ChangesFor, name: str, retention_days: int | None,
                      stream: str | None = None) -> None:
    group = _log_group(aws, name)
    if group is None:
        changes.make("create log group", name, lambda: aws.logs.create_log_group(logGroupName=name))
    if retention_days and (group or {}).get("retentionInDays") != retention_days:
        changes.make("set log retention", f"{name}: {retention_days} days", lambda: aws.logs.put_retention_policy(
            logGroupName=name, retentionInDays=retention_days))
    if stream:
        streams = aws.logs.describe_log_streams(logGroupName=name, logStreamNamePrefix=stream)["logStreams"] \
            if group else []
        if not any(s.get("logStreamName") == stream for s in streams):
            changes.make("create log stream", f"{name}:{stream}", lambda: aws.logs.create_log_stream(
                logGroupName=name, logStreamName=stream))


@aws_task("ensure-cluster-logging")
def ensure_cluster_logging(aws: AwsClients, settings: Settings, feed_name: str, dry_run: bool) -> list[Change]:
    """Turn on the declared control-plane log types; confirmed by re-reading the cluster."""
    feed = settings.firehose_feeds[feed_name]
    cluster = str(feed.cluster_name)
    changes = ChangesFor(feed_name, f"eks:{cluster}", dry_run)
    enabled = _enabled_types(aws, cluster)
    missing = sorted(set(feed.log_types) - enabled)
    if missing:
        def enable() -> None:  # the whole wanted set, so no emulator or API drops the types already on
            wanted = {"clusterLogging": [{"types": sorted(enabled | set(feed.log_types)), "enabled": True}]}
            aws.eks.update_cluster_config(name=cluster, logging=cast(Any, wanted))
            deadline = time.monotonic() + 600
            while still := sorted(set(missing) - _enabled_types(aws, cluster)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"EKS cluster {cluster}: log types {still} still off after update")
                time.sleep(5)

        changes.make("enable control-plane logging", ", ".join(missing), enable)
    _ensure_log_group(aws, changes, feed.log_group, feed.log_retention_days)
    return changes.changes


@aws_task("check-cluster-logging")
def check_cluster_logging(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    feed = settings.firehose_feeds[feed_name]
    check = FindingsFor(feed_name, f"eks:{feed.cluster_name}")
    cluster = absent_on({"ResourceNotFoundException"}, aws.eks.describe_cluster, name=str(feed.cluster_name))
    if not check.expect("cluster exists", cluster is not None, str(feed.cluster_name),
                        f"no EKS cluster {feed.cluster_name}: correct eks_cluster_name in settings"):
        return check.findings
    off = sorted(set(feed.log_types) - _enabled_types(aws, str(feed.cluster_name)))
    check.expect("control-plane logging", not off, f"off: {', '.join(off)}" if off else "all declared types on", FIX)
    group = _log_group(aws, feed.log_group)
    check.expect("log group", group is not None and group.get("retentionInDays") == feed.log_retention_days,
                 f"{feed.log_group} retention {group.get('retentionInDays') if group else 'missing'} "
                 f"(settings: {feed.log_retention_days})", FIX)
    return check.findings


# --- the delivery stream ---------------------------------------------------------------------

@aws_task("ensure-delivery-stream")
def ensure_delivery_stream(aws: AwsClients, settings: Settings, feed_name: str, dry_run: bool) -> list[Change]:
    """Error bucket, error logging, Firehose's role, then the stream (updated in place on drift)."""
    feed = settings.firehose_feeds[feed_name]
    secret_arn = token_secret_arn(aws, feed)
    if secret_arn is None:
        raise MissingToken(
            f"secret {feed.token_secret_name} does not exist. Fix: store the XSIAM HTTP collector token as "
            f"{{\"api_key\": \"<token>\"}} with `aws secretsmanager create-secret --name {feed.token_secret_name} "
            "--secret-string file://token.json`, then rerun provision-feeds")
    bucket_changes = ChangesFor(feed_name, f"s3://{feed.error_bucket}", dry_run)
    ensure_bucket_state(aws, error_bucket(feed, settings), bucket_changes)
    changes = ChangesFor(feed_name, f"firehose:{feed.delivery_stream}", dry_run)
    _ensure_log_group(aws, changes, feed.error_log_group, feed.error_log_retention_days, stream=ERROR_LOG_STREAM)
    ensure_role(aws, changes, feed.firehose_role, policies.firehose_role_trust(settings.account_id),
                firehose_role_policy(feed, settings, secret_arn), f"Firehose {feed.delivery_stream} to XSIAM")

    url = endpoint_url(aws, feed, settings)
    wanted, backup = http_destination(feed, settings, url, secret_arn), backup_configuration(feed, settings)
    current = describe_stream(aws, feed.delivery_stream)
    encryption = stream_encryption(feed)
    if current is None:
        def create() -> None:
            until_accepted(aws.firehose.create_delivery_stream, {
                "DeliveryStreamName": feed.delivery_stream, "DeliveryStreamType": "DirectPut",
                "HttpEndpointDestinationConfiguration": {**wanted, "S3Configuration": backup},
                "DeliveryStreamEncryptionConfigurationInput": encryption,
            }, IAM_PROPAGATION)
            _wait_active(aws, feed.delivery_stream)

        changes.make("create delivery stream", f"HTTP endpoint (GZIP, {feed.buffering_mib} MiB / "
                     f"{feed.buffering_seconds} s, retry {feed.retry_seconds} s, failed data to "
                     f"s3://{feed.error_bucket}, encrypted with {encryption['KeyType']})", create)
        return bucket_changes.changes + changes.changes
    if drift := stream_drift(current, wanted, backup):
        destination_id = current["Destinations"][0]["DestinationId"]
        changes.make("update delivery stream", f"in place: {', '.join(drift)}", lambda: aws.firehose.update_destination(
            DeliveryStreamName=feed.delivery_stream, CurrentDeliveryStreamVersionId=current["VersionId"],
            DestinationId=destination_id, HttpEndpointDestinationUpdate=cast(Any, {**wanted, "S3Update": backup})))
    if drift_note := encryption_drift(current, encryption):
        changes.make("encrypt delivery stream", f"{drift_note} -> {encryption['KeyType']} (in place)",
                     lambda: aws.firehose.start_delivery_stream_encryption(
                         DeliveryStreamName=feed.delivery_stream,
                         DeliveryStreamEncryptionConfigurationInput=cast(Any, encryption)))
    return bucket_changes.changes + changes.changes


def failed_deliveries(aws: AwsClients, feed: FirehoseFeed, since: datetime) -> list[dict[str, Any]]:
    """Backup objects Firehose wrote for records it could not deliver, oldest first."""
    pages = aws.s3.get_paginator("list_objects_v2").paginate(Bucket=feed.error_bucket, Prefix=FAILED_PREFIX)
    return sorted((dict(o) for page in pages for o in page.get("Contents", []) if o["LastModified"] >= since),
                  key=lambda o: o["LastModified"])


def backed_up_records(aws: AwsClients, feed: FirehoseFeed, since: datetime,
                      already_read: set[str]) -> Iterator[tuple[str, str, str]]:
    """(key, Firehose's errorMessage, the CloudWatch payload as text) for backup objects since a time.

    Keys in `already_read` are skipped and every key read is added, so a poller reads each object once.
    """
    for obj in failed_deliveries(aws, feed, since):
        if obj["Key"] in already_read:
            continue
        already_read.add(obj["Key"])
        body = aws.s3.get_object(Bucket=feed.error_bucket, Key=obj["Key"])["Body"].read()
        text = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
        for line in text.splitlines():
            record = json.loads(line)
            raw = base64.b64decode(record["rawData"])
            payload = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            yield obj["Key"], str(record.get("errorMessage", "")), payload.decode(errors="replace")


@aws_task("check-delivery-stream")
def check_delivery_stream(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    feed = settings.firehose_feeds[feed_name]
    check = FindingsFor(feed_name, f"firehose:{feed.delivery_stream}")
    secret_arn = token_secret_arn(aws, feed)
    token_ok = False
    if secret_arn:
        value = aws.secrets.get_secret_value(SecretId=secret_arn, VersionStage="AWSCURRENT").get("SecretString", "")
        try:
            token_ok = bool(json.loads(value).get("api_key"))
        except (ValueError, AttributeError):
            token_ok = False
        del value
    check.expect("endpoint token", token_ok, f"secret {feed.token_secret_name} " +
                 ("has an api_key" if token_ok else "is missing or has no api_key field"),
                 f"store the XSIAM token as {{\"api_key\": \"<token>\"}} in {feed.token_secret_name}")

    stream = describe_stream(aws, feed.delivery_stream)
    if check.expect("stream exists", stream is not None, feed.delivery_stream, f"stream missing: {FIX}"):
        assert stream is not None
        status = stream.get("DeliveryStreamStatus")
        check.expect("stream active", status == "ACTIVE", f"status {status}", "check the stream in the console")
        url = endpoint_url(aws, feed, settings)
        destination = (stream.get("Destinations") or [{}])[0].get("HttpEndpointDestinationDescription", {})
        check.expect("endpoint url", destination.get("EndpointConfiguration", {}).get("Url") == url,
                     "points at the declared XSIAM URL" if destination.get("EndpointConfiguration", {}).get("Url")
                     == url else "points elsewhere than the declared XSIAM URL", FIX)
        encoding = destination.get("RequestConfiguration", {}).get("ContentEncoding", "NONE")
        check.expect("content encoding", encoding == "GZIP", encoding, FIX)
        retry = destination.get("RetryOptions", {}).get("DurationInSeconds", 0)
        check.expect("retry duration", retry >= 300, f"{retry} s (at least 300)", FIX)
        drift = stream_drift(stream, http_destination(feed, settings, url, secret_arn or ""),
                             backup_configuration(feed, settings))
        check.expect("declared settings", not drift, f"differs: {', '.join(drift)}" if drift else "as declared", FIX)
        encryption = stream_encryption(feed)
        unencrypted = encryption_drift(stream, encryption)
        check.expect("encryption at rest", not unencrypted, unencrypted or f"{encryption['KeyType']} as declared", FIX)
    group = _log_group(aws, feed.error_log_group)
    retention = group.get("retentionInDays") if group else "missing"
    check.expect("error log retention", retention == feed.error_log_retention_days,
                 f"{feed.error_log_group}: {retention} days (settings: {feed.error_log_retention_days})", FIX)

    bucket = FindingsFor(feed_name, f"s3://{feed.error_bucket}")
    check_bucket_state(aws, settings, error_bucket(feed, settings), bucket)
    if secret_arn:
        check_role(aws, check, feed.firehose_role, policies.firehose_role_trust(settings.account_id),
                   firehose_role_policy(feed, settings, secret_arn))
    if bucket.findings[0].status is Status.PASS:
        failed = failed_deliveries(aws, feed, datetime.now(UTC) - timedelta(hours=feed.backup_window_hours))
        count, newest = len(failed), failed[-1]["Key"] if failed else "-"
        status = Status.FAIL if count >= feed.backup_objects_fail_at else (
            Status.WARN if count >= feed.backup_objects_warn_at else Status.PASS)
        bucket.add("failed deliveries", status, f"{count} backup objects in {feed.backup_window_hours} h; "
                   f"newest {newest}", "" if status is Status.PASS else
                   "XSIAM refused or missed these records: read errorMessage in the newest object and the "
                   f"{feed.error_log_group} log group (a wrong token in {feed.token_secret_name} is the usual cause)")
    return check.findings + bucket.findings


# --- the subscription ------------------------------------------------------------------------

def _filter(aws: AwsClients, feed: FirehoseFeed) -> dict[str, Any] | None:
    answer = absent_on({"ResourceNotFoundException"}, aws.logs.describe_subscription_filters,
                       logGroupName=feed.log_group)
    filters = answer.get("subscriptionFilters", []) if answer else []
    return next((dict(f) for f in filters if f.get("filterName") == feed.subscription_filter), None)


def _wanted_filter(feed: FirehoseFeed, settings: Settings) -> dict[str, str]:
    arns = _arns(settings)
    return {"destinationArn": arns.delivery_stream(feed.delivery_stream), "roleArn": arns.role(feed.logs_role),
            "filterPattern": ""}


@aws_task("ensure-subscription")
def ensure_subscription(aws: AwsClients, settings: Settings, feed_name: str, dry_run: bool) -> list[Change]:
    feed = settings.firehose_feeds[feed_name]
    changes = ChangesFor(feed_name, f"logs:{feed.log_group}", dry_run)
    stream_arn = _arns(settings).delivery_stream(feed.delivery_stream)
    ensure_role(aws, changes, feed.logs_role, policies.logs_role_trust(settings.region, settings.account_id),
                policies.logs_role_policy(stream_arn), f"CloudWatch Logs to {feed.delivery_stream}")
    wanted = _wanted_filter(feed, settings)
    current = _filter(aws, feed)
    if current is None or any(current.get(k) != v for k, v in wanted.items()):
        changes.make("subscribe log group", f"{feed.subscription_filter}: every event to {feed.delivery_stream}",
                     lambda: until_accepted(aws.logs.put_subscription_filter, {
                         "logGroupName": feed.log_group, "filterName": feed.subscription_filter, **wanted,
                     }, IAM_PROPAGATION))
    return changes.changes


@aws_task("check-subscription")
def check_subscription(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    feed = settings.firehose_feeds[feed_name]
    check = FindingsFor(feed_name, f"logs:{feed.log_group}")
    current = _filter(aws, feed)
    wrong = sorted(k for k, v in _wanted_filter(feed, settings).items() if (current or {}).get(k) != v)
    check.expect("subscription filter", current is not None and not wrong,
                 "every event to the stream with the logs role" if current and not wrong else
                 f"{feed.subscription_filter}: {'missing' if current is None else 'differs: ' + ', '.join(wrong)}",
                 FIX)
    stream_arn = _arns(settings).delivery_stream(feed.delivery_stream)
    check_role(aws, check, feed.logs_role, policies.logs_role_trust(settings.region, settings.account_id),
               policies.logs_role_policy(stream_arn))
    return check.findings
