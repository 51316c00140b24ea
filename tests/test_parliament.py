"""Every policy document socfeeds writes, through an independent linter (parliament, with community auditors).

The documents are rendered by the same functions provision uses (identity, trust, bucket, queue and key
policies), for the production catalog in each shape it can take: reader user or role, SSE-S3 or one customer
KMS key for every feed. The suite fails on any finding except the documented false positives below.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from parliament import analyze_policy_string

from socfeeds import policies
from socfeeds.settings import Settings
from tasks.buckets import feed_bucket
from tasks.firehose import firehose_role_policy
from tasks.queues import queue_attributes

ACCOUNT = "123456789012"
KEY = f"arn:aws:kms:eu-west-2:{ACCOUNT}:key/0f6f1e33-1111-4a4a-9b9b-123456789abc"
SECRET = f"arn:aws:secretsmanager:eu-west-2:{ACCOUNT}:secret:socfeeds/xsiam-firehose-token-AbCdEf"

# (kind of document, parliament issue) -> why it is not a problem. Nothing else is tolerated.
SUPPRESSED: dict[tuple[str, str], str] = {
    ("trust", "MALFORMED"): "parliament reads trust policies as identity policies; a trust policy has a Principal "
                            "and no Resource by definition (IAM User Guide, 'Role trust policy')",
    ("key", "RESOURCE_STAR"): "in a KMS key policy 'Resource': '*' means this key and is the only form KMS accepts "
                              "(KMS Developer Guide, 'Key policies in AWS KMS')",
    ("key", "INVALID_SID"): "'Enable IAM User Permissions' is AWS's default key-policy Sid, verbatim; key policies "
                            "accept spaces in Sids, IAM identity policies (parliament's model) do not",
}


def _settings(kms: bool, reader_mode: str) -> Settings:
    settings = Settings(account_id=ACCOUNT, vpc_id="vpc-0abc12345678", eks_cluster_name="live",
                        xsiam={"firehose_url": "https://api-tenant.xdr.eu.paloaltonetworks.com/logs/v1/aws"},
                        reader={"mode": reader_mode},
                        canary={"writer_trusted_principals": [f"arn:aws:iam::{ACCOUNT}:role/socfeeds-flows"]})
    if not kms:
        return settings
    return settings.model_copy(update={
        "s3_feeds": {n: f.model_copy(update={"kms_key_arn": KEY}) for n, f in settings.s3_feeds.items()},
        "firehose_feeds": {n: f.model_copy(update={"kms_key_arn": KEY}) for n, f in settings.firehose_feeds.items()}})


def rendered_documents(settings: Settings) -> Iterator[tuple[str, str, policies.Document]]:
    """(name, kind, document) for every document provision writes for these settings."""
    account, region = settings.account_id, settings.region
    yield "reader", "identity", policies.reader_policy(settings)
    yield "reader role trust", "trust", policies.reader_role_trust(settings.reader.trusted_account, "external-id")
    yield "canary writer", "identity", policies.canary_writer_policy(settings)
    yield "canary writer trust", "trust", policies.canary_writer_trust(settings)
    for name, feed in settings.s3_feeds.items():
        yield f"bucket {name}", "resource", policies.document(feed_bucket(feed, settings).owned_statements())
        yield f"queue {name}", "resource", json.loads(queue_attributes(feed, settings)["Policy"])
    for firehose in settings.firehose_feeds.values():
        stream = f"arn:aws:firehose:{region}:{account}:deliverystream/{firehose.delivery_stream}"
        yield "logs role", "identity", policies.logs_role_policy(stream)
        yield "logs role trust", "trust", policies.logs_role_trust(region, account)
        yield "firehose role", "identity", firehose_role_policy(firehose, settings, SECRET)
        yield "firehose role trust", "trust", policies.firehose_role_trust(account)
    for key in sorted({f.kms_key_arn for f in settings.s3_feeds.values() if f.kms_key_arn}):
        yield f"key policy {key}", "key", policies.document([policies.iam_delegation_statement(settings),
                                                            *policies.key_service_statements(settings,
                                                                                             settings.s3_feeds.values())])


def findings(kind: str, document: policies.Document) -> list[str]:
    linted = analyze_policy_string(json.dumps(document), include_community_auditors=True)
    return [f"{f.issue}: {f.detail} at {f.location}" for f in linted.findings if (kind, f.issue) not in SUPPRESSED]


CASES = [pytest.param(kms, mode, id=f"{'kms' if kms else 'sse-s3'}-reader-{mode}")
         for kms in (False, True) for mode in ("user", "role")]


@pytest.mark.parametrize(("kms", "reader_mode"), CASES)
def test_every_written_document_passes_parliament(kms: bool, reader_mode: str) -> None:
    documents = list(rendered_documents(_settings(kms, reader_mode)))
    kinds = {kind for _, kind, _ in documents}
    assert kinds == {"identity", "trust", "resource"} | ({"key"} if kms else set())
    problems = {name: found for name, kind, doc in documents if (found := findings(kind, doc))}
    assert problems == {}


def test_the_linter_catches_the_bare_log_group_form_the_canary_once_had() -> None:
    """The check is real: the old writer grant (CreateLogStream on the bare log-group ARN) is a finding."""
    old = policies.document([{"Effect": "Allow", "Action": "logs:CreateLogStream",
                              "Resource": f"arn:aws:logs:eu-west-2:{ACCOUNT}:log-group:/aws/eks/live/cluster"}])
    assert any(line.startswith("RESOURCE_MISMATCH") for line in findings("identity", old))


def test_suppressions_hide_nothing_in_identity_and_resource_policies() -> None:
    """A suppression applies only to the document kind it was written for."""
    star: dict[str, Any] = policies.document([{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}])
    assert any(line.startswith("RESOURCE_STAR") for line in findings("identity", star))
