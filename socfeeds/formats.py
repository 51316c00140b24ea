"""Synthetic log objects in each feed's real key layout and wire format (feeds.md), and their readers.

Each carries a marker inside a realistic record and says it is synthetic (`socfeeds-canary`), so
SOC analysts can filter canaries out and the canary can find its own record again. Records match
AWS's shapes field for field (ids, zone ids, timestamps), so XSIAM parses a canary exactly as it
parses real traffic. The readers are the one definition of each format the XSIAM stand-in uses too.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import secrets
import string
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from socfeeds.arns import partition
from socfeeds.settings import LogType, RdsLogsSource

CANARY_AGENT = "socfeeds-canary"
FLOW_LOG_FIELDS = (
    "version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "packets",
    "bytes", "start", "end", "action", "log-status", "az-id", "flow-direction", "instance-id", "pkt-srcaddr",
    "pkt-dstaddr", "region", "sublocation-id", "sublocation-type", "subnet-id", "tcp-flags", "type", "vpc-id",
)
# CloudFront's access-log fields (Developer Guide, "Standard logging": log file fields), in the legacy file's order.
CLOUDFRONT_FIELDS = (
    "date", "time", "x-edge-location", "sc-bytes", "c-ip", "cs-method", "cs(Host)", "cs-uri-stem", "sc-status",
    "cs(Referer)", "cs(User-Agent)", "cs-uri-query", "cs(Cookie)", "x-edge-result-type", "x-edge-request-id",
    "x-host-header", "cs-protocol", "cs-bytes", "time-taken", "x-forwarded-for", "ssl-protocol", "ssl-cipher",
    "x-edge-response-result-type", "cs-protocol-version", "fle-status", "fle-encrypted-fields", "c-port",
    "time-to-first-byte", "x-edge-detailed-result-type", "sc-content-type", "sc-content-len", "sc-range-start",
    "sc-range-end",
)
RDS_CANARY_LOG_TYPES = ("postgresql", "audit")  # the RDS log types rds_log_line writes
EKS_AUDIT_STREAM_PREFIX = "kube-apiserver-audit-"  # EKS names audit streams kube-apiserver-audit-<32 hex>
_NAMESPACE = "logging"  # where the canary's pod and service account live
# Compass words of region names, as zone ids abbreviate them (ap-southeast-2 -> apse2).
_COMPASS = {"north": "n", "northeast": "ne", "northwest": "nw", "south": "s", "southeast": "se", "southwest": "sw",
            "east": "e", "west": "w", "central": "c"}
_UPPER_ALNUM = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class LogObject:
    key: str
    body: bytes
    content_type: str
    content_encoding: str | None


@dataclass(frozen=True)
class Origin:
    """Where a synthetic record claims to come from; CloudTrail names the canary writer's role session."""

    account_id: str
    region: str
    vpc_id: str = "vpc-00000000"
    key_prefix: str = "logs"
    writer_role: str = "socfeeds-canary-writer"
    session_name: str = CANARY_AGENT
    organization_id: str | None = None  # an organization trail writes under AWSLogs/<organization id>/<account>/


def zone_id_prefix(region: str) -> str:
    """AWS's zone-id prefix of a region (eu-west-2 -> euw2, us-gov-west-1 -> usgw1): zone ids are `<prefix>-az<n>`."""
    parts = region.split("-")
    if len(parts) < 3 or parts[-2] not in _COMPASS or not parts[-1].isdigit():
        raise ValueError(f"not an AWS region name: {region!r}")
    area, *qualifiers, direction, number = parts
    return area + "".join(q[0] for q in qualifiers) + _COMPASS[direction] + number


def _utc(at: datetime) -> datetime:
    """Every timestamp AWS writes is UTC ('Z'); a naive datetime is taken to be UTC already."""
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def _stamp(at: datetime) -> str:
    return at.strftime("%Y%m%dT%H%MZ")


