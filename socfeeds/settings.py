"""The desired state of every feed, validated before any AWS call.

Values come from `SOCFEEDS_*` environment variables (nested with `__`) and from an optional
settings file named by `SOCFEEDS_SETTINGS_FILE` (JSON or TOML). Names may use the placeholders
`{account_id}` and `{region}`, so the production defaults can follow the platform's naming.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import os
import re
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlparse

import boto3
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from socfeeds.arns import Arns
from socfeeds.assurance import AuditSettings, SloObjectives
from socfeeds.errors import OnCallError
from socfeeds.fleet import FleetSettings

SETTINGS_FILE_ENV = "SOCFEEDS_SETTINGS_FILE"
XSIAM_MIN_RETENTION_DAYS = 7

LogType = Literal["Audit Logs", "Flow Logs", "Route 53", "Generic", "CloudFront", "RDS"]
ManagedBy = Literal["socfeeds", "terraform"]

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_VPC_RE = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_KMS_ARN_RE = re.compile(r"^arn:aws(-cn|-us-gov)?:kms:[a-z0-9-]+:\d{12}:(key/[0-9a-f-]{36}|alias/[A-Za-z0-9/_-]+)$")
_FEED_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_IAM_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$")
_IAM_PATH_RE = re.compile(r"^/([\x21-\x7e]*/)?$")
_PRINCIPAL_ARN_RE = re.compile(r"^arn:aws(-cn|-us-gov)?:iam::\d{12}:(role|user)/([\w+=,.@-]+/)*[\w+=,.@-]{1,64}$")
CANARY_KEY_PREFIX = "socfeeds-canary/"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CloudTrailSource(_Strict):
    """A multi-region trail with log-file validation, writing to the feed's bucket."""

    kind: Literal["cloudtrail"] = "cloudtrail"
    trail_name: str = Field("cloud-platform-cloudtrail", min_length=3, max_length=128)
    adopted_trail: str | None = Field(
        None, description="Filled at the start of each run, not in settings: the trail that already delivers to the "
        "bucket under another name, which socfeeds adopts (bucket and key policies then name it).")
    organization_id: str | None = Field(
        None, pattern=r"^o-[a-z0-9]{10,32}$", description="An organization trail of this Organization (o-...): one "
        "trail in the management account logs every member account, under AWSLogs/<organization id>/<account>/. In "
        "the account whose bucket receives it, name the trail's account in the feed's source_accounts.")
    home_region: str | None = Field(
        None, description="Where the trail of another account (source_accounts) lives, when not in this account's "
        "region: the bucket and key policies name it by its ARN, which carries its home region.")

    @field_validator("home_region")
    @classmethod
    def _home_region(cls, value: str | None) -> str | None:
        if value is not None and value not in known_regions():
            raise ValueError(f"unknown AWS region {value!r}")
        return value

    @property
    def trail(self) -> str:
        """The trail that writes the feed's logs: the adopted one, else the declared one."""
        return self.adopted_trail or self.trail_name


class FlowLogSource(_Strict):
    """A VPC flow log to S3 in the 26-field format XSIAM parses."""

    kind: Literal["vpc_flow_log"] = "vpc_flow_log"
    vpc_id: str | None = Field(None, description="Defaults to the top-level vpc_id.")
    aggregation_seconds: Literal[60, 600] = 600
    replace_mismatched: bool = Field(
        False, description="A flow log to the bucket in another format cannot be edited (AWS): with true, provision "
        "creates one in the XSIAM format, then deletes the old one. False: the gap is reported with this fix.")


class ResolverQueryLogSource(_Strict):
    """A Route 53 Resolver query-log config to S3, associated with one VPC."""

    kind: Literal["resolver_query_log"] = "resolver_query_log"
    config_name: str = Field("query-log-config", min_length=1, max_length=64)
    vpc_id: str | None = Field(None, description="Defaults to the top-level vpc_id.")


class FluentBitSource(_Strict):
    """Fluent Bit's S3 output; the cluster applies the rendered section, we only render it."""

    kind: Literal["fluent_bit"] = "fluent_bit"
    match: str = "kubernetes.*"
    key_prefix: str = Field("logs", pattern=r"^[A-Za-z0-9!_.*'()/-]+$")
    output_path: Path = Path(".state/fluent-bit/output-s3.conf")


class CloudFrontSource(_Strict):
    """CloudFront standard logging (v2): CloudWatch Logs' vended-log delivery writes the W3C access log to the bucket.

    v2, not legacy: legacy logging writes as the awslogsdelivery account through the bucket ACL, so it needs ACLs,
    which the feed bucket's BucketOwnerEnforced ownership turns off; v2 writes as delivery.logs.amazonaws.com
    under a bucket-policy statement (like flow logs) and is configured in us-east-1 whatever the bucket's region.
    """

    LOGS_REGION: ClassVar[str] = "us-east-1"

    kind: Literal["cloudfront"] = "cloudfront"
    distribution_id: str | None = Field(
        None, pattern=r"^E[A-Z0-9]{7,20}$", description="The distribution whose delivery socfeeds owns. Unset: the "
        "distributions' owners set up their own deliveries to the bucket; verify checks that at least one does.")
    key_prefix: str | None = Field(
        None, pattern=r"^[A-Za-z0-9!_.*'(){}/-]{1,256}$", description="The delivery's S3 suffix path (CloudWatch "
        "Logs' s3DeliveryConfiguration.suffixPath, e.g. {DistributionId}/{yyyy}/{MM}/{dd}/{HH}); AWS keeps it "
        "under AWSLogs/<account>/CloudFront/. Unset: AWS's default.")


