"""The AWS service (or agent) that writes each feed's logs into its bucket.

One ensure and one check per source kind, chosen by the declaration's type, so a feed with a
known source gets its wiring from data alone. Each kind reads AWS once, plans the steps, and
ensure applies what check reports. Sources are found by what they do (they write into the
feed's bucket), never by name: the platform's estate is adopted under its own names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import singledispatch
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext

from socfeeds.arns import CLOUDTRAIL_SERVICE, Arns
from socfeeds.aws import AwsClients, absent_on, error_code
from socfeeds.errors import OnCallError
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
SOCFEEDS_TAG = "socfeeds:feed"  # on the flow logs socfeeds creates (flow logs have no name)


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
    feed = settings.s3_feed(feed_name)
    if feed.source is None:
        return []
    changes = ChangesFor(feed_name, f"source:{feed.source.kind}", dry_run)
    ensure_source_wiring(feed.source, aws, settings, feed, changes)
    return changes.changes


@aws_task("check-source")
def check_source(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    feed = settings.s3_feed(feed_name)
    if feed.source is None:
        return []
    check = FindingsFor(feed_name, f"source:{feed.source.kind}")
    check_source_wiring(feed.source, aws, settings, feed, check)
    return check.findings


# --- one plan for ensure and check -----------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One change a source needs. ensure applies the steps and check reports them, so the two agree.

    `apply` is None when provision will not make the change (AWS cannot, or settings forbid it): provision
    then reports it unapplied and `fix` tells the engineer what to do.
    """

    action: str
    detail: str
    apply: Callable[[], object] | None = None
    fix: str = ""
    wanted: object = None  # what the call sends, for a Terraform owner (socfeeds.terraform)


def _apply(steps: list[Step], changes: ChangesFor) -> None:
    for step in steps:
        if step.apply is None:
            changes.changes.append(Change(feed=changes.feed, resource=changes.resource, action=step.action,
                                          detail=f"{step.detail}. Fix: {step.fix}", applied=False))
        else:
            changes.make(step.action, step.detail, step.apply, wanted=step.wanted)


def _fix(steps: list[Step]) -> str:
    """What the engineer does: the manual fix when provision will not act, else what provision will do."""
    manual = [step.fix for step in steps if step.apply is None]
    if manual:
        return "; ".join(manual)
    return f"{FIX} (it will {', then '.join(f'{s.action}: {s.detail}' for s in steps)})"


def _provenance(name: str, declared: str) -> str:
    return "declared in settings" if name == declared else f"adopted, not socfeeds' name {declared!r}"


def count_sources(aws: AwsClients, settings: Settings, feed_name: str) -> dict[str, int]:
    """How many sources of the feed's kind deliver into its bucket, and for query logging how many associations
    of the VPC with them (1 is right; more means duplicate records)."""
    feed = settings.s3_feed(feed_name)
    source = feed.source
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    if isinstance(source, FlowLogSource):
        assert source.vpc_id is not None  # settings fill it in
        return {"flow_logs": len(flow_logs_to_bucket(aws, source.vpc_id, bucket_arn))}
    if isinstance(source, ResolverQueryLogSource):
        assert source.vpc_id is not None
        state = read_query_logging(aws, source.vpc_id, bucket_arn)
        return {"query_log_configs": len(state.delivering), "associations": len(state.associated())}
    if isinstance(source, CloudTrailSource):
        return {"trails": len(trails_to_bucket(aws, feed.bucket))}
    return {}


# --- CloudTrail ------------------------------------------------------------------------------

def trails_to_bucket(aws: AwsClients, bucket: str) -> list[dict[str, Any]]:
    """Every trail writing into the bucket, whatever its name (shadow copies of other regions' trails too)."""
    trails = aws.cloudtrail.describe_trails(includeShadowTrails=True).get("trailList", [])
    return sorted((dict(t) for t in trails if t.get("S3BucketName") == bucket), key=lambda t: str(t.get("Name")))


