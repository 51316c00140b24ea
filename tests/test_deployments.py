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
from urllib.parse import quote
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
               "rotate-reader-keys/on-demand", "provision-feeds/per-account", "verify-feeds/per-account",
               "feed-canary/per-account", "rotate-reader-keys/per-account", "audit-feeds/daily",
               "audit-feeds/per-account", "replay-feed/on-demand")
UI_PAGE_SIZE = 10  # the UI's deployments page lists 10 a page by default
SCREENSHOTS = REPO_ROOT / "test-output" / "screenshots"  # kept after the run, for a person to look at
MEASUREMENTS = REPO_ROOT / "test-output" / "alert-latency.txt"
ALERT_DEADLINE_S = 90  # automations reach the webhook in ~0.1 s here (test-output/alert-latency.txt); room for CI


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


def test_a_failed_canary_sends_one_message_with_the_fix_then_one_when_it_recovers(deployed: Deployed) -> None:
    """The writer role loses its policy: one message names the feed, the leg and the fix; provision repairs it,
    and the next completed canary says the incident is over."""
    writer_role = deployed.settings()["canary"]["writer_role"]
    deployed.stack.aws.client("iam").delete_role_policy(RoleName=writer_role, PolicyName=INLINE_POLICY)
    try:
        canary = run_deployment("feed-canary/daily", deployed.env, {"feeds": ["application-logs"]})
        assert canary.returncode == 1
        failed_run = run_id_of(canary)
        alert = deployed.inbox.wait_for(lambda text: failed_run in text, ALERT_DEADLINE_S, "the failed canary's alert")
        record_latency(deployed, failed_run, alert)
    finally:
        repaired = run_deployment("provision-feeds/on-demand", deployed.env, {"feeds": ["application-logs"]})
        assert repaired.returncode == 0, repaired.stdout[-2000:]
    assert alert.startswith("*socfeeds: feed-canary/daily Failed*"), alert
    assert "application-logs: write leg failed" in alert and " -> " in alert, "the feed, the leg and the fix"
    assert "see artifact feed-canary-failures" in alert and "The artifact the message names lists" in alert
    recovered = run_deployment("feed-canary/daily", deployed.env, {"feeds": ["application-logs"]})
    assert recovered.returncode == 0, recovered.stdout[-2000:]
    recovered_run = run_id_of(recovered)
    over = deployed.inbox.wait_for(lambda text: recovered_run in text, ALERT_DEADLINE_S, "recovered message")
    assert over.startswith("*socfeeds: feed-canary/daily recovered*"), over
    assert "ended Failed: feed-canary: 1 of 1 feeds failed: application-logs: write leg failed" in over
    about_the_failure = [m for m in deployed.inbox.messages() if failed_run in m or "application-logs" in m]
    assert len(about_the_failure) == 2, f"one message for the incident, one for its end: {about_the_failure}"


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


def record_latency(deployed: Deployed, run_id: str, message: str) -> None:
    """Measured, never asserted: from the run's Failed state to the message reaching the webhook, kept under
    test-output/ for the README's statement of alert latency."""
    with prefect_api(deployed.env["PREFECT_API_URL"]) as client:
        state = client.read_flow_run(UUID(run_id)).state
    assert state is not None
    seconds = (deployed.inbox.arrived_at[message] - state.timestamp).total_seconds()
    MEASUREMENTS.parent.mkdir(parents=True, exist_ok=True)
    with MEASUREMENTS.open("a") as out:
        out.write(f"run {state.name} -> on-call message: {seconds:.1f} s\n")


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
    from deployments.alerts import ALERTS, WATCHED, Alert, apply_alerts, automation
    from socfeeds.settings import Settings

    with prefect_api(deployed.env["PREFECT_API_URL"]) as client:
        names = {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()}
        assert names == set(DEPLOYMENTS)
        block_id = client.read_automations_by_name(ALERTS[0].name)[0].actions[0].block_document_id  # type: ignore[union-attr]
        for name in ("socfeeds: canary failed", "platform: disk full"):  # an alert we retired, and not ours
            client.create_automation(automation(Alert(name=name, description="", expect=frozenset({"x"}), match={},
                                                      subject="s", body="b"), block_id))
        apply_alerts(Settings(**deployed.settings()))  # a second deploy
        switches = [f"socfeeds: no {w.noun} {w.verb}: {feed}" for w in WATCHED for feed in declared_feeds(deployed)]
        assert sorted(deployed.automation_names()) == sorted([*(alert.name for alert in ALERTS), *switches,
                                                              "platform: disk full"])
        block = client.read_block_document_by_name("socfeeds-alerts", "custom-webhook", include_secrets=False)
    assert deployed.inbox.path not in json.dumps(block.data, default=str), "the webhook URL is masked"


