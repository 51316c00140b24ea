"""The deployments through a real Prefect server and a real process worker, run from the CLI.

One stack for the module, as `make up` has it: deployed by the deploy command (prefect.yaml and
the alerts), provisioned through its deployment, XSIAM collecting with the reader's key, and an
on-call inbox receiving what the automations post.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import chromium
import pytest
from test_xsiam_standin import eventually

from deployments.local.chat import ChatInbox
from deployments.local.demo import latest_artifact, latest_table
from deployments.local.processes import ManagedProcess
from deployments.local.stack import REPO_ROOT, LocalStack, prefect_api, run_deployment
from tasks.roles import INLINE_POLICY

DEPLOYMENTS = ("provision-feeds/on-demand", "verify-feeds/daily", "feed-canary/daily", "rotate-reader-keys/weekly",
               "rotate-reader-keys/on-demand")
SCREENSHOTS = REPO_ROOT / "test-output" / "screenshots"  # kept after the run, for a person to look at
ALERT_DEADLINE_S = 90  # automations reach the webhook in ~12-15 s; room for a loaded CI machine


@dataclass
class Deployed:
    stack: LocalStack
    env: dict[str, str]
    worker: ManagedProcess

    @property
    def inbox(self) -> ChatInbox:
        assert self.stack.inbox is not None
        return self.stack.inbox

    def prefect(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """A prefect CLI command as an engineer types it against this stack."""
        return subprocess.run([sys.executable, "-m", "prefect", *argv], env={**os.environ, **self.env}, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120, check=False)

    def flow_run_state(self, run_id: str) -> str:

        with prefect_api(self.env["PREFECT_API_URL"]) as client:
            state = client.read_flow_run(UUID(run_id)).state
        return state.type.value if state else "NONE"

    def automation_names(self) -> list[str]:

        with prefect_api(self.env["PREFECT_API_URL"]) as client:
            return [automation.name for automation in client.read_automations()]

    def start_rotation(self) -> str:
        """`prefect deployment run` without --watch, as on-call starts a rotation; returns the run id."""
        started = self.prefect("deployment", "run", "rotate-reader-keys/on-demand")
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = run_id_of(started)
        eventually("rotation paused for approval", lambda: self.flow_run_state(run_id) == "PAUSED", 120)
        return run_id

    def approve(self, run_id: str) -> None:
        """The README's approval command."""
        answer = self.prefect("api", "POST", f"/flow_runs/{run_id}/resume", "--data", json.dumps(
            {"run_input": {"approved": True, "approver": "soc-on-call", "reason": "CHG-1"}}))
        assert answer.returncode == 0 and "ACCEPT" in answer.stdout, answer.stdout + answer.stderr

    def settings(self) -> dict[str, Any]:
        return dict(json.loads(self.stack.settings_file.read_text()))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    state = tmp_path_factory.mktemp("deployed")
    with LocalStack(state) as stack:
        assert stack.prefect is not None
        env = stack.env()
        stack.prefect.deploy(env)
        worker = stack.prefect.start_worker(env, state / "logs")
        try:
            provision = run_deployment("provision-feeds/on-demand", env)
            assert provision.returncode == 0, provision.stdout[-2000:] + provision.stderr[-2000:]
            stack.hand_reader_key_to_xsiam()
            yield Deployed(stack, env, worker)
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def verified(deployed: Deployed) -> str:
    """verify-feeds/daily run once through the worker; returns its table artifact's id."""
    verify = run_deployment("verify-feeds/daily", deployed.env)
    assert verify.returncode == 0 and "Completed" in verify.stdout, verify.stdout[-2000:]
    latest = latest_artifact("verify-feeds", deployed.env["PREFECT_API_URL"])
    assert latest is not None
    return str(latest.latest_id)


def test_verify_and_canary_complete_through_the_worker(deployed: Deployed, verified: str) -> None:
    canary = run_deployment("feed-canary/daily", deployed.env)
    assert canary.returncode == 0 and "Completed" in canary.stdout, canary.stdout[-3000:]
    tables = {key: latest_table(key, deployed.env["PREFECT_API_URL"]) for key in ("verify-feeds", "feed-canary")}
    assert {row["status"] for row in tables["verify-feeds"]} <= {"pass", "warn"}
    assert {row["feed"]: row["status"] for row in tables["feed-canary"]} == {
        feed: "passed" for feed in [*deployed.settings()["s3_feeds"], "eks-control-plane"]}


