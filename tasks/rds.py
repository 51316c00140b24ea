"""Sources that CloudWatch Logs delivers into a feed bucket: RDS log groups and CloudFront access logs.

RDS: each declared log group -> a subscription filter -> a Firehose stream with an extended S3 destination -> the
feed bucket (then the shared S3 -> SQS -> XSIAM leg). The platform's shape (firehose-data-stream module with
`destination_bucket_arn`; rds-instance module's `opt_in_xsiam_logging`). Objects hold the CloudWatch Logs payloads
as CloudWatch Logs gzips them, so every record keeps its log group (instance id, log type) and stream.
CloudFront: standard logging (v2), CloudWatch Logs' vended-log delivery from the distribution to the bucket,
configured in us-east-1.

Both register with tasks.sources' dispatchers: a flow that provisions or verifies these feeds imports this module.
"""

from __future__ import annotations

import contextlib
import gzip
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

from botocore.exceptions import BotoCoreError, ClientError

from socfeeds import formats, policies
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, absent_on, until_accepted
from socfeeds.report import ChangesFor, FindingsFor, Status
from socfeeds.settings import LOG_TYPE_DATASETS, CloudFrontSource, RdsLogsSource, S3Feed, Settings
from tasks.canary import CanaryResult, Outcome, delete_canary_stream, find_in_siem, marker_for
from tasks.firehose import (
    ERROR_LOG_STREAM,
    IAM_PROPAGATION,
    describe_stream,
    encryption_drift,
    ensure_log_group,
    read_log_group,
    stream_encryption,
    wait_active,
)
from tasks.roles import check_role, ensure_role
from tasks.sources import check_source_wiring, ensure_source_wiring
from tasks.xql import XqlClient, XqlError

FIX = "run provision-feeds for this feed"
ERROR_LOG_RETENTION_DAYS = 14  # as the platform's firehose-data-stream module keeps its stream's error log


class StreamElsewhere(RuntimeError):
    """The declared stream name is taken by a stream that delivers somewhere else."""


def rendered(source: RdsLogsSource, settings: Settings, feed: S3Feed) -> RdsLogsSource:
    return source.rendered(settings.account_id, settings.region, feed.bucket)


def error_log_group(stream: str) -> str:
    return f"/aws/kinesisfirehose/{stream}"


def s3_destination(source: RdsLogsSource, feed: S3Feed, settings: Settings, stream: str) -> dict[str, Any]:
    """The extended S3 destination as declared. UNCOMPRESSED: CloudWatch Logs already gzips every record it hands
    Firehose (CloudWatch Logs User Guide, subscription filters with Firehose), so the objects are gzip (one member per
    record), as the platform's module leaves them; Firehose's GZIP would compress them twice, which XSIAM's single
    gunzip cannot read. No timestamp expression in the prefix: Firehose then adds YYYY/MM/DD/HH/ itself."""
    arns = Arns(settings.region, settings.account_id)
    encryption = ({"KMSEncryptionConfig": {"AWSKMSKeyARN": feed.kms_key_arn}} if feed.kms_key_arn
                  else {"NoEncryptionConfig": "NoEncryption"})
    return {
        "RoleARN": arns.role(source.firehose_role), "BucketARN": arns.bucket(feed.bucket),
        "Prefix": f"{source.key_prefix}/", "CompressionFormat": "UNCOMPRESSED",
        "BufferingHints": {"SizeInMBs": source.buffering_mib, "IntervalInSeconds": source.buffering_seconds},
        "EncryptionConfiguration": encryption,
        "CloudWatchLoggingOptions": {"Enabled": True, "LogGroupName": error_log_group(stream),
                                     "LogStreamName": ERROR_LOG_STREAM},
    }


