"""Every policy document socfeeds writes, and the analysis verify runs on what it reads back."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from socfeeds import policies
from socfeeds.settings import Settings
from tasks.buckets import feed_bucket

ACCOUNT = "123456789012"
BUCKET_ARN = "arn:aws:s3:::logs-bucket"
QUEUE_ARN = f"arn:aws:sqs:eu-west-2:{ACCOUNT}:logs-queue"


def settings(**overrides: Any) -> Settings:
    return Settings(**{"account_id": ACCOUNT, "vpc_id": "vpc-12345678", "firehose_feeds": {}, **overrides})


def by_sid(statements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in statements}


def test_tls_only_deny_covers_bucket_and_objects_and_is_recognised() -> None:
    statement = policies.tls_only_statement(BUCKET_ARN)
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
    assert statement["Resource"] == [BUCKET_ARN, BUCKET_ARN + "/*"]
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert policies.has_tls_only_deny(policies.document([statement]), BUCKET_ARN)
    only_objects = {**statement, "Resource": BUCKET_ARN + "/*"}
    assert not policies.has_tls_only_deny(policies.document([only_objects]), BUCKET_ARN)


def test_emulator_setting_leaves_only_the_conditional_deny_out() -> None:
    real = by_sid(feed_bucket(settings().s3_feeds["cloudtrail"], settings()).owned_statements())
    emulated_settings = settings(omit_conditional_denies=True)
    emulated = by_sid(feed_bucket(emulated_settings.s3_feeds["cloudtrail"], emulated_settings).owned_statements())
    assert set(real) - set(emulated) == {policies.TLS_ONLY_SID}
    assert all(s["Effect"] == "Allow" for s in emulated.values())


def test_cloudtrail_may_check_acl_and_write_only_its_own_prefix_with_owner_control() -> None:
    s = settings()
    feed = s.s3_feeds["cloudtrail"]
    statements = by_sid(policies.source_write_statements(feed, s))
    trail_arn = f"arn:aws:cloudtrail:eu-west-2:{ACCOUNT}:trail/cloud-platform-cloudtrail"
    acl, write = statements["SocfeedsCloudTrailAclCheck"], statements["SocfeedsCloudTrailWrite"]
    assert acl["Principal"] == write["Principal"] == {"Service": "cloudtrail.amazonaws.com"}
    assert (acl["Action"], acl["Resource"]) == ("s3:GetBucketAcl", f"arn:aws:s3:::{feed.bucket}")
    assert write["Resource"] == f"arn:aws:s3:::{feed.bucket}/AWSLogs/{ACCOUNT}/*"
    assert write["Condition"]["StringEquals"] == {"s3:x-amz-acl": "bucket-owner-full-control",
                                                  "aws:SourceArn": trail_arn}


@pytest.mark.parametrize("feed_name", ["vpc-flow-logs", "route53-resolver"])
def test_log_delivery_is_scoped_to_this_account(feed_name: str) -> None:
    s = settings()
    statements = by_sid(policies.source_write_statements(s.s3_feeds[feed_name], s))
    write = statements["SocfeedsLogDeliveryWrite"]
    assert write["Principal"] == {"Service": "delivery.logs.amazonaws.com"}
    assert write["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT, "s3:x-amz-acl": "bucket-owner-full-control"},
        "ArnLike": {"aws:SourceArn": f"arn:aws:logs:eu-west-2:{ACCOUNT}:*"},
    }
    assert statements["SocfeedsLogDeliveryAclCheck"]["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}


def test_fluent_bit_feed_needs_no_service_statement() -> None:
    s = settings()
    assert policies.source_write_statements(s.s3_feeds["application-logs"], s) == []


def test_merge_replaces_owned_statements_and_keeps_everyone_elses() -> None:
    theirs = {"Sid": "TeamAccess", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:root"},
              "Action": "s3:GetObject", "Resource": BUCKET_ARN + "/*"}
    stale_ours = {"Sid": "SocfeedsOld", "Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": "*"}
    merged = policies.merge_owned(policies.document([theirs, stale_ours]), [policies.tls_only_statement(BUCKET_ARN)])
    assert [s["Sid"] for s in merged["Statement"]] == ["TeamAccess", policies.TLS_ONLY_SID]


def test_missing_statements_compare_canonically() -> None:
    statement = policies.tls_only_statement(BUCKET_ARN)
    reordered = {**statement, "Resource": list(reversed(statement["Resource"]))}
    assert policies.missing_statements(policies.document([reordered]), [statement]) == []
    assert policies.missing_statements(policies.document([]), [statement]) == [policies.TLS_ONLY_SID]


def test_queue_policy_allows_only_s3_from_the_bucket_and_account() -> None:
    doc = policies.queue_policy(QUEUE_ARN, [BUCKET_ARN], ACCOUNT)
    [statement] = doc["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": BUCKET_ARN},
                                      "StringEquals": {"aws:SourceAccount": ACCOUNT}}
    assert policies.queue_policy_problems(doc, QUEUE_ARN, [BUCKET_ARN], ACCOUNT) == []


def test_one_statement_admits_every_bucket_of_a_feed() -> None:
    other = "arn:aws:s3:::non-prod-logs"
    [statement] = policies.queue_policy(QUEUE_ARN, [BUCKET_ARN, other], ACCOUNT)["Statement"]
    assert statement["Condition"]["ArnEquals"] == {"aws:SourceArn": sorted([BUCKET_ARN, other])}
    only_one = policies.queue_policy(QUEUE_ARN, [BUCKET_ARN], ACCOUNT)
    assert policies.queue_policy_problems(only_one, QUEUE_ARN, [BUCKET_ARN, other], ACCOUNT) == [
        f"no statement lets s3.amazonaws.com send for ['{other}'] with aws:SourceAccount {ACCOUNT} "
        "(their notifications are dropped)"]


def _broken(mutate: Any) -> list[str]:
    doc = copy.deepcopy(policies.queue_policy(QUEUE_ARN, [BUCKET_ARN], ACCOUNT))
    mutate(doc)
    return policies.queue_policy_problems(doc, QUEUE_ARN, [BUCKET_ARN], ACCOUNT)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["Statement"][0]["Condition"].pop("StringEquals"), "aws:SourceAccount condition is None"),
        (lambda d: d["Statement"][0]["Condition"].pop("ArnEquals"), "no aws:SourceArn (any bucket of any account)"),
        (lambda d: d["Statement"][0]["Condition"]["ArnEquals"].update({"aws:SourceArn": "arn:aws:s3:::other"}),
         "['arn:aws:s3:::other'] is not a feed bucket"),
        (lambda d: d["Statement"][0].update(Principal="*"), "lets '*' send messages (forged notifications)"),
        (lambda d: d["Statement"].append({"Sid": "Extra", "Effect": "Allow", "Principal": {"AWS": "*"},
                                          "Action": "sqs:*", "Resource": QUEUE_ARN}), "Extra: lets"),
        (lambda d: d.update(Statement=[]), "no statement lets s3.amazonaws.com send"),
    ],
)
def test_queue_policy_problems_are_named(mutate: Any, expected: str) -> None:
    assert any(expected in problem for problem in _broken(mutate))


def test_queue_policy_accepts_like_operators_extra_denies_and_other_readers() -> None:
    def loosen(doc: dict[str, Any]) -> None:
        conditions = doc["Statement"][0]["Condition"]
        conditions["ArnLike"] = conditions.pop("ArnEquals")
        doc["Statement"] += [{"Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": QUEUE_ARN},
                             {"Sid": "Reader", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:user/x"},
                              "Action": "sqs:ReceiveMessage", "Resource": QUEUE_ARN}]

    assert _broken(loosen) == []


PRODUCTION_QUEUE_STATEMENT = {  # account/sqs.tf: no aws:SourceAccount
    "Sid": "AllowSendMessage", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
    "Action": "sqs:SendMessage", "Resource": QUEUE_ARN, "Condition": {"ArnEquals": {"aws:SourceArn": BUCKET_ARN}}}


def test_merge_keeps_production_statement_and_adds_ours_beside_it() -> None:
    merged = policies.merged_queue_policy(policies.document([PRODUCTION_QUEUE_STATEMENT]), QUEUE_ARN, [BUCKET_ARN],
                                          ACCOUNT)
    assert merged["Statement"][0] == PRODUCTION_QUEUE_STATEMENT
    assert [s.get("Sid") for s in merged["Statement"]] == ["AllowSendMessage", "SocfeedsS3Notifications"]
    assert policies.merged_queue_policy(merged, QUEUE_ARN, [BUCKET_ARN], ACCOUNT) == merged, "converges"
    assert any("AllowSendMessage: aws:SourceAccount" in p
               for p in policies.queue_policy_problems(merged, QUEUE_ARN, [BUCKET_ARN], ACCOUNT))


def test_merge_recognises_an_equivalent_foreign_statement_and_adds_nothing() -> None:
    equivalent = {**PRODUCTION_QUEUE_STATEMENT, "Condition": {
        "ArnLike": {"aws:SourceArn": BUCKET_ARN}, "StringEquals": {"aws:SourceAccount": ACCOUNT}}}
    current = policies.document([equivalent])
    assert policies.merged_queue_policy(current, QUEUE_ARN, [BUCKET_ARN], ACCOUNT)["Statement"] == [equivalent]


def test_reader_policy_is_exactly_what_xsiam_needs() -> None:
    s = settings()
    doc = policies.reader_policy(s)
    statements = by_sid(doc["Statement"])
    assert set(statements) == {"SocfeedsReadQueues", "SocfeedsReadObjects"}
    assert statements["SocfeedsReadQueues"]["Action"] == list(policies.READER_QUEUE_ACTIONS)
    assert "sqs:ListQueues" not in statements["SocfeedsReadQueues"]["Action"]
    assert statements["SocfeedsReadObjects"]["Action"] == ["s3:GetObject"]
    assert len(statements["SocfeedsReadQueues"]["Resource"]) == len(s.s3_feeds)
    assert statements["SocfeedsReadObjects"]["Resource"] == sorted(
        f"arn:aws:s3:::{bucket}/*" for feed in s.s3_feeds.values() for bucket in feed.buckets)
    assert "arn:aws:s3:::cloud-platform-non-prod-modsec-logs-123456789012/*" in \
        statements["SocfeedsReadObjects"]["Resource"], "every bucket of a multi-bucket feed is readable"
    review = policies.review_grants(doc["Statement"], doc)
    assert (review.missing, review.excess) == ([], [])


def test_reader_gets_kms_decrypt_only_for_keys_in_use() -> None:
    key = "arn:aws:kms:eu-west-2:123456789012:key/0f6f1e33-1111-4a4a-9b9b-123456789abc"
    feed = {"log_type": "Generic", "bucket": "enc-logs", "queue": "enc-logs", "retention_days": 30,
            "kms_key_arn": key}
    doc = policies.reader_policy(settings(s3_feeds={"enc": feed}))
    assert by_sid(doc["Statement"])["SocfeedsDecrypt"] == {
        "Sid": "SocfeedsDecrypt", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": [key]}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"Effect": "Allow", "Action": "s3:*", "Resource": BUCKET_ARN}, "wildcard grant s3:* on"),
        ({"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": QUEUE_ARN}, "sqs:sendmessage on"),
        ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}, "wildcard grant s3:getobject on *"),
        ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, "NotAction grants everything"),
    ],
)
def test_review_flags_anything_beyond_the_reader_policy(extra: dict[str, Any], expected: str) -> None:
    doc = policies.reader_policy(settings())
    review = policies.review_grants([*doc["Statement"], extra], doc)
    assert any(expected in line for line in review.excess), review.excess


def test_review_reports_missing_grants_and_ignores_denies() -> None:
    doc = policies.reader_policy(settings())
    queues_only = [s for s in doc["Statement"] if s["Sid"] == "SocfeedsReadQueues"]
    deny = {"Effect": "Deny", "Action": "*", "Resource": "*"}
    review = policies.review_grants([*queues_only, deny], doc)
    assert review.excess == []
    buckets = [b for feed in settings().s3_feeds.values() for b in feed.buckets]
    assert len(review.missing) == len(buckets) and all(m.startswith("s3:getobject on arn:aws:s3:::")
                                                       for m in review.missing)


KEY = f"arn:aws:kms:eu-west-2:{ACCOUNT}:key/0f6f1e33-1111-4a4a-9b9b-123456789abc"


def on_key(**overrides: Any) -> Settings:
    plain = settings(**overrides)
    return plain.model_copy(update={"s3_feeds": {n: f.model_copy(update={"kms_key_arn": KEY})
                                                 for n, f in plain.s3_feeds.items()}})


def test_key_policy_statements_are_awss_documented_ones_for_each_service() -> None:
    s = on_key()
    statements = by_sid(policies.key_service_statements(s, s.s3_feeds.values()))
    assert statements["SocfeedsS3NotifyEncryptedQueue"] == {
        "Sid": "SocfeedsS3NotifyEncryptedQueue", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*"}
    trail = f"arn:aws:cloudtrail:eu-west-2:{ACCOUNT}:trail/cloud-platform-cloudtrail"
    assert statements["SocfeedsCloudTrailEncrypt"] == {
        "Sid": "SocfeedsCloudTrailEncrypt", "Effect": "Allow", "Principal": {"Service": "cloudtrail.amazonaws.com"},
        "Action": "kms:GenerateDataKey*", "Resource": "*",
        "Condition": {"StringEquals": {"aws:SourceArn": [trail]},
                      "StringLike": {"kms:EncryptionContext:aws:cloudtrail:arn":
                                     f"arn:aws:cloudtrail:*:{ACCOUNT}:trail/*"}}}
    assert statements["SocfeedsCloudTrailDescribeKey"]["Action"] == "kms:DescribeKey"
    assert statements["SocfeedsLogDeliveryEncrypt"] == {
        "Sid": "SocfeedsLogDeliveryEncrypt", "Effect": "Allow",
        "Principal": {"Service": "delivery.logs.amazonaws.com"}, "Action": "kms:GenerateDataKey*", "Resource": "*",
        "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT},
                      "ArnLike": {"aws:SourceArn": f"arn:aws:logs:eu-west-2:{ACCOUNT}:*"}}}


def test_a_key_only_gets_the_statements_of_the_feeds_that_use_it() -> None:
    s = on_key()
    fluent_bit_only = policies.key_service_statements(s, [s.s3_feeds["application-logs"]])
    assert [st["Sid"] for st in fluent_bit_only] == ["SocfeedsS3NotifyEncryptedQueue"]
    assert policies.key_service_statements(s, []) == []


def test_an_equivalent_foreign_statement_grants_the_service() -> None:
    wanted = policies.s3_notification_key_statement()
    foreign = policies.document([{"Sid": "platform", "Effect": "Allow", "Principal": {"Service": ["s3.amazonaws.com"]},
                                  "Action": "kms:*", "Resource": "*"}])
    assert policies.grants_service(foreign, wanted, KEY)
    narrow = policies.document([{**foreign["Statement"][0], "Action": "kms:Decrypt"}])
    assert not policies.grants_service(narrow, wanted, KEY)


def test_iam_delegation_is_aws_default_statement_and_is_recognised() -> None:
    s = settings()
    assert policies.delegates_to_iam(policies.document([policies.iam_delegation_statement(s)]), ACCOUNT)
    assert not policies.delegates_to_iam(policies.document([]), ACCOUNT)
    conditioned = {**policies.iam_delegation_statement(s), "Condition": {"Bool": {"aws:ViaAWSService": "true"}}}
    assert not policies.delegates_to_iam(policies.document([conditioned]), ACCOUNT)


@pytest.mark.parametrize(("statements", "action", "resource", "allowed"), [
    ([{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY}], "kms:Decrypt", KEY, True),
    ([{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}], "KMS:decrypt", KEY, True),
    ([{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"},
      {"Effect": "Deny", "Action": "kms:*", "Resource": KEY}], "kms:Decrypt", KEY, False),
    ([{"Effect": "Allow", "NotAction": "s3:*", "Resource": "*"}], "kms:Decrypt", KEY, True),
    ([{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": KEY.replace("0f6f", "aaaa")}], "kms:Decrypt", KEY,
     False),
])
def test_allows_decides_as_iam_does(statements: list[dict[str, Any]], action: str, resource: str,
                                    allowed: bool) -> None:
    assert policies.allows(statements, action, resource) is allowed


def test_the_canary_writer_reaches_only_canary_prefixes_streams_and_keys() -> None:
    s = on_key(canary={"writer_trusted_principals": [f"arn:aws:iam::{ACCOUNT}:role/flows"]},
               eks_cluster_name="live", xsiam={"firehose_url": "https://x.example/logs/v1/aws"},
               firehose_feeds={"eks-control-plane": {}})
    statements = by_sid(policies.canary_writer_policy(s)["Statement"])
    assert statements["SocfeedsCanaryObjects"]["Resource"] == sorted(
        f"arn:aws:s3:::{f.bucket}/socfeeds-canary/{n}/*" for n, f in s.s3_feeds.items())
    assert statements["SocfeedsCanaryEncrypt"] == {"Sid": "SocfeedsCanaryEncrypt", "Effect": "Allow",
                                                   "Action": "kms:GenerateDataKey", "Resource": [KEY]}
    assert statements["SocfeedsCanaryStreams"]["Resource"] == [
        f"arn:aws:logs:eu-west-2:{ACCOUNT}:log-group:/aws/eks/live/cluster:log-stream:"
        "kube-apiserver-audit-socfeeds-canary-*"]
    assert policies.canary_scope_problems(statements.values(), s) == []
    wide = {"Sid": "Extra", "Effect": "Allow", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::b/*"}
    assert policies.canary_scope_problems([wide], s) == ["Extra: s3:deleteobject on arn:aws:s3:::b/*"]
    flows = f"arn:aws:iam::{ACCOUNT}:role/flows"
    assert policies.canary_writer_trust(s)["Statement"][0]["Principal"] == {"AWS": [flows]}