def _day(at: datetime) -> str:
    return at.strftime("%Y/%m/%d")


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_micro(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("/".join(parts).encode()).digest()


def _resource_id(kind: str, *parts: str) -> str:
    """A 17-hex EC2-style id (eni-, subnet-, fl-, i-), stable per origin as a real interface's would be."""
    return f"{kind}-{_digest(kind, *parts).hex()[:17]}"


def _iam_unique_id(kind: str, *parts: str) -> str:
    """An IAM unique id (AROA + 17 upper-case alphanumerics), stable per role as IAM's is."""
    return kind + base64.b32encode(_digest(kind, *parts)).decode()[:17]


def _random_upper(length: int) -> str:
    return "".join(secrets.choice(_UPPER_ALNUM) for _ in range(length))


def _stable_uuid(*parts: str) -> str:
    """A version-4-shaped UUID that stays the same for the same object, as a Kubernetes object's uid does."""
    return str(uuid.UUID(bytes=_digest(*parts)[:16], version=4))


def _gzip(text: str, key: str) -> LogObject:
    return LogObject(key, gzip.compress(text.encode()), "application/octet-stream", "gzip")


def cloudtrail(origin: Origin, marker: str, at: datetime) -> LogObject:
    """A GetCallerIdentity by the canary writer's assumed-role session; the marker rides in `userAgent`."""
    at = _utc(at)
    acct, region, role, session = origin.account_id, origin.region, origin.writer_role, origin.session_name
    aws, role_id = partition(region), _iam_unique_id("AROA", acct, role)
    record = {
        "eventVersion": "1.09",
        "userIdentity": {
            "type": "AssumedRole", "principalId": f"{role_id}:{session}",
            "arn": f"arn:{aws}:sts::{acct}:assumed-role/{role}/{session}", "accountId": acct,
            "accessKeyId": "ASIA" + _random_upper(16),
            "sessionContext": {
                "sessionIssuer": {"type": "Role", "principalId": role_id, "arn": f"arn:{aws}:iam::{acct}:role/{role}",
                                  "accountId": acct, "userName": role},
                "webIdFederationData": {},
                # the canary assumes the writer role just before it writes
                "attributes": {"creationDate": _iso(at - timedelta(seconds=1)), "mfaAuthenticated": "false"},
            },
        },
        "eventTime": _iso(at), "eventSource": "sts.amazonaws.com", "eventName": "GetCallerIdentity",
        "awsRegion": region, "sourceIPAddress": "192.0.2.10", "userAgent": f"{CANARY_AGENT}/{marker}",
        "requestParameters": None, "responseElements": None, "requestID": str(uuid.uuid4()),
        "eventID": str(uuid.uuid4()), "readOnly": True, "eventType": "AwsApiCall", "managementEvent": True,
        "recipientAccountId": acct, "eventCategory": "Management",
        "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256",
                       "clientProvidedHostHeader": f"sts.{region}.amazonaws.com"},
    }
    suffix = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(16))
    folder = f"{origin.organization_id}/{acct}" if origin.organization_id else acct
    key = (f"AWSLogs/{folder}/CloudTrail/{region}/{_day(at)}/"
           f"{acct}_CloudTrail_{region}_{_stamp(at)}_{suffix}.json.gz")
    return _gzip(json.dumps({"Records": [record]}), key)


def vpc_flow_log(origin: Origin, marker: str, at: datetime, flow_log_id: str | None = None) -> LogObject:
    """Flow logs have no free-text field: the marker rides in `instance-id` as `i-<marker>`.

    XSIAM keeps the raw line, so the marker is found verbatim; the `i-` prefix keeps the field an
    instance id to anything that classifies values by prefix. Every other field is AWS-shaped.
    """
    at = _utc(at)
    acct, region, vpc = origin.account_id, origin.region, origin.vpc_id
    end = int(at.timestamp())
    row = {
        "version": "5", "account-id": acct, "interface-id": _resource_id("eni", acct, region, vpc),
        "srcaddr": "192.0.2.10", "dstaddr": "198.51.100.20", "srcport": "49152", "dstport": "443",
        "protocol": "6", "packets": "10", "bytes": "4200", "start": str(end - 60), "end": str(end),
        "action": "ACCEPT", "log-status": "OK", "az-id": f"{zone_id_prefix(region)}-az1",
        "flow-direction": "egress", "instance-id": f"i-{marker}", "pkt-srcaddr": "192.0.2.10",
        "pkt-dstaddr": "198.51.100.20", "region": region, "sublocation-id": "-", "sublocation-type": "-",
        "subnet-id": _resource_id("subnet", acct, region, vpc), "tcp-flags": "3", "type": "IPv4", "vpc-id": vpc,
    }
    flow_log = flow_log_id or _resource_id("fl", acct, region, vpc)
    key = (f"AWSLogs/{acct}/vpcflowlogs/{region}/{_day(at)}/{acct}_vpcflowlogs_"
           f"{region}_{flow_log}_{_stamp(at)}_{secrets.token_hex(4)}.log.gz")
    return _gzip(_flow_log_text([row]), key)