def trail_log_prefix(trail: Mapping[str, Any], account_id: str) -> str:
    """Where a trail's objects land: `<S3KeyPrefix>/AWSLogs/<account>/`, or `AWSLogs/<account>/` without a prefix.

    An adopted trail keeps the platform's prefix (its other readers find the logs there), so the bucket policy's
    CloudTrail write statement and any notification filter must cover this prefix, not only `AWSLogs/`.
    """
    prefix = str(trail.get("S3KeyPrefix") or "").strip("/")
    return f"{prefix}/AWSLogs/{account_id}/" if prefix else f"AWSLogs/{account_id}/"


@dataclass(frozen=True)
class TrailState:
    """The trail that does the feed's job (declared name first), the others that also write to the bucket, and
    the trail holding the declared name when it writes elsewhere (a name AWS will not give twice)."""

    trail: dict[str, Any] | None
    others: list[dict[str, Any]]
    name_taken_by: dict[str, Any] | None
    status: dict[str, Any]
    organization: OrganizationState | None = None  # read only for an organization trail


@dataclass(frozen=True)
class OrganizationState:
    """What AWS needs before it makes an organization trail (CloudTrail User Guide, "Prepare to create a trail
    for your organization"): the account in the Organization, and CloudTrail's trusted access enabled, which
    only the management account can read (None elsewhere, e.g. a delegated administrator)."""

    organization_id: str | None
    trusted_access: bool | None


def read_organization(aws: AwsClients, account_id: str) -> OrganizationState:
    answer = absent_on({"AWSOrganizationsNotInUseException"}, aws.organizations.describe_organization)
    if answer is None:
        return OrganizationState(None, None)
    organization = answer["Organization"]
    trusted = None
    if organization.get("MasterAccountId") == account_id:
        enabled = [service["ServicePrincipal"] for page in aws.organizations.get_paginator(
            "list_aws_service_access_for_organization").paginate() for service in page["EnabledServicePrincipals"]]
        trusted = CLOUDTRAIL_SERVICE in enabled
    return OrganizationState(str(organization["Id"]), trusted)


def read_trail(aws: AwsClients, settings: Settings, feed: S3Feed) -> TrailState:
    assert isinstance(feed.source, CloudTrailSource)
    declared = feed.source.trail_name
    organization = read_organization(aws, settings.account_id) if feed.organization_id else None
    found = sorted(trails_to_bucket(aws, feed.bucket), key=lambda t: (t.get("Name") != declared,
                                                                      t.get("HomeRegion", settings.region)
                                                                      != settings.region))
    if not found:
        answer = absent_on({"TrailNotFoundException"}, aws.cloudtrail.get_trail, Name=declared)
        return TrailState(None, [], dict(answer["Trail"]) if answer else None, {}, organization)
    trail = found[0]
    status = aws.cloudtrail.get_trail_status(Name=str(trail.get("TrailARN") or trail["Name"]))
    return TrailState(trail, found[1:], None, dict(status), organization)


def _trail_shape(feed: S3Feed) -> dict[str, Any]:
    """With a feed key, the trail encrypts with it (SSE-KMS with the trail's encryption context)."""
    key = {"KmsKeyId": feed.kms_key_arn} if feed.kms_key_arn else {}
    return {"S3BucketName": feed.bucket, "IsMultiRegionTrail": True, "IncludeGlobalServiceEvents": True,
            "LogFileValidationEnabled": True, **key, **_organization_trail(feed)}


def _organization_trail(feed: S3Feed) -> dict[str, bool]:
    return {"IsOrganizationTrail": True} if feed.organization_id else {}


def _organization_blockers(feed_name: str, feed: S3Feed, account_id: str,
                           organization: OrganizationState | None) -> list[Step]:
    """What AWS would refuse an organization trail for, each with the person's fix (an Organization-wide
    setting is the Organization's owner's to change, never a feed's)."""
    declared = feed.organization_id
    if organization is None:
        return []
    where = f"s3_feeds.{feed_name}.source.organization_id"
    if organization.organization_id is None:
        return [Step("not in an organization", f"account {account_id} is in no AWS Organization, and {where} is "
                     f"{declared}", fix=f"run the feed from the management account of {declared}, or remove {where}")]
    if organization.organization_id != declared:
        return [Step("another organization", f"account {account_id} is in {organization.organization_id}, not "
                     f"{declared}", fix=f"set {where} to {organization.organization_id}")]
    if organization.trusted_access is False:
        return [Step("trusted access off", f"CloudTrail's trusted access is not enabled in {declared} (AWS refuses "
                     "an organization trail without it: CloudTrailAccessNotEnabledException)",
                     fix=f"in the management account, aws organizations enable-aws-service-access "
                     f"--service-principal {CLOUDTRAIL_SERVICE} (Terraform: aws_service_access_principals of "
                     "aws_organizations_organization)")]
    return []