class RdsLogsSource(_Strict):
    """RDS log groups -> CloudWatch Logs subscription filter -> Firehose (extended S3) -> the feed bucket.

    No RDS instance is ever created here: each log group is adopted, or created as the platform's RDS module
    creates it before the instance exports to it. Names may use {account_id}, {region} and {bucket} (the feed's
    bucket: one stream and one pair of roles per feed); the subscription filter also {instance} and {log_type}
    of its log group (the platform names its filters `<instance>-<log type>-firehose`).
    """

    LOG_GROUP_PREFIX: ClassVar[str] = "/aws/rds/instance/"

    kind: Literal["rds_logs"] = "rds_logs"
    log_groups: list[str] = Field(default_factory=list, description="/aws/rds/instance/<instance id>/<log type> "
                                  "(postgresql, upgrade, audit, error, general, slowquery, ...).")
    log_retention_days: int | None = Field(14, description="Retention of the log groups (the platform's RDS module "
                                           "sets 14); None leaves it as it is.")
    key_prefix: str = Field("logs", pattern=r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$",
                            description="Firehose's object prefix; Firehose adds YYYY/MM/DD/HH/ after it.")
    delivery_stream: str = "socfeeds-{bucket}"
    subscription_filter: str = "{instance}-{log_type}-firehose"
    logs_role: str = "socfeeds-logs-{bucket}"
    firehose_role: str = "socfeeds-firehose-{bucket}"
    buffering_mib: int = Field(64, ge=1, le=128, description="The platform's stream buffers 64 MiB / 60 s.")
    buffering_seconds: int = Field(60, ge=0, le=900)

    @field_validator("log_groups")
    @classmethod
    def _rds_log_groups(cls, value: list[str]) -> list[str]:
        for group in value:
            cls.instance_and_type(group)
        if len(set(value)) != len(value):
            raise ValueError(f"{value} names a log group twice")
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int | None) -> int | None:
        if value is not None and value not in CLOUDWATCH_RETENTION_DAYS:
            raise ValueError(f"{value} is not a CloudWatch Logs retention ({sorted(CLOUDWATCH_RETENTION_DAYS)})")
        return value

    @model_validator(mode="after")
    def _name_templates(self) -> RdsLogsSource:
        self.rendered("123456789012", "eu-west-2", "bucket")  # placeholders and characters; lengths when rendered
        return self

    @classmethod
    def instance_and_type(cls, log_group: str) -> tuple[str, str]:
        """(DB instance identifier, log type) of an RDS log group; RDS names them /aws/rds/instance/<id>/<type>."""
        instance, _, log_type = log_group.removeprefix(cls.LOG_GROUP_PREFIX).partition("/")
        if not (log_group.startswith(cls.LOG_GROUP_PREFIX) and re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,62}", instance)
                and re.fullmatch(r"[a-z]+", log_type)):
            raise ValueError(f"{log_group!r} is not an RDS log group ({cls.LOG_GROUP_PREFIX}<instance id>/<log type>)")
        return instance, log_type

    def rendered(self, account_id: str, region: str, bucket: str) -> RdsLogsSource:
        """The names with their placeholders filled in (the filter's {instance} and {log_type} stay for
        filter_name), checked as AWS checks them."""
        values = {"account_id": account_id, "region": region, "bucket": bucket}
        try:
            names = {field: str(getattr(self, field)).format(**values)
                     for field in ("delivery_stream", "logs_role", "firehose_role")}
            names["subscription_filter"] = self.subscription_filter.format(**values, instance="{instance}",
                                                                           log_type="{log_type}")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"a source name uses an unknown placeholder ({error}): use {{account_id}}, {{region}}, "
                             "{bucket}; the subscription filter also {instance} and {log_type}") from error
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", names["delivery_stream"]):
            raise ValueError(f"delivery_stream {names['delivery_stream']!r} is not a Firehose stream name "
                             "(1-64 letters, digits, '_', '.', '-')")
        for role in ("logs_role", "firehose_role"):
            if not _IAM_NAME_RE.match(names[role]):
                raise ValueError(f"{role} {names[role]!r} is not an IAM role name (1-64 of [\\w+=,.@-])")
        source = self.model_copy(update=names)
        source.filter_name(f"{self.LOG_GROUP_PREFIX}db/audit")
        return source

    def filter_name(self, log_group: str) -> str:
        """The subscription filter's name for a log group (of a rendered source)."""
        instance, log_type = self.instance_and_type(log_group)
        name = self.subscription_filter.format(instance=instance, log_type=log_type)
        if not re.fullmatch(r"[^:*]{1,512}", name):
            raise ValueError(f"subscription filter name {name!r} is not valid (1-512 characters, no ':' or '*')")
        return name


Source = Annotated[
    CloudTrailSource | FlowLogSource | ResolverQueryLogSource | FluentBitSource | CloudFrontSource | RdsLogsSource,
    Field(discriminator="kind"),
]