def _flow_log_text(rows: Sequence[Mapping[str, str]]) -> str:
    """A flow-log file: the header of field names, then one space-separated record a line, `-` when missing."""
    lines = [" ".join(FLOW_LOG_FIELDS), *(" ".join(row.get(f, "-") for f in FLOW_LOG_FIELDS) for row in rows)]
    return "\n".join(lines) + "\n"


def resolver_query_log(origin: Origin, marker: str, at: datetime) -> LogObject:
    at = _utc(at)
    acct, region, vpc = origin.account_id, origin.region, origin.vpc_id
    record = {
        "version": "1.100000", "account_id": acct, "region": region, "vpc_id": vpc,
        "query_timestamp": _iso(at), "query_name": f"{marker}.{CANARY_AGENT}.invalid.", "query_type": "A",
        "query_class": "IN", "rcode": "NXDOMAIN", "answers": [], "srcaddr": "192.0.2.10", "srcport": "53000",
        "transport": "UDP", "srcids": {"instance": _resource_id("i", acct, region, vpc)},
    }
    key = (f"AWSLogs/{acct}/vpcdnsquerylogs/{vpc}/{_day(at)}/{vpc}_vpcdnsquerylogs_"
           f"{acct}_{_stamp(at)}_{secrets.token_hex(4)}.log.gz")
    return _gzip(json.dumps(record) + "\n", key)


def _node_name(region: str) -> str:
    """EC2 private DNS: us-east-1 alone uses `ec2.internal`."""
    domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return f"ip-192-0-2-10.{domain}"


def fluent_bit(origin: Origin, marker: str, at: datetime) -> LogObject:
    """Fluent Bit's S3 output: plain newline-delimited JSON, key `/logs/%Y/...-$UUID`.

    `date` is in the output's default `json_date_format` (ISO 8601, microseconds, Z), which the
    rendered `[OUTPUT] s3` section leaves unset.
    """
    at = _utc(at)
    pod = f"{CANARY_AGENT}-0"
    record = {
        "date": _iso_micro(at), "time": at.strftime("%Y-%m-%dT%H:%M:%S.%f000Z"), "stream": "stdout",
        "log": f"{CANARY_AGENT} synthetic application log {marker}",
        "kubernetes": {"pod_name": pod, "namespace_name": _NAMESPACE,
                       "pod_id": _stable_uuid(_NAMESPACE, pod),
                       "labels": {"app": CANARY_AGENT}, "host": _node_name(origin.region),
                       "container_name": CANARY_AGENT, "docker_id": secrets.token_hex(32),
                       "container_image": f"{CANARY_AGENT}:latest"},
    }
    key = f"{origin.key_prefix.strip('/')}/{at.strftime('%Y/%m/%d/%H/%M/%S')}-{uuid.uuid4().hex[:8]}"
    return LogObject(key, (json.dumps(record) + "\n").encode(), "application/json", None)


def eks_audit_event(marker: str, at: datetime) -> str:
    """One audit.k8s.io/v1 Event at level Metadata, as a kube-apiserver-audit stream carries it.

    The canary's service account lists pods in its own namespace; the marker rides in `userAgent`,
    and `auditID` is a fresh UUID as the API server assigns one per request.
    """
    at = _utc(at)
    account = f"system:serviceaccount:{_NAMESPACE}:{CANARY_AGENT}"
    pod = f"{CANARY_AGENT}-0"
    return json.dumps({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": str(uuid.uuid4()),
        "stage": "ResponseComplete", "requestURI": f"/api/v1/namespaces/{_NAMESPACE}/pods", "verb": "list",
        "user": {
            "username": account, "uid": _stable_uuid(account),
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{_NAMESPACE}", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": [f"JTI={uuid.uuid4()}"],
                      "authentication.kubernetes.io/pod-name": [pod],
                      "authentication.kubernetes.io/pod-uid": [_stable_uuid(_NAMESPACE, pod)]},
        },
        "sourceIPs": ["192.0.2.10"], "userAgent": f"{CANARY_AGENT}/{marker}",
        "objectRef": {"resource": "pods", "namespace": _NAMESPACE, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": _iso_micro(at),
        "stageTimestamp": _iso_micro(at + timedelta(milliseconds=4)),
        "annotations": {
            "authorization.k8s.io/decision": "allow",
            "authorization.k8s.io/reason": f'RBAC: allowed by RoleBinding "{CANARY_AGENT}/{_NAMESPACE}" of Role '
                                           f'"{CANARY_AGENT}" to ServiceAccount "{CANARY_AGENT}/{_NAMESPACE}"',
        },
    })


