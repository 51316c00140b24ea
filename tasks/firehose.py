"""The EKS feed: control-plane logs -> CloudWatch Logs -> subscription -> Firehose -> XSIAM HTTP endpoint.

The cluster exists already and is never created here. The endpoint's access token is never read
by provisioning: Firehose reads it from the Secrets Manager secret through its own configuration,
and verify only checks that the secret has an `api_key` field.

What already carries the log group to XSIAM is found by function, not by name (`read_estate`): a
subscription filter on the group feeding a stream whose HTTP endpoint is the XSIAM URL. Such a stream
and filter (the platform's Terraform, say) are adopted under their own names, so every event reaches
XSIAM once; the declared names are used only when nothing delivers yet. An adopted stream keeps its
own wiring (role, secret, error logging, backup bucket) and converges only how it delivers. A role
socfeeds did not create is reviewed, never rewritten.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from socfeeds import policies
from socfeeds.arns import Arns
from socfeeds.aws import AwsClients, absent_on, until_accepted
from socfeeds.errors import OnCallError
from socfeeds.report import Change, ChangesFor, Finding, FindingsFor, Status
from socfeeds.settings import FirehoseFeed, Settings, check_endpoint_url
from tasks._task import aws_task
from tasks.buckets import BucketSpec, check_bucket_state, ensure_bucket_state
from tasks.iam import document_of, granted_statements
from tasks.kms import KeyUser
from tasks.roles import check_role, ensure_role

ERROR_LOG_STREAM = "DestinationDelivery"
FAILED_PREFIX = "http-endpoint-failed/"
FIX = "run provision-feeds for this feed"
IAM_PROPAGATION = {"InvalidArgumentException", "InvalidParameterException"}
MANAGED_TAG_KEY = "socfeeds:managed"  # put on every role socfeeds creates: only those does it ever rewrite
OWNER_FIX = ("where that role is managed (the platform's Terraform, say): socfeeds never rewrites a role it did "
             "not create")


class MissingToken(RuntimeError, OnCallError):
    """The endpoint token secret does not exist; only a person holding the XSIAM token can create it."""


class FilterLimit(RuntimeError, OnCallError):
    """The log group has CloudWatch's two subscription filters already and neither feeds the stream."""


def error_bucket(feed: FirehoseFeed, settings: Settings) -> BucketSpec:
    writer = KeyUser("firehose role", "role", feed.firehose_role, ("kms:Decrypt", "kms:GenerateDataKey"))
    return BucketSpec(feed.error_bucket, feed.error_retention_days, False, feed.kms_key_arn, [], "",
                      settings.omit_conditional_denies, settings.region, settings.account_id, key_users=(writer,))


def stream_encryption(kms_key_arn: str | None) -> dict[str, str]:
    """Encrypted at rest always: the customer key when declared, else an AWS-owned key (free, no key policy)."""
    if kms_key_arn:
        return {"KeyType": "CUSTOMER_MANAGED_CMK", "KeyARN": kms_key_arn}
    return {"KeyType": "AWS_OWNED_CMK"}


def encryption_drift(description: dict[str, Any], wanted: dict[str, str], any_key: bool = False) -> str | None:
    """How the stream's encryption differs from the declaration, None when it matches (or is being enabled).

    any_key: an adopted stream with no key declared keeps whichever key it has (never downgraded to AWS-owned)."""
    current = description.get("DeliveryStreamEncryptionConfiguration") or {}
    status = current.get("Status", "DISABLED")
    if status not in {"ENABLED", "ENABLING"}:
        return f"encryption {status}"
    mismatched = [] if any_key else [k for k, v in wanted.items() if current.get(k) != v]
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


def delivery_settings(feed: FirehoseFeed) -> dict[str, Any]:
    """How the stream delivers (XSIAM's 1 MiB / 60 s buffering, GZIP, retries, failed data kept): converged on
    any stream the feed uses, adopted ones included, because none of it depends on the stream's role."""
    return {
        "BufferingHints": {"SizeInMBs": feed.buffering_mib, "IntervalInSeconds": feed.buffering_seconds},
        "RequestConfiguration": {"ContentEncoding": "GZIP"},
        "RetryOptions": {"DurationInSeconds": feed.retry_seconds},
        "S3BackupMode": "FailedDataOnly",
    }


def http_destination(feed: FirehoseFeed, settings: Settings, url: str, secret_arn: str) -> dict[str, Any]:
    """The declared stream's HTTP endpoint destination: the delivery settings on socfeeds' own wiring."""
    role_arn = _arns(settings).role(feed.firehose_role)
    return {
        "EndpointConfiguration": {"Url": url, "Name": url[:256]},
        "CloudWatchLoggingOptions": {"Enabled": True, "LogGroupName": feed.error_log_group,
                                     "LogStreamName": ERROR_LOG_STREAM},
        "RoleARN": role_arn,
        "SecretsManagerConfiguration": {"SecretARN": secret_arn, "RoleARN": role_arn, "Enabled": True},
        **delivery_settings(feed),
    }


