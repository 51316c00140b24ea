"""The estate another team's Terraform built (deployments/local/brownfield.py), adopted: the dry run lists what
will change, applying creates no duplicate, loses nothing of theirs, a second run changes nothing, and every
feed's canary passes through the adopted resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Stack
from test_adoption import api_calls, writes  # noqa: F401 (api_calls is a fixture)
from test_canary import run

from deployments.local import brownfield
from deployments.local.stack import LocalXsiam, bootstrap_reader_key, collector_feeds
from flows.provision import provision_feeds
from flows.verify import verify_feeds
from socfeeds.report import Change
from tasks.buckets import bucket_exists
from tasks.firehose import count_delivery
from tasks.sources import count_sources

EKS = "eks-control-plane"


@pytest.fixture
def estate(stack: Stack) -> brownfield.Estate:
    built = brownfield.build(stack.local, stack.values, stack.xsiam.firehose_url, stack.xsiam.firehose_token,
                             prefix=stack.values["reader"]["user_name"].split("-")[0] + "-")
    stack.update(**{k: built.values[k] for k in ("s3_feeds", "firehose_feeds")})
    return built


def inventory(stack: Stack) -> dict[str, Any]:
    """Everything that must exist once: per feed its sources and deliveries, per bucket its notification entries."""
    aws, settings, s3 = stack.aws, stack.settings, stack.client("s3")
    counts: dict[str, Any] = {name: count_sources(aws, settings, name) for name in settings.s3_feeds}
    counts[EKS] = count_delivery(aws, settings, EKS)
    for feed in settings.s3_feeds.values():
        for bucket in feed.buckets:
            config = s3.get_bucket_notification_configuration(Bucket=bucket) if bucket_exists(aws, bucket) else {}
            counts[bucket] = len(config.get("QueueConfigurations", []))
    return counts


def test_dry_run_lists_the_changes_and_makes_none(stack: Stack, estate: brownfield.Estate,
                                                  api_calls: list[str]) -> None:  # noqa: F811
    before = inventory(stack)
    planned: list[Change] = provision_feeds(dry_run=True)
    assert writes(api_calls) == []
    assert inventory(stack) == before
    adopted = [c for c in planned if c.feed in brownfield.PRODUCTION_QUEUES or c.feed == EKS]
    actions = {(c.feed, c.action) for c in adopted}
    for duplicate in ("create trail", "create query log config", "create delivery stream", "subscribe log group",
                      "notify queue"):
        assert not any(action == duplicate for _, action in actions), (duplicate, sorted(actions))
    assert {("vpc-flow-logs", "create flow log"), ("vpc-flow-logs", "delete flow log")} <= actions, \
        "the default-format flow log is replaced (opted in), create first"
    assert not any("SocfeedsS3Notifications" in c.detail for c in adopted if c.action == "set queue attributes"), \
        "an equivalent foreign queue statement is recognised, not duplicated"
    assert [c.resource for c in adopted if c.action == "write bucket policy" and "cloudtrail" in c.resource] == [], \
        "the adopted trail's own bucket statements already grant what socfeeds would"


def test_applying_duplicates_nothing_loses_nothing_and_converges(stack: Stack, estate: brownfield.Estate) -> None:
    s3 = stack.client("s3")
    provision_feeds()
    counts = inventory(stack)
    assert counts["cloudtrail"] == {"trails": 1}
    assert counts["vpc-flow-logs"]["flow_logs"] == 1
    assert counts["route53-resolver"] == {"query_log_configs": 1, "associations": 1}
    assert counts[EKS] == {"streams": 1, "subscription_filters": 1}
    cloudtrail = stack.settings.s3_feeds["cloudtrail"].bucket
    assert counts[cloudtrail] == 2, "the feed's entry (adopted) and the unrelated one, nothing added"
    for bucket, statement in estate.foreign_statements.items():
        assert statement in json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    for bucket, entry in estate.foreign_notifications.items():
        assert entry in s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
    assert provision_feeds() == [], "a second run makes no change"


def test_the_canary_passes_through_the_adopted_estate(stack: Stack, estate: brownfield.Estate,
                                                      tmp_path: Path) -> None:
    xsiam = LocalXsiam(tmp_path / "tenant", stack.local)
    xsiam.collect(collector_feeds(stack.local, stack.values), reader_secret_id=stack.settings.reader.secret_name)
    xsiam.start()
    try:
        stack.update(xsiam={"firehose_url": stack.xsiam.firehose_url, "api_url": xsiam.api_url,
                            "api_key_id": xsiam.api_key_id})
        import os

        os.environ["SOCFEEDS_XSIAM_API_KEY"] = xsiam.api_key
        provision_feeds()
        bootstrap_reader_key(stack.local, stack.values["reader"])
        xsiam.reload()
        ok, results = run([name for name in stack.settings.s3_feeds])
        assert ok, results
        assert verify_feeds(return_state=True).is_completed()
    finally:
        xsiam.stop()


def test_terraform_owned_estate_is_never_written(stack: Stack, estate: brownfield.Estate,
                                                 api_calls: list[str]) -> None:  # noqa: F811
    stack.update(managed_by="terraform")
    before = inventory(stack)
    changes = provision_feeds()
    assert writes(api_calls) == [] and inventory(stack) == before
    assert changes and all(c.owner == "terraform" and not c.applied for c in changes)
