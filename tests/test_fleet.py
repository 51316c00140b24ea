"""A fleet of three accounts through the real deployments: one run each fans out per account across two workers.

The stack: an Organization with three target accounts (the tooling account; workload-a, whose flow-log bucket is
the central archive; workload-b, which delivers its flow logs there) and one account no target covers. The
flows run as the tooling identity and assume `socfeeds-target` in each account (deployments/local/fleet.py).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import pytest
from test_deployments import run_id_of

from deployments.local.demo import latest_artifact
from deployments.local.fleet import ARCHIVED_FEED, LocalFleet
from deployments.local.processes import ManagedProcess, stop_together
from deployments.local.stack import LocalStack, prefect_api, run_deployment
from socfeeds.aws import api_limit_name

FEEDS = ("application-logs", "cloudtrail", ARCHIVED_FEED)  # and the EKS feed: each shape, not the whole catalog
API_RATES = {"iam": 20, "sts": 20}  # fleet.api_calls_per_second: every fleet test goes through the pool's limits


@dataclass
class Fleet:
    stack: LocalStack
    env: dict[str, str]
    workers: list[ManagedProcess]

    @property
    def accounts(self) -> LocalFleet:
        assert self.stack.fleet is not None
        return self.stack.fleet

    def run(self, deployment: str, parameters: dict[str, Any] | None = None) -> tuple[int, str]:
        """`prefect deployment run --watch`; the exit code and the parent run's id."""
        answer = run_deployment(deployment, self.env, parameters)
        return answer.returncode, run_id_of(answer)

    def matrix(self, flow: str, run_id: str) -> dict[str, dict[str, str]]:
        """The parent's accounts x feeds artifact of that run, as {account name: {feed: cell}}."""
        artifact = latest_artifact(f"{flow}-fleet", self.env["PREFECT_API_URL"])
        assert artifact is not None and str(artifact.flow_run_id) == run_id, "the run published its matrix"
        assert isinstance(artifact.data, str)
        lines = [line for line in artifact.data.splitlines() if line.startswith("| ")]
        header = [cell.strip() for cell in lines[0].strip("|").split("|")]
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
        return {row[0].split(" ")[0]: dict(zip(header[2:], row[2:], strict=True)) for row in rows}

    def markdown(self, flow: str) -> str:
        artifact = latest_artifact(f"{flow}-fleet", self.env["PREFECT_API_URL"])
        assert artifact is not None and isinstance(artifact.data, str)
        return artifact.data

    def message(self, run_id: str) -> str:
        with prefect_api(self.env["PREFECT_API_URL"]) as client:
            state = client.read_flow_run(UUID(run_id)).state
        assert state is not None
        return str(state.message)

    def acquired(self, limit_name: str) -> int:
        """Slots taken from a pool-wide rate limit, by the concurrency-limit events of every run (the limit
        exists: the parent made it from fleet.api_calls_per_second)."""
        with prefect_api(self.env["PREFECT_API_URL"]) as client:
            limit = client.read_global_concurrency_limit_by_name(limit_name)
            assert (limit.limit, limit.slot_decay_per_second) == (API_RATES["iam"], API_RATES["iam"])
            events = events_named(client, "prefect.concurrency-limit.acquired")
        return sum(1 for event in events if event.resource.get("prefect.resource.name") == limit_name)

    def workers_of(self, parent_id: str) -> set[str]:
        """The workers that ran the parent and its children (from the workers' submitted-flow-run events)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        with prefect_api(self.env["PREFECT_API_URL"]) as client:
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(parent_id)])))
            runs = {parent_id, *(str(child.id) for child in children)}
            events = events_named(client, "prefect.worker.submitted-flow-run")
        return {event.resource.id for event in events
                if any(r.id.removeprefix("prefect.flow-run.") in runs for r in event.related)}


def events_named(client: Any, name: str) -> list[Any]:
    """Every event of that name on the server, across the API's pages."""
    from prefect.events.filters import EventFilter, EventNameFilter

    page = client.read_events(filter=EventFilter(event=EventNameFilter(name=[name])), limit=50)
    events = list(page.events)
    while page.next_page:
        page = client.read_events_page(str(page.next_page))
        events += page.events
    return events


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    state = tmp_path_factory.mktemp("fleet")
    with LocalStack(state, fleet=3, s3_feeds=FEEDS) as stack:
        assert stack.prefect is not None
        env = stack.env()
        values = json.loads(stack.settings_file.read_text())
        values["fleet"]["accounts_per_run"] = 3  # one child run works on all three accounts, in threads
        values["fleet"]["api_calls_per_second"] = API_RATES
        stack.settings_file.write_text(json.dumps(values))
        stack.prefect.deploy(env)
        workers = [stack.prefect.start_worker(env, state / "logs", name=f"fleet-worker-{n}", limit=1)
                   for n in (1, 2)]  # one run each: the parent holds one worker, so its children run on the other
        try:
            provision = run_deployment("provision-feeds/on-demand", env)
            matrix = latest_artifact("provision-feeds-fleet", env["PREFECT_API_URL"])
            assert provision.returncode == 0, matrix.data if matrix else provision.stdout[-3000:]
            stack.hand_reader_keys_to_xsiam()
            yield Fleet(stack, env, workers)
        finally:
            stop_together(workers)