def _trail_drift(feed: S3Feed, trail: Mapping[str, Any]) -> list[str]:
    """Settings that differ; S3KeyPrefix is not one of them: an adopted trail keeps the platform's prefix."""
    return sorted(k for k, v in _trail_shape(feed).items() if trail.get(k) != v)


def plan_trail(aws: AwsClients, settings: Settings, feed_name: str, state: TrailState) -> list[Step]:
    """Adopt the trail writing to the bucket (keeping its name and key prefix) and converge its settings; create
    the declared trail only when none writes there."""
    feed = settings.s3_feed(feed_name)
    assert isinstance(feed.source, CloudTrailSource)
    declared = feed.source.trail_name
    settings_args: dict[str, Any] = {
        "S3BucketName": feed.bucket, "IsMultiRegionTrail": True, "IncludeGlobalServiceEvents": True,
        "EnableLogFileValidation": True, **({"KmsKeyId": feed.kms_key_arn} if feed.kms_key_arn else {}),
        **_organization_trail(feed)}

    def terraform(name: str) -> dict[str, Any]:
        return {"name": name, "s3_bucket_name": feed.bucket, "is_multi_region_trail": True,
                "include_global_service_events": True, "enable_log_file_validation": True, "enable_logging": True,
                **({"kms_key_id": feed.kms_key_arn} if feed.kms_key_arn else {}),
                **({"is_organization_trail": True} if _organization_trail(feed) else {})}

    blockers = _organization_blockers(feed_name, feed, settings.account_id, state.organization)
    if blockers:
        return blockers
    if state.trail is None:
        if state.name_taken_by is not None:
            elsewhere = state.name_taken_by.get("S3BucketName")
            return [Step("trail name taken", f"no trail writes to s3://{feed.bucket}, and trail {declared} writes to "
                         f"s3://{elsewhere}", fix=f"set s3_feeds.{feed_name}.source.trail_name to a name no trail "
                         "uses and run provision-feeds (socfeeds never redirects a trail that serves another bucket)")]
        return [Step("create trail", f"{declared}: multi-region, log-file validation, to s3://{feed.bucket}",
                     lambda: aws.cloudtrail.create_trail(Name=declared, **settings_args), wanted=terraform(declared)),
                Step("start logging", declared, lambda: aws.cloudtrail.start_logging(Name=declared))]
    name = str(state.trail["Name"])
    drift = _trail_drift(feed, state.trail)
    logging = bool(state.status.get("IsLogging"))
    home = str(state.trail.get("HomeRegion") or settings.region)
    if (drift or not logging) and home != settings.region:
        return [Step("trail in another region", f"{name} (home region {home}) needs "
                     f"{', '.join(drift + ([] if logging else ['logging started']))}",
                     fix=f"AWS changes a trail only from its home region: in {home}, run aws cloudtrail update-trail "
                     f"--name {name} --is-multi-region-trail --include-global-service-events "
                     f"--enable-log-file-validation, and aws cloudtrail start-logging --name {name}")]
    steps: list[Step] = []
    if drift:
        steps.append(Step("update trail", f"{name} ({_provenance(name, declared)}): {', '.join(drift)}",
                          lambda: aws.cloudtrail.update_trail(Name=name, **settings_args), wanted=terraform(name)))
    if not logging:
        steps.append(Step("start logging", f"{name} ({_provenance(name, declared)})",
                          lambda: aws.cloudtrail.start_logging(Name=name)))
    return steps