def test_a_failed_run_alerts_the_on_call_channel(deployed: Deployed) -> None:
    trail = deployed.settings()["s3_feeds"]["cloudtrail"]["source"]["trail_name"]
    cloudtrail = deployed.stack.aws.client("cloudtrail")
    cloudtrail.stop_logging(Name=trail)
    try:
        verify = run_deployment("verify-feeds/daily", deployed.env, {"feeds": ["cloudtrail"]})
        assert verify.returncode == 1 and "Failed" in verify.stdout
        run_id = run_id_of(verify)
        alert = deployed.inbox.wait_for(lambda text: run_id in text, ALERT_DEADLINE_S, "alert for the failed run")
    finally:
        cloudtrail.start_logging(Name=trail)
    assert alert.startswith("*socfeeds: verify-feeds/daily Failed*")
    assert "logging is stopped" in alert and f"aws cloudtrail start-logging --name {trail}" in alert, alert
    assert f"/runs/flow-run/{run_id}" in alert, "the alert links to the run"
    assert "prefect deployment run 'verify-feeds/daily' --watch" in alert


def test_a_failed_canary_alerts_per_feed_with_the_fix(deployed: Deployed) -> None:
    """The writer role loses its policy: the canary fails at the write leg; provision repairs it."""
    writer_role = deployed.settings()["canary"]["writer_role"]
    deployed.stack.aws.client("iam").delete_role_policy(RoleName=writer_role, PolicyName=INLINE_POLICY)
    try:
        canary = run_deployment("feed-canary/daily", deployed.env, {"feeds": ["application-logs"]})
        assert canary.returncode == 1
        alert = deployed.inbox.wait_for(lambda text: "feed application-logs failed" in text, ALERT_DEADLINE_S,
                                        "canary alert for application-logs")
    finally:
        repaired = run_deployment("provision-feeds/on-demand", deployed.env, {"feeds": ["application-logs"]})
        assert repaired.returncode == 0, repaired.stdout[-2000:]
    assert alert.startswith("*socfeeds canary: feed application-logs failed at the write leg*"), alert
    assert "Fix: " in alert and "/runs/flow-run/" in alert


def test_a_rotation_deployment_asks_on_call_and_completes_when_approved_from_the_cli(deployed: Deployed) -> None:
    run_id = deployed.start_rotation()
    ask = deployed.inbox.wait_for(lambda text: run_id in text and "waits for approval" in text, ALERT_DEADLINE_S,
                                  "approval request")
    assert f"/runs/flow-run/{run_id}" in ask and f"prefect api POST /flow_runs/{run_id}/resume" in ask
    assert deployed.stack.xsiam is not None
    new_key = deployed.stack.xsiam.reload("AWSPENDING")  # the SOC puts the pending key in XSIAM
    deployed.approve(run_id)
    final = eventually("rotation finished", lambda: (s := deployed.flow_run_state(run_id)) in {
        "COMPLETED", "FAILED", "CRASHED"} and s, 180)
    assert final == "COMPLETED"
    secret = deployed.stack.aws.client("secretsmanager").get_secret_value(
        SecretId=deployed.settings()["reader"]["secret_name"])
    assert json.loads(secret["SecretString"])["access_key_id"] == new_key


def test_a_crashed_run_alerts_on_call_with_where_to_look(deployed: Deployed) -> None:
    """A rotation's process killed while it waits for XSIAM's first use of the new key."""
    iam, user = deployed.stack.aws.client("iam"), deployed.settings()["reader"]["user_name"]
    for key in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
        if key["Status"] == "Inactive":  # an earlier rotation's old key, past its grace: room for a new key
            iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
    run_id = deployed.start_rotation()
    deployed.approve(run_id)  # XSIAM keeps the old key: the run stays Running, waiting to see the new one used
    eventually("rotation running again", lambda: deployed.flow_run_state(run_id) == "RUNNING", 60)
    os.kill(flow_run_process(run_id), signal.SIGKILL)
    alert = deployed.inbox.wait_for(lambda text: run_id in text and "Crashed" in text, ALERT_DEADLINE_S,
                                    "alert for the crashed run")
    assert alert.startswith("*socfeeds: rotate-reader-keys/on-demand Crashed*")
    assert "The flow process died: read the worker's log on its host." in alert
    assert deployed.flow_run_state(run_id) == "CRASHED"