class S3Feed(_Strict):
    """One S3 -> SQS feed that XSIAM's Amazon S3 data source reads."""

    log_type: LogType
    bucket: str
    additional_buckets: tuple[str, ...] = Field(
        (), description="More buckets notifying the same queue (ModSecurity: prod and non-prod). Each gets the "
        "bucket guard rails and the notification; one queue-policy statement admits them all; the reader reads all.")
    queue: str
    dlq: str | None = Field(None, description="Dead-letter queue; defaults to '<queue>-dlq'.")
    retention_days: int | Literal["keep"] = Field(
        description="Objects expire after this many days; \"keep\": never expire (socfeeds writes no expiry).")
    managed_by: ManagedBy | None = Field(
        None, description="socfeeds: provision converges the feed's resources. terraform: provision never writes, "
        "it reports each difference as the change to make in Terraform. Defaults to the top-level managed_by.")
    versioning: bool = False
    kms_key_arn: str | None = Field(None, description="SSE-KMS for bucket and queue; SSE-S3/SSE-SQS if unset.")
    max_receive_count: int = Field(4, ge=1, le=1000)
    source: Source | None = None
    canary_strategy: Literal["siem", "queue"] = Field(
        "siem", description="siem: find the canary in XSIAM (production). queue: long-poll the feed's queue; "
        "only for queues no one else reads (XSIAM would race the canary for the message).")
    canary_deadline_seconds: int = Field(120, ge=5, le=3600)
    slo: SloObjectives = SloObjectives()
    source_accounts: tuple[str, ...] = Field(
        (), description="A central log-archive bucket: other accounts whose flow logs or resolver query logs deliver "
        "here (the bucket policy lets log delivery write under AWSLogs/<account>/ for each, and this account), or "
        "the one account whose organization trail does (source.organization_id).")
    bucket_account: str | None = Field(
        None, description="The account that owns the bucket when it is not this one (a member account delivering "
        "to a central log-archive bucket): here socfeeds wires only the source to it; the bucket, queue and "
        "notification are the owning account's feed.")

    @field_validator("kms_key_arn")
    @classmethod
    def _kms_arn(cls, value: str | None) -> str | None:
        if value is not None and not _KMS_ARN_RE.match(value):
            raise ValueError(f"{value!r} is not a KMS key or alias ARN (arn:aws:kms:<region>:<account>:key/<id>)")
        return value

    @field_validator("retention_days")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 day, or \"keep\" to never expire objects")
        return value

    @property
    def dlq_name(self) -> str:
        return self.dlq or f"{self.queue}-dlq"

    @field_validator("source_accounts")
    @classmethod
    def _accounts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in value if not re.fullmatch(r"\d{12}", a)]
        if bad:
            raise ValueError(f"{bad} are not 12-digit AWS account ids")
        return value

    @field_validator("bucket_account")
    @classmethod
    def _bucket_account(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{12}", value):
            raise ValueError(f"{value!r} is not a 12-digit AWS account id")
        return value

    @model_validator(mode="after")
    def _delivery_sources_only(self) -> S3Feed:
        organization = self.organization_id
        delivered = isinstance(self.source, FlowLogSource | ResolverQueryLogSource)
        if self.source_accounts and not (organization or delivered):
            raise ValueError("source_accounts: cross-account delivery is modelled for flow logs, resolver query logs "
                             "and organization trails (set source.organization_id); for any other CloudTrail use "
                             "one trail per account into its own bucket")
        if organization and len(self.source_accounts) > 1:
            raise ValueError(f"source_accounts: an organization trail lives in one account (the management or "
                             f"delegated administrator account), not {len(self.source_accounts)}")
        if isinstance(self.source, CloudTrailSource) and self.bucket_account and not organization:
            raise ValueError("bucket_account: a trail writes into another account's bucket here only as an "
                             "organization trail (set source.organization_id)")
        return self

    @property
    def organization_id(self) -> str | None:
        """The Organization this feed's organization trail logs; None for any other source."""
        return self.source.organization_id if isinstance(self.source, CloudTrailSource) else None

    def trail_arn(self, account_id: str, region: str) -> str:
        """The ARN of the trail that writes into this feed's bucket (this account's, or another's in its home
        region), as the bucket and key policies name it in aws:SourceArn."""
        assert isinstance(self.source, CloudTrailSource)
        home = self.source.home_region if self.source_accounts else None
        return Arns(home or region, self.trail_account(account_id)).trail(self.source.trail)

    def trail_account(self, account_id: str) -> str:
        """The account whose trail writes into this feed's bucket: an organization trail's account when it lives
        elsewhere (source_accounts), else this one."""
        return self.source_accounts[0] if isinstance(self.source, CloudTrailSource) and self.source_accounts \
            else account_id

    def wires_source(self, account_id: str) -> bool:
        """Whether this account wires the feed's source: not when another account's organization trail writes
        the bucket (that trail logs this account too)."""
        return self.trail_account(account_id) == account_id

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.bucket, *self.additional_buckets)


EksLogType = Literal["api", "audit", "authenticator", "controllerManager", "scheduler"]
EKS_LOG_TYPES: tuple[EksLogType, ...] = ("api", "audit", "authenticator", "controllerManager", "scheduler")
CLOUDWATCH_RETENTION_DAYS = frozenset(
    {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653})


