"""An estate another team's Terraform built, for `make demo BROWNFIELD=1` and the adoption tests.

Shaped as the platform's account/sqs.tf and firehose.tf build it: the feed buckets already notify queues of
their own names (production's), without dead-letter queues; a flow log in AWS's default format, a resolver
query-log config under a foreign name and a trail under a foreign name already deliver to the buckets; a Firehose
stream and its subscription filter, with their own roles, already carry the EKS control plane to XSIAM; and one
bucket has an unrelated notification entry and bucket-policy statement that must survive adoption.
`build` returns the settings a platform engineer writes to adopt it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from deployments.local.stack import REGION, LocalAws
from socfeeds import policies

PRODUCTION_QUEUES = {  # account/sqs.tf
    "cloudtrail": "cp_cloudtrail_log_queue", "vpc-flow-logs": "cp_vpc_flowlogs_log_queue",
    "route53-resolver": "cp_route53_log_queue", "application-logs": "cp_application_logs_queue",
    "cloudfront": "cloudfront_logs_queue", "modsecurity": "cp_modsec_logs_queue",
}
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                 "Principal": {"Service": "{service}"}}]}


@dataclass
class Estate:
    """What was built, so tests can prove nothing of it was duplicated or lost."""

    values: dict[str, Any]
    foreign_statements: dict[str, dict[str, Any]] = field(default_factory=dict)  # bucket -> statement
    foreign_notifications: dict[str, dict[str, Any]] = field(default_factory=dict)  # bucket -> entry
    flow_log_id: str = ""
    query_log_config: str = ""
    trail: str = ""
    stream: str = ""
    subscription_filter: str = ""


def build(aws: LocalAws, values: dict[str, Any], xsiam_url: str, token: str, prefix: str = "") -> Estate:
    """Build the estate for a local catalog (`values`, names already prefixed) and return adoption settings."""
    from socfeeds.settings import Settings

    account = values["account_id"]
    rendered = Settings(**values).s3_feeds  # names as the flows will see them ({account_id} filled in)
    feeds = {name: {**feed, "bucket": rendered[name].bucket, "additional_buckets": list(rendered[name].buckets[1:])}
             for name, feed in values["s3_feeds"].items() if name in PRODUCTION_QUEUES and not feed.get("kms_key_arn")}
    estate = Estate(values={**values, "s3_feeds": {**values["s3_feeds"]}})
    s3, sqs = aws.client("s3"), aws.client("sqs")
    for name, feed in feeds.items():
        queue = prefix + PRODUCTION_QUEUES[name]
        buckets = [feed["bucket"], *feed.get("additional_buckets", [])]
        queue_arn = f"arn:aws:sqs:{REGION}:{account}:{queue}"
        url = sqs.create_queue(QueueName=queue, Attributes={
            "SqsManagedSseEnabled": "true", "DelaySeconds": "0", "MaximumMessageSize": "262144",
            "MessageRetentionPeriod": "345600", "VisibilityTimeout": "30"})["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps({"Version": "2012-10-17", "Statement": [
            {"Sid": "AllowSendMessage", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
             "Action": "sqs:SendMessage", "Resource": queue_arn,
             "Condition": {"ArnEquals": {"aws:SourceArn": [f"arn:aws:s3:::{b}" for b in buckets]},
                           "StringEquals": {"aws:SourceAccount": account}}}]})})
        for bucket in buckets:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
            s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
                {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
            s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
                {"Id": f"tf-{name}", "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]})
        estate.values["s3_feeds"][name] = {**values["s3_feeds"][name], "queue": queue, "retention_days": "keep"}
    flow = estate.values["s3_feeds"]["vpc-flow-logs"]  # XSIAM needs its format: replacing is the explicit choice
    estate.values["s3_feeds"]["vpc-flow-logs"] = {**flow, "source": {**flow["source"], "replace_mismatched": True}}
    _cloudtrail(aws, estate, feeds["cloudtrail"], prefix)
    _flow_log(aws, estate, feeds["vpc-flow-logs"])
    _query_logging(aws, estate, feeds["route53-resolver"], prefix)
    _eks(aws, estate, xsiam_url, token, prefix)
    return estate


def _cloudtrail(aws: LocalAws, estate: Estate, feed: dict[str, Any], prefix: str) -> None:
    """A trail of its own name, a bucket policy with its own Sids and an unrelated reader, and an entry for
    deletions to another consumer's queue."""
    s3, account, bucket = aws.client("s3"), estate.values["account_id"], feed["bucket"]
    estate.trail = f"{prefix}platform-audit-trail"
    trail_arn = f"arn:aws:cloudtrail:{REGION}:{account}:trail/{estate.trail}"
    backup = {"Sid": "AllowBackupRead", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
              "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "AWSCloudTrailAclCheck", "Effect": "Allow", "Principal": {"Service": "cloudtrail.amazonaws.com"},
         "Action": "s3:GetBucketAcl", "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringEquals": {"aws:SourceArn": trail_arn}}},
        {"Sid": "AWSCloudTrailWrite", "Effect": "Allow", "Principal": {"Service": "cloudtrail.amazonaws.com"},
         "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/AWSLogs/{account}/*",
         "Condition": {"StringEquals": {"s3:x-amz-acl": "bucket-owner-full-control", "aws:SourceArn": trail_arn}}},
        backup]}))
    estate.foreign_statements[bucket] = backup
    deletions = aws.client("sqs").create_queue(QueueName=f"{prefix}cp-audit-deletions")["QueueUrl"]
    deletions_arn = f"arn:aws:sqs:{REGION}:{account}:{deletions.rsplit('/', 1)[1]}"
    config = s3.get_bucket_notification_configuration(Bucket=bucket)
    entry = {"Id": "audit-deletions", "QueueArn": deletions_arn, "Events": ["s3:ObjectRemoved:*"]}
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [*config["QueueConfigurations"], entry]})
    estate.foreign_notifications[bucket] = entry
    cloudtrail = aws.client("cloudtrail")
    cloudtrail.create_trail(Name=estate.trail, S3BucketName=bucket, IsMultiRegionTrail=True,
                            IncludeGlobalServiceEvents=True, EnableLogFileValidation=True)
    cloudtrail.start_logging(Name=estate.trail)


