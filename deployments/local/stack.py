"""The embedded local stack: moto server as AWS (IAM auth on), the platform's seed, a Prefect server.

Flows reach it exactly as they reach a real account: a settings file with the endpoint URL, and
an admin access key in the standard AWS environment variables.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import boto3

from deployments.local.chat import ChatInbox
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

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

    from deployments.local.fleet import LocalFleet

ACCOUNT_ID = "123456789012"  # moto's default account
REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-2"
ADMIN_USER = "socfeeds-admin"
PLATFORM_VPC_CIDR = "172.20.0.0/16"
PLATFORM_CLUSTER = "live"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str = ""  # an assumed role's session (a fleet account reached through its role)

    def env(self) -> dict[str, str]:
        env = {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
        return {**env, "AWS_SESSION_TOKEN": self.session_token} if self.session_token else env

    def __repr__(self) -> str:
        return f"Credentials({self.access_key_id}, secret=***)"


def loopback_guard_env(endpoint_url: str) -> dict[str, str]:
    """Defence in depth: any boto3 client that forgets its endpoint still talks to the emulator."""
    return {"AWS_ENDPOINT_URL": endpoint_url, "AWS_DEFAULT_REGION": REGION}


class LocalAws:
    """moto server in its own process, with IAM authentication enforced and an admin identity."""

    def __init__(self, state_dir: Path, time_scale: float = 1.0) -> None:
        """time_scale < 1 shortens the emulated Firehose retry window (tests), see firehose_fidelity."""
        self.state_dir = state_dir
        self.process = ManagedProcess("moto server", python_module("deployments.local.aws_server"),
                                      state_dir / "logs" / "aws.log",
                                      env={"SOCFEEDS_EMULATOR_TIME_SCALE": str(time_scale)})
        self.endpoint_url = ""
        self.admin: Credentials | None = None
        self.vpc_id = ""
        self.subnet_ids: list[str] = []
        self.before_auth: list[Callable[[], None]] = []  # e.g. a fleet's other accounts: see deployments/local/fleet

    def start(self) -> LocalAws:
        self.process.start(stdout=subprocess.PIPE)
        port = int(self.process.read_ready_line(deadline_s=60)["port"])
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.admin = self._bootstrap_admin()
        for step in self.before_auth:
            step()
        self._moto_api("reset-auth", "0")  # from here on every call must be signed by a known key
        self.vpc_id = self._seed_platform()
        return self

    def stop(self) -> None:
        self.process.stop()

    def client(self, service: str, credentials: Credentials | None = None) -> Any:
        creds = credentials or self.admin
        assert creds is not None
        return cast(Any, boto3).client(service, region_name=REGION, endpoint_url=self.endpoint_url,
                            aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
                            aws_session_token=creds.session_token or None)

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
        """What production already has before socfeeds runs: the platform VPC and EKS cluster."""
        ec2 = self.client("ec2")
        vpc = ec2.create_vpc(CidrBlock=PLATFORM_VPC_CIDR, TagSpecifications=[{
            "ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "cloud-platform-live"}]}])
        vpc_id = str(vpc["Vpc"]["VpcId"])
        self.subnet_ids = [ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"172.20.{n}.0/24")["Subnet"]["SubnetId"]
                           for n in (1, 2)]
        self.create_cluster(PLATFORM_CLUSTER)
        return vpc_id

    def create_cluster(self, name: str) -> None:
        """An EKS cluster as the platform has it: control-plane logging still off."""
        self.client("eks").create_cluster(
            name=name, roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{name}-eks-cluster",
            resourcesVpcConfig={"subnetIds": self.subnet_ids})

    def queue_url(self, name: str, account_id: str = ACCOUNT_ID) -> str:
        """moto's queue URL for a name, known before the queue exists (as an AWS queue URL is)."""
        return f"{self.endpoint_url}/{account_id}/{name}"

    def put_token_secret(self, name: str, token: str, credentials: Credentials | None = None) -> None:
        """What an operator does with the token XSIAM issues for the HTTP collector (a new version if it exists);
        credentials: an operator of another account (a fleet's), else the admin."""
        secrets = self.client("secretsmanager", credentials)
        value = json.dumps({"api_key": token})
        try:
            secrets.create_secret(Name=name, SecretString=value)
        except secrets.exceptions.ResourceExistsException:
            secrets.put_secret_value(SecretId=name, SecretString=value)

    # Faults (deployments/local/faults.py): a test's or benchmark's throttling and latency, per account.

    def throttle(self, account_id: str, service: str, calls: int) -> None:
        """The account's next `calls` requests to `service` (signing name, or "*") are throttled as AWS does."""
        self._faults("POST", {"account_id": account_id, "service": service, "throttle_calls": calls})

    def slow_down(self, account_id: str, latency_ms: int, service: str = "*") -> None:
        """Every request of the account ("*": of every account) waits latency_ms first; 0 removes the latency."""
        self._faults("POST", {"account_id": account_id, "service": service, "latency_ms": latency_ms})

    def clear_faults(self) -> None:
        self._faults("DELETE")

    def fault_counts(self) -> dict[str, Any]:
        """What the injector did: {"faults": [...], "throttled": {"<acct>/<service>": n}, "delayed": {"<acct>": n}}."""
        return self._faults("GET")

    def _faults(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (our own http://127.0.0.1 endpoint)
            f"{self.endpoint_url}/socfeeds-faults", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (our own http://127.0.0.1 endpoint)
            return dict(json.loads(answer.read()))


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
        seed_database(Path(self.env["PREFECT_HOME"]) / "prefect.db")
        self.process.start()

        def healthy() -> bool:
            self.process.check_alive()
            return http_ok(f"{self.api_url}/health")

        poll("prefect server", healthy, deadline_s)
        return self

    def stop(self) -> None:
        self.process.stop()

    def deploy(self, env: dict[str, str], pool: str = "socfeeds") -> str:
        """Create the process work pool, then the deploy command: prefect.yaml plus the alerts.

        Pushes no code: workers run this checkout. Returns what the deploy command reported.
        """
        full_env = {**os.environ, **env, "SOCFEEDS_HOME": str(REPO_ROOT)}
        for argv in (python_module("prefect", "--no-prompt", "work-pool", "create", pool, "--type", "process",
                                   "--overwrite"), python_module("deployments.deploy")):
            answer = subprocess.run(argv, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=300,
                                    check=False)
            if answer.returncode != 0:
                raise StackError(f"{' '.join(argv[1:])} failed: {answer.stdout[-2000:]}{answer.stderr[-2000:]}")
        return answer.stdout.strip()

    def start_worker(self, env: dict[str, str], log_dir: Path, pool: str = "socfeeds",
                     name: str | None = None, limit: int | None = None) -> ManagedProcess:
        """A process worker polling every second, so a CLI-triggered run starts promptly.

        name: several workers on one pool need distinct names (a fleet's child runs spread across them).
        limit: flow runs at once; a fleet's two workers each take at most a share of the children."""
        worker = ManagedProcess(
            f"prefect worker {name or ''}".strip(),
            python_module("prefect", "worker", "start", "--pool", pool, "--type", "process",
                          "--install-policy", "never", *(["--name", name] if name else []),
                          *(["--limit", str(limit)] if limit else [])),
            log_dir / (f"prefect-worker-{name}.log" if name else "prefect-worker.log"),
            env={**env, "SOCFEEDS_HOME": str(REPO_ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1",
                 "PREFECT_WORKER_PREFETCH_SECONDS": "1"})
        worker.start()
        return worker


def run_deployment(name: str, env: dict[str, str], parameters: dict[str, Any] | None = None,
                   timeout_s: int = 300) -> subprocess.CompletedProcess[str]:
    """`prefect deployment run NAME --watch`, as an engineer types it; the exit code says Completed or not."""
    argv = ["deployment", "run", name, "--watch", "--watch-timeout", str(timeout_s)]
    for key, value in (parameters or {}).items():
        argv += ["--param", f"{key}={json.dumps(value)}"]
    return subprocess.run(python_module("prefect", *argv), cwd=REPO_ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout_s + 60, check=False)


DATABASE_TEMPLATES = REPO_ROOT / ".state" / "cache"


def seed_database(database: Path, templates: Path = DATABASE_TEMPLATES) -> None:
    """A new server's SQLite database starts as a copy of one already migrated for this Prefect version.

    Migrating a new database costs ~12 s of CPU at every start (each test session starts several
    servers); the copy costs milliseconds. The template is made once per machine and version, under
    a lock so parallel test workers make it only once. An existing database is left alone.
    """
    import fcntl
    from importlib.metadata import version

    if database.exists():
        return
    template = templates / f"prefect-{version('prefect')}.db"  # importing prefect here would fix its settings
    templates.mkdir(parents=True, exist_ok=True)
    with (templates / "templates.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            partial = template.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            env = {**os.environ, "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{partial}",
                   "PREFECT_HOME": str(templates / "prefect-home"), "DO_NOT_TRACK": "1",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            answer = subprocess.run(python_module("prefect", "server", "database", "upgrade", "-y"), env=env,
                                    capture_output=True, text=True, timeout=300, check=False)
            if answer.returncode != 0:
                raise StackError(f"migrating the Prefect database template failed: {answer.stderr[-2000:]}")
            partial.rename(template)
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, database)


@contextmanager
def prefect_api(api_url: str) -> Iterator[SyncPrefectClient]:
    """A client of the stack's Prefect server, whatever this process's own settings say.

    (A client with no API URL set would quietly start a temporary server of its own.)
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def prefect_env(state_dir: Path, api_url: str) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(state_dir / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "true",
        # The feed-slos budgets count the last 30 days of events; the server's default keeps only 7.
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": "P31D",
    }


def local_settings(aws: LocalAws, state_dir: Path, xsiam: LocalXsiam, prefix: str = "",
                   cluster: str = PLATFORM_CLUSTER) -> dict[str, Any]:
    """Settings for the local stack: the production catalog, names optionally prefixed for isolation."""
    feeds: dict[str, Any] = {}
    for name, feed in default_s3_feeds().items():
        entry = feed.model_dump(mode="json", exclude_none=True)
        entry["bucket"] = prefix + entry["bucket"]
        entry["additional_buckets"] = [prefix + b for b in entry.get("additional_buckets", [])]
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
        "eks_cluster_name": cluster,
        "firehose_feeds": {"eks-control-plane": {"token_secret_name": prefix + "socfeeds/xsiam-firehose-token"}},
        "xsiam": {"firehose_url": xsiam.firehose_url, "api_url": xsiam.api_url, "api_key_id": xsiam.api_key_id},
        # the writer trusts the flows' own identity (the default): here the admin user, as STS reports it
        "canary": {"writer_role": prefix + "socfeeds-canary-writer"},
        "reader": {"user_name": prefix + "cortex_xsiam_user", "policy_name": prefix + "socfeeds-xsiam-reader",
                   "secret_name": prefix + "socfeeds/xsiam-reader-access-key"},
    }


def on_customer_key(aws: LocalAws, values: dict[str, Any], alias: str = "alias/socfeeds-feeds") -> dict[str, Any]:
    """The KMS profile: a customer-managed key (AWS's default key policy), every feed declared on it by its alias,
    as a platform team writes it; the flows resolve the alias to the key ARN and add the service statements."""
    kms = aws.client("kms")
    key = kms.create_key(Description="socfeeds: every feed's bucket, queue and stream")["KeyMetadata"]
    kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    alias_arn = f"arn:aws:kms:{values['region']}:{values['account_id']}:{alias}"
    return {**values, **{kind: {name: {**feed, "kms_key_arn": alias_arn} for name, feed in values[kind].items()}
                         for kind in ("s3_feeds", "firehose_feeds")}}


def write_aws_env(aws: LocalAws, path: Path) -> Path:
    """`source .state/local/aws.env` points the AWS CLI (and boto3) at the stack as its admin."""
    assert aws.admin is not None
    lines = {**loopback_guard_env(aws.endpoint_url), **aws.admin.env()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"export {key}={value}\n" for key, value in lines.items()))
    path.chmod(0o600)
    return path


def write_settings(values: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2))
    return path


LOCAL_OPERATIONS: dict[str, Any] = {
    # a person approves in the UI as `soc-on-call`; XSIAM's stand-in uses a new key within seconds
    "rotation": {"approvers": ["soc-on-call"], "approval_timeout_seconds": 3600, "approval_poll_seconds": 1,
                 "confirm_use_seconds": 120, "new_key_ready_seconds": 30, "last_used_resolution_seconds": 0},
}


class LocalStack:
    """Everything `make demo` needs, started in order and stopped in reverse, even on Ctrl-C."""

    def __init__(self, state_dir: Path, with_prefect: bool = True, collect: bool = True, kms: bool = False,
                 brownfield: bool = False, fleet: int = 0, s3_feeds: tuple[str, ...] | None = None) -> None:
        """collect=False leaves the feed queues to the `queue` canary strategy (no other consumer);
        kms=True puts every feed on one customer-managed key (the KMS profile); brownfield=True first builds an
        estate the way another team's Terraform would, and the settings adopt it (deployments/local/brownfield.py);
        fleet=N: an AWS Organization with N target accounts (the first is this tooling account) and one account
        no target covers, the settings' `fleet` section listing the N (deployments/local/fleet.py);
        s3_feeds: only these of the local catalog's S3 feeds (a smaller stack for fleet tests and benchmarks)."""
        self.state_dir = state_dir.resolve()
        self.with_prefect = with_prefect
        self.collect = collect
        self.kms = kms
        self.brownfield = brownfield
        self.s3_feeds = s3_feeds
        self.phases: list[tuple[str, float]] = []  # (what, seconds since start) as each finished
        self.aws = LocalAws(self.state_dir)
        self.fleet: LocalFleet | None = None
        if fleet:
            from deployments.local.fleet import LocalFleet

            if kms or brownfield:
                raise StackError("fleet mode does not combine with the KMS or brownfield profiles yet")
            self.fleet = LocalFleet(self.aws, fleet)
            self.aws.before_auth.append(self.fleet.bootstrap)  # other accounts' roles exist before IAM auth is on
        self.prefect: LocalPrefect | None = None
        self.xsiam: LocalXsiam | None = None
        self.inbox: ChatInbox | None = None
        self.settings_file = self.state_dir / "socfeeds.json"
        self._stack = ExitStack()

    def _phase(self, name: str, started: float) -> None:
        """Say what the start-up spent its time on (a newcomer's first make up: what is slow)."""
        self.phases.append((name, time.monotonic() - started))

    def __enter__(self) -> LocalStack:
        try:
            started = time.monotonic()
            self.aws.start()
            self._stack.callback(self.aws.stop)
            self._phase("AWS emulator (moto) with IAM auth and the platform seed", started)
            if self.fleet:
                self.fleet.seed()
                self._phase(f"fleet: Organization, {len(self.fleet.accounts)} target accounts' platform and role",
                            started)
            write_aws_env(self.aws, self.state_dir / "aws.env")
            self.xsiam = LocalXsiam(self.state_dir, self.aws)  # its URL goes into the settings
            self.inbox = ChatInbox(self.state_dir / "logs" / "on-call-channel.jsonl").start()
            self._stack.callback(self.inbox.stop)
            values = {**local_settings(self.aws, self.state_dir, self.xsiam), **LOCAL_OPERATIONS,
                      "alerts": {"webhook_url": self.inbox.url}}
            if self.s3_feeds is not None:
                values["s3_feeds"] = {name: feed for name, feed in values["s3_feeds"].items() if name in self.s3_feeds}
            if self.kms:
                values = on_customer_key(self.aws, values)
            if self.brownfield:
                from deployments.local import brownfield

                values = brownfield.build(self.aws, values, self.xsiam.firehose_url, self.xsiam.firehose_token).values
            if self.fleet:
                values = self.fleet.settings(values, self.state_dir)
            if self.collect and self.fleet:
                self.fleet.collect(self.xsiam, values)
            elif self.collect:
                self.xsiam.collect(collector_feeds(self.aws, values), reader_secret_id=values["reader"]["secret_name"])
            self.xsiam.start()
            self._stack.callback(self.xsiam.stop)
            token_secret = values["firehose_feeds"]["eks-control-plane"]["token_secret_name"]
            if self.fleet:
                self.fleet.put_token_secrets(token_secret, self.xsiam.firehose_token)
            else:
                self.aws.put_token_secret(token_secret, self.xsiam.firehose_token)
            self._phase("settings, XSIAM stand-in and on-call inbox", started)
            if self.with_prefect:
                self.prefect = LocalPrefect(self.state_dir).start()
                self._stack.callback(self.prefect.stop)
                self._phase("Prefect server (SQLite from the migrated template)", started)
            write_settings(values, self.settings_file)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stack.close()

    def hand_reader_key_to_xsiam(self) -> str:
        """After provisioning: a reader key made as production's was, pasted into the stand-in."""
        assert self.xsiam is not None
        if self.fleet:
            return ",".join(self.hand_reader_keys_to_xsiam().values())
        bootstrap_reader_key(self.aws, json.loads(self.settings_file.read_text())["reader"])
        return self.xsiam.reload()

    def hand_reader_keys_to_xsiam(self) -> dict[str, str]:
        """Fleet: after provisioning, every target account's reader key made and pasted; {account id: key id}."""
        assert self.xsiam is not None and self.fleet is not None
        self.fleet.bootstrap_reader_keys(json.loads(self.settings_file.read_text()))
        return self.xsiam.reload_all()

    def env(self) -> dict[str, str]:
        """The environment a flow process needs to run against this stack."""
        assert self.aws.admin is not None
        env = {SETTINGS_FILE_ENV: str(self.settings_file), **self.aws.admin.env(),
               **loopback_guard_env(self.aws.endpoint_url)}
        if self.xsiam:
            env["SOCFEEDS_XSIAM_API_KEY"] = self.xsiam.api_key
        if self.prefect:
            env.update(self.prefect.env)
        return env

    def apply_env(self) -> None:
        os.environ.update(self.env())


class LocalXsiam:
    """The XSIAM stand-in process, given a tenant's secrets through its environment as a tenant would be."""

    def __init__(self, state_dir: Path, aws: LocalAws) -> None:
        self.state_dir, self.aws = state_dir, aws
        self.folder = state_dir / "xsiam"
        self.firehose_token = secrets.token_urlsafe(32)
        self.api_key = secrets.token_urlsafe(48)
        self.api_key_id = "1"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"XSIAM_FIREHOSE_TOKEN": self.firehose_token, "XSIAM_API_KEY": self.api_key,
                    "XSIAM_API_KEY_ID": self.api_key_id}
        self.argv = python_module("deployments.xsiam.server", "--state-dir", str(self.folder),
                                  "--port", str(self.port))
        self.process: ManagedProcess | None = None

    def collect(self, feeds: list[dict[str, str]], reader_secret_id: str | None = None,
                reader_key: Credentials | None = None, reload_seconds: float | None = None,
                accounts: list[dict[str, Any]] | None = None,
                operators: dict[str, Credentials] | None = None) -> LocalXsiam:
        """Also run the S3 collector (before start): the reader's key from a secret, or given directly.

        accounts: a fleet, one collector per account ({account_id, feeds, reader, operator_key_env}); operators:
        the key each names by its operator_key_env, with which the stand-in reads that account's reader secret."""
        assert self.aws.admin is not None
        config: dict[str, Any] = {"region": REGION, "endpoint_url": self.aws.endpoint_url, "feeds": feeds,
                                  "reader": {"secret_id": reader_secret_id} if reader_secret_id else {},
                                  "reload_seconds": reload_seconds}
        if accounts is not None:
            config["accounts"] = accounts
        for prefix, key in (operators or {}).items():
            self.env.update({f"{prefix}_ACCESS_KEY_ID": key.access_key_id,
                             f"{prefix}_SECRET_ACCESS_KEY": key.secret_access_key})
        config_path = write_settings(config, self.folder / "collector.json")
        self.argv += ["--config", str(config_path)]
        self.env.update(self.aws.admin.env())  # the operator's identity, only to read the reader's secret
        self.env.update(loopback_guard_env(self.aws.endpoint_url))
        if reader_key:
            self.env.update({"XSIAM_READER_ACCESS_KEY_ID": reader_key.access_key_id,
                             "XSIAM_READER_SECRET_ACCESS_KEY": reader_key.secret_access_key})
        return self

    def start(self) -> LocalXsiam:
        self.process = ManagedProcess("xsiam stand-in", self.argv, self.state_dir / "logs" / "xsiam.log", self.env)
        self.process.start(stdout=subprocess.PIPE)
        port = self.process.read_ready_line(deadline_s=60)["port"]
        if port != self.port:
            raise StackError(f"xsiam stand-in bound {port}, expected {self.port}")
        return self

    def stop(self) -> None:
        if self.process:
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

    def count(self, dataset: str, contains: str) -> int:
        return int(self._call("GET", f"/standin/count?dataset={dataset}&contains={contains}")["count"])

    def reload(self, stage: str = "AWSCURRENT") -> str:
        """What an operator does when pasting a key: the collector takes the key in the secret's stage."""
        return str(self._call("POST", f"/standin/reload?stage={stage}")["key_id"])

    def collector_mode(self, mode: str) -> str:
        """running; paused (messages stay queued, as when XSIAM's data source is down); dropping (messages deleted
        unread: silent loss). Returns once no message is handled under the previous mode any more."""
        return str(self._call("POST", f"/standin/collector?mode={mode}")["mode"])

    def query_execution(self, seconds: float) -> float:
        """How long each XQL query runs before it completes (PENDING until then, holding one of the 4 slots)."""
        return float(self._call("POST", f"/standin/xql?execution_seconds={seconds}")["execution_seconds"])

    def reload_all(self, stage: str = "AWSCURRENT") -> dict[str, str]:
        """reload() for a fleet: every account's collector; {account id: the key id it now uses}."""
        return {str(k): str(v) for k, v in self._call("POST", f"/standin/reload?stage={stage}")["key_ids"].items()}


def bootstrap_reader_key(aws: LocalAws, reader: dict[str, str], credentials: Credentials | None = None) -> str:
    """Production's starting point: a reader key made by hand, kept where the rotation flow keeps it
    (credentials: an operator of a fleet's other account, else the admin)."""
    from socfeeds.settings import ReaderSettings

    settings = ReaderSettings(**reader)
    secrets_manager = aws.client("secretsmanager", credentials)
    try:
        secrets_manager.describe_secret(SecretId=settings.secret_name)
    except secrets_manager.exceptions.ResourceNotFoundException:
        key = aws.client("iam", credentials).create_access_key(UserName=settings.user_name)["AccessKey"]
        secrets_manager.create_secret(Name=settings.secret_name, SecretString=json.dumps(
            {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}))
    return settings.secret_name


def collector_feeds(aws: LocalAws, settings_values: dict[str, Any]) -> list[dict[str, str]]:
    """The stand-in's data sources for every S3 feed in a catalog, as XSIAM is configured: queue URLs."""
    from socfeeds.settings import Settings

    feeds = Settings(**settings_values).s3_feeds
    return [{"name": name, "queue_url": aws.queue_url(feed.queue), "log_type": feed.log_type}
            for name, feed in feeds.items()]


def flush_prefect_logs() -> None:
    """Send buffered run logs and events while the server is still up (else exit hangs retrying)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    EventsWorker.drain_all(timeout=5)