@ensure_source_wiring.register
def _(source: CloudTrailSource, aws: AwsClients, settings: Settings, feed: S3Feed, changes: ChangesFor) -> None:
    if feed.wires_source(settings.account_id):
        _apply(plan_trail(aws, settings, changes.feed, read_trail(aws, settings, feed)), changes)


@check_source_wiring.register
def _(source: CloudTrailSource, aws: AwsClients, settings: Settings, feed: S3Feed, check: FindingsFor) -> None:
    if not feed.wires_source(settings.account_id):
        trail_account = feed.trail_account(settings.account_id)
        check.add("trail exists", Status.PASS, f"organization trail {source.trail} of account {trail_account} "
                  f"writes here (that account's verify checks the trail; this bucket's policy admits it)")
        return
    state = read_trail(aws, settings, feed)
    steps = plan_trail(aws, settings, check.feed, state)
    if source.organization_id:
        blockers = _organization_blockers(check.feed, feed, settings.account_id, state.organization)
        check.expect("trail organization", not blockers, blockers[0].detail if blockers else
                     f"the account is in {source.organization_id}, CloudTrail may make its organization trail",
                     _fix(blockers))
        if blockers:
            return
    if state.trail is None:
        taken = f"; trail {source.trail_name} writes to s3://{state.name_taken_by.get('S3BucketName')}" \
            if state.name_taken_by else ""
        check.add("trail exists", Status.FAIL, f"no trail writes to s3://{feed.bucket}{taken}", _fix(steps))
        return
    trail, name = state.trail, str(state.trail["Name"])
    check.add("trail exists", Status.PASS, f"trail {name} ({_provenance(name, source.trail_name)}) writes to "
              f"s3://{feed.bucket}/{trail_log_prefix(trail, settings.account_id)}")
    drift = _trail_drift(feed, trail)
    check.expect("trail settings", not drift, f"differs: {', '.join(drift)}" if drift else
                 "multi-region, global events, log-file validation, to the feed bucket",
                 _fix([s for s in steps if s.action != "start logging"]))
    logging = bool(state.status.get("IsLogging"))
    check.expect("trail logging", logging, "logging" if logging else "logging is stopped: no audit events are "
                 "delivered", f"aws cloudtrail start-logging --name {name}, or {FIX}")
    error = state.status.get("LatestDeliveryError")
    check.expect("trail delivery", not error, f"latest delivery error: {error}" if error else "no delivery error",
                 "check the bucket policy's SocfeedsCloudTrailWrite statement and the bucket's KMS key policy")
    if state.others:
        check.add("duplicate trails", Status.WARN, f"{[t['Name'] for t in state.others]} also write to "
                  f"s3://{feed.bucket}: XSIAM ingests every event more than once",
                  f"keep {name}; delete the others (aws cloudtrail delete-trail --name <name>) if nothing else "
                  "needs them")


# --- VPC flow logs ---------------------------------------------------------------------------

_DEFAULT_FLOW_LOG_FORMAT = ("${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} "
                            "${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}")


def _in_bucket(destination: str, bucket_arn: str) -> bool:
    return destination.rstrip("/") == bucket_arn or destination.startswith(bucket_arn + "/")


def flow_logs_to_bucket(aws: AwsClients, vpc_id: str, bucket_arn: str) -> list[dict[str, Any]]:
    """Every flow log of the VPC writing into the bucket (with or without a key prefix), in any format."""
    pages = aws.ec2.get_paginator("describe_flow_logs").paginate(
        Filters=[{"Name": "resource-id", "Values": [vpc_id]}])
    return [dict(f) for page in pages for f in page.get("FlowLogs", [])
            if f.get("LogDestinationType") == "s3" and _in_bucket(str(f.get("LogDestination", "")), bucket_arn)]


def flow_log_fits(flow_log: Mapping[str, Any]) -> bool:
    """XSIAM parses only the 26-field plain-text format, and needs every flow (accepted and rejected)."""
    file_format = (flow_log.get("DestinationOptions") or {}).get("FileFormat", "plain-text")
    return (flow_log.get("LogFormat") == FLOW_LOG_FORMAT and flow_log.get("TrafficType") == "ALL"
            and file_format == "plain-text")


