"""Synthetic canary records against AWS's documented shapes, an independent flow-log parser and the stand-in."""

from __future__ import annotations

import csv
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
from socfeeds.settings import LogType, RdsLogsSource

AT = datetime(2025, 11, 24, 10, 30, 15, 123456, tzinfo=UTC)
ORIGIN = formats.Origin("123456789012", "eu-west-2", vpc_id="vpc-0123456789abcdef0")
MARKER = "socfeeds-canary-run1-feed-1764000000000"


def text_of(obj: formats.LogObject) -> str:
    """As a reader sees it: gunzipped when gzip (Firehose's objects are gzip without saying so), as XSIAM does."""
    return (gzip.decompress(obj.body) if obj.body[:2] == b"\x1f\x8b" else obj.body).decode()


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


def test_the_standin_keeps_a_flow_log_line_as_written() -> None:
    text = text_of(formats.vpc_flow_log(ORIGIN, MARKER, AT))
    [raw] = split_records("Flow Logs", text)
    assert raw == text.splitlines()[1]
    assert dict(zip(formats.FLOW_LOG_FIELDS, raw.split(" "), strict=True))["instance-id"] == f"i-{MARKER}"


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

@pytest.mark.parametrize("log_type", ["Audit Logs", "Flow Logs", "Route 53", "Generic", "CloudFront", "RDS"])
def test_each_synthetic_object_splits_into_one_marked_record(log_type: LogType) -> None:
    [raw] = split_records(log_type, text_of(formats.synthetic_object(log_type, ORIGIN, MARKER, AT)))
    assert MARKER in raw


# --- CloudFront access logs ---------------------------------------------------------------------

# AWS's CloudFront Developer Guide, "Standard logging (access logs)", log file format: the directives of every file.
DOCUMENTED_CLOUDFRONT_HEADER = (
    "#Version: 1.0\n"
    "#Fields: date time x-edge-location sc-bytes c-ip cs-method cs(Host) cs-uri-stem sc-status cs(Referer) "
    "cs(User-Agent) cs-uri-query cs(Cookie) x-edge-result-type x-edge-request-id x-host-header cs-protocol cs-bytes "
    "time-taken x-forwarded-for ssl-protocol ssl-cipher x-edge-response-result-type cs-protocol-version fle-status "
    "fle-encrypted-fields c-port time-to-first-byte x-edge-detailed-result-type sc-content-type sc-content-len "
    "sc-range-start sc-range-end\n"
)


def test_cloudfront_file_has_the_documented_directives_and_fields() -> None:
    text = text_of(formats.cloudfront_access_log(ORIGIN, MARKER, AT))
    assert text.startswith(DOCUMENTED_CLOUDFRONT_HEADER)
    [line] = text.removeprefix(DOCUMENTED_CLOUDFRONT_HEADER).splitlines()
    values = dict(zip(DOCUMENTED_CLOUDFRONT_HEADER.split("#Fields: ")[1].split(), line.split("\t"), strict=True))
    assert (values["date"], values["time"]) == ("2025-11-24", "10:30:15")  # UTC, whole seconds
    assert re.fullmatch(r"[A-Z]{3}\d+-[A-Z0-9]+", values["x-edge-location"])
    assert re.fullmatch(r"d[0-9a-z]{13}\.cloudfront\.net", values["cs(Host)"]) and values["x-host-header"] == values[
        "cs(Host)"]
    assert values["cs(User-Agent)"] == f"socfeeds-canary/{MARKER}"  # the marker, kept raw
    assert re.fullmatch(r"[A-Za-z0-9_=-]{56}", values["x-edge-request-id"])
    assert values["sc-status"] == "200" and values["cs-method"] == "GET" and values["cs-protocol"] == "https"
    assert all(values[f].isdigit() for f in ("sc-bytes", "cs-bytes", "c-port", "sc-content-len"))
    assert all(re.fullmatch(r"\d+\.\d{3}", values[f]) for f in ("time-taken", "time-to-first-byte"))
    assert values["x-edge-result-type"] in {"Hit", "RefreshHit", "Miss", "LimitExceeded", "CapacityExceeded", "Error",
                                            "Redirect"}
    assert all(v and " " not in v for v in values.values())  # `-` for no value; nothing a tab split would break


def test_cloudfront_key_is_the_v2_default_layout() -> None:
    key = formats.cloudfront_access_log(ORIGIN, MARKER, AT).key
    assert re.fullmatch(r"AWSLogs/123456789012/CloudFront/E[A-Z0-9]{13}\.2025-11-24-10\.[0-9a-f]{8}\.gz", key), key
    later = formats.cloudfront_access_log(ORIGIN, MARKER, AT + timedelta(hours=1)).key
    assert later.split("/")[-1].split(".")[:2] == [key.split("/")[-1].split(".")[0], "2025-11-24-11"]  # one id


def test_cloudfront_record_reads_with_aws_log_parser() -> None:
    parser_module = pytest.importorskip("aws_log_parser", reason="aws-log-parser (the independent parser) is not "
                                       "installed; pyproject's dev dependencies should list aws-log-parser==3.0.2")
    parser = parser_module.AwsLogParser(log_type=parser_module.LogType.CloudFront)
    [entry] = list(parser.parse_csv(text_of(formats.cloudfront_access_log(ORIGIN, MARKER, AT)).splitlines()))
    assert entry.timestamp == AT.replace(microsecond=0)
    assert (entry.client_ip, entry.http_method, entry.uri_stem, entry.status_code) == (
        "192.0.2.10", "GET", "/socfeeds-canary", 200)
    assert entry.user_agent == f"socfeeds-canary/{MARKER}" and entry.referrer is None and entry.cookie is None
    assert (entry.protocol, entry.protocol_version, entry.ssl_protocol) == ("https", "HTTP/2.0", "TLSv1.3")
    assert entry.sent_bytes == 412 and entry.received_bytes == 131 and entry.time_taken == 0.012


