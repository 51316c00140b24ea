"""ARNs derived from names, so plans and checks never need a lookup to know them."""

from __future__ import annotations

from dataclasses import dataclass

CLOUDTRAIL_SERVICE = "cloudtrail.amazonaws.com"  # the service principal of trails and their linked role


def partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


@dataclass(frozen=True)
class Arns:
    region: str
    account_id: str

    @property
    def partition(self) -> str:
        return partition(self.region)

    def bucket(self, name: str) -> str:
        return f"arn:{self.partition}:s3:::{name}"

    def queue(self, name: str) -> str:
        return f"arn:{self.partition}:sqs:{self.region}:{self.account_id}:{name}"

    def trail(self, name: str) -> str:
        return f"arn:{self.partition}:cloudtrail:{self.region}:{self.account_id}:trail/{name}"

    def log_delivery_sources(self) -> str:
        return f"arn:{self.partition}:logs:{self.region}:{self.account_id}:*"

    def iam_policy(self, path: str, name: str) -> str:
        return f"arn:{self.partition}:iam::{self.account_id}:policy{path}{name}"

    def role(self, name: str) -> str:
        return f"arn:{self.partition}:iam::{self.account_id}:role/{name}"

    def delivery_stream(self, name: str) -> str:
        return f"arn:{self.partition}:firehose:{self.region}:{self.account_id}:deliverystream/{name}"

    def log_stream(self, group: str, stream: str) -> str:
        return f"arn:{self.partition}:logs:{self.region}:{self.account_id}:log-group:{group}:log-stream:{stream}"

    def log_group(self, group: str) -> str:
        return f"arn:{self.partition}:logs:{self.region}:{self.account_id}:log-group:{group}"

    def user(self, path: str, name: str) -> str:
        return f"arn:{self.partition}:iam::{self.account_id}:user{path}{name}"

    def secret(self, name: str) -> str:
        """Every version of the named secret: Secrets Manager ends its ARN with '-' and six random characters."""
        return f"arn:{self.partition}:secretsmanager:{self.region}:{self.account_id}:secret:{name}-??????"

    def parameter(self, name: str) -> str:
        """An SSM parameter; a hierarchical name's leading '/' is the ARN's own separator."""
        return f"arn:{self.partition}:ssm:{self.region}:{self.account_id}:parameter/{name.removeprefix('/')}"

    def cluster(self, name: str) -> str:
        return f"arn:{self.partition}:eks:{self.region}:{self.account_id}:cluster/{name}"