def cloudfront_access_log(origin: Origin, marker: str, at: datetime) -> LogObject:
    """One viewer request in CloudFront's W3C access log: the `#Version` and `#Fields` directives, then one
    tab-separated record a line, `-` for no value, the user agent URL-encoded as CloudFront writes it.

    The marker rides in cs(User-Agent) (`socfeeds-canary/<marker>`), which XSIAM keeps verbatim in the raw line.
    The key is standard logging (v2)'s default layout, `AWSLogs/<account>/CloudFront/<distribution id>.
    <YYYY-MM-DD-HH>.<unique id>.gz`; the distribution id and domain are stable per account, as a real one's are.
    """
    at = _utc(at)
    acct = origin.account_id
    distribution = "E" + base64.b32encode(_digest("distribution", acct)).decode()[:13]
    domain = f"d{_digest('domain', acct).hex()[:13]}.cloudfront.net"
    row = {
        "date": at.strftime("%Y-%m-%d"), "time": at.strftime("%H:%M:%S"), "x-edge-location": "LHR61-P1",
        "sc-bytes": "412", "c-ip": "192.0.2.10", "cs-method": "GET", "cs(Host)": domain,
        "cs-uri-stem": f"/{CANARY_AGENT}", "sc-status": "200", "cs(Referer)": "-",
        "cs(User-Agent)": quote(f"{CANARY_AGENT}/{marker}", safe="/;:,()"), "cs-uri-query": "-", "cs(Cookie)": "-",
        "x-edge-result-type": "Miss", "x-edge-request-id": base64.urlsafe_b64encode(secrets.token_bytes(40)).decode(),
        "x-host-header": domain, "cs-protocol": "https", "cs-bytes": "131", "time-taken": "0.012",
        "x-forwarded-for": "-", "ssl-protocol": "TLSv1.3", "ssl-cipher": "TLS_AES_128_GCM_SHA256",
        "x-edge-response-result-type": "Miss", "cs-protocol-version": "HTTP/2.0", "fle-status": "-",
        "fle-encrypted-fields": "-", "c-port": "49152", "time-to-first-byte": "0.011",
        "x-edge-detailed-result-type": "Miss", "sc-content-type": "text/plain", "sc-content-len": "2",
        "sc-range-start": "-", "sc-range-end": "-",
    }
    header = f"#Version: 1.0\n#Fields: {' '.join(CLOUDFRONT_FIELDS)}\n"
    key = f"AWSLogs/{acct}/CloudFront/{distribution}.{at.strftime('%Y-%m-%d-%H')}.{secrets.token_hex(4)}.gz"
    return _gzip(header + "\t".join(row[f] for f in CLOUDFRONT_FIELDS) + "\n", key)


def rds_log_line(log_type: str, marker: str, at: datetime) -> str:
    """A statement as RDS exports it to `/aws/rds/instance/<id>/<log type>`, the marker inside the SQL text.

    postgresql: RDS's default log_line_prefix `%t:%r:%u@%d:[%p]:`; audit (RDS for MySQL and MariaDB): the MariaDB
    audit plugin's `timestamp,serverhost,username,host,connectionid,queryid,operation,database,object,retcode`.
    """
    at = _utc(at)
    statement = f"SELECT '{CANARY_AGENT} {marker}'"
    if log_type == "postgresql":
        return (f"{at.strftime('%Y-%m-%d %H:%M:%S')} UTC:192.0.2.10(49152):socfeeds_canary@postgres:"
                f"[{4000 + at.second}]:LOG:  statement: {statement}")
    if log_type == "audit":
        escaped = statement.replace("'", "\\'")
        return (f"{at.strftime('%Y%m%d %H:%M:%S')},ip-192-0-2-20,socfeeds_canary,192.0.2.10,{at.minute + 100},"
                f"{at.second + 1000},QUERY,mysql,'{escaped}',0")
    raise ValueError(f"no synthetic line for RDS log type {log_type!r} (written: {', '.join(RDS_CANARY_LOG_TYPES)})")


def cloudwatch_event_id() -> str:
    """CloudWatch Logs event ids are 56 decimal digits."""
    return str(secrets.randbelow(10**56)).zfill(56)