def _flow_log(aws: LocalAws, estate: Estate, feed: dict[str, Any]) -> None:
    """In AWS's default format: not what XSIAM parses, and AWS cannot change a flow log's format."""
    answer = aws.client("ec2").create_flow_logs(
        ResourceIds=[aws.vpc_id], ResourceType="VPC", TrafficType="ALL", LogDestinationType="s3",
        LogDestination=f"arn:aws:s3:::{feed['bucket']}")
    estate.flow_log_id = answer["FlowLogIds"][0]


def _query_logging(aws: LocalAws, estate: Estate, feed: dict[str, Any], prefix: str) -> None:
    resolver = aws.client("route53resolver")
    estate.query_log_config = f"{prefix}cp-vpc-dns-query-logging"
    config = resolver.create_resolver_query_log_config(
        Name=estate.query_log_config, DestinationArn=f"arn:aws:s3:::{feed['bucket']}",
        CreatorRequestId=estate.query_log_config)["ResolverQueryLogConfig"]
    resolver.associate_resolver_query_log_config(ResolverQueryLogConfigId=config["Id"], ResourceId=aws.vpc_id)


def _eks(aws: LocalAws, estate: Estate, xsiam_url: str, token: str, prefix: str) -> None:
    """The platform's firehose.tf: control-plane logging on, a stream to XSIAM and the filter that feeds it."""
    account, cluster = estate.values["account_id"], estate.values["eks_cluster_name"]
    feed = estate.values["firehose_feeds"]["eks-control-plane"]
    iam, logs = aws.client("iam"), aws.client("logs")
    secret_arn = _token_secret(aws, feed["token_secret_name"], token)
    roles = {}
    for role, service in ((f"{prefix}firehose-to-xsiam", "firehose.amazonaws.com"),
                          (f"{prefix}cloudwatch-to-firehose", f"logs.{REGION}.amazonaws.com")):
        trust = json.loads(json.dumps(TRUST).replace("{service}", service))
        roles[service] = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    errors = f"{prefix}cp-firehose-errors-estate-{account}"
    aws.client("s3").create_bucket(Bucket=errors, CreateBucketConfiguration={"LocationConstraint": REGION})
    estate.stream = f"{prefix}cloudwatch-export-1a2b3c"
    stream_arn = f"arn:aws:firehose:{REGION}:{account}:deliverystream/{estate.stream}"
    error_group = f"/aws/kinesisfirehose/{estate.stream}"
    grants = {  # what their Terraform grants: the same permissions socfeeds would, under their own policy names
        f"{prefix}firehose-to-xsiam": policies.firehose_role_policy(
            f"arn:aws:s3:::{errors}", f"arn:aws:logs:{REGION}:{account}:log-group:{error_group}:log-stream:"
            "DestinationDelivery", secret_arn, None),
        f"{prefix}cloudwatch-to-firehose": policies.logs_role_policy(stream_arn)}
    for role, document in grants.items():
        iam.put_role_policy(RoleName=role, PolicyName="terraform-managed", PolicyDocument=json.dumps(document))
    aws.client("eks").update_cluster_config(name=cluster, logging={"clusterLogging": [
        {"types": ["api", "audit", "authenticator", "controllerManager", "scheduler"], "enabled": True}]})
    group = f"/aws/eks/{cluster}/cluster"
    logs.create_log_group(logGroupName=group)
    logs.put_retention_policy(logGroupName=group, retentionInDays=400)
    firehose_role = roles["firehose.amazonaws.com"]
    aws.client("firehose").create_delivery_stream(
        DeliveryStreamName=estate.stream, DeliveryStreamType="DirectPut",
        HttpEndpointDestinationConfiguration={
            "EndpointConfiguration": {"Url": xsiam_url, "Name": xsiam_url[:256]},
            "BufferingHints": {"SizeInMBs": 5, "IntervalInSeconds": 60},
            "RequestConfiguration": {"ContentEncoding": "GZIP"}, "RoleARN": firehose_role,
            "RetryOptions": {"DurationInSeconds": 300}, "S3BackupMode": "FailedDataOnly",
            "SecretsManagerConfiguration": {"SecretARN": secret_arn, "RoleARN": firehose_role, "Enabled": True},
            "S3Configuration": {"RoleARN": firehose_role, "BucketARN": f"arn:aws:s3:::{errors}",
                                "CompressionFormat": "GZIP"}})
    estate.values["firehose_feeds"] = {"eks-control-plane": {  # what a person adopting it writes
        **feed, "error_bucket": errors, "buffering_mib": 5, "firehose_role": f"{prefix}firehose-to-xsiam",
        "logs_role": f"{prefix}cloudwatch-to-firehose"}}
    estate.subscription_filter = f"{prefix}firehose-delivery-aws-eks-{cluster}-cluster-4d5e"
    logs.put_subscription_filter(
        logGroupName=group, filterName=estate.subscription_filter, filterPattern="",
        destinationArn=stream_arn,
        roleArn=roles[f"logs.{REGION}.amazonaws.com"])


def _token_secret(aws: LocalAws, name: str, token: str) -> str:
    secrets = aws.client("secretsmanager")
    try:
        return str(secrets.describe_secret(SecretId=name)["ARN"])
    except secrets.exceptions.ResourceNotFoundException:
        return str(secrets.create_secret(Name=name, SecretString=json.dumps({"api_key": token}))["ARN"])