def flow_log_prefix(flow_log: Mapping[str, Any], account_id: str) -> str:
    """Where a flow log's objects land: `<key prefix>/AWSLogs/<account>/`, or `AWSLogs/<account>/` (AWS's layout)."""
    _, _, prefix = str(flow_log.get("LogDestination", "")).partition(":::")[2].partition("/")
    prefix = prefix.strip("/")
    return f"{prefix}/AWSLogs/{account_id}/" if prefix else f"AWSLogs/{account_id}/"


def _format_of(flow_log: Mapping[str, Any]) -> str:
    log_format = str(flow_log.get("LogFormat", ""))
    shapes = {FLOW_LOG_FORMAT: "XSIAM format (26 fields)", _DEFAULT_FLOW_LOG_FORMAT: "AWS default format (14 fields)"}
    shape = shapes.get(log_format, f"format {log_format!r} ({len(log_format.split())} fields)")
    options = flow_log.get("DestinationOptions") or {}
    return f"{shape}, traffic {flow_log.get('TrafficType')}, {options.get('FileFormat', 'plain-text')}"


class FlowLogConflict(RuntimeError, OnCallError):
    """AWS refused a flow log because another one already writes there (FlowLogAlreadyExists), said plainly."""


def plan_flow_log(aws: AwsClients, source: FlowLogSource, feed_name: str, bucket_arn: str,
                  existing: list[dict[str, Any]]) -> list[Step]:
    """Adopt a flow log in the XSIAM format; AWS cannot edit a format, so another one is replaced only when
    settings allow it, and the new flow log is created before the old ones are deleted (no gap in records)."""
    assert source.vpc_id is not None  # settings fill it in
    vpc_id = source.vpc_id
    fitting = [f for f in existing if flow_log_fits(f)]
    other = [f for f in existing if not flow_log_fits(f)]
    other_ids = [str(f["FlowLogId"]) for f in other]
    if fitting and not (other and source.replace_mismatched):
        return []
    wanted = "the 26-field XSIAM format, traffic ALL, plain text"
    if not fitting and other and not source.replace_mismatched:
        found = "; ".join(f"{f['FlowLogId']}: {_format_of(f)}" for f in other)
        return [Step("flow log format differs", f"{found}; wanted {wanted}. AWS cannot change a flow log's format",
                     fix=f"set s3_feeds.{feed_name}.source.replace_mismatched = true and run provision-feeds (creates "
                     f"the XSIAM-format flow log, then deletes {', '.join(other_ids)})")]
    steps: list[Step] = []
    if not fitting:
        destinations = {str(f["LogDestination"]) for f in other}
        destination = destinations.pop() if len(destinations) == 1 else bucket_arn  # keeps the platform's prefix
        steps.append(Step("create flow log", f"{vpc_id} -> {destination} in the XSIAM format",
                          lambda: _create_flow_log(aws, source, feed_name, destination, other),
                          wanted={"vpc_id": vpc_id, "traffic_type": "ALL", "log_destination_type": "s3",
                                  "log_destination": destination, "log_format": FLOW_LOG_FORMAT,
                                  "max_aggregation_interval": source.aggregation_seconds}))
    if other:
        steps.append(Step("delete flow log", f"{', '.join(other_ids)} in the old format (replace_mismatched = true)",
                          lambda: _delete_flow_logs(aws, other_ids)))
    return steps