class FirehoseFeed(_Strict):
    """EKS control-plane logs -> CloudWatch Logs -> subscription filter -> Firehose -> XSIAM HTTP endpoint.

    Names may use {account_id}, {region} and {cluster}. The endpoint URL defaults to the tenant's
    (`xsiam.firehose_url` or the SSM parameter `xsiam.firehose_url_parameter`); the access token is
    never in settings: it lives in the Secrets Manager secret `token_secret_name` as {"api_key": ...}.
    """

    cluster_name: str | None = Field(None, description="Defaults to the top-level eks_cluster_name.")
    log_types: tuple[EksLogType, ...] = EKS_LOG_TYPES
    log_retention_days: int = 400
    delivery_stream: str = "cloudwatch-export-{cluster}"
    endpoint_url: str | None = Field(None, description="Overrides the tenant's Firehose URL for this feed.")
    token_secret_name: str = Field("socfeeds/xsiam-firehose-token", pattern=r"^[A-Za-z0-9/_+=.@-]{1,512}$")
    error_bucket: str = "cp-firehose-errors-{account_id}-{cluster}"
    error_retention_days: int = Field(14, ge=1)
    error_log_retention_days: int = Field(14, description="Retention of the stream's error log group.")
    buffering_mib: int = Field(1, ge=1, le=64, description="XSIAM advises 1 MiB; production runs 5.")
    buffering_seconds: int = Field(60, ge=0, le=900)
    retry_seconds: int = Field(300, ge=0, le=7200)
    kms_key_arn: str | None = None
    managed_by: ManagedBy | None = Field(None, description="Defaults to the top-level managed_by.")
    subscription_filter: str = "firehose-delivery-{cluster}"
    logs_role: str = "socfeeds-logs-to-firehose-{cluster}"
    firehose_role: str = "socfeeds-firehose-{cluster}"
    backup_window_hours: int = Field(24, ge=1, description="How far back verify looks for failed deliveries.")
    backup_objects_warn_at: int = Field(1, ge=1)
    backup_objects_fail_at: int = Field(1, ge=1)
    canary_deadline_seconds: int = Field(240, ge=5, le=3600, description="Room for the 60 s buffer and retries.")
    slo: SloObjectives = SloObjectives()

    @field_validator("log_retention_days", "error_log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in CLOUDWATCH_RETENTION_DAYS:
            raise ValueError(f"{value} is not a CloudWatch Logs retention ({sorted(CLOUDWATCH_RETENTION_DAYS)})")
        return value

    @field_validator("kms_key_arn")
    @classmethod
    def _kms_arn(cls, value: str | None) -> str | None:
        return S3Feed._kms_arn(value)

    @property
    def log_group(self) -> str:
        return f"/aws/eks/{self.cluster_name}/cluster"

    @property
    def error_log_group(self) -> str:
        return f"/aws/kinesisfirehose/{self.delivery_stream}"


class XsiamTenant(_Strict):
    """Where the SOC's XSIAM tenant listens. Secrets are not here: see Settings.xsiam_api_key."""

    firehose_url: str | None = Field(None, description="https://api-<tenant>/logs/v1/aws")
    firehose_url_parameter: str | None = Field(None, description="SSM parameter holding the Firehose URL.")
    api_url: str | None = Field(None, description="https://api-<tenant>/public_api/v1")
    api_key_id: str | None = None


LOG_TYPE_DATASETS: dict[str, str] = {
    "Audit Logs": "aws_s3_raw",
    "Flow Logs": "aws_s3_raw",
    "Route 53": "amazon_route53_raw",
    "Generic": "amazon_aws_raw",
    "EKS": "amazon_eks_raw",
    # XSIAM's S3 data source has no CloudFront or RDS log type: both are Generic, landing in <vendor>_<product>_raw
    "CloudFront": "amazon_cloudfront_raw",
    "RDS": "amazon_rds_raw",
}


class CanarySettings(_Strict):
    writer_role: str = Field("socfeeds-canary-writer", pattern=r"^[\w+=,.@-]{1,64}$",
                             description="Role the canary writes with: PutObject/DeleteObject, PutLogEvents only.")
    writer_trusted_principals: list[str] | None = Field(
        None, description="Role or user ARNs that may assume the writer role. Unset: the flows' own identity "
        "(the role they run as, read from STS at the start of each run). Never the account root.")
    expected_every: timedelta = Field(
        timedelta(hours=26), ge=timedelta(seconds=10), description="The dead-man's switch alerts when no canary "
        "passes for a feed within this (seconds or ISO 8601, e.g. PT26H; at least 10 s, Prefect's proactive minimum).")

    @field_validator("writer_trusted_principals")
    @classmethod
    def _named_principals(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty list trusts nobody and cannot run the canary: name the flows' role ARN, "
                             "or leave the field unset to trust the identity the flows run as")
        bad = [arn for arn in value if not _PRINCIPAL_ARN_RE.match(arn)]
        if bad:
            raise ValueError(f"{bad} are not IAM role or user ARNs (arn:aws:iam::<account>:role/<name>); "
                             "the account root and wildcards are refused")
        return value


class RotationPolicy(_Strict):
    """How the reader's access key is rotated (rotate-reader-keys)."""

    max_key_age_days: int = Field(90, ge=1, description="Rotate a key this old.")
    warn_age_days: int = Field(75, ge=1, description="Warn from this age.")
    grace_days: float = Field(7, ge=0, description="Delete a deactivated key after this many days.")
    approval_timeout_seconds: int = Field(86_400, ge=1)
    approval_poll_seconds: int = Field(10, ge=1, le=300, description="How often a paused run looks for the answer.")
    approvers: list[str] = Field(default_factory=list, description="Names allowed to approve a rotation.")
    required_approvals: int = Field(1, ge=1, le=5, description="Distinct approvers needed (2: two-person rule).")
    approval: Literal["per_account", "combined"] = Field("per_account", description="A fleet rotation asks for one "
                                                         "approval per account, or one (combined) listing every "
                                                         "account's pending key; a rejection or timeout stops all.")
    require_new_key_in_use: bool = Field(True, description="See XSIAM use the new key before the old is deactivated.")
    confirm_use_seconds: int = Field(3_600, ge=1, description="How long to wait for XSIAM to use the new key.")
    last_used_resolution_seconds: int = Field(
        60, ge=0, le=3600, description="How coarse IAM's last-used time may be (AWS's example shows whole "
        "minutes). A use counts only when reported more than this after the approval, so the flow's own test of "
        "the key never passes for XSIAM's use. 0 for an emulator that records exact times.")
    new_key_ready_seconds: int = Field(60, ge=1, description="How long a new key may take to start working.")

    @model_validator(mode="after")
    def _satisfiable(self) -> RotationPolicy:
        """A policy nobody can satisfy would pause every rotation until it times out: refuse it before any run.

        With no `rotation` section at all nothing is set, and the rotation refuses to make a key instead.
        """
        if not self.model_fields_set:
            return self
        names = sorted(set(self.approvers))
        if not names:
            raise ValueError("approvers is empty, so nobody could approve a rotation: list the people who may "
                             "approve, e.g. approvers = [\"soc-on-call\"]")
        if self.required_approvals > len(names):
            raise ValueError(f"required_approvals is {self.required_approvals} but approvers lists {len(names)} "
                             f"distinct name(s) {names}, so a rotation could never be approved: list more approvers "
                             "or lower required_approvals")
        return self


class ReaderSettings(_Strict):
    """The identity XSIAM reads the feeds with: an IAM user with access keys, or (keyless) a role."""

    mode: Literal["user", "role"] = "user"
    role_name: str = Field("cortex-xsiam-reader", pattern=r"^[\w+=,.@-]{1,64}$")
    trusted_account: str = Field("006742885340", pattern=r"^\d{12}$", description="Palo Alto's AWS account.")
    external_id_parameter: str = Field("/socfeeds/xsiam-external-id", pattern=r"^/[A-Za-z0-9/_.-]{1,1010}$",
                                       description="SSM SecureString holding XSIAM's external id.")
    user_name: str = Field("cortex_xsiam_user", pattern=_IAM_NAME_RE.pattern)
    path: str = Field("/cloud-platform/soc/", pattern=_IAM_PATH_RE.pattern, max_length=512)
    policy_name: str = Field("socfeeds-xsiam-reader", pattern=r"^[\w+=,.@-]{1,128}$")
    policy_path: str | None = Field(None, pattern=_IAM_PATH_RE.pattern, max_length=512,
                                    description="Path of the reader's managed policy; defaults to path. A policy name "
                                    "is unique in the account whatever its path, so an existing one is adopted here.")
    secret_name: str = Field("socfeeds/xsiam-reader-access-key", pattern=r"^[A-Za-z0-9/_+=.@-]{1,512}$",
                             description="Secrets Manager secret holding the reader's current access key.")


class AlertSettings(_Strict):
    """Where automations tell the on-call channel: a Slack or Teams incoming webhook."""

    webhook_url: SecretStr | None = Field(
        None, description="Incoming-webhook URL; a secret (its path is the credential). Unset: no alerts.")
    block_name: str = Field("socfeeds-alerts", pattern=r"^[a-z0-9-]{1,64}$",
                            description="Prefect notification block that holds the URL.")

    @field_validator("webhook_url")
    @classmethod
    def _https(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not is_https_or_loopback(value.get_secret_value()):
            raise ValueError("must be an https:// URL (http only for a 127.0.0.1 receiver); "
                             "the value is not shown because it is a secret")
        return value


class BacklogThresholds(_Strict):
    max_visible_messages: int = Field(1000, ge=0, description="Warn above this many waiting messages.")
    max_dlq_messages: int = Field(0, ge=0, description="Fail above this many dead-lettered messages.")
    max_oldest_message_age_seconds: int = Field(
        3600, ge=60, description="Fail when the oldest waiting message is older (CloudWatch AWS/SQS "
        "ApproximateAgeOfOldestMessage): a stalled consumer shows by age, not count.")
    consumption_window_seconds: int = Field(
        3600, ge=300, description="No NumberOfMessagesDeleted over this window while messages wait = consumer stopped.")


def default_s3_feeds() -> dict[str, S3Feed]:
    return {
        "cloudtrail": S3Feed(
            log_type="Audit Logs",
            bucket="cp-cloudtraillogs-{account_id}-do-not-delete",
            queue="cp-cloudtrail-xsiam",
            retention_days=730,
            versioning=True,
            source=CloudTrailSource(),
        ),
        "vpc-flow-logs": S3Feed(
            log_type="Flow Logs",
            bucket="cloud-platform-flow-logs-{account_id}",
            queue="cp-vpc-flow-logs-xsiam",
            retention_days=90,
            source=FlowLogSource(),
        ),
        "route53-resolver": S3Feed(
            log_type="Route 53",
            bucket="cloud-platform-route53-resolver-query-logs-{account_id}",
            queue="cp-route53-resolver-xsiam",
            retention_days=90,
            source=ResolverQueryLogSource(),
        ),
        "application-logs": S3Feed(
            log_type="Generic",
            bucket="cloud-platform-application-logs-{account_id}",
            queue="cp-application-logs-xsiam",
            retention_days=XSIAM_MIN_RETENTION_DAYS,
            source=FluentBitSource(),
        ),
        "modsecurity": S3Feed(  # the ingress controllers' WAF audit logs: prod and non-prod buckets, one queue
            log_type="Generic",
            bucket="cloud-platform-modsec-logs-{account_id}",
            additional_buckets=("cloud-platform-non-prod-modsec-logs-{account_id}",),
            queue="cp-modsec-logs-xsiam",
            retention_days="keep",  # the platform's buckets keep these; socfeeds adds no expiry
        ),
        "cloudfront": S3Feed(  # the platform's bucket (account/s3.tf); its distributions' access logs
            log_type="CloudFront",
            bucket="cloud-platform-cloudfront-cortex-logs-bucket",
            queue="cp-cloudfront-logs-xsiam",
            retention_days=90,
            source=CloudFrontSource(),
        ),
        "rds": S3Feed(  # log groups of RDS instances that opt in (rds-instance module: opt_in_xsiam_logging)
            log_type="RDS",
            bucket="cloud-platform-rds-logs-{account_id}",
            queue="cp-rds-logs-xsiam",
            retention_days=90,
            versioning=True,  # as the platform's rds_logs_to_cortex_s3 bucket
            source=RdsLogsSource(),
        ),
    }


@cache
def known_regions() -> frozenset[str]:
    session = boto3.session.Session()
    return frozenset(
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("s3", partition_name=partition)
    )


def is_valid_bucket_name(name: str) -> bool:
    if not _BUCKET_RE.match(name) or ".." in name or name.startswith("xn--"):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


class Settings(BaseSettings):
    """Everything socfeeds should make true, in one validated object."""

    model_config = SettingsConfigDict(  # inputs stay out of errors: some values are secrets (alerts.webhook_url)
        env_prefix="SOCFEEDS_", env_nested_delimiter="__", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    region: str = "eu-west-2"
    account_id: str = Field(pattern=r"^\d{12}$", description="The AWS account the feeds live in.")
    account_name: str = Field("", description="The account's name, for {account_name} in resource names; default: "
                              "the account id. Set per account by the fleet.")
    fleet: FleetSettings | None = Field(None, description="Several accounts from one settings file: the target "
                                        "role to assume and the accounts (socfeeds.fleet). Unset: this account only.")
    endpoint_url: str | None = Field(None, description="Only for an emulator; unset for real AWS.")
    aws_credentials_block: str | None = Field(None, description="prefect-aws AwsCredentials block name.")
    omit_conditional_denies: bool = Field(
        False,
        description="Emulator only: leave condition-scoped Deny statements (TLS-only) out of bucket "
        "policies, because moto enforces them with their conditions ignored.",
    )
    managed_by: ManagedBy = Field(
        "socfeeds", description="Default owner of every feed's resources (each feed may say otherwise): terraform "
        "means provision only reports, as Terraform-shaped changes, and never writes.")
    kms_key_policies: Literal["merge", "report"] = Field(
        "merge", description="merge: provision adds the key-policy statements AWS services need (Sid prefix "
        "Socfeeds) to each feed key, keeping every other statement. report: the platform owns the keys; provision "
        "changes no key policy and lists the statements to add. verify checks them either way.")
    vpc_id: str | None = Field(None, description="The platform VPC, for flow logs and resolver logging.")
    eks_cluster_name: str | None = Field(None, description="The platform's EKS cluster (never created here).")
    s3_feeds: dict[str, S3Feed] = Field(default_factory=default_s3_feeds)
    firehose_feeds: dict[str, FirehoseFeed] = Field(
        default_factory=lambda: {"eks-control-plane": FirehoseFeed()})
    xsiam: XsiamTenant = XsiamTenant()
    reader: ReaderSettings = ReaderSettings()
    canary: CanarySettings = CanarySettings()
    audit: AuditSettings = AuditSettings()
    rotation: RotationPolicy = RotationPolicy()
    backlog: BacklogThresholds = BacklogThresholds()
    alerts: AlertSettings = AlertSettings()
    max_concurrency: int = Field(16, ge=1, le=64, description="Sizes the AWS connection pool (2x); flows run up to "
                                 "16 tasks at once, fixed in flows/_common.concurrent_tasks.")
    xsiam_api_key: SecretStr | None = None
    delivering_feeds: dict[str, S3Feed] = Field(
        default_factory=dict, exclude=True, description="Set by validation, never in a file: the s3_feeds whose "
        "bucket another account owns (bucket_account); here only their source is wired.")
    _declared: dict[str, Any] = PrivateAttr(default_factory=dict)  # as written, placeholders unfilled: for targets

    @model_validator(mode="wrap")
    @classmethod
    def _keep_declared(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        """Keep the values as declared, so each fleet target can be rendered from them with its own names."""
        settings = handler(data)
        if not isinstance(data, dict):  # an instance given back to validation keeps what it has
            return settings
        settings._declared = copy.deepcopy(data)
        return settings

    @property
    def declared(self) -> dict[str, Any]:
        return copy.deepcopy(self._declared)

    def s3_feed(self, name: str) -> S3Feed:
        """An S3 feed by name, whether its bucket is this account's or another's."""
        return self.s3_feeds.get(name) or self.delivering_feeds[name]

    @property
    def feed_names(self) -> list[str]:
        """Every feed this account has: its S3 feeds, those delivering into another account's bucket, Firehose."""
        return [*self.s3_feeds, *self.delivering_feeds, *self.firehose_feeds]

    def feed(self, name: str) -> S3Feed | FirehoseFeed:
        """A feed of any kind by name."""
        return self.firehose_feeds[name] if name in self.firehose_feeds else self.s3_feed(name)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        settings_file = os.environ.get(SETTINGS_FILE_ENV)
        if settings_file:
            path = Path(settings_file)
            if not path.is_file():
                raise ValueError(f"{SETTINGS_FILE_ENV}={settings_file!r}: no such settings file")
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(JsonConfigSettingsSource(settings_cls, json_file=path))
        return tuple(sources)

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value not in known_regions():
            raise ValueError(f"unknown AWS region {value!r}")
        return value

    @field_validator("vpc_id")
    @classmethod
    def _vpc_id(cls, value: str | None) -> str | None:
        if value is not None and not _VPC_RE.match(value):
            raise ValueError(f"{value!r} is not a VPC id (vpc-0123abcd...)")
        return value

    @model_validator(mode="after")
    def _render_and_check_feeds(self) -> Settings:
        rendered = {name: self._render(name, feed) for name, feed in self.s3_feeds.items()}
        delivering = {name: feed for name, feed in rendered.items()
                      if feed.bucket_account not in {None, self.account_id}}
        object.__setattr__(self, "delivering_feeds", {**self.delivering_feeds, **delivering})
        object.__setattr__(self, "s3_feeds", {name: feed for name, feed in rendered.items() if name not in delivering})
        firehose = {name: self._render_firehose(name, feed) for name, feed in self.firehose_feeds.items()}
        object.__setattr__(self, "firehose_feeds", firehose)
        clash = sorted(set(rendered) & set(firehose))
        if clash:
            raise ValueError(f"feed names must be unique across s3_feeds and firehose_feeds: {clash}")
        _one_owner_each(rendered)
        return self

    @property
    def _placeholders(self) -> dict[str, str]:
        name = self.account_name or self.account_id
        return {"account_id": self.account_id, "region": self.region, "account_name": name}

    def _render_firehose(self, name: str, feed: FirehoseFeed) -> FirehoseFeed:
        where = f"firehose_feeds.{name}"
        if not _FEED_NAME_RE.match(name):
            raise ValueError(f"{where}: feed name {name!r} must be lowercase letters, digits and '-'")
        cluster = feed.cluster_name or self.eks_cluster_name
        if not cluster or not re.match(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$", cluster):
            raise ValueError(f"{where}.cluster_name: {cluster!r} is not an EKS cluster name "
                             "(set it, or the top-level eks_cluster_name)")
        values = {**self._placeholders, "cluster": cluster}
        rendered = {field: str(getattr(feed, field)).format(**values) for field in (
            "delivery_stream", "error_bucket", "subscription_filter", "logs_role", "firehose_role")}
        if not is_valid_bucket_name(rendered["error_bucket"]):
            raise ValueError(f"{where}.error_bucket: {rendered['error_bucket']!r} is not a valid S3 bucket name")
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", rendered["delivery_stream"]):
            raise ValueError(f"{where}.delivery_stream: {rendered['delivery_stream']!r} is not a stream name")
        for role in ("logs_role", "firehose_role"):
            if not _IAM_NAME_RE.match(rendered[role]):
                raise ValueError(f"{where}.{role}: {rendered[role]!r} is not an IAM role name")
        url = feed.endpoint_url or self.xsiam.firehose_url
        if url is None and self.xsiam.firehose_url_parameter is None:
            raise ValueError(f"{where}.endpoint_url: no Firehose URL (set xsiam.firehose_url, "
                             "xsiam.firehose_url_parameter or this field)")
        if url is not None:
            check_endpoint_url(f"{where}.endpoint_url", url)
        return feed.model_copy(update={"cluster_name": cluster, "endpoint_url": url,
                                       "managed_by": feed.managed_by or self.managed_by, **rendered})

    def _render(self, name: str, feed: S3Feed) -> S3Feed:
        where = f"s3_feeds.{name}"
        if not _FEED_NAME_RE.match(name):
            raise ValueError(f"{where}: feed name {name!r} must be lowercase letters, digits and '-'")
        values = self._placeholders
        bucket = feed.bucket.format(**values)
        additional = tuple(b.format(**values) for b in feed.additional_buckets)
        queue = feed.queue.format(**values)
        dlq = feed.dlq_name.format(**values)
        if not is_valid_bucket_name(bucket):
            raise ValueError(f"{where}.bucket: {bucket!r} is not a valid S3 bucket name")
        for index, extra in enumerate(additional):
            if not is_valid_bucket_name(extra):
                raise ValueError(f"{where}.additional_buckets[{index}]: {extra!r} is not a valid S3 bucket name")
        if len({bucket, *additional}) != 1 + len(additional):
            raise ValueError(f"{where}.additional_buckets: {[bucket, *additional]} names a bucket twice")
        for field, value in (("queue", queue), ("dlq", dlq)):
            if not _QUEUE_RE.match(value):
                raise ValueError(
                    f"{where}.{field}: {value!r} is not a valid standard SQS queue name "
                    "(1-80 letters, digits, '-' or '_'; S3 cannot notify FIFO queues)"
                )
        source = feed.source
        if isinstance(source, FlowLogSource | ResolverQueryLogSource):
            vpc_id = source.vpc_id or self.vpc_id
            if vpc_id is None:
                raise ValueError(f"{where}.source.vpc_id: required (or set the top-level vpc_id)")
            if not _VPC_RE.match(vpc_id):
                raise ValueError(f"{where}.source.vpc_id: {vpc_id!r} is not a VPC id")
            source = source.model_copy(update={"vpc_id": vpc_id})
        return feed.model_copy(update={"bucket": bucket, "additional_buckets": additional, "queue": queue, "dlq": dlq,
                                       "source": source, "managed_by": feed.managed_by or self.managed_by})

    def select_feeds(self, names: list[str] | None) -> list[str]:
        """The feed names a run covers; unknown names are refused with the list of known ones."""
        known = self.feed_names
        if names is None:
            return known
        if not names:
            raise SettingsError("feeds: an empty list selects no feed, so the run would check nothing; leave feeds out "
                             f"for every feed, or name some of {sorted(known)}")
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise SettingsError(f"feeds: unknown feed(s) {unknown}; known: {sorted(known)}")
        return [name for name in known if name in names]


def _one_owner_each(feeds: dict[str, S3Feed]) -> None:
    """A queue or bucket belongs to one feed: two feeds sharing one would rewrite each other's queue policy and
    notification forever. Several buckets into one queue are one feed with additional_buckets."""
    for kind in ("queue", "bucket"):
        seen: dict[str, str] = {}
        for feed_name, feed in feeds.items():
            for name in ([feed.queue] if kind == "queue" else feed.buckets):
                if name in seen:
                    raise ValueError(f"s3_feeds.{feed_name}: {kind} {name!r} belongs to feed {seen[name]!r} already; "
                                     "declare one feed and list the other buckets in its additional_buckets")
                seen[name] = feed_name


def is_https_or_loopback(url: str) -> bool:
    """Production endpoints are HTTPS; plain HTTP only reaches a stand-in on this machine."""
    parsed = urlparse(url)
    return bool(parsed.hostname) and (parsed.scheme == "https" or (parsed.scheme == "http" and is_loopback(url)))


def is_loopback(url: str) -> bool:
    return urlparse(url).hostname in {"127.0.0.1", "localhost", "::1"}


def check_endpoint_url(field: str, url: str) -> str:
    """Firehose delivers only over HTTPS; plain HTTP is accepted for a loopback emulator alone."""
    if not is_https_or_loopback(url):
        raise ValueError(f"{field}: {url!r} must be an https:// URL (http only for a 127.0.0.1 stand-in)")
    return url


def canary_key_prefix(feed_name: str) -> str:
    """Where the canary writes a feed's synthetic objects: apart from real logs, so the writer can touch nothing
    else and a one-day lifecycle rule can expire them (current and noncurrent versions)."""
    return f"{CANARY_KEY_PREFIX}{feed_name}/"


def log_key_prefix(feed: S3Feed, account_id: str) -> str:
    """Where the feed's source writes objects; a notification filter must not hide these keys."""
    if isinstance(feed.source, FluentBitSource | RdsLogsSource):
        return feed.source.key_prefix.strip("/") + "/"
    if feed.source is None:
        return ""
    return "AWSLogs/" if feed.source_accounts or feed.organization_id else f"AWSLogs/{account_id}/"


class SettingsError(ValueError, OnCallError):
    """Settings that cannot be used: every invalid field, where it came from, and the nearest valid name."""


def load_settings() -> Settings:
    """Settings from the environment and the settings file, or a SettingsError an on-call engineer can act on:
    each invalid field named (with the file it came from), no library links, a typo answered with the nearest
    valid field name."""
    try:
        return Settings()
    except ValidationError as invalid:
        source = os.environ.get(SETTINGS_FILE_ENV)
        where = f"settings file {source}" if source else "SOCFEEDS_* environment variables"
        raise SettingsError(f"{len(invalid.errors())} invalid setting(s) in {where} (or the environment):\n"
                            + describe_errors(invalid)) from None


def describe_errors(invalid: ValidationError) -> str:
    """One line per invalid field: its dotted name and what is wrong, without pydantic's links."""
    return "\n".join(f"- {_explain(error)}" for error in invalid.errors(include_url=False))


def _explain(error: Any) -> str:
    path = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        model: type[BaseModel] | None = Settings
        for part in error["loc"][:-1]:  # walk to the model the unknown name was given in
            field = model.model_fields.get(str(part)) if model else None
            annotation = getattr(field, "annotation", None)
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        names = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(error["loc"][-1]), names, n=1)
        return f"{path}: not a setting" + (f"; did you mean {'.'.join([*map(str, error['loc'][:-1]), close[0]])}?"
                                           if close else "")
    return f"{path}: {message}" if path else message
