"""The AWS service (or agent) that writes each feed's logs into its bucket.

One ensure and one check per source kind, chosen by the declaration's type, so a feed with a
known source gets its wiring from data alone.
"""

from __future__ import annotations

from functools import singledispatch
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext

from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, absent_on
from socfeeds.formats import FLOW_LOG_FIELDS
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor, Status
from socfeeds.settings import (
    CloudTrailSource,
    FlowLogSource,
    FluentBitSource,
    ResolverQueryLogSource,
    S3Feed,
    Settings,
)
from tasks._task import aws_task

# The custom format XSIAM's flow-log parser requires (feeds.md), in this order.
FLOW_LOG_FORMAT = " ".join("${" + field + "}" for field in FLOW_LOG_FIELDS)
FIX = "run provision-feeds for this feed"


@singledispatch
def ensure_source_wiring(source: Any, aws: AwsClients, settings: Settings, feed: S3Feed,
                         changes: ChangesFor) -> None:
    raise TypeError(f"no wiring for source kind {type(source).__name__}")


@singledispatch
def check_source_wiring(source: Any, aws: AwsClients, settings: Settings, feed: S3Feed,
                        check: FindingsFor) -> None:
    raise TypeError(f"no check for source kind {type(source).__name__}")


@aws_task("ensure-source")
def ensure_source(aws: AwsClients, settings: Settings, feed_name: str, dry_run: bool) -> list[Change]:
    feed = settings.s3_feeds[feed_name]
    if feed.source is None:
        return []
    changes = ChangesFor(feed_name, f"source:{feed.source.kind}", dry_run)
    ensure_source_wiring(feed.source, aws, settings, feed, changes)
    return changes.changes


