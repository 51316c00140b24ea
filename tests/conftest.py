"""One session-scoped harness: a real moto server process (IAM auth on) and one Prefect server.

Each test gets its own settings file whose resource names carry a unique prefix, so tests share
the servers without sharing state and need no reset between them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployments.local.stack import (
    LocalAws,
    LocalPrefect,
    LocalXsiam,
    bootstrap_reader_key,
    collector_feeds,
    flush_prefect_logs,
    local_settings,
    loopback_guard_env,
    write_settings,
)
from socfeeds.aws import AwsClients, new_session
from socfeeds.resolve import resolve
from socfeeds.settings import SETTINGS_FILE_ENV, Settings

_prefixes = itertools.count(1)
_connect = socket.socket.connect


def _loopback_only(sock: socket.socket, address: Any) -> None:
    """The tests may reach only this machine; anything else is a bug to surface, not traffic to send."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = str(address[0])
        if not (host.startswith("127.") or host in {"::1", "localhost"}):
            raise AssertionError(f"test tried to connect to {address}: only 127.0.0.1 is allowed")
    _connect(sock, address)


socket.socket.connect = _loopback_only  # type: ignore[method-assign,assignment]

# The session's Prefect server is chosen now and started on first use (fixture `prefect_server`):
# Prefect reads its settings when first imported, which the test modules do at collection.
_PREFECT_STATE = Path(tempfile.mkdtemp(prefix="socfeeds-tests-"))
_PREFECT = LocalPrefect(_PREFECT_STATE)
os.environ.update(_PREFECT.env)
# This session server holds no schedule, scheduled run or worker (test_deployments and test_fleet run stacks of
# their own), so the services that act only on those are off: measured idle, 5.4% -> 3.9% of a core per xdist worker.
_PREFECT.process.env.update({f"PREFECT_SERVER_SERVICES_{service}_ENABLED": "false"
                             for service in ("SCHEDULER", "LATE_RUNS", "FOREMAN")})


LONGEST_FIRST = ("test_fleet.py", "test_deployments.py")  # minutes each, on one xdist worker: start them first


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules that take longest go to the workers first, so they do not start last and end the run late
    (xdist's loadfile hands out whole modules in collection order)."""
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_PREFECT_STATE, ignore_errors=True)


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    # Firehose's 300 s retry window runs 100x faster, so a failed delivery reaches the backup in ~3 s.
    aws = LocalAws(tmp_path_factory.mktemp("aws"), time_scale=0.01).start()
    yield aws
    aws.stop()


@pytest.fixture(scope="session")
def standin(local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalXsiam]:
    """The XSIAM stand-in's HTTP side (Firehose endpoint, XQL); tests that collect start their own."""
    xsiam = LocalXsiam(tmp_path_factory.mktemp("xsiam"), local_aws).start()
    yield xsiam
    xsiam.stop()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[LocalPrefect]:
    """One real Prefect server for the whole session, as the local stack runs it."""
    _PREFECT.start()
    yield _PREFECT
    flush_prefect_logs()
    _PREFECT.stop()


@pytest.fixture(autouse=True)
def _firehose_streams_removed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Delete the Firehose streams a test made in its worker's shared emulator: moto refuses a 51st stream in an
    account and region (LimitExceededException), a worker's tests together make more, and no test reads another's.
    Streams of longer-lived fixtures exist before this runs and stay."""
    if "local_aws" not in request.fixturenames:
        yield
        return
    firehose = request.getfixturevalue("local_aws").client("firehose")

    def streams() -> set[str]:
        return set(firehose.list_delivery_streams(Limit=10000)["DeliveryStreamNames"])

    before = streams()
    yield
    for name in sorted(streams() - before):
        firehose.delete_delivery_stream(DeliveryStreamName=name, AllowForceDelete=True)


@pytest.fixture
def prefect_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Prefect's run loggers do not propagate by default; this lets a test read their text."""
    logger = logging.getLogger("prefect")
    logger.propagate = True
    caplog.set_level(logging.INFO)
    yield caplog
    logger.propagate = False