def _create_flow_log(aws: AwsClients, source: FlowLogSource, feed_name: str, destination: str,
                     replacing: list[dict[str, Any]]) -> None:
    assert source.vpc_id is not None
    try:
        answer = aws.ec2.create_flow_logs(
            ResourceIds=[source.vpc_id], ResourceType="VPC", TrafficType="ALL", LogDestinationType="s3",
            LogDestination=destination, LogFormat=FLOW_LOG_FORMAT, MaxAggregationInterval=source.aggregation_seconds,
            DestinationOptions={"FileFormat": "plain-text", "HiveCompatiblePartitions": False,
                                "PerHourPartition": False},
            TagSpecifications=[{"ResourceType": "vpc-flow-log", "Tags": [{"Key": SOCFEEDS_TAG, "Value": feed_name}]}],
        )
    except ClientError as error:
        if error_code(error) != "FlowLogAlreadyExists":
            raise
        raise _conflict(aws, source.vpc_id, destination, feed_name, replacing) from error
    failed = answer.get("Unsuccessful", [])
    if failed:
        errors = "; ".join(str(f.get("Error", {}).get("Message")) for f in failed)
        raise RuntimeError(f"flow log for {source.vpc_id} -> {destination} was refused: {errors}. Nothing was deleted. "
                           "Fix: check that the bucket exists and its policy's SocfeedsLogDeliveryWrite statement, "
                           "then run provision-feeds for this feed")


def _conflict(aws: AwsClients, vpc_id: str, destination: str, feed_name: str,
              replacing: list[dict[str, Any]]) -> FlowLogConflict:
    ids = [str(f["FlowLogId"]) for f in replacing] or [
        str(f["FlowLogId"]) for f in aws.ec2.describe_flow_logs(
            Filters=[{"Name": "resource-id", "Values": [vpc_id]}]).get("FlowLogs", [])
        if str(f.get("LogDestination", "")) == destination]
    named = ", ".join(ids) or "a flow log describe-flow-logs does not list for this VPC"
    if replacing:
        return FlowLogConflict(
            f"AWS refused a second flow log of {vpc_id} to {destination} while {named} writes there in another "
            f"format (FlowLogAlreadyExists). Nothing was deleted: {named} still delivers. Fix: delete it (aws ec2 "
            f"delete-flow-logs --flow-log-ids {' '.join(ids)}) and run provision-feeds for feed {feed_name} at once "
            "(it creates the XSIAM-format flow log; flow records between the two are lost)")
    return FlowLogConflict(
        f"AWS says {vpc_id} already has a flow log to {destination} ({named}; FlowLogAlreadyExists) that provision "
        f"did not find. Fix: aws ec2 describe-flow-logs --filter Name=resource-id,Values={vpc_id}; if it is being "
        "deleted, run provision-feeds again in a minute")


def _delete_flow_logs(aws: AwsClients, flow_log_ids: list[str]) -> None:
    failed = aws.ec2.delete_flow_logs(FlowLogIds=flow_log_ids).get("Unsuccessful", [])
    if failed:
        errors = "; ".join(f"{f.get('ResourceId')}: {f.get('Error', {}).get('Message')}" for f in failed)
        raise RuntimeError(f"the XSIAM-format flow log was created, but deleting the old ones failed ({errors}); "
                           "both write to the bucket. Fix: run provision-feeds for this feed again, or aws ec2 "
                           f"delete-flow-logs --flow-log-ids {' '.join(flow_log_ids)}")


def _made_by(flow_log: Mapping[str, Any]) -> str:
    tags = {t.get("Key"): t.get("Value") for t in flow_log.get("Tags", [])}
    return "created by socfeeds" if SOCFEEDS_TAG in tags else "adopted, not created by socfeeds"


@ensure_source_wiring.register
def _(source: FlowLogSource, aws: AwsClients, settings: Settings, feed: S3Feed, changes: ChangesFor) -> None:
    assert source.vpc_id is not None
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    existing = flow_logs_to_bucket(aws, source.vpc_id, bucket_arn)
    _apply(plan_flow_log(aws, source, changes.feed, bucket_arn, existing), changes)