def test_cloudfront_records_are_named_by_the_files_own_fields_line() -> None:
    """A v2 delivery may choose its fields: the stand-in reads each file by its own #Fields directive."""
    [record] = split_records("CloudFront", text_of(formats.cloudfront_access_log(ORIGIN, MARKER, AT)))
    assert tuple(json.loads(record)) == formats.CLOUDFRONT_FIELDS
    chosen = "#Version: 1.0\n#Fields: date time c-ip cs(User-Agent)\n2025-11-24\t10:30:15\t192.0.2.10\tcurl/8\n"
    assert [json.loads(r) for r in split_records("CloudFront", chosen)] == [
        {"date": "2025-11-24", "time": "10:30:15", "c-ip": "192.0.2.10", "cs(User-Agent)": "curl/8"}]
    with pytest.raises(ValueError, match="before the #Fields"):
        formats.w3c_records("2025-11-24\t10:30:15\n")


# --- RDS through Firehose ---------------------------------------------------------------------

def payload(group: str, stream: str, *messages: str, kind: str = "DATA_MESSAGE") -> bytes:
    """One record as CloudWatch Logs hands it to Firehose: gzip of the subscription payload."""
    return gzip.compress(json.dumps({
        "messageType": kind, "owner": "123456789012", "logGroup": group, "logStream": stream,
        "subscriptionFilters": [f"{stream}-firehose"],
        "logEvents": [{"id": str(n).zfill(56), "timestamp": 1764000000000 + n, "message": m}
                      for n, m in enumerate(messages)]}, separators=(",", ":")).encode())


def test_rds_object_is_firehoses_layout_of_a_cloudwatch_payload() -> None:
    obj = formats.rds_firehose_object(ORIGIN, MARKER, AT)
    assert re.fullmatch(r"logs/2025/11/24/10/socfeeds-canary-1-2025-11-24-10-30-15-[0-9a-f-]{36}", obj.key), obj.key
    assert obj.content_encoding is None  # Firehose adds no Content-Encoding: the gzip is CloudWatch Logs' own
    document = json.loads(gzip.decompress(obj.body))
    assert document["messageType"] == "DATA_MESSAGE" and document["owner"] == "123456789012"
    [event] = document["logEvents"]
    assert re.fullmatch(r"\d{56}", event["id"]) and event["timestamp"] == int(AT.timestamp() * 1000)


def test_rds_record_keeps_its_log_group_and_instance() -> None:
    [raw] = split_records("RDS", text_of(formats.rds_firehose_object(ORIGIN, MARKER, AT)))
    record = json.loads(raw)
    assert record["logGroup"] == "/aws/rds/instance/socfeeds-canary/postgresql"
    assert RdsLogsSource.instance_and_type(record["logGroup"]) == ("socfeeds-canary", "postgresql")
    assert record["logStream"] == "socfeeds-canary" and record["owner"] == "123456789012"
    assert MARKER in record["message"]


def test_rds_reader_splits_concatenated_payloads_and_skips_control_messages() -> None:
    """Firehose without a processor concatenates the gzip records it receives: one object, several members."""
    body = b"".join([payload("/aws/rds/instance/db-a/postgresql", "db-a", "one", "two"),
                     payload("/aws/rds/instance/db-a/postgresql", "db-a", "CWL CONTROL MESSAGE: Checking health of "
                             "destination Firehose.", kind="CONTROL_MESSAGE"),  # as CloudWatch Logs sends on setup
                     payload("/aws/rds/instance/db-b/audit", "db-b", "three")])
    records = [json.loads(r) for r in split_records("RDS", gzip.decompress(body).decode())]
    assert [(r["logGroup"], r["logStream"], r["message"]) for r in records] == [
        ("/aws/rds/instance/db-a/postgresql", "db-a", "one"), ("/aws/rds/instance/db-a/postgresql", "db-a", "two"),
        ("/aws/rds/instance/db-b/audit", "db-b", "three")]


def test_postgresql_line_has_rds_default_prefix() -> None:
    line = formats.rds_log_line("postgresql", MARKER, AT)
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC:([\d.]+)\((\d+)\):(\w+)@(\w+):\[(\d+)\]:"
                         r"LOG:  statement: (.*)", line)  # log_line_prefix %t:%r:%u@%d:[%p]:
    assert match, line
    assert match[1] == "2025-11-24 10:30:15" and match[7] == f"SELECT 'socfeeds-canary {MARKER}'"


def test_mysql_audit_line_has_the_audit_plugins_ten_fields() -> None:
    line = formats.rds_log_line("audit", MARKER, AT)
    [fields] = list(csv.reader([line], quotechar="'", escapechar="\\"))
    assert len(fields) == 10 and fields[0] == "20251124 10:30:15" and fields[6] == "QUERY" and fields[9] == "0"
    assert fields[8] == f"SELECT 'socfeeds-canary {MARKER}'"
    with pytest.raises(ValueError, match="no synthetic line for RDS log type 'error'"):
        formats.rds_log_line("error", MARKER, AT)