def test_the_ui_shows_the_deployments_and_a_verification_artifact(deployed: Deployed, verified: str) -> None:
    browser = chromium.find_or_install()
    ui = deployed.env["PREFECT_API_URL"].removesuffix("/api")
    listing = chromium.page_text(browser, f"{ui}/deployments", SCREENSHOTS / "deployments.png")
    assert f"{len(DEPLOYMENTS)} Deployments" in listing, listing[:2000]
    shown = [name for name in DEPLOYMENTS if " {1} {0} ".format(*name.split("/")) in listing]
    assert len(shown) == min(len(DEPLOYMENTS), UI_PAGE_SIZE), f"the first page shows {shown}"  # then page 2

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


def declared_feeds(deployed: Deployed) -> list[str]:
    settings = deployed.settings()
    return [*settings["s3_feeds"], *settings["firehose_feeds"]]


def requested_runs(deployed: Deployed, deployment: str) -> set[UUID]:
    """The deployment's flow runs someone asked for (the scheduler's auto-scheduled ones left out)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with prefect_api(deployed.env["PREFECT_API_URL"]) as client:
        mine = FlowRunFilterDeploymentId(any_=[client.read_deployment_by_name(deployment).id])
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=mine), limit=200)
    return {run.id for run in runs if "auto-scheduled" not in run.tags}


def test_an_undeclared_or_empty_feeds_list_is_refused_before_a_run_is_created(deployed: Deployed) -> None:
    """The deploy command made `feeds` an enum of the declared feeds with minItems 1 (deployments/deploy.py)."""
    before = requested_runs(deployed, "verify-feeds/daily")
    typo = run_deployment("verify-feeds/daily", deployed.env, {"feeds": ["cloudtral"]})
    empty = run_deployment("verify-feeds/daily", deployed.env, {"feeds": []})
    typo_said, empty_said = (" ".join((answer.stdout + answer.stderr).split()) for answer in (typo, empty))
    assert typo.returncode == 1 and "Error creating flow run: Validation failed for field 'feeds[0]'" in typo_said
    assert f"'cloudtral' is not one of {declared_feeds(deployed)}" in typo_said, typo_said
    assert empty.returncode == 1 and "Validation failed for field 'feeds'. Failure reason: [] should be non-empty" \
        in empty_said, empty_said
    assert requested_runs(deployed, "verify-feeds/daily") == before, "a refused run must not exist"
    with prefect_api(deployed.env["PREFECT_API_URL"]) as client:
        for name in ("verify-feeds/daily", "feed-canary/daily", "provision-feeds/on-demand"):
            deployment = client.read_deployment_by_name(name)
            feeds = (deployment.parameter_openapi_schema or {})["properties"]["feeds"]
            assert deployment.enforce_parameter_schema and feeds["anyOf"] == [
                {"type": "array", "items": {"type": "string", "enum": declared_feeds(deployed)}, "minItems": 1},
                {"type": "null"}], (name, feeds)
        replay = client.read_deployment_by_name("replay-feed/on-demand").parameter_openapi_schema or {}
        s3_feeds = [name for name in declared_feeds(deployed) if name in deployed.settings()["s3_feeds"]]
        assert replay["properties"]["feed"]["enum"] == s3_feeds and "eks-control-plane" not in s3_feeds, replay
        verify_id = client.read_deployment_by_name("verify-feeds/daily").id

    browser = chromium.find_or_install()
    ui = deployed.env["PREFECT_API_URL"].removesuffix("/api")
    chosen = quote(json.dumps({"feeds": ["cloudtrail"]}))  # the run form with its list form open, one feed chosen
    form = chromium.page_text(browser, f"{ui}/deployments/deployment/{verify_id}/run?parameters={chosen}",
                              SCREENSHOTS / "verify-feeds-run-form.png")
    options = " ".join(declared_feeds(deployed))  # the select's options: every declared feed, nothing else
    assert f"feeds (Optional) Feed names from settings; None means every feed. list None {options} " in form, form


def test_a_failed_run_alerts_on_call_and_the_ui_shows_the_run_and_its_failures_artifact(deployed: Deployed) -> None:
    """The message on-call receives, then what they open from it: the run page with the one-line reason, then the
    failures-only artifact."""
    from flows.verify import FAILURES_ARTIFACT

    trail = deployed.settings()["s3_feeds"]["cloudtrail"]["source"]["trail_name"]
    cloudtrail = deployed.stack.aws.client("cloudtrail")
    cloudtrail.stop_logging(Name=trail)
    try:
        verify = run_deployment("verify-feeds/daily", deployed.env, {"feeds": ["cloudtrail"]})
    finally:
        cloudtrail.start_logging(Name=trail)
    assert verify.returncode == 1 and "Failed" in verify.stdout, verify.stdout[-2000:]
    run_id = run_id_of(verify)
    alert = deployed.inbox.wait_for(lambda text: run_id in text, ALERT_DEADLINE_S, "alert for the failed run")
    assert alert.startswith("*socfeeds: verify-feeds/daily Failed*")
    assert "logging is stopped" in alert and f"aws cloudtrail start-logging --name {trail}" in alert, alert
    assert f"/runs/flow-run/{run_id}" in alert, "the alert links to the run"
    assert "prefect deployment run 'verify-feeds/daily' --watch" in alert
    failures = latest_artifact(FAILURES_ARTIFACT, deployed.env["PREFECT_API_URL"])
    assert failures is not None and str(failures.flow_run_id) == run_id

    browser = chromium.find_or_install()
    ui = deployed.env["PREFECT_API_URL"].removesuffix("/api")
    # as on-call opens it from the alert (the Logs tab), tall enough to show the failed check's message and fix
    run_page = chromium.page_text(browser, f"{ui}/runs/flow-run/{run_id}", SCREENSHOTS / "verify-failed-run.png",
                                  window=(1920, 1600))
    assert " Failed " in run_page and "check-source[cloudtrail]" in run_page, run_page[:3000]
    one_line = re.search(r"Finished in state Failed\('(verify-feeds: 1 of \d+ checks failed: [^']*)'\)", run_page)
    assert one_line, run_page  # the run's state message, as its last log line
    assert "cloudtrail source:cloudtrail trail logging: logging is stopped" in one_line[1], one_line[1]
    assert f"aws cloudtrail start-logging --name {trail}" in one_line[1] and one_line[1].endswith(
        f"see artifact {FAILURES_ARTIFACT}"), one_line[1]

    # at 1920 px: status and fix come first, so the fix is on screen
    page = chromium.page_text(browser, f"{ui}/artifacts/artifact/{failures.latest_id}",
                              SCREENSHOTS / "verify-failures-artifact.png")
    assert "verify-feeds: 1 of " in page and " checks failed" in page, page[:3000]
    assert f" fail aws cloudtrail start-logging --name {trail}, or run provision-feeds for this feed cloudtrail " \
        "source:cloudtrail trail logging logging is stopped: no audit events are delivered" in page, page[:3000]
    assert " pass " not in page, "the failures artifact lists only what needs a person"