def firehose_role_policy(source: RdsLogsSource, feed: S3Feed, settings: Settings, stream: str) -> policies.Document:
    """Firehose's S3-destination grants (Firehose Developer Guide, "Grant Firehose access to an Amazon S3
    destination"), objects only under the stream's prefix; its error log stream; the feed key, if any."""
    arns = Arns(settings.region, settings.account_id)
    bucket = arns.bucket(feed.bucket)
    statements: list[policies.Statement] = [
        {"Sid": "SocfeedsFeedBucket", "Effect": "Allow",
         "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"], "Resource": bucket},
        {"Sid": "SocfeedsFeedObjects", "Effect": "Allow",
         "Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"],
         "Resource": f"{bucket}/{source.key_prefix}/*"},
        {"Sid": "SocfeedsErrorLogging", "Effect": "Allow", "Action": "logs:PutLogEvents",
         "Resource": arns.log_stream(error_log_group(stream), ERROR_LOG_STREAM)},
    ]
    if feed.kms_key_arn:
        statements.append({"Sid": "SocfeedsFeedKey", "Effect": "Allow",
                           "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": feed.kms_key_arn})
    return policies.document(statements)


def _destination(description: dict[str, Any]) -> dict[str, Any]:
    destinations = description.get("Destinations") or [{}]
    return dict(destinations[0].get("ExtendedS3DestinationDescription") or {})


def _stream_names(aws: AwsClients) -> list[str]:
    names: list[str] = []
    while True:
        start = {"ExclusiveStartDeliveryStreamName": names[-1]} if names else {}
        page = aws.firehose.list_delivery_streams(Limit=100, **start)  # type: ignore[arg-type]
        names += page.get("DeliveryStreamNames", [])
        if not page.get("HasMoreDeliveryStreams") or not page.get("DeliveryStreamNames"):
            return names


def find_stream(aws: AwsClients, source: RdsLogsSource, bucket_arn: str) -> dict[str, Any] | None:
    """The stream that does the job: the declared one, else any stream already delivering to this bucket."""
    declared = describe_stream(aws, source.delivery_stream)
    if declared is not None:
        target = _destination(declared).get("BucketARN")
        if target != bucket_arn:
            raise StreamElsewhere(
                f"delivery stream {source.delivery_stream} delivers to {target or 'a non-S3 destination'}, not "
                f"{bucket_arn}. Fix: name another stream in the feed's source.delivery_stream, then rerun "
                "provision-feeds")
        return declared
    for name in _stream_names(aws):
        description = describe_stream(aws, name)
        if description and _destination(description).get("BucketARN") == bucket_arn:
            return description
    return None


