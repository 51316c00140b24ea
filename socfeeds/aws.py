"""The one way socfeeds talks to AWS: a client factory built from settings.

Region, endpoint and retries come from settings only, so the same code runs against real AWS and
against the local emulator. One factory serves a whole run: boto3 clients are thread-safe and are
shared by concurrent tasks; the session is only used here, under a lock.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
from botocore.exceptions import ClientError
from botocore.loaders import Loader

from socfeeds.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_cloudtrail import CloudTrailClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_eks import EKSClient
    from mypy_boto3_firehose import FirehoseClient
    from mypy_boto3_iam import IAMClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_organizations import OrganizationsClient
    from mypy_boto3_route53resolver import Route53ResolverClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_sts import STSClient

MAX_ATTEMPTS = 8  # adaptive retries: IAM's and STS's per-account quotas cannot be raised, so back off and wait
_assumed: dict[tuple[str, str, str | None], boto3.session.Session] = {}
_assumed_lock = threading.Lock()


class _SearchPaths(list[str]):
    """A shared loader's folders: each boto3 Session appends its data folder to its loader's; once is enough."""

    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


def _shared_models() -> Loader:
    loader = cast(Loader, botocore.session.Session().get_component("data_loader"))  # AWS_DATA_PATH honoured
    loader._search_paths = _SearchPaths(loader.search_paths)  # type: ignore[attr-defined]
    return loader


_models = _shared_models()


def modelled_session() -> botocore.session.Session:
    """A botocore session that shares this process's loaded service models: a new session otherwise reads and
    parses every service's JSON model again (~20 ms of CPU a client; a fleet run makes a session per account)."""
    core = botocore.session.Session()
    core.register_component("data_loader", _models)
    return core


def new_session(access_key_id: str | None = None, secret_access_key: str | None = None,
                session_token: str | None = None, region: str | None = None) -> boto3.session.Session:
    """A boto3 session with these credentials (None: boto3's chain) on this process's loaded service models."""
    return boto3.session.Session(access_key_id, secret_access_key, session_token, region_name=region,
                                 botocore_session=modelled_session())


def session_name(*parts: str) -> str:
    """An STS session name (2-64 of [\\w+=,.@-]) that says which flow and run made each call in CloudTrail."""
    return re.sub(r"[^\w+=,.@-]", "-", "-".join(["socfeeds", *parts]))[:64]


def assumed_session(source: boto3.session.Session, role_arn: str, region: str, endpoint_url: str | None,
                    external_id: str | None, name: str, duration_s: int) -> boto3.session.Session:
    """A session acting as `role_arn`, its credentials fetched from the region's own STS endpoint and renewed by
    botocore shortly before they expire; one per role and region in a process, so a run assumes each role once,
    not once per task or client."""
    key = (role_arn, region, endpoint_url)
    with _assumed_lock:
        if key not in _assumed:
            def sts_client(service: str, **credentials: Any) -> Any:
                return cast(Any, new_session()).client(service, region_name=region, endpoint_url=endpoint_url,
                                                       **credentials)

            extra: dict[str, Any] = {"RoleSessionName": name, "DurationSeconds": duration_s}
            if external_id:
                extra["ExternalId"] = external_id
            fetcher = AssumeRoleCredentialFetcher(sts_client, source.get_credentials(), role_arn, extra_args=extra)
            core = modelled_session()
            core._credentials = DeferredRefreshableCredentials(  # type: ignore[attr-defined]
                refresh_using=fetcher.fetch_credentials, method="assume-role")
            _assumed[key] = boto3.session.Session(botocore_session=core, region_name=region)
        return _assumed[key]


def api_limit_name(account_id: str, service: str) -> str:
    """The Prefect global rate limit that paces one account's calls to one AWS service across the work pool."""
    return f"aws-{account_id}-{service}"


LEASE_SECONDS = 1.0  # how long a process may keep leased slots unused


def lease_size(calls_per_second: float) -> int:
    """Slots a process takes from a limit at once: a quarter second's calls, so about four Prefect round trips a
    second per busy account and service, whatever the AWS call rate."""
    return max(1, math.ceil(calls_per_second / 4))


class PoolRateLimits:
    """Calls per second per account and AWS service across the whole work pool (IAM's and STS's per-account
    throttles cannot be raised): before each call, a botocore hook takes a slot of the Prefect global rate limit
    `aws-<account>-<service>` (its slots decay at the rate). Slots are leased a few at a time and kept in this
    process for at most a second (a lease is a quarter second's calls: a process bursts by at most that), so most
    calls wait on nothing and none on the Prefect API. A limit not created yet does not stop the call (each fleet
    run creates them: flows._fleet.ensure_api_limits)."""

    def __init__(self, calls_per_second: Mapping[str, float]) -> None:
        self.calls_per_second = dict(calls_per_second)
        self.leases: dict[str, int] = {}  # limit name -> Prefect round trips so far (tests, the benchmark)
        self._held: dict[str, tuple[int, float]] = {}  # limit name -> (slots left, usable until, monotonic)
        self._lock = threading.Lock()

    def take(self, account_id: str, service: str) -> None:
        """One slot for one call, waiting for the pool's limit when this process holds none."""
        rate = self.calls_per_second.get(service)
        if rate is None:
            return
        name, now = api_limit_name(account_id, service), time.monotonic()
        with self._lock:
            left, until = self._held.get(name, (0, 0.0))
            if left > 0 and now < until:
                self._held[name] = (left - 1, until)
                return
        from prefect.concurrency.sync import rate_limit  # only fleet runs with limits need Prefect here

        size = lease_size(rate)
        rate_limit(name, occupy=size)  # blocks until the pool's limit has `size` slots
        with self._lock:
            self.leases[name] = self.leases.get(name, 0) + 1
            self._held[name] = (size - 1, time.monotonic() + LEASE_SECONDS)

    def hook(self, account_id: str, service: str) -> Callable[..., None]:
        """The botocore before-call handler of one account's client for `service`."""

        def before_call(**_: Any) -> None:
            self.take(account_id, service)

        return before_call