def test_three_accounts_are_provisioned_verified_and_canaried_from_one_run_each_across_two_workers(
        fleet: Fleet) -> None:
    provisioned = latest_artifact("provision-feeds-fleet", fleet.env["PREFECT_API_URL"])
    assert provisioned is not None and "# provision-feeds: 0 of 3 accounts failing" in str(provisioned.data)
    for deployment, flow in (("verify-feeds/daily", "verify-feeds"), ("feed-canary/daily", "feed-canary")):
        code, run_id = fleet.run(deployment)
        assert code == 0, fleet.message(run_id)
        matrix = fleet.matrix(flow, run_id)
        assert set(matrix) == {"tooling", "workload-a", "workload-b"}
        assert {cell for cells in matrix.values() for cell in cells.values()} <= {"pass", "warn"}, matrix
        assert len(fleet.workers_of(run_id)) == 2, "the fan-out crossed workers"
    assert "sandbox" in fleet.markdown("feed-canary").split("not covered)")[1], "the uncovered account is listed"


def test_the_archive_admits_the_member_and_the_member_delivers_there(fleet: Fleet) -> None:
    archive, member = fleet.accounts.account("workload-a"), fleet.accounts.account("workload-b")
    settings = json.loads(fleet.stack.settings_file.read_text())
    bucket = settings["s3_feeds"][ARCHIVED_FEED]["bucket"].replace("{account_id}", archive.account_id)
    policy = json.loads(fleet.accounts.client("workload-a", "s3").get_bucket_policy(Bucket=bucket)["Policy"])
    write = next(s for s in policy["Statement"] if s.get("Sid") == "SocfeedsLogDeliveryWrite")
    assert write["Condition"]["StringEquals"]["aws:SourceAccount"] == [archive.account_id, member.account_id]
    logs = fleet.accounts.client("workload-b", "ec2").describe_flow_logs()["FlowLogs"]
    assert [log["LogDestination"] for log in logs if log["ResourceId"] == member.vpc_id] == [f"arn:aws:s3:::{bucket}"]
    buckets = {b["Name"] for b in fleet.accounts.client("workload-b", "s3").list_buckets()["Buckets"]}
    assert bucket not in buckets, "the member made no bucket of its own for the archived feed"


def test_the_management_accounts_organization_trail_writes_into_the_archive(fleet: Fleet) -> None:
    archive = fleet.accounts.account("workload-a")
    management = fleet.accounts.account("tooling")
    settings = json.loads(fleet.stack.settings_file.read_text())
    bucket = settings["s3_feeds"]["cloudtrail"]["bucket"].replace("{account_id}", archive.account_id)
    [trail] = [t for t in fleet.accounts.client("tooling", "cloudtrail").describe_trails()["trailList"]
               if t["S3BucketName"] == bucket]
    assert trail["IsOrganizationTrail"] and trail["IsMultiRegionTrail"] and trail["LogFileValidationEnabled"]
    assert fleet.accounts.client("workload-a", "cloudtrail").describe_trails()["trailList"] == [], \
        "the archive makes no trail of its own: the organization trail logs it"
    policy = json.loads(fleet.accounts.client("workload-a", "s3").get_bucket_policy(Bucket=bucket)["Policy"])
    write = next(s for s in policy["Statement"] if s.get("Sid") == "SocfeedsCloudTrailWrite")
    assert write["Resource"] == [f"arn:aws:s3:::{bucket}/AWSLogs/{folder}/*"
                                 for folder in (management.account_id, fleet.accounts.organization_id)]
    assert write["Condition"]["StringEquals"]["aws:SourceArn"] == trail["TrailARN"]


def test_each_account_gets_its_role_documents_and_no_artifact_carries_the_external_id(fleet: Fleet) -> None:
    from deployments.local.fleet import FLEET_EXTERNAL_ID

    documents = latest_artifact("provision-feeds-target-role", fleet.env["PREFECT_API_URL"])
    assert documents is not None and isinstance(documents.data, str)
    assert '"sts:ExternalId": "<fleet.external_id>"' in documents.data and "Read-only grant" in documents.data
    with prefect_api(fleet.env["PREFECT_API_URL"]) as client:
        artifacts = json.dumps([a.data for a in client.read_artifacts()], default=str)
    assert FLEET_EXTERNAL_ID not in artifacts, "the external id is a secret"