def stream_drift(description: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    current = _destination(description)
    return sorted(key for key, value in wanted.items() if current.get(key) != value)


def _filters(aws: AwsClients, group: str) -> list[dict[str, Any]]:
    answer = absent_on({"ResourceNotFoundException"}, aws.logs.describe_subscription_filters, logGroupName=group)
    return [dict(f) for f in answer.get("subscriptionFilters", [])] if answer else []


def wanted_filter(source: RdsLogsSource, settings: Settings, stream: str) -> dict[str, str]:
    arns = Arns(settings.region, settings.account_id)
    return {"destinationArn": arns.delivery_stream(stream), "roleArn": arns.role(source.logs_role), "filterPattern": ""}


def feeding_filter(filters: list[dict[str, Any]], stream_arn: str, name: str) -> dict[str, Any] | None:
    """The group's filter that feeds the stream (whatever its name), else the one with the declared name."""
    return next((f for f in filters if f.get("destinationArn") == stream_arn),
                next((f for f in filters if f.get("filterName") == name), None))


# --- RDS: provision --------------------------------------------------------------------------

@ensure_source_wiring.register
def _(source: RdsLogsSource, aws: AwsClients, settings: Settings, feed: S3Feed, changes: ChangesFor) -> None:
    spec = rendered(source, settings, feed)
    stream = _ensure_stream(aws, settings, feed, spec, changes)
    arns = Arns(settings.region, settings.account_id)
    ensure_role(aws, changes, spec.logs_role, policies.logs_role_trust(settings.region, settings.account_id),
                policies.logs_role_policy(arns.delivery_stream(stream)), f"CloudWatch Logs to {stream}")
    wanted = wanted_filter(spec, settings, stream)
    for group in spec.log_groups:
        ensure_log_group(aws, changes, group, spec.log_retention_days)  # adopted, or made before RDS exports to it
        filters = _filters(aws, group)
        current = feeding_filter(filters, wanted["destinationArn"], spec.filter_name(group))
        if current is not None and all(current.get(k) == v for k, v in wanted.items()):
            continue
        if current is None and len(filters) >= 2:
            names = [f["filterName"] for f in filters]
            raise RuntimeError(f"log group {group} has two subscription filters already ({names}), CloudWatch Logs' "
                               "limit. Fix: remove one, then rerun provision-feeds")
        name = str(current["filterName"]) if current else spec.filter_name(group)
        changes.make("subscribe log group", f"{group}: {name}, every event to {stream}",
                     partial(until_accepted, aws.logs.put_subscription_filter,
                             {"logGroupName": group, "filterName": name, **wanted}, IAM_PROPAGATION))


def _ensure_stream(aws: AwsClients, settings: Settings, feed: S3Feed, spec: RdsLogsSource,
                   changes: ChangesFor) -> str:
    """The stream's error logging, Firehose's role, then the stream (adopted, updated in place, or created)."""
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    current = find_stream(aws, spec, bucket_arn)
    stream = str(current["DeliveryStreamName"]) if current else spec.delivery_stream
    ensure_log_group(aws, changes, error_log_group(stream), ERROR_LOG_RETENTION_DAYS, stream=ERROR_LOG_STREAM)
    ensure_role(aws, changes, spec.firehose_role, policies.firehose_role_trust(settings.account_id),
                firehose_role_policy(spec, feed, settings, stream), f"Firehose {stream} to s3://{feed.bucket}")
    wanted, encryption = s3_destination(spec, feed, settings, stream), stream_encryption(feed.kms_key_arn)
    if current is None:
        def create() -> None:
            until_accepted(aws.firehose.create_delivery_stream, {
                "DeliveryStreamName": stream, "DeliveryStreamType": "DirectPut",
                "ExtendedS3DestinationConfiguration": wanted, "DeliveryStreamEncryptionConfigurationInput": encryption,
            }, IAM_PROPAGATION)
            wait_active(aws, stream)

        changes.make("create delivery stream", f"{stream}: extended S3 to s3://{feed.bucket}/{spec.key_prefix}/, "
                     f"{spec.buffering_mib} MiB / {spec.buffering_seconds} s, encrypted with {encryption['KeyType']}",
                     create)
        return stream
    if drift := stream_drift(current, wanted):
        changes.make("update delivery stream", f"{stream} in place: {', '.join(drift)}",
                     lambda: aws.firehose.update_destination(
                         DeliveryStreamName=stream, CurrentDeliveryStreamVersionId=current["VersionId"],
                         DestinationId=current["Destinations"][0]["DestinationId"],
                         ExtendedS3DestinationUpdate=cast(Any, wanted)))
    if note := encryption_drift(current, encryption):
        changes.make("encrypt delivery stream", f"{stream}: {note} -> {encryption['KeyType']} (in place)",
                     lambda: aws.firehose.start_delivery_stream_encryption(
                         DeliveryStreamName=stream, DeliveryStreamEncryptionConfigurationInput=cast(Any, encryption)))
    return stream


# --- RDS: verify -----------------------------------------------------------------------------

@check_source_wiring.register
def _(source: RdsLogsSource, aws: AwsClients, settings: Settings, feed: S3Feed, check: FindingsFor) -> None:
    spec = rendered(source, settings, feed)
    arns = Arns(settings.region, settings.account_id)
    try:
        current = find_stream(aws, spec, arns.bucket(feed.bucket))
    except StreamElsewhere as elsewhere:
        check.add("delivery stream", Status.FAIL, str(elsewhere).partition(" Fix: ")[0],
                  "name another stream in the feed's source.delivery_stream, then run provision-feeds")
        return
    stream = str(current["DeliveryStreamName"]) if current else spec.delivery_stream
    if check.expect("delivery stream", current is not None, f"{stream} delivers to s3://{feed.bucket}" if current
                    else f"no stream delivers to s3://{feed.bucket}", FIX):
        assert current is not None
        status = current.get("DeliveryStreamStatus")
        check.expect("stream active", status == "ACTIVE", f"{stream}: {status}", "check the stream in the console")
        drift = stream_drift(current, s3_destination(spec, feed, settings, stream))
        check.expect("stream destination", not drift, f"differs: {', '.join(drift)}" if drift else
                     f"s3://{feed.bucket}/{spec.key_prefix}/, uncompressed CloudWatch Logs payloads, as declared", FIX)
        encryption = stream_encryption(feed.kms_key_arn)
        note = encryption_drift(current, encryption)
        check.expect("stream encryption at rest", not note, note or f"{encryption['KeyType']} as declared", FIX)
    check_role(aws, check, spec.firehose_role, policies.firehose_role_trust(settings.account_id),
               firehose_role_policy(spec, feed, settings, stream))
    check_role(aws, check, spec.logs_role, policies.logs_role_trust(settings.region, settings.account_id),
               policies.logs_role_policy(arns.delivery_stream(stream)))
    if not spec.log_groups:
        check.add("log groups", Status.WARN, "none declared: no RDS log reaches the stream",
                  "list the RDS log groups (/aws/rds/instance/<id>/<type>) in the feed's source.log_groups")
    wanted = wanted_filter(spec, settings, stream)
    for group in spec.log_groups:
        found = read_log_group(aws, group)
        retention = found.get("retentionInDays") if found else None
        check.expect(f"log group {group}", found is not None and spec.log_retention_days in {None, retention},
                     f"retention {retention} days (settings: {spec.log_retention_days})" if found else "missing", FIX)
        current = feeding_filter(_filters(aws, group), wanted["destinationArn"], spec.filter_name(group))
        wrong = sorted(k for k, v in wanted.items() if (current or {}).get(k) != v)
        problem = "missing" if current is None else f"differs: {', '.join(wrong)}"
        check.expect(f"subscription {group}", current is not None and not wrong,
                     f"{current['filterName']}: every event to {stream}" if current and not wrong else
                     f"{spec.filter_name(group)}: {problem}", FIX)


# --- RDS: the canary -------------------------------------------------------------------------

def canary_rds(aws: AwsClients, writer: AwsClients, xql: XqlClient | None, settings: Settings, feed_name: str,
               run_tag: str) -> CanaryResult:
    """A marked statement in a canary stream of a declared log group, found in XSIAM through the whole path:
    subscription -> Firehose -> bucket -> queue -> XSIAM. Not found: the bucket says which half failed."""
    feed = settings.s3_feeds[feed_name]
    assert isinstance(feed.source, RdsLogsSource)
    spec = rendered(feed.source, settings, feed)
    outcome = Outcome(feed_name, "siem")
    group = policies.rds_canary_group(spec)
    if group is None:
        return outcome.failed("write", f"no declared log group of a type the canary writes "
                              f"({', '.join(formats.RDS_CANARY_LOG_TYPES)})",
                              f"add such a log group to s3_feeds.{feed_name}.source.log_groups")
    marker = marker_for(run_tag, feed_name)
    stream = f"{policies.RDS_CANARY_STREAM_PREFIX}{run_tag}-{int(time.time())}"
    now = datetime.now(UTC)
    line = formats.rds_log_line(spec.instance_and_type(group)[1], marker, now)
    try:
        writer.logs.create_log_stream(logGroupName=group, logStreamName=stream)
        writer.logs.put_log_events(logGroupName=group, logStreamName=stream,
                                   logEvents=[{"timestamp": int(now.timestamp() * 1000), "message": line}])
    except (ClientError, BotoCoreError) as error:
        delete_canary_stream(writer, group, stream)
        return outcome.failed("write", f"PutLogEvents {group}:{stream}: {error}",
                              "run verify-feeds (log group) and check the canary writer role's grant on "
                              f"{policies.RDS_CANARY_STREAM_PREFIX}* streams of {group}")
    outcome.written_at = time.monotonic()
    deadline = outcome.written_at + feed.canary_deadline_seconds
    try:
        if xql is None:
            return outcome.failed("collection", "no XSIAM API configured",
                                  "set xsiam.api_url, api_key_id, xsiam_api_key")
        dataset = LOG_TYPE_DATASETS[feed.log_type]
        found, _ = find_in_siem(xql, dataset, marker, int(now.timestamp() * 1000), deadline)
        if found:
            return outcome.passed(f"found in {dataset} via {group}")
        key = _object_with(aws, feed, spec, marker, now)
        if key:
            return outcome.failed("collection", f"delivered to s3://{feed.bucket}/{key} but not in {dataset} within "
                                  f"{feed.canary_deadline_seconds} s", "XSIAM did not ingest it: run verify-feeds "
                                  "(notification, queue policy, reader grants) and check the data source in XSIAM")
        return outcome.failed("delivery", f"not in s3://{feed.bucket}/{spec.key_prefix}/ within "
                              f"{feed.canary_deadline_seconds} s", "run verify-feeds: check the subscription filter "
                              "of the log group, the stream and its error log group")
    except XqlError as error:
        return outcome.failed("collection", f"could not ask XSIAM: {error}",
                              "check the XSIAM tenant's status and the API key; the feed itself may be fine")
    finally:
        delete_canary_stream(writer, group, stream)


def _object_with(aws: AwsClients, feed: S3Feed, spec: RdsLogsSource, marker: str, since: datetime) -> str | None:
    """The key of a Firehose object written since the event whose payload carries the marker, if any."""
    pages = aws.s3.get_paginator("list_objects_v2").paginate(Bucket=feed.bucket, Prefix=f"{spec.key_prefix}/")
    for obj in (o for page in pages for o in page.get("Contents", []) if o["LastModified"] >= since.replace(
            microsecond=0)):
        body = aws.s3.get_object(Bucket=feed.bucket, Key=obj["Key"])["Body"].read()
        with contextlib.suppress(ValueError, OSError):
            text = gzip.decompress(body).decode() if body[:2] == b"\x1f\x8b" else body.decode()
            if any(marker in str(r.get("message")) for r in formats.cloudwatch_payload_records(text)):
                return str(obj["Key"])
    return None


# --- CloudFront (standard logging v2) --------------------------------------------------------

def cloudfront_logs(aws: AwsClients) -> Any:
    """CloudFront's deliveries live in us-east-1, whatever the feed's region."""
    return AwsClients(aws.session, CloudFrontSource.LOGS_REGION, aws.endpoint_url).logs


def distribution_arn(settings: Settings, distribution_id: str) -> str:
    partition = Arns(settings.region, settings.account_id).partition
    return f"arn:{partition}:cloudfront::{settings.account_id}:distribution/{distribution_id}"


def wanted_delivery(source: CloudFrontSource) -> dict[str, Any]:
    """The W3C fields in the documented order, tab-separated as XSIAM and the legacy files have them."""
    suffix = {"s3DeliveryConfiguration": {"suffixPath": source.key_prefix, "enableHiveCompatiblePath": False}} \
        if source.key_prefix else {}
    return {"recordFields": list(formats.CLOUDFRONT_FIELDS), "fieldDelimiter": "\t", **suffix}


def _bucket_destinations(logs: Any, bucket_arn: str) -> list[dict[str, Any]]:
    return [d for d in logs.describe_delivery_destinations().get("deliveryDestinations", [])
            if d.get("deliveryDestinationConfiguration", {}).get("destinationResourceArn") == bucket_arn]


def _deliveries_to(logs: Any, destination_arns: set[str]) -> list[dict[str, Any]]:
    return [d for d in logs.describe_deliveries().get("deliveries", [])
            if d.get("deliveryDestinationArn") in destination_arns]


def _delivery_drift(delivery: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in wanted.items() if delivery.get(k) != v)


@ensure_source_wiring.register
def _(source: CloudFrontSource, aws: AwsClients, settings: Settings, feed: S3Feed, changes: ChangesFor) -> None:
    """Delivery source (the distribution's ACCESS_LOGS), delivery destination (the bucket, W3C), the delivery;
    each adopted when one already does the job. Without a distribution id the owners wire their own."""
    if source.distribution_id is None:
        return
    logs = cloudfront_logs(aws)
    resource = distribution_arn(settings, source.distribution_id)
    sources = [s for s in logs.describe_delivery_sources().get("deliverySources", [])
               if resource in s.get("resourceArns", []) and s.get("logType") == "ACCESS_LOGS"]
    source_name = str(sources[0]["name"]) if sources else f"socfeeds-{source.distribution_id}"
    if not sources:
        changes.make("create delivery source", f"{source_name}: access logs of {source.distribution_id}",
                     lambda: logs.put_delivery_source(name=source_name, resourceArn=resource, logType="ACCESS_LOGS"))
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    destinations = [d for d in _bucket_destinations(logs, bucket_arn) if d.get("outputFormat") == "w3c"]
    name = f"socfeeds-{feed.bucket}"[:60]
    partition = Arns(settings.region, settings.account_id).partition
    destination_arn = str(destinations[0]["arn"]) if destinations else (
        f"arn:{partition}:logs:{CloudFrontSource.LOGS_REGION}:{settings.account_id}:delivery-destination:{name}")
    if not destinations:
        changes.make("create delivery destination", f"{name}: s3://{feed.bucket}, W3C",
                     lambda: logs.put_delivery_destination(name=name, outputFormat="w3c",
                                                           deliveryDestinationConfiguration={
                                                               "destinationResourceArn": bucket_arn}))
    wanted = wanted_delivery(source)
    deliveries = [d for d in _deliveries_to(logs, {destination_arn}) if d.get("deliverySourceName") == source_name]
    if not deliveries:
        changes.make("create delivery", f"{source.distribution_id} -> s3://{feed.bucket}: the documented fields, "
                     "tab-separated", lambda: logs.create_delivery(deliverySourceName=source_name,
                                                                    deliveryDestinationArn=destination_arn, **wanted))
    elif drift := _delivery_drift(deliveries[0], wanted):
        changes.make("update delivery", f"{deliveries[0]['id']} in place: {', '.join(drift)}",
                     lambda: logs.update_delivery_configuration(id=deliveries[0]["id"], **wanted))


@check_source_wiring.register
def _(source: CloudFrontSource, aws: AwsClients, settings: Settings, feed: S3Feed, check: FindingsFor) -> None:
    logs = cloudfront_logs(aws)
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    destinations = {str(d["arn"]) for d in _bucket_destinations(logs, bucket_arn)}
    deliveries = _deliveries_to(logs, destinations)
    if source.distribution_id is None:
        check.expect("cloudfront deliveries", bool(deliveries), f"{len(deliveries)} deliveries to s3://{feed.bucket}",
                     "no distribution delivers its access logs here: point the distributions' standard logging (v2) "
                     f"at s3://{feed.bucket}, or declare source.distribution_id and run provision-feeds",
                     failing=Status.WARN)
        return
    resource = distribution_arn(settings, source.distribution_id)
    names = {str(s["name"]) for s in logs.describe_delivery_sources().get("deliverySources", [])
             if resource in s.get("resourceArns", []) and s.get("logType") == "ACCESS_LOGS"}
    mine = [d for d in deliveries if d.get("deliverySourceName") in names]
    drift = _delivery_drift(mine[0], wanted_delivery(source)) if mine else []
    check.expect("cloudfront delivery", bool(mine) and not drift,
                 f"{source.distribution_id} -> s3://{feed.bucket}" + (f" differs: {', '.join(drift)}" if drift else "")
                 if mine else f"{source.distribution_id} delivers no access logs to s3://{feed.bucket}", FIX)
