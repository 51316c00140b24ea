"""The desired state of every feed, validated before any AWS call.

Values come from `SOCFEEDS_*` environment variables (nested with `__`) and from an optional
settings file named by `SOCFEEDS_SETTINGS_FILE` (JSON or TOML). Names may use the placeholders
`{account_id}` and `{region}`, so the production defaults can follow the platform's naming.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

import boto3
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

SETTINGS_FILE_ENV = "SOCFEEDS_SETTINGS_FILE"
XSIAM_MIN_RETENTION_DAYS = 7

LogType = Literal["Audit Logs", "Flow Logs", "Route 53", "Generic"]

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_VPC_RE = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_KMS_ARN_RE = re.compile(r"^arn:aws(-cn|-us-gov)?:kms:[a-z0-9-]+:\d{12}:(key/[0-9a-f-]{36}|alias/[A-Za-z0-9/_-]+)$")
_FEED_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_IAM_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$")
_IAM_PATH_RE = re.compile(r"^/([\x21-\x7e]*/)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CloudTrailSource(_Strict):
    """A multi-region trail with log-file validation, writing to the feed's bucket."""

    kind: Literal["cloudtrail"] = "cloudtrail"
    trail_name: str = Field("cloud-platform-cloudtrail", min_length=3, max_length=128)


class FlowLogSource(_Strict):
    """A VPC flow log to S3 in the 26-field format XSIAM parses."""

    kind: Literal["vpc_flow_log"] = "vpc_flow_log"
    vpc_id: str | None = Field(None, description="Defaults to the top-level vpc_id.")
    aggregation_seconds: Literal[60, 600] = 600


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


Source = Annotated[
    CloudTrailSource | FlowLogSource | ResolverQueryLogSource | FluentBitSource, Field(discriminator="kind")
]


class S3Feed(_Strict):
    """One S3 -> SQS feed that XSIAM's Amazon S3 data source reads."""

    log_type: LogType
    bucket: str
    queue: str
    dlq: str | None = Field(None, description="Dead-letter queue; defaults to '<queue>-dlq'.")
    retention_days: int = Field(ge=1, description="Objects expire after this many days.")
    versioning: bool = False
    kms_key_arn: str | None = Field(None, description="SSE-KMS for bucket and queue; SSE-S3/SSE-SQS if unset.")
    max_receive_count: int = Field(4, ge=1, le=1000)
    source: Source | None = None

    @field_validator("kms_key_arn")
    @classmethod
    def _kms_arn(cls, value: str | None) -> str | None:
        if value is not None and not _KMS_ARN_RE.match(value):
            raise ValueError(f"{value!r} is not a KMS key or alias ARN (arn:aws:kms:<region>:<account>:key/<id>)")
        return value

    @property
    def dlq_name(self) -> str:
        return self.dlq or f"{self.queue}-dlq"


class ReaderSettings(_Strict):
    """The identity XSIAM reads the feeds with."""

    mode: Literal["user"] = "user"
    user_name: str = Field("cortex_xsiam_user", pattern=_IAM_NAME_RE.pattern)
    path: str = Field("/cloud-platform/soc/", pattern=_IAM_PATH_RE.pattern, max_length=512)
    policy_name: str = Field("socfeeds-xsiam-reader", pattern=r"^[\w+=,.@-]{1,128}$")
    secret_name: str = Field("socfeeds/xsiam-reader-access-key", pattern=r"^[A-Za-z0-9/_+=.@-]{1,512}$",
                             description="Secrets Manager secret holding the reader's current access key.")


class BacklogThresholds(_Strict):
    max_visible_messages: int = Field(1000, ge=0, description="Warn above this many waiting messages.")
    max_dlq_messages: int = Field(0, ge=0, description="Fail above this many dead-lettered messages.")


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

    model_config = SettingsConfigDict(
        env_prefix="SOCFEEDS_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    region: str = "eu-west-2"
    account_id: str = Field(pattern=r"^\d{12}$", description="The AWS account the feeds live in.")
    endpoint_url: str | None = Field(None, description="Only for an emulator; unset for real AWS.")
    aws_credentials_block: str | None = Field(None, description="prefect-aws AwsCredentials block name.")
    omit_conditional_denies: bool = Field(
        False,
        description="Emulator only: leave condition-scoped Deny statements (TLS-only) out of bucket "
        "policies, because moto enforces them with their conditions ignored.",
    )
    vpc_id: str | None = Field(None, description="The platform VPC, for flow logs and resolver logging.")
    s3_feeds: dict[str, S3Feed] = Field(default_factory=default_s3_feeds)
    reader: ReaderSettings = ReaderSettings()
    backlog: BacklogThresholds = BacklogThresholds()
    max_concurrency: int = Field(16, ge=1, le=64, description="AWS calls in flight per flow run.")
    xsiam_api_key: SecretStr | None = None

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
        object.__setattr__(self, "s3_feeds", rendered)
        return self

    def _render(self, name: str, feed: S3Feed) -> S3Feed:
        where = f"s3_feeds.{name}"
        if not _FEED_NAME_RE.match(name):
            raise ValueError(f"{where}: feed name {name!r} must be lowercase letters, digits and '-'")
        values = {"account_id": self.account_id, "region": self.region}
        bucket = feed.bucket.format(**values)
        queue = feed.queue.format(**values)
        dlq = feed.dlq_name.format(**values)
        if not is_valid_bucket_name(bucket):
            raise ValueError(f"{where}.bucket: {bucket!r} is not a valid S3 bucket name")
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
        return feed.model_copy(update={"bucket": bucket, "queue": queue, "dlq": dlq, "source": source})

    def select_feeds(self, names: list[str] | None) -> dict[str, S3Feed]:
        """The feeds a run covers; unknown names are refused with the list of known ones."""
        if names is None:
            return dict(self.s3_feeds)
        unknown = sorted(set(names) - set(self.s3_feeds))
        if unknown:
            raise ValueError(f"feeds: unknown feed(s) {unknown}; known: {sorted(self.s3_feeds)}")
        return {name: self.s3_feeds[name] for name in names}


def log_key_prefix(feed: S3Feed, account_id: str) -> str:
    """Where the feed's source writes objects; a notification filter must not hide these keys."""
    if isinstance(feed.source, FluentBitSource):
        return feed.source.key_prefix.strip("/") + "/"
    if feed.source is None:
        return ""
    return f"AWSLogs/{account_id}/"