def test_a_broken_account_fails_only_its_cells_while_a_throttled_one_backs_off_and_passes(fleet: Fleet) -> None:
    """workload-b's trail stops; workload-a's IAM and SQS answer Throttling for a while, in the same run."""
    cloudtrail = fleet.accounts.client("workload-b", "cloudtrail")
    trail = next(t["Name"] for t in cloudtrail.describe_trails()["trailList"])
    throttled = fleet.accounts.account("workload-a").account_id
    cloudtrail.stop_logging(Name=trail)
    fleet.stack.aws.throttle(throttled, "iam", 3)
    fleet.stack.aws.throttle(throttled, "sqs", 3)
    try:
        code, run_id = fleet.run("verify-feeds/daily")
        counts = fleet.stack.aws.fault_counts()["throttled"]
    finally:
        cloudtrail.start_logging(Name=trail)
        fleet.stack.aws.clear_faults()
    assert code == 1
    assert counts.get(f"{throttled}/iam") == 3 and counts.get(f"{throttled}/sqs") == 3, counts
    assert fleet.acquired(api_limit_name(throttled, "iam")) > 0, "the child's IAM calls took the pool's slots"
    matrix = fleet.matrix("verify-feeds", run_id)
    failing = {(account, feed) for account, cells in matrix.items() for feed, cell in cells.items() if cell == "fail"}
    assert failing == {("workload-b", "cloudtrail")}, "one account's failure neither hides nor taints another's"
    assert set(matrix["workload-a"].values()) <= {"pass", "warn"}, "the throttled account waited and passed"
    message = fleet.message(run_id)
    assert message.startswith("verify-feeds: 1 of 3 accounts failing: workload-b (") and "cloudtrail fail" in message
    assert fleet.markdown("verify-feeds").index("workload-b") < fleet.markdown("verify-feeds").index("tooling"), (
        "failing accounts first")


def test_one_account_runs_alone_in_the_parents_process(fleet: Fleet) -> None:
    code, run_id = fleet.run("verify-feeds/daily", {"accounts": ["workload-a"]})
    assert code == 0, fleet.message(run_id)
    with prefect_api(fleet.env["PREFECT_API_URL"]) as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(run_id)])))
    assert children == [], "one account needs no child run"


def test_one_approval_covers_every_accounts_pending_key(fleet: Fleet) -> None:
    """rotation.approval = combined: each account makes and tests its key, the parent alone pauses, its form listing
    every account's pending key (never a secret); one answer and every account rotates."""
    from prefect.flow_runs import resume_flow_run
    from prefect.input import filter_flow_run_input
    from test_xsiam_standin import eventually

    from socfeeds.settings import Settings
    from socfeeds.targets import declared_targets, target_settings

    assert fleet.stack.xsiam is not None
    xsiam, original = fleet.stack.xsiam, fleet.stack.settings_file.read_text()
    values = json.loads(original)
    values["rotation"].update(approval="combined", require_new_key_in_use=False)
    fleet.stack.settings_file.write_text(json.dumps(values))
    readers = {t.name: target_settings(Settings(**values), t).reader for t in declared_targets(Settings(**values))}
    old_keys = {name: {k["AccessKeyId"] for k in fleet.accounts.client(name, "iam").list_access_keys(
        UserName=reader.user_name)["AccessKeyMetadata"]} for name, reader in readers.items()}
    answer: dict[str, Any] = {}
    rotation = threading.Thread(target=lambda: answer.update(run=run_deployment(
        "rotate-reader-keys/on-demand", fleet.env)), daemon=True)
    rotation.start()
    try:
        with prefect_api(fleet.env["PREFECT_API_URL"]):
            [paused] = eventually("the fleet run paused for its one approval", lambda: paused_runs(fleet), 180)
            form = eventually("the approval form", lambda: [i.decoded_value for i in cast(list[Any], (
                filter_flow_run_input(key_prefix="paused-approval-", limit=10, flow_run_id=paused.id)))
                if i.key.endswith("-description")])
            pending = {name: {k["AccessKeyId"] for k in fleet.accounts.client(name, "iam").list_access_keys(
                UserName=reader.user_name)["AccessKeyMetadata"]} - old_keys[name] for name, reader in readers.items()}
            assert all(len(keys) == 1 for keys in pending.values()), pending
            for name, [key] in ((name, list(keys)) for name, keys in pending.items()):
                assert re.search(rf"\| {name} \([^|]*\) \| {readers[name].user_name} \| {key} \|", form[0]), form[0]
            xsiam.reload_all("AWSPENDING")  # the SOC pastes every pending key, then answers
            resume_flow_run(paused.id, run_input={"approved": True, "approver": "soc-on-call", "reason": "CHG-14"})
            rotation.join(timeout=300)
        assert answer["run"].returncode == 0, fleet.message(str(paused.id))
        assert paused_runs(fleet) == [], "no account asked on its own"
        for name, [key] in ((name, list(keys)) for name, keys in pending.items()):
            current = json.loads(fleet.accounts.client(name, "secretsmanager").get_secret_value(
                SecretId=readers[name].secret_name)["SecretString"])["access_key_id"]
            assert current == key, f"{name} rotated to the approved key"
    finally:
        fleet.stack.settings_file.write_text(original)
        xsiam.reload_all()


def paused_runs(fleet: Fleet) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with prefect_api(fleet.env["PREFECT_API_URL"]) as client:
        return list(client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.PAUSED])))))