def backup_configuration(feed: FirehoseFeed, settings: Settings) -> dict[str, Any]:
    return {"RoleARN": _arns(settings).role(feed.firehose_role), "BucketARN": _arns(settings).bucket(feed.error_bucket),
            "BufferingHints": {"SizeInMBs": 10, "IntervalInSeconds": 400}, "CompressionFormat": "GZIP"}


def describe_stream(aws: AwsClients, name: str) -> dict[str, Any] | None:
    answer = absent_on({"ResourceNotFoundException"}, aws.firehose.describe_delivery_stream,
                       DeliveryStreamName=name)
    return dict(answer["DeliveryStreamDescription"]) if answer else None


def http_of(description: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The stream's HTTP endpoint destination description, None for a missing stream or another destination."""
    destinations = (description or {}).get("Destinations") or [{}]
    current = destinations[0].get("HttpEndpointDestinationDescription")
    return dict(current) if current is not None else None


def delivers_to(description: Mapping[str, Any] | None, url: str) -> bool:
    return bool((http_of(description) or {}).get("EndpointConfiguration", {}).get("Url") == url)


def stream_drift(description: dict[str, Any], wanted: dict[str, Any], backup: dict[str, Any] | None) -> list[str]:
    """Fields of the stream's HTTP destination that differ from the declaration (only those `wanted` names)."""
    current = http_of(description)
    if current is None:
        return ["destination is not an HTTP endpoint"]
    drift = [key for key, value in wanted.items() if key != "EndpointConfiguration" and current.get(key) != value]
    if "EndpointConfiguration" in wanted:
        endpoint = current.get("EndpointConfiguration", {})
        drift += [f"EndpointConfiguration.{k}" for k in ("Url", "Name")
                  if endpoint.get(k) != wanted["EndpointConfiguration"][k]]
    if backup is not None:
        current_backup = current.get("S3DestinationDescription", {})
        drift += [f"S3 backup {k}" for k in ("BucketARN", "RoleARN") if current_backup.get(k) != backup[k]]
    return drift


def wait_active(aws: AwsClients, name: str, deadline_s: float = 300) -> None:
    deadline, pause = time.monotonic() + deadline_s, 0.5
    while (describe_stream(aws, name) or {}).get("DeliveryStreamStatus") != "ACTIVE":
        if time.monotonic() > deadline:
            raise RuntimeError(f"delivery stream {name} not ACTIVE after {deadline_s:.0f} s: check it in the console")
        time.sleep(pause)
        pause = min(pause * 2, 10.0)


# --- roles: socfeeds converges only those it created -----------------------------------------

def role_name(arn: str) -> str:
    """A role ARN may carry a path (role/service-role/name); the name is its last part."""
    return arn.rsplit("/", 1)[-1]


def _get_role(aws: AwsClients, name: str) -> dict[str, Any] | None:
    answer = absent_on({"NoSuchEntity"}, aws.iam.get_role, RoleName=name)
    return dict(answer["Role"]) if answer else None


def socfeeds_made(role: Mapping[str, Any] | None, name: str, declared: str, purpose: str) -> bool:
    """Whether socfeeds may write this role: the role it declares, and one it created (tagged at creation, or from
    before the tag with the description socfeeds writes). A declared role not there yet is socfeeds' to create."""
    if name != declared:
        return False
    if role is None:
        return True
    tags = {t.get("Key"): t.get("Value") for t in role.get("Tags") or []}
    return tags.get(MANAGED_TAG_KEY) == "true" or role.get("Description") == purpose[:1000]


def _ensure_role_in_use(aws: AwsClients, changes: ChangesFor, name: str, declared: str, trust: policies.Document,
                        permissions: policies.Document, purpose: str) -> None:
    """Create or converge a role socfeeds owns; any other role is left exactly as it is (verify reports its gaps)."""
    role = _get_role(aws, name)
    if not socfeeds_made(role, name, declared, purpose):
        return
    ensure_role(aws, changes, name, trust, permissions, purpose)
    if role is None:
        changes.make("tag role", f"{name}: {MANAGED_TAG_KEY}=true (socfeeds created it, so socfeeds converges it)",
                     lambda: aws.iam.tag_role(RoleName=name, Tags=[{"Key": MANAGED_TAG_KEY, "Value": "true"}]))


def _conditions(statement: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """Condition keys (lower-cased, as IAM compares them) to (key as written, value), whatever the operator."""
    return {key.lower(): (key, policies.canonical(value))
            for pairs in (statement.get("Condition") or {}).values() for key, value in pairs.items()}


def trust_gaps(current: policies.Document, wanted: policies.Document) -> list[str] | None:
    """Conditions of the wanted trust the current one lacks; None when it does not let the service in at all."""
    [statement] = policies.as_list(wanted["Statement"])
    service = policies.services_of(statement)[0]
    admitting = [s for s in policies.as_list(current.get("Statement", []))
                 if service in policies.services_of(s) and policies.allows([s], "sts:AssumeRole", "*")]
    if not admitting:
        return None
    wanted_conditions = _conditions(statement)
    return sorted({f"{key} = {value}" for s in admitting for lowered, (key, value) in wanted_conditions.items()
                   if _conditions(s).get(lowered, (None, None))[1] != value})


def missing_grants(held: list[policies.Statement], needed: policies.Document) -> list[str]:
    """Needed (action, resource) pairs the held statements do not allow, wildcards and all, as IAM decides."""
    return [f"{action} on {resource}" for s in policies.as_list(needed["Statement"])
            for action in policies.as_list(s["Action"]) for resource in policies.as_list(s["Resource"])
            if not policies.allows(held, action, resource)]


def _check_role_in_use(aws: AwsClients, check: FindingsFor, name: str, declared: str, trust: policies.Document,
                       permissions: policies.Document, purpose: str, user: str) -> None:
    """socfeeds' own role compared exactly (provision repairs it); any other role reviewed for what `user` needs."""
    role = _get_role(aws, name)
    if socfeeds_made(role, name, declared, purpose):
        check_role(aws, check, name, trust, permissions)
        return
    owner = f"not socfeeds' ({user} uses it)"
    if not check.expect(f"role {name}", role is not None, f"exists, {owner}",
                        f"role {name}, used by {user}, does not exist: restore it {OWNER_FIX}"):
        return
    assert role is not None
    gaps = trust_gaps(document_of(role["AssumeRolePolicyDocument"]), trust)
    service = policies.services_of(policies.as_list(trust["Statement"])[0])[0]
    if gaps is None:
        check.add(f"role {name} trust", Status.FAIL, f"does not let {service} assume it: {user} cannot deliver",
                  f"trust {service} (sts:AssumeRole) in role {name} {OWNER_FIX}")
    else:
        check.expect(f"role {name} trust", not gaps, f"trusts {service} without {', '.join(gaps)} (the confused-deputy "
                     f"guard socfeeds' roles have)" if gaps else f"trusts {service} as socfeeds would ({owner})",
                     f"add {', '.join(gaps)} to the trust policy's condition {OWNER_FIX}", failing=Status.WARN)
    missing = missing_grants(granted_statements(aws, "role", name), permissions)
    check.expect(f"role {name} permissions", not missing, f"missing {'; '.join(missing)}: {user} fails without it"
                 if missing else f"grants what {user} needs ({owner})",
                 f"grant {'; '.join(missing)} to role {name} {OWNER_FIX}")


# --- what already delivers the log group to XSIAM --------------------------------------------

def _filters(aws: AwsClients, log_group: str) -> list[dict[str, Any]]:
    """Every subscription filter on the group (at most two, CloudWatch's limit); none when it does not exist yet."""
    answer = absent_on({"ResourceNotFoundException"}, aws.logs.describe_subscription_filters, logGroupName=log_group)
    return [dict(f) for f in answer.get("subscriptionFilters", [])] if answer else []


def _fed_stream(subscription: Mapping[str, Any], settings: Settings) -> str | None:
    """The name of the delivery stream (this account and region) a filter feeds, None for any other destination."""
    prefix = _arns(settings).delivery_stream("")
    arn = str(subscription.get("destinationArn", ""))
    return arn[len(prefix):] if arn.startswith(prefix) else None


@dataclass(frozen=True)
class Estate:
    """How the feed's log group reaches XSIAM, found by what things do: the filters on the group and the streams
    they feed that deliver to the XSIAM URL. Provision and verify both decide from it, so they always agree.

    Each path (filter, stream) is one copy of every event in XSIAM. When there are several, the first is kept
    (what was there before socfeeds, then by name), so the fix (remove the other filters) leaves the choice as is.
    """

    url: str
    declared: str  # the stream settings declare: used when nothing delivers yet
    stream: str  # the stream the feed uses: adopted under its own name, or the declared one
    description: dict[str, Any] | None  # None: not created yet
    filters: list[dict[str, Any]]  # every subscription filter on the log group
    paths: list[tuple[str, str]]  # (filter, stream) for each filter feeding a stream that delivers to the URL

    @property
    def adopted(self) -> bool:
        return self.stream != self.declared

    @property
    def kept_filter(self) -> dict[str, Any] | None:
        """The filter feeding the stream: adopted (or socfeeds' own); None when nothing delivers yet."""
        return next((f for f in self.filters if self.paths and f["filterName"] == self.paths[0][0]), None)

    @property
    def duplicates(self) -> list[tuple[str, str]]:
        return self.paths[1:]

    def found(self) -> str:
        """What verify and provision report: which stream, how it was found, and any duplicate."""
        if self.description is None:
            return f"{self.stream} (declared, not created yet)"
        how = "adopted" if self.adopted else "declared"
        where = "delivers to the XSIAM URL" if delivers_to(self.description, self.url) else "points elsewhere"
        others = sorted({s for _, s in self.duplicates} - {self.stream})
        also = f"; {', '.join(others)} also delivers this log group to the XSIAM URL (duplicate)" if others else ""
        return f"{self.stream} ({how}, {where}){also}"


def read_estate(aws: AwsClients, settings: Settings, feed: FirehoseFeed) -> Estate:
    """The one read of what delivers the feed's log group (the group's filters, the streams they feed, the URL).

    A stream no filter on this group feeds cannot duplicate its events (another cluster's feed, or idle), so
    streams are found through the group, not by listing every stream to the URL."""
    url = endpoint_url(aws, feed, settings)
    filters = _filters(aws, feed.log_group)
    feeds = {str(f["filterName"]): stream for f in filters if (stream := _fed_stream(f, settings))}
    fed = {stream: describe_stream(aws, stream) for stream in sorted(set(feeds.values()))}
    paths = sorted(((name, stream) for name, stream in feeds.items() if delivers_to(fed[stream], url)),
                   key=lambda p: (p[1] == feed.delivery_stream, p[1], p[0] == feed.subscription_filter, p[0]))
    stream = paths[0][1] if paths else feed.delivery_stream
    description = fed[stream] if stream in fed else describe_stream(aws, stream)
    return Estate(url, feed.delivery_stream, stream, description, filters, paths)


def count_delivery(aws: AwsClients, settings: Settings, feed_name: str) -> dict[str, int]:
    """Read-only counts for a "zero duplicates" check: `streams` delivering the feed's log group to its XSIAM URL
    (fed by a filter on the group: a stream nothing there feeds cannot repeat its events, and other clusters'
    streams to the same URL are not this feed's), and `subscription_filters` on the group (CloudWatch allows two)."""
    estate = read_estate(aws, settings, settings.firehose_feeds[feed_name])
    return {"streams": len({stream for _, stream in estate.paths}), "subscription_filters": len(estate.filters)}


# --- cluster logging -------------------------------------------------------------------------

def _enabled_types(aws: AwsClients, cluster: str) -> set[str]:
    logging = aws.eks.describe_cluster(name=cluster)["cluster"].get("logging", {})
    return {t for entry in logging.get("clusterLogging", []) if entry.get("enabled") for t in entry.get("types", [])}


def read_log_group(aws: AwsClients, name: str) -> dict[str, Any] | None:
    groups = aws.logs.describe_log_groups(logGroupNamePrefix=name).get("logGroups", [])
    return next((dict(g) for g in groups if g.get("logGroupName") == name), None)


def ensure_log_group(aws: AwsClients, changes: ChangesFor, name: str, retention_days: int | None,
                      stream: str | None = None) -> None:
    group = read_log_group(aws, name)
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
    ensure_log_group(aws, changes, feed.log_group, feed.log_retention_days)
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
    group = read_log_group(aws, feed.log_group)
    check.expect("log group", group is not None and group.get("retentionInDays") == feed.log_retention_days,
                 f"{feed.log_group} retention {group.get('retentionInDays') if group else 'missing'} "
                 f"(settings: {feed.log_retention_days})", FIX)
    return check.findings


# --- the delivery stream ---------------------------------------------------------------------

def _firehose_purpose(feed: FirehoseFeed) -> str:
    return f"Firehose {feed.delivery_stream} to XSIAM"


def _logs_purpose(feed: FirehoseFeed) -> str:
    return f"CloudWatch Logs to {feed.delivery_stream}"


def stream_role_policy(description: Mapping[str, Any], settings: Settings) -> policies.Document:
    """What an adopted stream's role must allow for the stream's own wiring: its backup bucket, error log stream
    and token secret (socfeeds' own role's statements, on the resources that stream uses)."""
    destination = http_of(description) or {}
    logging = destination.get("CloudWatchLoggingOptions") or {}
    secret = destination.get("SecretsManagerConfiguration") or {}
    log_stream = (_arns(settings).log_stream(logging["LogGroupName"], logging["LogStreamName"])
                  if logging.get("Enabled") and logging.get("LogGroupName") and logging.get("LogStreamName") else "")
    secret_arn = str(secret.get("SecretARN", "")) if secret.get("Enabled") else ""
    bucket_arn = str(destination.get("S3DestinationDescription", {}).get("BucketARN", ""))
    document = policies.firehose_role_policy(bucket_arn, log_stream, secret_arn, None)
    unused = {"SocfeedsErrorLogging": not log_stream, "SocfeedsEndpointToken": not secret_arn}
    return policies.document([s for s in document["Statement"] if not unused.get(s["Sid"], False)])


def _converge_stream(aws: AwsClients, changes: ChangesFor, name: str, description: dict[str, Any],
                     wanted: dict[str, Any], backup: dict[str, Any] | None, encryption: dict[str, str], note: str,
                     any_key: bool = False) -> None:
    """In place, never recreated: Firehose merges the update into the destination, so what `wanted` leaves out
    (an adopted stream's wiring) stays as it is."""
    if drift := stream_drift(description, wanted, backup):
        destination_id = description["Destinations"][0]["DestinationId"]
        update = {**wanted, **({"S3Update": backup} if backup else {})}
        changes.make("update delivery stream", f"{note}in place: {', '.join(drift)}",
                     lambda: aws.firehose.update_destination(
                         DeliveryStreamName=name, CurrentDeliveryStreamVersionId=description["VersionId"],
                         DestinationId=destination_id, HttpEndpointDestinationUpdate=cast(Any, update)),
                     wanted=update)
    if drift_note := encryption_drift(description, encryption, any_key):
        changes.make("encrypt delivery stream", f"{note}{drift_note} -> {encryption['KeyType']} (in place)",
                     lambda: aws.firehose.start_delivery_stream_encryption(
                         DeliveryStreamName=name, DeliveryStreamEncryptionConfigurationInput=cast(Any, encryption)),
                     wanted={"server_side_encryption": encryption})


@aws_task("ensure-delivery-stream")
def ensure_delivery_stream(aws: AwsClients, settings: Settings, feed_name: str, dry_run: bool) -> list[Change]:
    """The stream carrying the log group to XSIAM. One already delivering is adopted under its name and converged in
    place (a second one would double every event); otherwise error bucket, error logging, role, declared stream."""
    feed = settings.firehose_feeds[feed_name]
    estate = read_estate(aws, settings, feed)
    encryption = stream_encryption(feed.kms_key_arn)
    if estate.adopted:
        assert estate.description is not None  # a stream is adopted because its description delivers to the URL
        changes = ChangesFor(feed_name, f"firehose:{estate.stream}", dry_run)
        note = (f"adopted {estate.stream} (it delivers {feed.log_group} to the XSIAM URL already; "
                f"{feed.delivery_stream} not created): ")
        _converge_stream(aws, changes, estate.stream, estate.description, delivery_settings(feed), None, encryption,
                         note, any_key=not feed.kms_key_arn)
        _ensure_role_in_use(aws, changes, role_name(str((http_of(estate.description) or {}).get("RoleARN", ""))),
                            feed.firehose_role, policies.firehose_role_trust(settings.account_id),
                            stream_role_policy(estate.description, settings), _firehose_purpose(feed))
        return changes.changes
    secret_arn = token_secret_arn(aws, feed)
    if secret_arn is None:
        raise MissingToken(
            f"secret {feed.token_secret_name} does not exist. Fix: store the XSIAM HTTP collector token as "
            f"{{\"api_key\": \"<token>\"}} with `aws secretsmanager create-secret --name {feed.token_secret_name} "
            "--secret-string file://token.json`, then rerun provision-feeds")
    bucket_changes = ChangesFor(feed_name, f"s3://{feed.error_bucket}", dry_run)
    ensure_bucket_state(aws, error_bucket(feed, settings), bucket_changes)
    changes = ChangesFor(feed_name, f"firehose:{feed.delivery_stream}", dry_run)
    ensure_log_group(aws, changes, feed.error_log_group, feed.error_log_retention_days, stream=ERROR_LOG_STREAM)
    _ensure_role_in_use(aws, changes, feed.firehose_role, feed.firehose_role,
                        policies.firehose_role_trust(settings.account_id),
                        firehose_role_policy(feed, settings, secret_arn), _firehose_purpose(feed))

    wanted = http_destination(feed, settings, estate.url, secret_arn)
    backup = backup_configuration(feed, settings)
    if estate.description is None:
        def create() -> None:
            until_accepted(aws.firehose.create_delivery_stream, {
                "DeliveryStreamName": feed.delivery_stream, "DeliveryStreamType": "DirectPut",
                "HttpEndpointDestinationConfiguration": {**wanted, "S3Configuration": backup},
                "DeliveryStreamEncryptionConfigurationInput": encryption,
            }, IAM_PROPAGATION)
            wait_active(aws, feed.delivery_stream)

        changes.make("create delivery stream", f"HTTP endpoint (GZIP, {feed.buffering_mib} MiB / "
                     f"{feed.buffering_seconds} s, retry {feed.retry_seconds} s, failed data to "
                     f"s3://{feed.error_bucket}, encrypted with {encryption['KeyType']})", create,
                     wanted={"http_endpoint_configuration": {**wanted, "S3Configuration": backup},
                             "server_side_encryption": encryption})
        return bucket_changes.changes + changes.changes
    _converge_stream(aws, changes, feed.delivery_stream, estate.description, wanted, backup, encryption, "")
    return bucket_changes.changes + changes.changes


def failed_deliveries(aws: AwsClients, bucket: str, since: datetime) -> list[dict[str, Any]]:
    """Backup objects Firehose wrote for records it could not deliver, oldest first."""
    pages = aws.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=FAILED_PREFIX)
    return sorted((dict(o) for page in pages for o in page.get("Contents", []) if o["LastModified"] >= since),
                  key=lambda o: o["LastModified"])


def backup_buckets(aws: AwsClients, feed: FirehoseFeed) -> list[str]:
    """Where this log group's failed records land: the S3 backup of each HTTP-endpoint stream a filter on the group
    feeds (an adopted stream keeps its own bucket), else the declared error bucket."""
    buckets = set()
    for subscription in _filters(aws, feed.log_group):
        arn = str(subscription.get("destinationArn", ""))
        backup = (http_of(describe_stream(aws, role_name(arn))) or {}).get("S3DestinationDescription", {}) \
            if ":firehose:" in arn else {}
        if backup.get("BucketARN"):
            buckets.add(str(backup["BucketARN"]).rsplit(":", 1)[-1])
    return sorted(buckets) or [feed.error_bucket]


def backed_up_records(aws: AwsClients, feed: FirehoseFeed, since: datetime,
                      already_read: set[str]) -> Iterator[tuple[str, str, str]]:
    """(s3://bucket/key, Firehose's errorMessage, the CloudWatch payload as text) for backup objects since a time.

    Objects in `already_read` (as bucket/key) are skipped and every one read is added, so a poller reads each once.
    """
    for bucket in backup_buckets(aws, feed):
        for obj in failed_deliveries(aws, bucket, since):
            if f"{bucket}/{obj['Key']}" in already_read:
                continue
            already_read.add(f"{bucket}/{obj['Key']}")
            body = aws.s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            text = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
            for line in text.splitlines():
                record = json.loads(line)
                raw = base64.b64decode(record["rawData"])
                payload = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
                where = f"s3://{bucket}/{obj['Key']}"
                yield where, str(record.get("errorMessage", "")), payload.decode(errors="replace")


def _check_token(aws: AwsClients, check: FindingsFor, secret_id: str) -> str | None:
    """Whether the stream's token secret has an api_key (the value is never kept); returns the secret's ARN."""
    secret = absent_on({"ResourceNotFoundException"}, aws.secrets.describe_secret, SecretId=secret_id)
    name = str(secret["Name"]) if secret else secret_id
    token_ok = False
    if secret:
        value = aws.secrets.get_secret_value(SecretId=secret["ARN"], VersionStage="AWSCURRENT").get("SecretString", "")
        try:
            token_ok = bool(json.loads(value).get("api_key"))
        except (ValueError, AttributeError):
            token_ok = False
        del value
    check.expect("endpoint token", token_ok, f"secret {name} " +
                 ("has an api_key" if token_ok else "is missing or has no api_key field"),
                 f"store the XSIAM token as {{\"api_key\": \"<token>\"}} in {name}")
    return str(secret["ARN"]) if secret else None


def _check_failed_deliveries(aws: AwsClients, feed: FirehoseFeed, bucket: str, error_log_group: str,
                             secret: str, check: FindingsFor) -> None:
    failed = failed_deliveries(aws, bucket, datetime.now(UTC) - timedelta(hours=feed.backup_window_hours))
    count, newest = len(failed), failed[-1]["Key"] if failed else "-"
    status = Status.FAIL if count >= feed.backup_objects_fail_at else (
        Status.WARN if count >= feed.backup_objects_warn_at else Status.PASS)
    check.add("failed deliveries", status, f"{count} backup objects in {feed.backup_window_hours} h; newest {newest}",
              "" if status is Status.PASS else "XSIAM refused or missed these records: read errorMessage in the "
              f"newest object and the {error_log_group} log group (a wrong token in {secret} is the usual cause)")


@aws_task("check-delivery-stream")
def check_delivery_stream(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    """The stream found as provision finds it (adopted or declared), its delivery settings, role and failures."""
    feed = settings.firehose_feeds[feed_name]
    estate = read_estate(aws, settings, feed)
    check = FindingsFor(feed_name, f"firehose:{estate.stream}")
    stream, destination = estate.description, http_of(estate.description) or {}
    secret_config = destination.get("SecretsManagerConfiguration") or {}
    secret_id = str(secret_config["SecretARN"]) if estate.adopted and secret_config.get("Enabled") \
        else feed.token_secret_name
    secret_arn = _check_token(aws, check, secret_id)
    if check.expect("stream exists", stream is not None, estate.found(), f"stream missing: {FIX}"):
        assert stream is not None
        status = stream.get("DeliveryStreamStatus")
        check.expect("stream active", status == "ACTIVE", f"status {status}", "check the stream in the console")
        on_url = delivers_to(stream, estate.url)
        check.expect("endpoint url", on_url, "points at the declared XSIAM URL" if on_url else
                     "points elsewhere than the declared XSIAM URL", FIX)
        encoding = destination.get("RequestConfiguration", {}).get("ContentEncoding", "NONE")
        check.expect("content encoding", encoding == "GZIP", encoding, FIX)
        retry = destination.get("RetryOptions", {}).get("DurationInSeconds", 0)
        check.expect("retry duration", retry >= 300, f"{retry} s (at least 300)", FIX)
        drift = (stream_drift(stream, delivery_settings(feed), None) if estate.adopted else
                 stream_drift(stream, http_destination(feed, settings, estate.url, secret_arn or ""),
                              backup_configuration(feed, settings)))
        check.expect("declared settings", not drift, f"differs: {', '.join(drift)}" if drift else "as declared", FIX)
        encryption = stream_encryption(feed.kms_key_arn)
        unencrypted = encryption_drift(stream, encryption, any_key=estate.adopted and not feed.kms_key_arn)
        check.expect("encryption at rest", not unencrypted, unencrypted or
                     f"{(stream.get('DeliveryStreamEncryptionConfiguration') or {}).get('KeyType')} as declared", FIX)
    trust = policies.firehose_role_trust(settings.account_id)
    if estate.adopted:
        assert stream is not None
        _check_role_in_use(aws, check, role_name(str(destination.get("RoleARN", ""))), feed.firehose_role, trust,
                           stream_role_policy(stream, settings), _firehose_purpose(feed), f"stream {estate.stream}")
        backup_bucket = str(destination.get("S3DestinationDescription", {}).get("BucketARN", "")).rsplit(":", 1)[-1]
        backups = FindingsFor(feed_name, f"s3://{backup_bucket}")
        logging = destination.get("CloudWatchLoggingOptions") or {}
        _check_failed_deliveries(aws, feed, backup_bucket, str(logging.get("LogGroupName", "the stream's error")),
                                 secret_id, backups)
        return check.findings + backups.findings
    group = read_log_group(aws, feed.error_log_group)
    retention = group.get("retentionInDays") if group else "missing"
    check.expect("error log retention", retention == feed.error_log_retention_days,
                 f"{feed.error_log_group}: {retention} days (settings: {feed.error_log_retention_days})", FIX)
    bucket = FindingsFor(feed_name, f"s3://{feed.error_bucket}")
    check_bucket_state(aws, settings, error_bucket(feed, settings), bucket)
    if secret_arn:
        _check_role_in_use(aws, check, feed.firehose_role, feed.firehose_role, trust,
                           firehose_role_policy(feed, settings, secret_arn), _firehose_purpose(feed),
                           f"stream {feed.delivery_stream}")
    if bucket.findings[0].status is Status.PASS:
        _check_failed_deliveries(aws, feed, feed.error_bucket, feed.error_log_group, feed.token_secret_name, bucket)
    return check.findings + bucket.findings


# --- the subscription ------------------------------------------------------------------------

def _wanted_filter(feed: FirehoseFeed, settings: Settings, stream: str) -> dict[str, str]:
    arns = _arns(settings)
    return {"destinationArn": arns.delivery_stream(stream), "roleArn": arns.role(feed.logs_role), "filterPattern": ""}


def _adopted_filter(feed: FirehoseFeed, estate: Estate) -> dict[str, Any] | None:
    """The filter feeding the stream when it is not socfeeds' (another name than declared): kept as it is."""
    kept = estate.kept_filter
    return kept if kept is not None and kept["filterName"] != feed.subscription_filter else None


def _declared_filter(feed: FirehoseFeed, estate: Estate) -> dict[str, Any] | None:
    return next((f for f in estate.filters if f["filterName"] == feed.subscription_filter), None)


def _full_group(feed: FirehoseFeed, estate: Estate) -> tuple[str, str]:
    """(what, fix) when no filter feeds the stream and the group has CloudWatch's two already."""
    taken = "; ".join(f"{f['filterName']} -> {f.get('destinationArn')}" for f in estate.filters)
    return (f"no filter feeds {estate.stream} and {feed.log_group} already has 2 subscription filters "
            f"(CloudWatch's limit): {taken}",
            f"remove the one no longer needed with `aws logs delete-subscription-filter --log-group-name "
            f"{feed.log_group} --filter-name <name>` (ask its owner first), then rerun provision-feeds")


@aws_task("ensure-subscription")
def ensure_subscription(aws: AwsClients, settings: Settings, feed_name: str, dry_run: bool) -> list[Change]:
    """A filter already feeding the stream is adopted as it is; otherwise socfeeds' filter sends every event."""
    feed = settings.firehose_feeds[feed_name]
    estate = read_estate(aws, settings, feed)
    changes = ChangesFor(feed_name, f"logs:{feed.log_group}", dry_run)
    trust = policies.logs_role_trust(settings.region, settings.account_id)
    permissions = policies.logs_role_policy(_arns(settings).delivery_stream(estate.stream))
    if adopted := _adopted_filter(feed, estate):  # only a socfeeds role it happens to use is converged
        _ensure_role_in_use(aws, changes, role_name(str(adopted.get("roleArn", ""))), feed.logs_role, trust,
                            permissions, _logs_purpose(feed))
        return changes.changes
    _ensure_role_in_use(aws, changes, feed.logs_role, feed.logs_role, trust, permissions, _logs_purpose(feed))
    wanted = _wanted_filter(feed, settings, estate.stream)
    current = _declared_filter(feed, estate)
    if current is None and len(estate.filters) >= 2:
        what, fix = _full_group(feed, estate)
        raise FilterLimit(f"{what}. Fix: {fix}")
    if current is None or any(current.get(k) != v for k, v in wanted.items()):
        changes.make("subscribe log group", f"{feed.subscription_filter}: every event to {estate.stream}",
                     lambda: until_accepted(aws.logs.put_subscription_filter, {
                         "logGroupName": feed.log_group, "filterName": feed.subscription_filter, **wanted,
                     }, IAM_PROPAGATION), wanted={"log_group_name": feed.log_group, "name": feed.subscription_filter,
                                                  "destination_arn": wanted["destinationArn"],
                                                  "role_arn": wanted["roleArn"], "filter_pattern": ""})
    return changes.changes


@aws_task("check-subscription")
def check_subscription(aws: AwsClients, settings: Settings, feed_name: str) -> list[Finding]:
    """The filter found as provision finds it, one path to XSIAM only, and the role the filter uses."""
    feed = settings.firehose_feeds[feed_name]
    estate = read_estate(aws, settings, feed)
    check = FindingsFor(feed_name, f"logs:{feed.log_group}")
    if adopted := _adopted_filter(feed, estate):
        name, pattern = str(adopted["filterName"]), str(adopted.get("filterPattern", ""))
        check.expect("subscription filter", pattern == "", f"{name} (adopted) sends every event to {estate.stream}"
                     if pattern == "" else f"{name} (adopted): pattern {pattern!r} keeps events from XSIAM",
                     f"set the pattern of filter {name} to \"\" where it is managed (the platform's Terraform, say): "
                     "socfeeds keeps filters it did not create as they are")
        role, user = role_name(str(adopted.get("roleArn", ""))), f"filter {name}"
    else:
        current = _declared_filter(feed, estate)
        wrong = sorted(k for k, v in _wanted_filter(feed, settings, estate.stream).items()
                       if (current or {}).get(k) != v)
        what, fix = _full_group(feed, estate) if current is None and len(estate.filters) >= 2 else (
            f"{feed.subscription_filter}: {'missing' if current is None else 'differs: ' + ', '.join(wrong)}", FIX)
        check.expect("subscription filter", current is not None and not wrong,
                     f"{feed.subscription_filter} sends every event to {estate.stream} with the logs role"
                     if current and not wrong else what, fix)
        role, user = feed.logs_role, f"filter {feed.subscription_filter}"
    extra = "; ".join(f"filter {f} feeds {s}, which delivers to the XSIAM URL too" for f, s in estate.duplicates)
    removals = "; ".join(f"`aws logs delete-subscription-filter --log-group-name {feed.log_group} --filter-name {f}`"
                         for f, _ in estate.duplicates)
    check.expect("duplicate delivery", not estate.duplicates,
                 f"{extra}: every event reaches XSIAM {len(estate.paths)} times" if estate.duplicates else
                 "one path from this log group to the XSIAM URL" if estate.paths else "no path to XSIAM yet",
                 f"keep {estate.paths[0][0]} -> {estate.paths[0][1]} and remove the other: {removals} (then delete "
                 "its stream if nothing else feeds it)" if estate.duplicates else "")
    _check_role_in_use(aws, check, role, feed.logs_role, policies.logs_role_trust(settings.region, settings.account_id),
                       policies.logs_role_policy(_arns(settings).delivery_stream(estate.stream)), _logs_purpose(feed),
                       user)
    return check.findings
