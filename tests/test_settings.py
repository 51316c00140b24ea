"""Settings are validated before any AWS call, and errors name the field and the value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from socfeeds.settings import SETTINGS_FILE_ENV, FlowLogSource, Settings

BASE: dict[str, Any] = {"account_id": "123456789012", "vpc_id": "vpc-0123456789abcdef0", "eks_cluster_name": "live",
                        "xsiam": {"firehose_url": "https://api-tenant.xdr.eu.paloaltonetworks.com/logs/v1/aws"}}


def settings(**overrides: Any) -> Settings:
    return Settings(**{**BASE, **overrides})


@pytest.fixture(autouse=True)
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (SETTINGS_FILE_ENV, "SOCFEEDS_ACCOUNT_ID", "SOCFEEDS_REGION"):
        monkeypatch.delenv(name, raising=False)


def feed(**overrides: Any) -> dict[str, Any]:
    return {"log_type": "Generic", "bucket": "my-logs-{account_id}", "queue": "my-logs", "retention_days": 30,
            **overrides}


def test_defaults_are_the_production_feeds_with_names_rendered() -> None:
    s = settings()
    assert {"application-logs", "cloudtrail", "route53-resolver", "vpc-flow-logs", "modsecurity"} <= set(s.s3_feeds)
    assert s.s3_feeds["modsecurity"].buckets == ("cloud-platform-modsec-logs-123456789012",
                                                  "cloud-platform-non-prod-modsec-logs-123456789012")
    assert s.s3_feeds["modsecurity"].retention_days == "keep" and s.s3_feeds["modsecurity"].managed_by == "socfeeds"
    assert s.s3_feeds["cloudtrail"].bucket == "cp-cloudtraillogs-123456789012-do-not-delete"
    assert s.s3_feeds["cloudtrail"].dlq_name == "cp-cloudtrail-xsiam-dlq"
    source = s.s3_feeds["vpc-flow-logs"].source
    assert isinstance(source, FlowLogSource) and source.vpc_id == BASE["vpc_id"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"account_id": "12345"}, "account_id"),
        ({"region": "eu-west-9"}, "unknown AWS region 'eu-west-9'"),
        ({"vpc_id": "subnet-123"}, "'subnet-123' is not a VPC id"),
        ({"s3_feeds": {"x": feed(bucket="Bad_Bucket")}}, "s3_feeds.x.bucket: 'Bad_Bucket'"),
        ({"s3_feeds": {"x": feed(bucket="192.168.1.1")}}, "s3_feeds.x.bucket: '192.168.1.1'"),
        ({"s3_feeds": {"x": feed(queue="q.fifo")}}, "s3_feeds.x.queue: 'q.fifo'"),
        ({"s3_feeds": {"x": feed(dlq="a" * 81)}}, "s3_feeds.x.dlq"),
        ({"s3_feeds": {"x": feed(retention_days=0)}}, "retention_days"),
        ({"s3_feeds": {"x": feed(retention_days="forever")}}, "retention_days"),
        ({"s3_feeds": {"x": feed(), "y": feed(bucket="other-logs")}}, "queue 'my-logs' belongs to feed 'x' already"),
        ({"s3_feeds": {"x": feed(additional_buckets=["Bad_B"])}}, "s3_feeds.x.additional_buckets[0]: 'Bad_B'"),
        ({"s3_feeds": {"x": feed(managed_by="cloudformation")}}, "managed_by"),
        ({"s3_feeds": {"x": feed(kms_key_arn="arn:aws:kms:eu-west-2:1:key/x")}}, "is not a KMS key or alias ARN"),
        ({"s3_feeds": {"x": feed(log_type="Firewall")}}, "log_type"),
        ({"canary": {"writer_trusted_principals": []}}, "canary.writer_trusted_principals"),
        ({"canary": {"writer_trusted_principals": ["arn:aws:nope"]}}, "are not IAM role or user ARNs"),
        ({"canary": {"writer_trusted_principals": ["arn:aws:iam::123456789012:root"]}}, "account root"),
        ({"firehose_feeds": {"eks-control-plane": {"error_log_retention_days": 15}}}, "15 is not a CloudWatch"),
        ({"s3_feeds": {"Bad Name": feed()}}, "feed name 'Bad Name'"),
        ({"vpc_id": None, "s3_feeds": {"x": feed(source={"kind": "vpc_flow_log"})}}, "s3_feeds.x.source.vpc_id"),
        ({"reader": {"path": "no-slashes"}}, "reader.path"),
        ({"s3_feeds": {"x": feed(colour="blue")}}, "colour"),
        ({"eks_cluster_name": None}, "firehose_feeds.eks-control-plane.cluster_name: None"),
        ({"xsiam": {}}, "firehose_feeds.eks-control-plane.endpoint_url: no Firehose URL"),
        ({"xsiam": {"firehose_url": "http://api-tenant.example/logs/v1/aws"}}, "must be an https:// URL"),
        ({"firehose_feeds": {"eks": {"log_retention_days": 13}}}, "13 is not a CloudWatch Logs retention"),
        ({"firehose_feeds": {"eks": {"buffering_mib": 65}}}, "buffering_mib"),
        ({"firehose_feeds": {"eks": {"log_types": ["api", "kubelet"]}}}, "log_types"),
        ({"firehose_feeds": {"cloudtrail": {}}}, "unique across s3_feeds and firehose_feeds"),
    ],
)
def test_invalid_values_name_the_field(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as raised:
        settings(**overrides)
    assert expected in str(raised.value)


def test_the_eks_feed_follows_production_names() -> None:
    eks = settings().firehose_feeds["eks-control-plane"]
    assert (eks.log_group, eks.delivery_stream, eks.error_bucket) == (
        "/aws/eks/live/cluster", "cloudwatch-export-live", "cp-firehose-errors-123456789012-live")
    assert eks.log_types == ("api", "audit", "authenticator", "controllerManager", "scheduler")
    assert (eks.buffering_mib, eks.buffering_seconds, eks.retry_seconds, eks.log_retention_days) == (1, 60, 300, 400)
    assert eks.endpoint_url == BASE["xsiam"]["firehose_url"]
    local = settings(xsiam={"firehose_url": "http://127.0.0.1:9999/logs/v1/aws"})
    assert local.firehose_feeds["eks-control-plane"].endpoint_url == "http://127.0.0.1:9999/logs/v1/aws"


def test_missing_account_id_is_named() -> None:
    with pytest.raises(ValidationError, match="account_id"):
        Settings()


def test_a_new_feed_is_one_entry_in_a_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cloudfront = feed(bucket="cp-cloudfront-logs-{account_id}", queue="cp-cloudfront-xsiam")
    path = tmp_path / "socfeeds.json"
    path.write_text(json.dumps({**BASE, "s3_feeds": {"cloudfront": cloudfront}}))
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(path))
    s = Settings()
    assert s.s3_feeds["cloudfront"].bucket == "cp-cloudfront-logs-123456789012"
    assert s.s3_feeds["cloudfront"].source is None


def test_toml_settings_file_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "socfeeds.toml"
    path.write_text('account_id = "123456789012"\nregion = "eu-west-1"\nvpc_id = "vpc-12345678"\n'
                    'eks_cluster_name = "live"\n[xsiam]\nfirehose_url_parameter = "/xsiam/firehose-url"\n')
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(path))
    monkeypatch.setenv("SOCFEEDS_REGION", "us-east-1")
    monkeypatch.setenv("SOCFEEDS_READER__USER_NAME", "xsiam-reader")
    s = Settings()
    assert (s.account_id, s.region, s.reader.user_name) == ("123456789012", "us-east-1", "xsiam-reader")


def test_missing_settings_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match=r"nope\.json"):
        Settings()


def test_feed_selection_refuses_unknown_names() -> None:
    s = settings()
    assert s.select_feeds(["eks-control-plane", "cloudtrail"]) == ["cloudtrail", "eks-control-plane"]
    with pytest.raises(ValueError, match=r"unknown feed\(s\) \['cloudtrial'\]; known: \['application-logs'"):
        s.select_feeds(["cloudtrial"])
    with pytest.raises(ValueError, match=r"feeds: an empty list selects no feed, so the run would check nothing"):
        s.select_feeds([])


def test_secret_values_do_not_show_in_repr() -> None:
    s = settings(xsiam_api_key="super-secret-token")
    assert "super-secret-token" not in repr(s) and "super-secret-token" not in str(s.model_dump())


def test_the_alert_webhook_is_a_secret_even_when_it_is_wrong() -> None:
    hook = "https://hooks.slack.com/services/T0/B0/hook-credential"
    s = settings(alerts={"webhook_url": hook})
    assert s.alerts.webhook_url is not None and s.alerts.webhook_url.get_secret_value() == hook
    assert "hook-credential" not in repr(s) and "hook-credential" not in str(s.model_dump())
    with pytest.raises(ValidationError) as raised:
        settings(alerts={"webhook_url": "http://hooks.slack.com/services/T0/B0/hook-credential"})
    assert "alerts.webhook_url" in str(raised.value) and "must be an https:// URL" in str(raised.value)
    assert "hook-credential" not in str(raised.value)
    assert settings(alerts={"webhook_url": "http://127.0.0.1:8080/hook"}).alerts.webhook_url is not None


def test_settings_errors_name_every_field_the_file_and_the_nearest_name(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from socfeeds.settings import SettingsError, load_settings

    path = tmp_path / "socfeeds.json"
    path.write_text(json.dumps({**BASE, "regoin": "eu-west-2", "reader": {"user_nmae": "x"},
                                "backlog": {"max_visible_messages": -1}}))
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(path))
    with pytest.raises(SettingsError) as refused:
        load_settings()
    text = str(refused.value)
    assert f"3 invalid setting(s) in settings file {path}" in text
    assert "regoin: not a setting; did you mean region?" in text
    assert "reader.user_nmae: not a setting; did you mean reader.user_name?" in text
    assert "backlog.max_visible_messages" in text and "errors.pydantic.dev" not in text