def run_id_of(answer: subprocess.CompletedProcess[str]) -> str:
    """The flow run id `prefect deployment run` prints."""
    found = re.search(r"UUID: ([0-9a-f-]{36})", answer.stdout)
    assert found, answer.stdout
    return found[1]


def flow_run_process(run_id: str) -> int:
    """The pid of the process a worker started for this flow run (Prefect puts the run id in its env)."""
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue  # gone, or not ours
    raise AssertionError(f"no process for flow run {run_id}")


def test_a_wrongly_typed_parameter_is_refused_with_the_schema_message(deployed: Deployed) -> None:
    answer = run_deployment("verify-feeds/daily", deployed.env, {"feeds": "cloudtrail"})
    assert answer.returncode != 0
    assert "Validation failed for field 'feeds'" in answer.stdout + answer.stderr


def test_every_deployment_exists_and_the_alerts_apply_once_however_often_deployed(deployed: Deployed) -> None:
    from deployments.alerts import ALERTS, apply_alerts
    from socfeeds.settings import AlertSettings

    with prefect_api(deployed.env["PREFECT_API_URL"]) as client:
        names = {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()}
        assert names == set(DEPLOYMENTS)
        apply_alerts(AlertSettings(**deployed.settings()["alerts"]))  # a second deploy
        assert sorted(deployed.automation_names()) == sorted(alert.name for alert in ALERTS)
        block = client.read_block_document_by_name("socfeeds-alerts", "custom-webhook", include_secrets=False)
    assert deployed.inbox.path not in json.dumps(block.data, default=str), "the webhook URL is masked"


def test_the_ui_shows_the_deployments_and_a_verification_artifact(deployed: Deployed, verified: str) -> None:
    browser = chromium.find_or_install()
    ui = deployed.env["PREFECT_API_URL"].removesuffix("/api")
    listing = chromium.page_text(browser, f"{ui}/deployments", SCREENSHOTS / "deployments.png")
    assert f"{len(DEPLOYMENTS)} Deployments" in listing, listing[:2000]
    for name in DEPLOYMENTS:
        flow, deployment = name.split("/")
        assert f" {deployment} {flow} " in listing, f"{name} not on the deployments page"

    page = chromium.page_text(browser, f"{ui}/artifacts/artifact/{verified}", SCREENSHOTS / "verify-feeds-artifact.png")
    assert "verify-feeds: " in page and " pass cloudtrail " in page and " trail logging logging " in page, page[:3000]


@pytest.mark.parametrize(("pool_type", "template"), [("ecs", "ecs.json"), ("kubernetes", "kubernetes.json")])
def test_scale_out_work_pool_templates_are_accepted(deployed: Deployed, pool_type: str, template: str) -> None:
    """The shipped ECS and Kubernetes job templates create pools on a real server (nothing runs there)."""
    path = REPO_ROOT / "deployments" / "work-pools" / template
    pool = f"socfeeds-{pool_type}"
    created_pool = deployed.prefect("--no-prompt", "work-pool", "create", pool, "--type", pool_type,
                                    "--base-job-template", str(path), "--overwrite")
    assert created_pool.returncode == 0, created_pool.stdout + created_pool.stderr

    with prefect_api(deployed.env["PREFECT_API_URL"]) as client:
        created = client.read_work_pool(pool)
    assert created.type == pool_type
    assert created.base_job_template == json.loads(Path(path).read_text())
    defaults = created.base_job_template["variables"]["properties"]
    assert defaults["env"]["default"]["SOCFEEDS_SETTINGS_FILE"].endswith("socfeeds.toml")
