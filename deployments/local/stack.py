"""The embedded local stack: moto server as AWS (IAM auth on), the platform's seed, a Prefect server.

Flows reach it exactly as they reach a real account: a settings file with the endpoint URL, and
an admin access key in the standard AWS environment variables.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import boto3

from deployments.local.processes import (
    ManagedProcess,
    StackError,
    free_port,
    http_ok,
    poll,
    port_is_free,
    python_module,
)
from socfeeds.settings import SETTINGS_FILE_ENV, default_s3_feeds

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "eu-west-2"
ADMIN_USER = "socfeeds-admin"
PLATFORM_VPC_CIDR = "172.20.0.0/16"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}


def loopback_guard_env(endpoint_url: str) -> dict[str, str]:
    """Defence in depth: any boto3 client that forgets its endpoint still talks to the emulator."""
    return {"AWS_ENDPOINT_URL": endpoint_url, "AWS_DEFAULT_REGION": REGION}

    def __repr__(self) -> str:
        return f"Credentials({self.access_key_id}, secret=***)"


class LocalAws:
    """moto server in its own process, with IAM authentication enforced and an admin identity."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.process = ManagedProcess("moto server", python_module("deployments.local.aws_server"),
                                      state_dir / "logs" / "aws.log")
        self.endpoint_url = ""
        self.admin: Credentials | None = None
        self.vpc_id = ""

    def start(self) -> LocalAws:
        import subprocess

        self.process.start(stdout=subprocess.PIPE)
        port = int(self.process.read_ready_line(deadline_s=60)["port"])
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.admin = self._bootstrap_admin()
        self._moto_api("reset-auth", "0")  # from here on every call must be signed by a known key
        self.vpc_id = self._seed_platform()
        return self

    def stop(self) -> None:
        self.process.stop()

    def client(self, service: str, credentials: Credentials | None = None) -> Any:
        creds = credentials or self.admin
        assert creds is not None
        return cast(Any, boto3).client(service, region_name=REGION, endpoint_url=self.endpoint_url,
                            aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key)

    def _moto_api(self, path: str, body: str) -> None:
        request = urllib.request.Request(  # noqa: S310 (our own http://127.0.0.1 endpoint)
            f"{self.endpoint_url}/moto-api/{path}", data=body.encode(),
            headers={"Content-Type": "text/plain"}, method="POST")
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 (our own http://127.0.0.1 endpoint)
            pass

    def _bootstrap_admin(self) -> Credentials:
        """Before auth is switched on, any key works: create the identity the flows will use."""
        iam = self.client("iam", Credentials("bootstrap", "bootstrap"))
        iam.create_user(UserName=ADMIN_USER, Path="/socfeeds/")
        iam.put_user_policy(UserName=ADMIN_USER, PolicyName="admin", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
        return Credentials(key["AccessKeyId"], key["SecretAccessKey"])

    def _seed_platform(self) -> str:
        """What production already has before socfeeds runs: the platform VPC."""
        ec2 = self.client("ec2")
        vpc = ec2.create_vpc(CidrBlock=PLATFORM_VPC_CIDR, TagSpecifications=[{
            "ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "cloud-platform-live"}]}])
        return str(vpc["Vpc"]["VpcId"])


class LocalPrefect:
    """A Prefect server on 127.0.0.1 with SQLite under the state folder, telemetry off."""

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        if not port_is_free(self.port):
            raise StackError(f"port {self.port} is already in use: stop what holds it or choose another port")
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = prefect_env(state_dir, self.api_url)
        self.process = ManagedProcess(
            "prefect server",
            python_module("prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)),
            state_dir / "logs" / "prefect-server.log", env=self.env)

    def start(self, deadline_s: float = 180) -> LocalPrefect:
        self.process.start()

        def healthy() -> bool:
            self.process.check_alive()
            return http_ok(f"{self.api_url}/health")

        poll("prefect server", healthy, deadline_s)
        return self

    def stop(self) -> None:
        self.process.stop()


def prefect_env(state_dir: Path, api_url: str) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(state_dir / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "true",
    }


def local_settings(aws: LocalAws, state_dir: Path, prefix: str = "") -> dict[str, Any]:
    """Settings for the local stack: the production catalog, names optionally prefixed for isolation."""
    feeds: dict[str, Any] = {}
    for name, feed in default_s3_feeds().items():
        entry = feed.model_dump(mode="json", exclude_none=True)
        entry["bucket"] = prefix + entry["bucket"]
        entry["queue"] = prefix + entry["queue"]
        source = entry.get("source", {})
        if "trail_name" in source:
            source["trail_name"] = prefix + source["trail_name"]
        if "config_name" in source:
            source["config_name"] = prefix + source["config_name"]
        if "output_path" in source:
            source["output_path"] = str(state_dir / f"{prefix}fluent-bit-output-s3.conf")
        feeds[name] = entry
    return {
        "region": REGION,
        "account_id": ACCOUNT_ID,
        "endpoint_url": aws.endpoint_url,
        "omit_conditional_denies": True,
        "vpc_id": aws.vpc_id,
        "s3_feeds": feeds,
        "reader": {"user_name": prefix + "cortex_xsiam_user", "policy_name": prefix + "socfeeds-xsiam-reader"},
    }


def write_settings(values: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2))
    return path


class LocalStack:
    """Everything `make demo` needs, started in order and stopped in reverse, even on Ctrl-C."""

    def __init__(self, state_dir: Path, with_prefect: bool = True) -> None:
        self.state_dir = state_dir.resolve()
        self.with_prefect = with_prefect
        self.aws = LocalAws(self.state_dir)
        self.prefect: LocalPrefect | None = None
        self.xsiam: LocalXsiam | None = None
        self.settings_file = self.state_dir / "socfeeds.json"
        self._stack = ExitStack()

    def __enter__(self) -> LocalStack:
        try:
            self.aws.start()
            self._stack.callback(self.aws.stop)
            if self.with_prefect:
                self.prefect = LocalPrefect(self.state_dir).start()
                self._stack.callback(self.prefect.stop)
            write_settings(local_settings(self.aws, self.state_dir), self.settings_file)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stack.close()

    def start_xsiam(self) -> LocalXsiam:
        """Start the XSIAM stand-in collecting every S3 feed (after provisioning: queues must exist)."""
        values = json.loads(self.settings_file.read_text())
        secret_id = bootstrap_reader_key(self.aws, values["reader"])
        self.xsiam = LocalXsiam(self.state_dir, self.aws, feeds=collector_feeds(self.aws, values),
                                reader_secret_id=secret_id).start()
        self._stack.callback(self.xsiam.stop)
        return self.xsiam

    def env(self) -> dict[str, str]:
        """The environment a flow process needs to run against this stack."""
        assert self.aws.admin is not None
        env = {SETTINGS_FILE_ENV: str(self.settings_file), **self.aws.admin.env(),
               **loopback_guard_env(self.aws.endpoint_url)}
        if self.prefect:
            env.update(self.prefect.env)
        return env

    def apply_env(self) -> None:
        os.environ.update(self.env())


class LocalXsiam:
    """The XSIAM stand-in process, given a tenant's secrets through its environment as a tenant would be."""

    def __init__(self, state_dir: Path, aws: LocalAws, feeds: list[dict[str, str]] | None = None,
                 reader_secret_id: str | None = None, reader_key: Credentials | None = None,
                 reload_seconds: float | None = None) -> None:
        self.folder = state_dir / "xsiam"
        self.firehose_token = secrets.token_urlsafe(32)
        self.api_key = secrets.token_urlsafe(48)
        self.api_key_id = "1"
        env = {"XSIAM_FIREHOSE_TOKEN": self.firehose_token, "XSIAM_API_KEY": self.api_key,
               "XSIAM_API_KEY_ID": self.api_key_id}
        argv = python_module("deployments.xsiam.server", "--state-dir", str(self.folder))
        if feeds is not None:
            assert aws.admin is not None
            config = {"region": REGION, "endpoint_url": aws.endpoint_url, "feeds": feeds,
                      "reader": {"secret_id": reader_secret_id} if reader_secret_id else {},
                      "reload_seconds": reload_seconds}
            config_path = self.folder / "collector.json"
            write_settings(config, config_path)
            argv += ["--config", str(config_path)]
            env.update(aws.admin.env())  # the operator's identity, only to read the reader's secret
            env.update(loopback_guard_env(aws.endpoint_url))
            if reader_key:
                env.update({"XSIAM_READER_ACCESS_KEY_ID": reader_key.access_key_id,
                            "XSIAM_READER_SECRET_ACCESS_KEY": reader_key.secret_access_key})
        self.process = ManagedProcess("xsiam stand-in", argv, state_dir / "logs" / "xsiam.log", env=env)
        self.url = ""

    def start(self) -> LocalXsiam:
        import subprocess

        self.process.start(stdout=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.process.read_ready_line(deadline_s=60)['port']}"
        return self

    def stop(self) -> None:
        self.process.stop()

    @property
    def firehose_url(self) -> str:
        return f"{self.url}/logs/v1/aws"

    @property
    def api_url(self) -> str:
        return f"{self.url}/public_api/v1"

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method,  # noqa: S310 (http://127.0.0.1)
                                         data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (http://127.0.0.1)
            return json.loads(answer.read())

    def events(self, dataset: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "/standin/events" + (f"?dataset={dataset}" if dataset else "")))

    def failures(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/standin/failures"))

    def reload(self) -> str:
        """What an operator does after pasting a new key: the collector takes the secret's current key."""
        return str(self._call("POST", "/standin/reload")["key_id"])


def bootstrap_reader_key(aws: LocalAws, reader: dict[str, str]) -> str:
    """Production's starting point: a reader key made by hand, kept where the rotation flow keeps it."""
    from socfeeds.settings import ReaderSettings

    settings = ReaderSettings(**reader)
    secrets_manager = aws.client("secretsmanager")
    try:
        secrets_manager.describe_secret(SecretId=settings.secret_name)
    except secrets_manager.exceptions.ResourceNotFoundException:
        key = aws.client("iam").create_access_key(UserName=settings.user_name)["AccessKey"]
        secrets_manager.create_secret(Name=settings.secret_name, SecretString=json.dumps(
            {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}))
    return settings.secret_name


def collector_feeds(aws: LocalAws, settings_values: dict[str, Any]) -> list[dict[str, str]]:
    """The stand-in's data sources for every S3 feed in a settings file's catalog (queues must exist)."""
    sqs = aws.client("sqs")
    return [{"name": name, "queue_url": sqs.get_queue_url(QueueName=feed["queue"])["QueueUrl"],
             "log_type": feed["log_type"]} for name, feed in settings_values["s3_feeds"].items()]
