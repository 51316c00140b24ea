"""Synthetic canary records against AWS's documented shapes, an independent flow-log parser and the stand-in."""

from __future__ import annotations

import gzip
import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flowlogs_reader import S3FlowLogsReader

from deployments.xsiam.collector import split_records
from socfeeds import formats
from socfeeds.settings import LogType

AT = datetime(2025, 11, 24, 10, 30, 15, 123456, tzinfo=UTC)
ORIGIN = formats.Origin("123456789012", "eu-west-2", vpc_id="vpc-0123456789abcdef0")
MARKER = "socfeeds-canary-run1-feed-1764000000000"


def text_of(obj: formats.LogObject) -> str:
    return (gzip.decompress(obj.body) if obj.content_encoding == "gzip" else obj.body).decode()


class OneObjectBucket:
    """Just enough of an S3 client for S3FlowLogsReader: list by prefix and delimiter, get the one object."""

    def __init__(self, key: str, body: bytes) -> None:
        self.key, self.body = key, body

    def list_objects_v2(self, Bucket: str, Prefix: str, Delimiter: str = "") -> dict[str, Any]:
        if not self.key.startswith(Prefix):
            return {}
        rest = self.key[len(Prefix):]
        if Delimiter and Delimiter in rest:
            return {"CommonPrefixes": [{"Prefix": Prefix + rest.split(Delimiter)[0] + Delimiter}]}
        return {"Contents": [{"Key": self.key}]}

    def get_paginator(self, operation: str) -> OneObjectBucket:
        assert operation == "list_objects_v2"
        return self

    def paginate(self, **request: str) -> list[dict[str, Any]]:
        return [self.list_objects_v2(**request)]

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        assert Key == self.key
        return {"Body": io.BytesIO(self.body), "ContentLength": len(self.body)}


# --- zone ids -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("region", "prefix"), [
    ("eu-west-2", "euw2"), ("us-east-1", "use1"), ("ap-southeast-2", "apse2"), ("ap-northeast-1", "apne1"),
    ("eu-central-1", "euc1"), ("eu-north-1", "eun1"), ("ca-central-1", "cac1"), ("sa-east-1", "sae1"),
    ("us-gov-west-1", "usgw1"),
])
def test_zone_id_prefix_follows_aws_zone_ids(region: str, prefix: str) -> None:
    assert formats.zone_id_prefix(region) == prefix


@pytest.mark.parametrize("region", ["eu-west", "eu-middle-1", "west-x", ""])
def test_zone_id_prefix_rejects_what_is_not_a_region(region: str) -> None:
    with pytest.raises(ValueError, match="not an AWS region"):
        formats.zone_id_prefix(region)


# --- VPC flow logs ------------------------------------------------------------------------------

def test_flow_log_object_reads_with_flowlogs_reader() -> None:
    obj = formats.vpc_flow_log(ORIGIN, MARKER, AT)
    reader = S3FlowLogsReader("bucket", boto_client=OneObjectBucket(obj.key, obj.body), raise_on_error=True,
                              start_time=datetime(2025, 11, 24), end_time=datetime(2025, 11, 25))
    [record] = list(reader)  # found by its key layout, parsed by its own header
    assert (record.version, record.account_id, record.region, record.vpc_id) == (5, "123456789012", "eu-west-2",
                                                                                 ORIGIN.vpc_id)
    assert (record.srcaddr, record.dstaddr, record.srcport, record.dstport, record.protocol) == (
        "192.0.2.10", "198.51.100.20", 49152, 443, 6)
    assert (record.action, record.log_status, record.flow_direction, record.type) == ("ACCEPT", "OK", "egress", "IPv4")
    assert record.az_id == "euw2-az1" and record.sublocation_id is None and record.tcp_flags == 3
    assert record.end == AT.replace(tzinfo=None, microsecond=0) and record.start < record.end
    assert re.fullmatch(r"eni-[0-9a-f]{17}", record.interface_id)
    assert re.fullmatch(r"subnet-[0-9a-f]{17}", record.subnet_id)
    assert record.instance_id == f"i-{MARKER}" and MARKER in text_of(obj)
    assert reader.skipped_records == 0


def test_flow_log_key_has_aws_layout_and_a_hex_flow_log_id() -> None:
    key = formats.vpc_flow_log(ORIGIN, MARKER, AT).key
    assert re.fullmatch(r"AWSLogs/123456789012/vpcflowlogs/eu-west-2/2025/11/24/123456789012_vpcflowlogs_eu-west-2_"
                        r"fl-[0-9a-f]{17}_20251124T1030Z_[0-9a-f]{8}\.log\.gz", key), key


def test_flow_log_fields_are_the_standins() -> None:
    [raw] = split_records("Flow Logs", text_of(formats.vpc_flow_log(ORIGIN, MARKER, AT)))
    record = json.loads(raw)
    assert tuple(record) == formats.FLOW_LOG_FIELDS and record["instance-id"] == f"i-{MARKER}"


# --- CloudTrail ---------------------------------------------------------------------------------