_pool_limits: dict[tuple[tuple[str, float], ...], PoolRateLimits] = {}


def pool_limits(calls_per_second: Mapping[str, float]) -> PoolRateLimits | None:
    """This process's limiter for these rates (one per process, shared by every thread and client); None: no rates."""
    if not calls_per_second:
        return None
    key = tuple(sorted(calls_per_second.items()))
    with _assumed_lock:
        return _pool_limits.setdefault(key, PoolRateLimits(calls_per_second))


class AwsClients:
    """Lazily created, cached boto3 clients for one region and endpoint; with `limits`, each call of
    `account_id` first takes a slot of the pool's rate limit for its service."""

    def __init__(self, session: boto3.session.Session, region: str, endpoint_url: str | None = None,
                 max_pool_connections: int = 32, limits: PoolRateLimits | None = None, account_id: str = "") -> None:
        self.session = session
        self.region = region
        self.endpoint_url = endpoint_url
        self.limits, self.account_id = limits, account_id
        self._max_pool_connections = max_pool_connections
        self._config = Config(
            region_name=region,
            retries={"mode": "adaptive", "max_attempts": MAX_ATTEMPTS},  # backs off, and slows, on throttling
            max_pool_connections=max_pool_connections,
            connect_timeout=5,
            read_timeout=30,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, session: boto3.session.Session | None = None) -> AwsClients:
        """Credentials: an explicit session, else the named prefect-aws block, else boto3's chain."""
        if session is None and settings.aws_credentials_block:
            from prefect_aws import AwsCredentials

            block = cast(AwsCredentials, AwsCredentials.load(settings.aws_credentials_block))
            session = block.get_boto3_session()
        return cls(session or new_session(), settings.region, settings.endpoint_url,
                   max_pool_connections=max(10, settings.max_concurrency * 2))

    def assume(self, role_arn: str, region: str, external_id: str | None, name: str, duration_s: int,
               limits: PoolRateLimits | None = None) -> AwsClients:
        """Clients acting as `role_arn` in `region` (a fleet target), from these clients' own credentials; with
        `limits`, paced per service by the pool's limits of the role's account."""
        session = assumed_session(self.session, role_arn, region, self.endpoint_url, external_id, name, duration_s)
        return AwsClients(session, region, self.endpoint_url, self._max_pool_connections, limits,
                          account_id=role_arn.split(":")[4])

    def client(self, service: str) -> Any:
        made = self._clients.get(service)  # every call of every check asks: most find it made, without the lock
        if made is not None:
            return made
        with self._lock:
            if service not in self._clients:
                client = cast(Any, self.session).client(
                    service, region_name=self.region, endpoint_url=self.endpoint_url, config=self._config
                )
                if self.limits is not None:  # this client's own emitter: only its calls
                    client.meta.events.register("before-call", self.limits.hook(self.account_id, service))
                self._clients[service] = client
            return self._clients[service]

    @property
    def s3(self) -> S3Client:
        return cast("S3Client", self.client("s3"))

    @property
    def sqs(self) -> SQSClient:
        return cast("SQSClient", self.client("sqs"))

    @property
    def iam(self) -> IAMClient:
        return cast("IAMClient", self.client("iam"))

    @property
    def sts(self) -> STSClient:
        return cast("STSClient", self.client("sts"))

    @property
    def cloudtrail(self) -> CloudTrailClient:
        return cast("CloudTrailClient", self.client("cloudtrail"))

    @property
    def ec2(self) -> EC2Client:
        return cast("EC2Client", self.client("ec2"))

    @property
    def resolver(self) -> Route53ResolverClient:
        return cast("Route53ResolverClient", self.client("route53resolver"))

    @property
    def eks(self) -> EKSClient:
        return cast("EKSClient", self.client("eks"))

    @property
    def logs(self) -> CloudWatchLogsClient:
        return cast("CloudWatchLogsClient", self.client("logs"))

    @property
    def cloudwatch(self) -> CloudWatchClient:
        return cast("CloudWatchClient", self.client("cloudwatch"))

    @property
    def firehose(self) -> FirehoseClient:
        return cast("FirehoseClient", self.client("firehose"))

    @property
    def secrets(self) -> SecretsManagerClient:
        return cast("SecretsManagerClient", self.client("secretsmanager"))

    @property
    def kms(self) -> KMSClient:
        return cast("KMSClient", self.client("kms"))

    @property
    def organizations(self) -> OrganizationsClient:
        return cast("OrganizationsClient", self.client("organizations"))

    @property
    def ssm(self) -> SSMClient:
        return cast("SSMClient", self.client("ssm"))


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def absent_on(codes: set[str], call: Any, *args: Any, **kwargs: Any) -> Any:
    """Call and return its answer, or None when AWS says the thing does not exist."""
    try:
        return call(*args, **kwargs)
    except ClientError as error:
        if error_code(error) in codes:
            return None
        raise


def until_accepted(call: Any, arguments: dict[str, Any], codes: set[str], deadline_s: float = 90) -> Any:
    """Retry a call AWS refuses only until a new IAM role propagates (seconds, in real AWS)."""
    deadline, pause = time.monotonic() + deadline_s, 1.0
    while True:
        try:
            return call(**arguments)
        except ClientError as error:
            if error_code(error) not in codes or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 15.0)