@aws_task("check-source")
def check_source(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    feed = settings.s3_feeds[feed_name]
    if feed.source is None:
        return []
    check = FindingsFor(feed_name, f"source:{feed.source.kind}")
    check_source_wiring(feed.source, aws, settings, feed, check)
    return check.findings


# --- CloudTrail ------------------------------------------------------------------------------

def _trail_shape(feed: S3Feed) -> dict[str, Any]:
    """With a feed key, the trail encrypts with it (SSE-KMS with the trail's encryption context)."""
    key = {"KmsKeyId": feed.kms_key_arn} if feed.kms_key_arn else {}
    return {"S3BucketName": feed.bucket, "IsMultiRegionTrail": True, "IncludeGlobalServiceEvents": True,
            "LogFileValidationEnabled": True, **key}


@ensure_source_wiring.register
def _(source: CloudTrailSource, aws: AwsClients, settings: Settings, feed: S3Feed, changes: ChangesFor) -> None:
    name = source.trail_name
    trail = absent_on({"TrailNotFoundException"}, aws.cloudtrail.get_trail, Name=name)
    wanted = _trail_shape(feed)
    arguments = {"Name": name, "S3BucketName": feed.bucket, "IsMultiRegionTrail": True,
                 "IncludeGlobalServiceEvents": True, "EnableLogFileValidation": True,
                 **({"KmsKeyId": feed.kms_key_arn} if feed.kms_key_arn else {})}
    if trail is None:
        changes.make("create trail", f"{name}: multi-region, log-file validation, to s3://{feed.bucket}",
                     lambda: aws.cloudtrail.create_trail(**arguments))  # type: ignore[arg-type]
    else:
        current = trail["Trail"]
        drift = sorted(k for k, v in wanted.items() if current.get(k) != v)
        if drift or current.get("S3KeyPrefix"):
            changes.make("update trail", f"{name}: {', '.join(drift or ['S3KeyPrefix'])}",
                         lambda: aws.cloudtrail.update_trail(**arguments, S3KeyPrefix=""))  # type: ignore[arg-type]
    logging = trail is not None and aws.cloudtrail.get_trail_status(Name=name).get("IsLogging")
    if not logging:
        changes.make("start logging", name, lambda: aws.cloudtrail.start_logging(Name=name))


@check_source_wiring.register
def _(source: CloudTrailSource, aws: AwsClients, settings: Settings, feed: S3Feed, check: FindingsFor) -> None:
    name = source.trail_name
    answer = absent_on({"TrailNotFoundException"}, aws.cloudtrail.get_trail, Name=name)
    if not check.expect("trail exists", answer is not None, f"trail {name}", f"trail {name} is missing: {FIX}"):
        return
    assert answer is not None
    trail = answer["Trail"]
    drift = sorted(k for k, v in _trail_shape(feed).items() if trail.get(k) != v)
    check.expect("trail settings", not drift, f"differs: {', '.join(drift)}" if drift else
                 "multi-region, global events, log-file validation, to the feed bucket", FIX)
    status = aws.cloudtrail.get_trail_status(Name=name)
    check.expect("trail logging", bool(status.get("IsLogging")), "logging" if status.get("IsLogging") else
                 "logging is stopped: no audit events are delivered", f"aws cloudtrail start-logging --name {name}, "
                 f"or {FIX}")
    error = status.get("LatestDeliveryError")
    check.expect("trail delivery", not error, f"latest delivery error: {error}" if error else "no delivery error",
                 "check the bucket policy's SocfeedsCloudTrailWrite statement and the bucket's KMS key policy")


# --- VPC flow logs ---------------------------------------------------------------------------

def _flow_logs_to_bucket(aws: AwsClients, vpc_id: str, bucket_arn: str) -> list[dict[str, Any]]:
    answer = aws.ec2.describe_flow_logs(Filters=[{"Name": "resource-id", "Values": [vpc_id]}])
    return [dict(f) for f in answer.get("FlowLogs", [])
            if f.get("LogDestinationType") == "s3" and str(f.get("LogDestination", "")).rstrip("/") == bucket_arn]


def _flow_log_fits(flow_log: dict[str, Any]) -> bool:
    return flow_log.get("LogFormat") == FLOW_LOG_FORMAT and flow_log.get("TrafficType") == "ALL"


@ensure_source_wiring.register
def _(source: FlowLogSource, aws: AwsClients, settings: Settings, feed: S3Feed, changes: ChangesFor) -> None:
    assert source.vpc_id is not None  # settings fill it in
    vpc_id = source.vpc_id
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    existing = _flow_logs_to_bucket(aws, vpc_id, bucket_arn)
    if any(_flow_log_fits(f) for f in existing):
        return
    stale = [f["FlowLogId"] for f in existing]
    note = f"; flow logs {stale} keep the old format until removed by hand" if stale else ""

    def create() -> None:
        answer = aws.ec2.create_flow_logs(
            ResourceIds=[vpc_id], ResourceType="VPC", TrafficType="ALL", LogDestinationType="s3",
            LogDestination=bucket_arn, LogFormat=FLOW_LOG_FORMAT, MaxAggregationInterval=source.aggregation_seconds,
            DestinationOptions={"FileFormat": "plain-text", "HiveCompatiblePartitions": False,
                                "PerHourPartition": False},
        )
        failed = answer.get("Unsuccessful", [])
        if failed:
            errors = "; ".join(str(f.get("Error", {}).get("Message")) for f in failed)
            raise RuntimeError(f"flow log for {vpc_id} -> {bucket_arn} was refused: {errors}")

    changes.make("create flow log", f"{vpc_id}, traffic ALL, 26-field XSIAM format{note}", create)


@check_source_wiring.register
def _(source: FlowLogSource, aws: AwsClients, settings: Settings, feed: S3Feed, check: FindingsFor) -> None:
    assert source.vpc_id is not None
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    fitting = [f for f in _flow_logs_to_bucket(aws, source.vpc_id, bucket_arn) if _flow_log_fits(f)]
    if not check.expect("flow log", bool(fitting), f"{len(fitting)} flow logs of {source.vpc_id} in the XSIAM "
                        "format with traffic ALL", f"no usable flow log to s3://{feed.bucket}: {FIX}"):
        return
    active = [f["FlowLogId"] for f in fitting if f.get("FlowLogStatus") == "ACTIVE"
              and f.get("DeliverLogsStatus", "SUCCESS") == "SUCCESS"]
    check.expect("flow log active", bool(active), f"active: {active}" if active else
                 f"statuses {[(f['FlowLogId'], f.get('FlowLogStatus'), f.get('DeliverLogsStatus')) for f in fitting]}",
                 "check the bucket policy's SocfeedsLogDeliveryWrite statement")


# --- Route 53 Resolver query logs ------------------------------------------------------------

def _query_log_config(aws: AwsClients, name: str) -> dict[str, Any] | None:
    pages = aws.resolver.get_paginator("list_resolver_query_log_configs").paginate()
    configs = [dict(c) for page in pages for c in page.get("ResolverQueryLogConfigs", []) if c.get("Name") == name]
    return configs[0] if configs else None


def _association(aws: AwsClients, config_id: str, vpc_id: str) -> dict[str, Any] | None:
    pages = aws.resolver.get_paginator("list_resolver_query_log_config_associations").paginate()
    found = [dict(a) for page in pages for a in page.get("ResolverQueryLogConfigAssociations", [])
             if a.get("ResolverQueryLogConfigId") == config_id and a.get("ResourceId") == vpc_id]
    return found[0] if found else None


@ensure_source_wiring.register
def _(source: ResolverQueryLogSource, aws: AwsClients, settings: Settings, feed: S3Feed,
      changes: ChangesFor) -> None:
    assert source.vpc_id is not None
    vpc_id = source.vpc_id
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    config = _query_log_config(aws, source.config_name)
    if config is not None and config.get("DestinationArn") != bucket_arn:
        raise RuntimeError(
            f"resolver query log config {source.config_name!r} writes to {config.get('DestinationArn')}, not "
            f"{bucket_arn}; a config's destination cannot change. Fix: set s3_feeds.{changes.feed}.source."
            "config_name to a new name (or delete the old config), then rerun provision-feeds")
    if config is None:
        created: dict[str, Any] = {}

        def create() -> None:
            created.update(aws.resolver.create_resolver_query_log_config(
                Name=source.config_name, DestinationArn=bucket_arn,
                CreatorRequestId=f"socfeeds-{changes.feed}-{source.config_name}")["ResolverQueryLogConfig"])

        changes.make("create query log config", f"{source.config_name} -> s3://{feed.bucket}", create)
        config = created
    config_id = config.get("Id")
    if config_id is None or _association(aws, config_id, vpc_id) is None:
        changes.make("associate query logging", f"{source.config_name} with {vpc_id}",
                     lambda: aws.resolver.associate_resolver_query_log_config(
                         ResolverQueryLogConfigId=str(config_id), ResourceId=vpc_id))


@check_source_wiring.register
def _(source: ResolverQueryLogSource, aws: AwsClients, settings: Settings, feed: S3Feed,
      check: FindingsFor) -> None:
    assert source.vpc_id is not None
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    config = _query_log_config(aws, source.config_name)
    if not check.expect("query log config", config is not None and config.get("DestinationArn") == bucket_arn,
                        f"{source.config_name} -> {config.get('DestinationArn') if config else 'missing'}", FIX):
        return
    assert config is not None
    association = _association(aws, str(config["Id"]), source.vpc_id)
    status = association.get("Status") if association else "not associated"
    check.expect("query logging on vpc", status == "ACTIVE", f"{source.vpc_id}: {status}",
                 f"associate {source.config_name} with {source.vpc_id}: {FIX}")


# --- Fluent Bit ------------------------------------------------------------------------------

def fluent_bit_output(source: FluentBitSource, bucket: str, region: str) -> str:
    """The `[OUTPUT] s3` section the cluster's Fluent Bit runs (production shape, feeds.md)."""
    settings = [
        ("Name", "s3"), ("Match", source.match), ("bucket", bucket), ("region", region),
        ("total_file_size", "5M"), ("upload_timeout", "10m"), ("store_dir", "/tmp/fluent-bit/s3"),  # noqa: S108 (a path on the Fluent Bit pod)
        ("store_dir_limit_size", "1G"), ("s3_key_format", f"/{source.key_prefix.strip('/')}/%Y/%m/%d/%H/%M/%S-$UUID"),
        ("use_put_object", "On"), ("json_date_key", "date"), ("Retry_Limit", "False"),
    ]
    return "[OUTPUT]\n" + "".join(f"    {key:<21}{value}\n" for key, value in settings)


@ensure_source_wiring.register
def _(source: FluentBitSource, aws: AwsClients, settings: Settings, feed: S3Feed, changes: ChangesFor) -> None:
    rendered = fluent_bit_output(source, feed.bucket, settings.region)
    path = Path(source.output_path)
    if path.is_file() and path.read_text() == rendered:
        return

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
        if TaskRunContext.get() is not None:  # an artifact needs a run to belong to
            create_markdown_artifact(
                key=f"fluent-bit-output-{changes.feed}",
                markdown=f"Apply this Fluent Bit output to the cluster's logging config:\n\n```ini\n{rendered}```\n",
                description=f"Fluent Bit S3 output for feed {changes.feed}",
            )

    changes.make("render fluent bit output", f"{path} (apply it to the cluster's Fluent Bit config)", write)


@check_source_wiring.register
def _(source: FluentBitSource, aws: AwsClients, settings: Settings, feed: S3Feed, check: FindingsFor) -> None:
    path = Path(source.output_path)
    current = path.read_text() if path.is_file() else None
    check.expect("fluent bit output", current == fluent_bit_output(source, feed.bucket, settings.region),
                 f"{path} matches settings" if current else f"{path} missing or stale",
                 "run provision-feeds to re-render it, then apply it to the cluster", failing=Status.WARN)