class Stack:
    """The per-test view of the local stack: settings, a settings file in the env, and clients."""

    def __init__(self, aws: LocalAws, xsiam: LocalXsiam, values: dict[str, Any], settings_file: Path) -> None:
        self.local = aws
        self.xsiam = xsiam
        self.values = values
        self.settings_file = settings_file

    @property
    def settings(self) -> Settings:
        """As a flow run sees them: read from the file, then resolved against AWS (key ARNs, flows' identity)."""
        plain = Settings()
        return resolve(plain, self._clients(plain))

    def update(self, **changes: Any) -> None:
        """Rewrite the settings file (as an operator would edit it)."""
        self.values.update(changes)
        write_settings(self.values, self.settings_file)

    @property
    def aws(self) -> AwsClients:
        return self._clients(Settings())

    def _clients(self, settings: Settings) -> AwsClients:
        assert self.local.admin is not None
        session = new_session(self.local.admin.access_key_id, self.local.admin.secret_access_key)
        return AwsClients.from_settings(settings, session=session)

    def client(self, service: str) -> Any:
        return self.local.client(service)


@pytest.fixture
def stack(local_aws: LocalAws, standin: LocalXsiam, prefect_server: None, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Stack:
    """Settings of the production shape with every name prefixed, its own EKS cluster and token secret."""
    prefix = f"t{next(_prefixes)}-"
    cluster = prefix + "live"
    local_aws.create_cluster(cluster)
    values = local_settings(local_aws, tmp_path, standin, prefix=prefix, cluster=cluster)
    local_aws.put_token_secret(values["firehose_feeds"]["eks-control-plane"]["token_secret_name"],
                               standin.firehose_token)
    settings_file = write_settings(values, tmp_path / "socfeeds.json")
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(settings_file))
    assert local_aws.admin is not None
    for key, value in {**local_aws.admin.env(), **loopback_guard_env(local_aws.endpoint_url)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SOCFEEDS_XSIAM_API_KEY", standin.api_key)
    return Stack(local_aws, standin, values, settings_file)


def prefect_events(prefix: str, drain: bool = True) -> list[dict[str, Any]]:
    """Events this session emitted whose name starts with prefix. drain: flush the emitter first, which stops it:
    only when no flow in this process is running (a flow thread emitting meanwhile loses its event, "Cannot put
    items in a stopped service instance"); while one runs, poll without it (the emitter sends as it goes)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.worker import EventsWorker

    if drain:
        EventsWorker.drain_all(timeout=5)
    events: list[dict[str, Any]] = []
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=EventFilter(event=EventNameFilter(prefix=[prefix])), limit=50)
        while True:
            events += [event.model_dump(mode="json") for event in page.events]
            if not page.next_page:
                return events
            page = client.read_events_page(str(page.next_page))


@pytest.fixture
def collecting(stack: Stack, tmp_path: Path) -> Iterator[LocalXsiam]:
    """The stack provisioned with a stand-in of its own that collects every feed and receives Firehose."""
    xsiam = LocalXsiam(tmp_path / "tenant", stack.local)
    xsiam.collect(collector_feeds(stack.local, stack.values), reader_secret_id=stack.settings.reader.secret_name)
    xsiam.start()
    stack.update(xsiam={"firehose_url": xsiam.firehose_url, "api_url": xsiam.api_url, "api_key_id": xsiam.api_key_id})
    [feed] = stack.settings.firehose_feeds.values()
    stack.client("secretsmanager").put_secret_value(SecretId=feed.token_secret_name,
                                                    SecretString=json.dumps({"api_key": xsiam.firehose_token}))
    os.environ["SOCFEEDS_XSIAM_API_KEY"] = xsiam.api_key  # restored by the stack fixture's monkeypatch
    from flows.provision import provision_feeds

    provision_feeds()
    bootstrap_reader_key(stack.local, stack.values["reader"])
    xsiam.reload()
    yield xsiam
    xsiam.stop()