def rds_firehose_object(origin: Origin, marker: str, at: datetime) -> LogObject:
    """What Firehose writes for an RDS log group's subscription: the CloudWatch Logs payload, gzip as CloudWatch Logs
    sends it (the stream adds no compression of its own), at Firehose's default name under the prefix,
    `<prefix>/YYYY/MM/DD/HH/<stream>-<version>-<YYYY-MM-DD-HH-MM-SS>-<uuid>`.

    The payload keeps the log group (so the instance id and log type) and stream, as production's objects do; the
    instance is the canary's own, so no real database is impersonated.
    """
    at = _utc(at)
    group = f"{RdsLogsSource.LOG_GROUP_PREFIX}{CANARY_AGENT}/postgresql"
    payload = {"messageType": "DATA_MESSAGE", "owner": origin.account_id, "logGroup": group, "logStream": CANARY_AGENT,
               "subscriptionFilters": [f"{CANARY_AGENT}-postgresql-firehose"],
               "logEvents": [{"id": cloudwatch_event_id(), "timestamp": int(at.timestamp() * 1000),
                              "message": rds_log_line("postgresql", marker, at)}]}
    key = (f"{origin.key_prefix.strip('/')}/{at.strftime('%Y/%m/%d/%H')}/{CANARY_AGENT}-1-"
           f"{at.strftime('%Y-%m-%d-%H-%M-%S')}-{uuid.uuid4()}")
    body = gzip.compress(json.dumps(payload, separators=(",", ":")).encode())
    return LogObject(key, body, "application/octet-stream", None)


WRITERS = {
    "Audit Logs": cloudtrail,
    "Flow Logs": vpc_flow_log,
    "Route 53": resolver_query_log,
    "Generic": fluent_bit,
    "CloudFront": cloudfront_access_log,
    "RDS": rds_firehose_object,
}


def synthetic_object(log_type: LogType, origin: Origin, marker: str, at: datetime) -> LogObject:
    return WRITERS[log_type](origin, marker, at)


# --- readers: one event per record, as a consumer splits each format ----------------------------

def cloudtrail_records(text: str) -> list[dict[str, Any]]:
    """A CloudTrail file is one document whose `Records` holds the events; a digest file has none."""
    return list(json.loads(text).get("Records", []))


def flow_log_records(text: str) -> list[dict[str, str]]:
    """Fields by the file's own header line, since each flow log chooses its own format."""
    header, *rows = [line for line in text.splitlines() if line.strip()]
    names = header.split()
    return [dict(zip(names, row.split(), strict=True)) for row in rows]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Resolver query logs and Fluent Bit objects: one JSON object a line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def w3c_records(text: str) -> list[dict[str, str]]:
    """CloudFront's access log: fields named by the file's own `#Fields:` directive (a v2 delivery chooses its
    fields), one tab-separated record a line; other `#` lines are directives, not records."""
    names: list[str] | None = None
    records = []
    for line in text.splitlines():
        if line.startswith("#Fields:"):
            names = line.removeprefix("#Fields:").split()
        elif line.strip() and not line.startswith("#"):
            if names is None:
                raise ValueError("a record before the #Fields: directive")
            records.append(dict(zip(names, line.split("\t"), strict=True)))
    return records


def _after_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def cloudwatch_payload_records(text: str) -> list[dict[str, Any]]:
    """A Firehose object of CloudWatch Logs payloads, gunzipped: JSON documents back to back, no separator (Firehose
    concatenates records as they come). One record per log event, with the payload's owner, logGroup, logStream
    and subscriptionFilters, so each keeps where it came from; CONTROL_MESSAGE payloads carry no events."""
    decoder = json.JSONDecoder()
    records: list[dict[str, Any]] = []
    position = _after_space(text, 0)
    while position < len(text):
        payload, position = decoder.raw_decode(text, position)
        position = _after_space(text, position)
        if payload.get("messageType") == "DATA_MESSAGE":
            context = {k: payload[k] for k in ("owner", "logGroup", "logStream", "subscriptionFilters")}
            records += [{**context, **event} for event in payload["logEvents"]]
    return records


READERS: dict[str, Callable[[str], Sequence[Mapping[str, Any]]]] = {
    "Audit Logs": cloudtrail_records,
    "Flow Logs": flow_log_records,
    "Route 53": json_lines,
    "Generic": json_lines,
    "CloudFront": w3c_records,
    "RDS": cloudwatch_payload_records,
}


def read_records(log_type: str, text: str) -> Sequence[Mapping[str, Any]]:
    """Each event in an object of the log type; any other type is read as JSON lines, like XSIAM's Generic."""
    return READERS.get(log_type, json_lines)(text)


def object_body(data: bytes) -> bytes:
    """An S3 log object's bytes, gunzipped when they are gzip (by magic number: a delivery's key or
    Content-Encoding does not always say)."""
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
