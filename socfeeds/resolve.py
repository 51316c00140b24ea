"""What a plan needs from AWS before it can be made: names only AWS can turn into the ARNs policies use.

IAM honours a KMS key's ARN, never its alias, so every `alias/...` in settings becomes its key ARN here,
once per run; an unset `canary.writer_trusted_principals` becomes the identity the flows run as; and a trail that
already delivers to a CloudTrail feed's bucket under another name is the feed's trail (adopted, by function), so
the bucket and key policies name the trail that really writes.
Everything downstream (policies, plans, checks) then sees plain ARNs.

First of all it checks that the credentials act in the account the settings name, and that the feeds' existing
buckets are in the settings' region: one clear refusal, instead of every check failing for a reason it cannot see.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from socfeeds.aws import AwsClients, error_code
from socfeeds.errors import OnCallError
from socfeeds.settings import CloudTrailSource, S3Feed, Settings


class ResolveError(ValueError, OnCallError):
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


class WrongTarget(ValueError, OnCallError):
    """The credentials or the region point somewhere other than the settings' account and region."""


def check_target(settings: Settings, aws: AwsClients, caller_arn: str) -> None:
    """Refuse a run whose credentials act in another account, or whose feeds' buckets live in another region."""
    account = caller_arn.split(":")[4]
    if account != settings.account_id:
        raise WrongTarget(f"account_id: the settings name account {settings.account_id}, but the credentials act in "
                          f"account {account} (as {caller_arn}). Fix: run with credentials for {settings.account_id} "
                          "(AWS_PROFILE, or the work pool's role), or correct account_id")
    buckets = [bucket for feed in settings.s3_feeds.values() for bucket in feed.buckets]
    with ThreadPoolExecutor(max_workers=8) as pool:
        regions = dict(zip(buckets, pool.map(lambda bucket: bucket_region(aws, bucket), buckets), strict=True))
    elsewhere = {bucket: region for bucket, region in regions.items() if region not in {None, settings.region}}
    if elsewhere:
        found = sorted(set(elsewhere.values()))
        raise WrongTarget(f"region: the settings name {settings.region}, but the feeds' buckets are in "
                          f"{', '.join(found)} ({', '.join(sorted(elsewhere))}). Fix: set region = {found[0]!r} in the "
                          "settings file (or SOCFEEDS_REGION), or point the settings at this region's buckets")


def bucket_region(aws: AwsClients, bucket: str) -> str | None:
    """Where an existing bucket lives (GetBucketLocation answers from any region); None when it does not exist or
    is not ours to read, which the checks report on their own."""
    try:
        constraint = aws.s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except ClientError:
        return None
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(constraint, constraint)


def flows_identity(aws: AwsClients, arn: str) -> str:
    """The ARN a trust policy names for the identity these flows run as (a role keeps its path)."""
    kind, _, rest = arn.split(":", 5)[5].partition("/")
    if kind == "assumed-role":
        return str(aws.iam.get_role(RoleName=rest.split("/")[0])["Role"]["Arn"])
    if kind == "user":
        return arn
    raise ResolveError(f"canary.writer_trusted_principals: the flows run as {arn}, which a trust policy should "
                       "not name: run them as a role, or name the principals explicitly")


def resolve(settings: Settings, aws: AwsClients) -> Settings:
    caller = str(aws.sts.get_caller_identity()["Arn"])
    check_target(settings, aws, caller)
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
        trusted = [flows_identity(aws, caller)]
        update["canary"] = settings.canary.model_copy(update={"writer_trusted_principals": trusted})
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