@check_source_wiring.register
def _(source: FlowLogSource, aws: AwsClients, settings: Settings, feed: S3Feed, check: FindingsFor) -> None:
    assert source.vpc_id is not None
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    existing = flow_logs_to_bucket(aws, source.vpc_id, bucket_arn)
    steps = plan_flow_log(aws, source, check.feed, bucket_arn, existing)
    fitting = [f for f in existing if flow_log_fits(f)]
    other = [f for f in existing if not flow_log_fits(f)]
    found = "; ".join(f"{f['FlowLogId']} ({_made_by(f)}): {_format_of(f)}" for f in existing)
    if not check.expect("flow log", not steps, f"{found} -> s3://{feed.bucket}" if existing else
                        f"no flow log of {source.vpc_id} writes to s3://{feed.bucket}", _fix(steps)):
        return
    if other:
        check.add("other flow log formats", Status.WARN, f"{[f['FlowLogId'] for f in other]} also write to "
                  f"s3://{feed.bucket} in another format: XSIAM cannot parse those records",
                  f"set s3_feeds.{check.feed}.source.replace_mismatched = true and run provision-feeds (deletes them)")
    if len(fitting) > 1:
        check.add("duplicate flow logs", Status.WARN, f"{[f['FlowLogId'] for f in fitting]} all write to "
                  f"s3://{feed.bucket}: XSIAM ingests every record {len(fitting)} times",
                  "keep one; aws ec2 delete-flow-logs --flow-log-ids <the others>")
    active = [f["FlowLogId"] for f in fitting if f.get("FlowLogStatus") == "ACTIVE"
              and f.get("DeliverLogsStatus", "SUCCESS") == "SUCCESS"]
    check.expect("flow log active", bool(active), f"active: {active}" if active else
                 f"statuses {[(f['FlowLogId'], f.get('FlowLogStatus'), f.get('DeliverLogsStatus')) for f in fitting]}",
                 "check the bucket policy's SocfeedsLogDeliveryWrite statement")


# --- Route 53 Resolver query logs ------------------------------------------------------------
# Quotas (Route 53 Developer Guide, "Quotas on Route 53 VPC Resolver query logs"): 20 query log configurations and
# 100 VPC associations per Region. Nothing limits a VPC to one configuration, so a second configuration to the same
# bucket would log every query twice and spend both quotas: discovery is by destination, never by name.

@dataclass(frozen=True)
class QueryLogState:
    """Every query log config in the Region, the ones writing to the bucket, and the VPC's associations."""

    configs: list[dict[str, Any]]
    delivering: list[dict[str, Any]]
    associations: list[dict[str, Any]]

    def associated(self) -> list[dict[str, Any]]:
        """Associations of the VPC with a config writing to the bucket (any of them does the job)."""
        ids = {c.get("Id") for c in self.delivering}
        return [a for a in self.associations if a.get("ResolverQueryLogConfigId") in ids]


def read_query_logging(aws: AwsClients, vpc_id: str, bucket_arn: str) -> QueryLogState:
    pages = aws.resolver.get_paginator("list_resolver_query_log_configs").paginate()
    configs = [dict(c) for page in pages for c in page.get("ResolverQueryLogConfigs", [])]
    pages_of_associations = aws.resolver.get_paginator("list_resolver_query_log_config_associations").paginate()
    associations = [dict(a) for page in pages_of_associations
                    for a in page.get("ResolverQueryLogConfigAssociations", []) if a.get("ResourceId") == vpc_id]
    delivering = [c for c in configs if c.get("DestinationArn") == bucket_arn]
    return QueryLogState(configs, delivering, associations)


def query_log_config_name(source: ResolverQueryLogSource, feed_name: str, configs: list[dict[str, Any]]) -> str | None:
    """The declared name, or `<name>-<feed>` when a config writing elsewhere holds it (names are labels: the
    destination is what is found next time); None when both are taken."""
    taken = {c.get("Name") for c in configs}
    suffix = f"-{feed_name}"
    for name in (source.config_name, source.config_name[:64 - len(suffix)] + suffix):
        if name not in taken:
            return name
    return None


