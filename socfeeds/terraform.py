"""Changes to resources Terraform owns, written as Terraform so their owner can make them.

socfeeds never writes a Terraform-owned resource (`managed_by = "terraform"`): provision plans as for its own
and hands each difference over as a block of the resource type that holds that attribute, with the value the
AWS API would be sent (jsonencode'd where Terraform takes a document).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from socfeeds.report import Change

RESOURCE_TYPES = {
    "create bucket": "aws_s3_bucket",
    "enforce bucket owner": "aws_s3_bucket_ownership_controls",
    "block public access": "aws_s3_bucket_public_access_block",
    "set default encryption": "aws_s3_bucket_server_side_encryption_configuration",
    "enable versioning": "aws_s3_bucket_versioning",
    "set lifecycle rules": "aws_s3_bucket_lifecycle_configuration",
    "write bucket policy": "aws_s3_bucket_policy",
    "create queue": "aws_sqs_queue",
    "set queue attributes": "aws_sqs_queue",
    "notify queue": "aws_s3_bucket_notification",
    "create trail": "aws_cloudtrail",
    "update trail": "aws_cloudtrail",
    "create flow log": "aws_flow_log",
    "create delivery stream": "aws_kinesis_firehose_delivery_stream",
    "update delivery stream": "aws_kinesis_firehose_delivery_stream",
    "subscribe log group": "aws_cloudwatch_log_subscription_filter",
    "merge key policy": "aws_kms_key_policy",
}


def _label(change: Change) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{change.feed}_{change.resource.split('://')[-1]}")[:64]


def _attributes(wanted: str) -> list[str]:
    if not wanted:
        return []
    value = json.loads(wanted)
    items = value.items() if isinstance(value, dict) else [("value", value)]
    return [f"  {key.lower()} = " + (json.dumps(v) if isinstance(v, str | int | bool) else
                                     f"jsonencode({json.dumps(v, indent=2, sort_keys=True)})").replace("\n", "\n  ")
            for key, v in items]


def block(change: Change) -> str:
    """One change as the Terraform block its owner edits."""
    kind = RESOURCE_TYPES.get(change.action, "")
    header = f"# {change.resource}: {change.action} ({change.detail})"
    if not kind:
        return f"{header}\n# make this change where Terraform declares {change.resource}: {change.wanted or '-'}"
    return "\n".join([header, f'resource "{kind}" "{_label(change)}" {{', *_attributes(change.wanted), "}"])


def snippet(changes: Iterable[Change]) -> str:
    blocks = [block(c) for c in changes if c.owner == "terraform"]
    return "\n\n".join(blocks)
