"""What a plan needs from AWS before it can be made: names only AWS can turn into the ARNs policies use.

IAM honours a KMS key's ARN, never its alias, so every `alias/...` in settings becomes its key ARN here,
once per run; an unset `canary.writer_trusted_principals` becomes the identity the flows run as; and a trail that
already delivers to a CloudTrail feed's bucket under another name is the feed's trail (adopted, by function), so
the bucket and key policies name the trail that really writes.
Everything downstream (policies, plans, checks) then sees plain ARNs.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from socfeeds.aws import AwsClients, error_code
from socfeeds.settings import CloudTrailSource, S3Feed, Settings


class ResolveError(ValueError):
    """A name in settings that AWS does not know: the message names the field and the fix."""


def key_arn(aws: AwsClients, key: str, field: str) -> str:
    """A key id, key ARN, alias name or alias ARN -> the key's ARN (kms:DescribeKey)."""
    try:
        return str(aws.kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"])
    except ClientError as error:
        if error_code(error) in {"NotFoundException", "InvalidArnException"}:
            raise ResolveError(f"{field}: KMS key {key} does not exist in {aws.region}: correct the ARN "
                               "(an alias must exist in the feed's account and region)") from error
        raise


def flows_identity(aws: AwsClients) -> str:
    """The ARN a trust policy names for the identity these flows run as (a role keeps its path)."""
    arn = str(aws.sts.get_caller_identity()["Arn"])
    kind, _, rest = arn.split(":", 5)[5].partition("/")
    if kind == "assumed-role":
        return str(aws.iam.get_role(RoleName=rest.split("/")[0])["Role"]["Arn"])
    if kind == "user":
        return arn
    raise ResolveError(f"canary.writer_trusted_principals: the flows run as {arn}, which a trust policy should "
                       "not name: run them as a role, or name the principals explicitly")


def resolve(settings: Settings, aws: AwsClients) -> Settings:
    keys: dict[str, str] = {}

    def resolved(key: str | None, field: str) -> str | None:
        if key is None or ":key/" in key:
            return key
        if key not in keys:
            keys[key] = key_arn(aws, key, field)
        return keys[key]

    s3_feeds = {name: feed.model_copy(update={
        "kms_key_arn": resolved(feed.kms_key_arn, f"s3_feeds.{name}.kms_key_arn"), "source": _trail(aws, feed)})
        for name, feed in settings.s3_feeds.items()}
    firehose_feeds = {name: feed.model_copy(update={
        "kms_key_arn": resolved(feed.kms_key_arn, f"firehose_feeds.{name}.kms_key_arn")})
        for name, feed in settings.firehose_feeds.items()}
    update: dict[str, Any] = {"s3_feeds": s3_feeds, "firehose_feeds": firehose_feeds}
    if settings.canary.writer_trusted_principals is None:
        update["canary"] = settings.canary.model_copy(update={"writer_trusted_principals": [flows_identity(aws)]})
    return settings.model_copy(update=update)


def _trail(aws: AwsClients, feed: S3Feed) -> object:
    """The feed's source, with the trail that delivers to its bucket when the declared one does not."""
    source = feed.source
    if not isinstance(source, CloudTrailSource):
        return source
    trails = [t for t in aws.cloudtrail.describe_trails(includeShadowTrails=False).get("trailList", [])
              if t.get("S3BucketName") == feed.bucket and t.get("HomeRegion", aws.region) == aws.region]
    names = [str(t["Name"]) for t in trails]
    if not names or source.trail_name in names:
        return source
    return source.model_copy(update={"adopted_trail": names[0]})