def plan_query_logging(aws: AwsClients, source: ResolverQueryLogSource, feed_name: str, bucket: str,
                       bucket_arn: str, state: QueryLogState) -> list[Step]:
    assert source.vpc_id is not None
    vpc_id = source.vpc_id
    if state.associated():
        return []
    if state.delivering:
        config = sorted(state.delivering, key=lambda c: (c.get("Name") != source.config_name, str(c.get("Name"))))[0]
        name = str(config.get("Name"))
        return [Step("associate query logging", f"{name} ({config['Id']}, {_provenance(name, source.config_name)}) "
                     f"with {vpc_id}", lambda: aws.resolver.associate_resolver_query_log_config(
                         ResolverQueryLogConfigId=str(config["Id"]), ResourceId=vpc_id))]
    holder = next((c for c in state.configs if c.get("Name") == source.config_name), None)
    clash = (f" (the declared name {source.config_name!r} is taken by {holder.get('Id')}, which writes to "
             f"{holder.get('DestinationArn')})") if holder else ""
    new_name = query_log_config_name(source, feed_name, state.configs)
    if new_name is None:
        return [Step("query log config name taken", f"no query log config writes to s3://{bucket}{clash}, and "
                     f"{source.config_name}-{feed_name} is taken too", fix=f"set s3_feeds.{feed_name}.source."
                     "config_name to a name no query log config uses, then run provision-feeds")]
    created: dict[str, Any] = {}

    def create() -> None:
        created.update(aws.resolver.create_resolver_query_log_config(
            Name=new_name, DestinationArn=bucket_arn,
            CreatorRequestId=f"socfeeds-{feed_name}-{new_name}")["ResolverQueryLogConfig"])

    return [Step("create query log config", f"{new_name} -> s3://{bucket}{clash}", create),
            Step("associate query logging", f"{new_name} with {vpc_id}",
                 lambda: aws.resolver.associate_resolver_query_log_config(
                     ResolverQueryLogConfigId=str(created["Id"]), ResourceId=vpc_id))]


@ensure_source_wiring.register
def _(source: ResolverQueryLogSource, aws: AwsClients, settings: Settings, feed: S3Feed,
      changes: ChangesFor) -> None:
    assert source.vpc_id is not None
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    state = read_query_logging(aws, source.vpc_id, bucket_arn)
    _apply(plan_query_logging(aws, source, changes.feed, feed.bucket, bucket_arn, state), changes)


@check_source_wiring.register
def _(source: ResolverQueryLogSource, aws: AwsClients, settings: Settings, feed: S3Feed,
      check: FindingsFor) -> None:
    assert source.vpc_id is not None
    bucket_arn = Arns(settings.region, settings.account_id).bucket(feed.bucket)
    state = read_query_logging(aws, source.vpc_id, bucket_arn)
    steps = plan_query_logging(aws, source, check.feed, feed.bucket, bucket_arn, state)
    names = [f"{c.get('Name')} ({c.get('Id')}, {_provenance(str(c.get('Name')), source.config_name)})"
             for c in state.delivering]
    if not check.expect("query log config", bool(state.delivering), f"{', '.join(names)} -> s3://{feed.bucket}"
                        if names else f"no query log config writes to s3://{feed.bucket}", _fix(steps)):
        return
    associated = state.associated()
    if not associated:
        check.add("query logging on vpc", Status.FAIL, f"{source.vpc_id}: not associated with a config writing to "
                  f"s3://{feed.bucket}", _fix(steps))
        return
    status = {str(a.get("Status")) for a in associated}
    where = ", ".join(f"{a.get('ResolverQueryLogConfigId')}: {a.get('Status')} {a.get('Error', '')} "
                      f"{a.get('ErrorMessage', '')}".strip() for a in associated)
    if "ACTIVE" in status:
        check.add("query logging on vpc", Status.PASS, f"{source.vpc_id}: {where}")
    elif status <= {"CREATING"}:
        check.add("query logging on vpc", Status.WARN, f"{source.vpc_id}: {where}",
                  "AWS is still creating the association: run verify-feeds again in a few minutes")
    else:
        check.add("query logging on vpc", Status.FAIL, f"{source.vpc_id}: {where}",
                  "check the bucket policy's SocfeedsLogDeliveryWrite statement (and its KMS key policy), then "
                  "disassociate and associate the config with the VPC again")
    if len(associated) > 1:
        check.add("duplicate query logging", Status.WARN, f"{source.vpc_id} is associated with "
                  f"{[a.get('ResolverQueryLogConfigId') for a in associated]}, all writing to s3://{feed.bucket}: "
                  "XSIAM ingests every query more than once",
                  "keep one; aws route53resolver disassociate-resolver-query-log-config for the others")


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