def test_cloudtrail_assumed_role_identity_has_aws_shape() -> None:
    origin = formats.Origin("123456789012", "eu-west-2", writer_role="canary-writer", session_name="canary-run1")
    [record] = json.loads(text_of(formats.cloudtrail(origin, MARKER, AT)))["Records"]
    identity = record["userIdentity"]
    assert identity["type"] == "AssumedRole" and "userName" not in identity
    assert identity["arn"] == "arn:aws:sts::123456789012:assumed-role/canary-writer/canary-run1"
    role_id, session = identity["principalId"].split(":")
    assert re.fullmatch(r"AROA[A-Z0-9]{17}", role_id) and session == identity["arn"].rsplit("/", 1)[1]
    assert re.fullmatch(r"ASIA[A-Z0-9]{16}", identity["accessKeyId"])
    context = identity["sessionContext"]
    assert set(context) == {"sessionIssuer", "webIdFederationData", "attributes"}
    assert context["sessionIssuer"] == {"type": "Role", "principalId": role_id,
                                        "arn": "arn:aws:iam::123456789012:role/canary-writer",
                                        "accountId": "123456789012", "userName": "canary-writer"}
    created = datetime.strptime(context["attributes"]["creationDate"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert context["attributes"]["mfaAuthenticated"] == "false"
    assert created <= datetime.strptime(record["eventTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert record["userAgent"] == f"socfeeds-canary/{MARKER}"


def test_cloudtrail_role_id_is_stable_per_role_as_iam_ids_are() -> None:
    def role_id(origin: formats.Origin) -> str:
        [record] = json.loads(text_of(formats.cloudtrail(origin, MARKER, AT)))["Records"]
        return str(record["userIdentity"]["sessionContext"]["sessionIssuer"]["principalId"])

    assert role_id(ORIGIN) == role_id(ORIGIN) != role_id(formats.Origin("123456789012", "eu-west-2", writer_role="x"))


def test_cloudtrail_round_trips_through_the_standin() -> None:
    obj = formats.cloudtrail(ORIGIN, MARKER, AT)
    assert re.fullmatch(r"AWSLogs/123456789012/CloudTrail/eu-west-2/2025/11/24/123456789012_CloudTrail_eu-west-2_"
                        r"20251124T1030Z_[A-Za-z0-9]{16}\.json\.gz", obj.key), obj.key
    [raw] = split_records("Audit Logs", text_of(obj))
    assert MARKER in raw
    assert json.loads(raw) == json.loads(text_of(obj))["Records"][0]


# --- Fluent Bit ---------------------------------------------------------------------------------

def test_fluent_bit_date_is_the_s3_outputs_iso_8601_default() -> None:
    at = AT.astimezone(timezone(timedelta(hours=2)))  # the record says UTC whatever zone the caller uses
    obj = formats.fluent_bit(ORIGIN, MARKER, at)
    record = json.loads(obj.body)
    assert datetime.strptime(record["date"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) == AT
    assert MARKER in record["log"] and obj.key.startswith("logs/2025/11/24/10/30/15-")


# --- EKS audit ----------------------------------------------------------------------------------

def test_eks_audit_event_is_a_metadata_level_audit_event() -> None:
    event = json.loads(formats.eks_audit_event(MARKER, AT))
    assert (event["kind"], event["apiVersion"], event["level"], event["stage"]) == (
        "Event", "audit.k8s.io/v1", "Metadata", "ResponseComplete")
    assert uuid.UUID(event["auditID"]).version == 4 and MARKER not in event["auditID"]
    assert event["userAgent"] == f"socfeeds-canary/{MARKER}"
    assert uuid.UUID(event["user"]["uid"]) and event["user"]["username"].startswith("system:serviceaccount:")
    assert "system:authenticated" in event["user"]["groups"]
    assert event["annotations"]["authorization.k8s.io/decision"] == "allow"
    assert event["annotations"]["authorization.k8s.io/reason"].startswith("RBAC: allowed by ")
    assert event["responseStatus"]["code"] == 200 and event["objectRef"]["resource"] == "pods"
    received = datetime.strptime(event["requestReceivedTimestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert received == AT <= datetime.strptime(event["stageTimestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def test_eks_audit_ids_differ_per_request() -> None:
    first, second = (json.loads(formats.eks_audit_event(MARKER, AT)) for _ in range(2))
    assert first["auditID"] != second["auditID"] and first["user"]["uid"] == second["user"]["uid"]


def test_eks_audit_stream_prefix() -> None:
    assert formats.EKS_AUDIT_STREAM_PREFIX == "kube-apiserver-audit-"


# --- every S3 format through the stand-in ---------------------------------------------------------

@pytest.mark.parametrize("log_type", ["Audit Logs", "Flow Logs", "Route 53", "Generic"])
def test_each_synthetic_object_splits_into_one_marked_record(log_type: LogType) -> None:
    [raw] = split_records(log_type, text_of(formats.synthetic_object(log_type, ORIGIN, MARKER, AT)))
    assert MARKER in raw
