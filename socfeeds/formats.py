"""Synthetic log objects in each feed's real key layout and wire format (feeds.md).

Each carries a marker inside a realistic record and says it is synthetic (`socfeeds-canary`), so
SOC analysts can filter canaries out and the canary can find its own record again.
"""

from __future__ import annotations

import gzip
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from socfeeds.settings import LogType

CANARY_AGENT = "socfeeds-canary"
FLOW_LOG_FIELDS = (
    "version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "packets",
    "bytes", "start", "end", "action", "log-status", "az-id", "flow-direction", "instance-id", "pkt-srcaddr",
    "pkt-dstaddr", "region", "sublocation-id", "sublocation-type", "subnet-id", "tcp-flags", "type", "vpc-id",
)


@dataclass(frozen=True)
class LogObject:
    key: str
    body: bytes
    content_type: str
    content_encoding: str | None


@dataclass(frozen=True)
class Origin:
    """Where a synthetic record claims to come from."""

    account_id: str
    region: str
    vpc_id: str = "vpc-00000000"
    key_prefix: str = "logs"


def _stamp(at: datetime) -> str:
    return at.strftime("%Y%m%dT%H%MZ")


def _day(at: datetime) -> str:
    return at.strftime("%Y/%m/%d")


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _gzip(text: str, key: str) -> LogObject:
    return LogObject(key, gzip.compress(text.encode()), "application/octet-stream", "gzip")


def cloudtrail(origin: Origin, marker: str, at: datetime) -> LogObject:
    acct, region = origin.account_id, origin.region
    record = {
        "eventVersion": "1.09",
        "userIdentity": {"type": "AssumedRole", "principalId": f"AROACANARY:{CANARY_AGENT}",
                         "arn": f"arn:aws:sts::{acct}:assumed-role/{CANARY_AGENT}/{marker}", "accountId": acct,
                         "accessKeyId": "ASIACANARY0000000000", "userName": CANARY_AGENT},
        "eventTime": _iso(at), "eventSource": "sts.amazonaws.com", "eventName": "GetCallerIdentity",
        "awsRegion": region, "sourceIPAddress": "192.0.2.10", "userAgent": f"{CANARY_AGENT}/{marker}",
        "requestParameters": None, "responseElements": None, "requestID": str(uuid.uuid4()),
        "eventID": str(uuid.uuid4()), "readOnly": True, "eventType": "AwsApiCall", "managementEvent": True,
        "recipientAccountId": acct, "eventCategory": "Management",
    }
    suffix = secrets.token_hex(8)
    key = (f"AWSLogs/{acct}/CloudTrail/{region}/{_day(at)}/"
           f"{acct}_CloudTrail_{region}_{_stamp(at)}_{suffix}.json.gz")
    return _gzip(json.dumps({"Records": [record]}), key)


def vpc_flow_log(origin: Origin, marker: str, at: datetime, flow_log_id: str = "fl-0canary0000000000") -> LogObject:
    """Flow logs have no free-text field: the marker rides in `instance-id` (XSIAM keeps it raw)."""
    start = int(at.timestamp())
    values = {
        "version": "5", "account-id": origin.account_id, "interface-id": "eni-0canary000000000",
        "srcaddr": "192.0.2.10", "dstaddr": "198.51.100.20", "srcport": "49152", "dstport": "443",
        "protocol": "6", "packets": "10", "bytes": "4200", "start": str(start - 60), "end": str(start),
        "action": "ACCEPT", "log-status": "OK", "az-id": f"{origin.region[:3]}{origin.region[-1]}-az1",
        "flow-direction": "egress", "instance-id": marker, "pkt-srcaddr": "192.0.2.10",
        "pkt-dstaddr": "198.51.100.20", "region": origin.region, "sublocation-id": "-",
        "sublocation-type": "-", "subnet-id": "subnet-0canary00000000", "tcp-flags": "2", "type": "IPv4",
        "vpc-id": origin.vpc_id,
    }
    lines = [" ".join(FLOW_LOG_FIELDS), " ".join(values[f] for f in FLOW_LOG_FIELDS)]
    key = (f"AWSLogs/{origin.account_id}/vpcflowlogs/{origin.region}/{_day(at)}/{origin.account_id}_vpcflowlogs_"
           f"{origin.region}_{flow_log_id}_{_stamp(at)}_{secrets.token_hex(4)}.log.gz")
    return _gzip("\n".join(lines) + "\n", key)


def resolver_query_log(origin: Origin, marker: str, at: datetime) -> LogObject:
    record = {
        "version": "1.100000", "account_id": origin.account_id, "region": origin.region, "vpc_id": origin.vpc_id,
        "query_timestamp": _iso(at), "query_name": f"{marker}.{CANARY_AGENT}.invalid.", "query_type": "A",
        "query_class": "IN", "rcode": "NXDOMAIN", "answers": [], "srcaddr": "192.0.2.10", "srcport": "53000",
        "transport": "UDP", "srcids": {"instance": "i-0canary0000000000"},
    }
    key = (f"AWSLogs/{origin.account_id}/vpcdnsquerylogs/{origin.vpc_id}/{_day(at)}/{origin.vpc_id}_vpcdnsquerylogs_"
           f"{origin.account_id}_{_stamp(at)}_{secrets.token_hex(4)}.log.gz")
    return _gzip(json.dumps(record) + "\n", key)


def fluent_bit(origin: Origin, marker: str, at: datetime) -> LogObject:
    """Fluent Bit's S3 output: plain newline-delimited JSON with a `date` key, key `/logs/%Y/...-$UUID`."""
    record = {
        "date": at.timestamp(), "time": at.strftime("%Y-%m-%dT%H:%M:%S.000000000Z"), "stream": "stdout",
        "log": f"{CANARY_AGENT} synthetic application log {marker}",
        "kubernetes": {"pod_name": f"{CANARY_AGENT}-0", "namespace_name": "logging",
                       "container_name": CANARY_AGENT, "labels": {"app": CANARY_AGENT},
                       "host": "ip-192-0-2-10.eu-west-2.compute.internal"},
    }
    key = f"{origin.key_prefix.strip('/')}/{at.strftime('%Y/%m/%d/%H/%M/%S')}-{uuid.uuid4().hex[:8]}"
    return LogObject(key, (json.dumps(record) + "\n").encode(), "application/json", None)


WRITERS = {
    "Audit Logs": cloudtrail,
    "Flow Logs": vpc_flow_log,
    "Route 53": resolver_query_log,
    "Generic": fluent_bit,
}


def synthetic_object(log_type: LogType, origin: Origin, marker: str, at: datetime) -> LogObject:
    return WRITERS[log_type](origin, marker, at)
