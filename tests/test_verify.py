"""verify-feeds: every check fails when its fault is injected, and passes again after provision."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Stack
from prefect.client.schemas.objects import Artifact, State

from flows._common import items_of
from flows.provision import provision_feeds
from flows.verify import FAILURES_ARTIFACT, FEED_CHECKS, FINDING_COLUMNS, verify_feeds
from socfeeds.report import Finding, Status
from tasks.buckets import ensure_bucket
from tasks.notifications import ensure_notification
from tasks.queues import ensure_queues, queue_url
from tasks.reader import check_reader, ensure_reader
from tasks.sources import ensure_source

Fault = Callable[[Stack, str], None]


def provision(stack: Stack, feed: str) -> None:
    """The provision flow's steps for one feed, called directly (the flow itself is tested elsewhere)."""
    aws, settings = stack.aws, stack.settings
    ensure_reader.fn(aws, settings, False)
    for step in (ensure_bucket, ensure_queues, ensure_notification, ensure_source):
        step.fn(aws, settings, feed, False)


def checks(stack: Stack, feed: str) -> list[Finding]:
    aws, settings = stack.aws, stack.settings
    return [*check_reader.fn(aws, settings), *(f for check in FEED_CHECKS for f in check.fn(aws, settings, feed))]


def status_of(findings: list[Finding], resource_prefix: str, check: str) -> Status:
    [match] = [f for f in findings if f.resource.startswith(resource_prefix) and f.check == check]
    return match.status


def _queue(stack: Stack, feed: str) -> str:
    url = queue_url(stack.aws, stack.settings.s3_feeds[feed].queue)
    assert url is not None
    return url


def drop_source_account(stack: Stack, feed: str) -> None:
    sqs = stack.client("sqs")
    url = _queue(stack, feed)
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    del policy["Statement"][0]["Condition"]["StringEquals"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})


def drop_notification(stack: Stack, feed: str) -> None:
    stack.client("s3").put_bucket_notification_configuration(
        Bucket=stack.settings.s3_feeds[feed].bucket, NotificationConfiguration={})


def hide_keys_with_a_filter(stack: Stack, feed: str) -> None:
    s3, bucket = stack.client("s3"), stack.settings.s3_feeds[feed].bucket
    [entry] = s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
    entry["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": "elsewhere/"}]}}
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [entry]})


def _reader_policy_arn(stack: Stack) -> str:
    s = stack.settings
    return f"arn:aws:iam::{s.account_id}:policy{s.reader.path}{s.reader.policy_name}"


def widen_reader(stack: Stack, feed: str) -> None:
    iam, arn = stack.client("iam"), _reader_policy_arn(stack)
    policy = iam.get_policy(PolicyArn=arn)["Policy"]
    document = iam.get_policy_version(PolicyArn=arn, VersionId=policy["DefaultVersionId"])["PolicyVersion"]["Document"]
    document["Statement"].append({"Effect": "Allow", "Action": "s3:*", "Resource": "*"})
    iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(document), SetAsDefault=True)


def detach_reader_policy(stack: Stack, feed: str) -> None:
    stack.client("iam").detach_user_policy(UserName=stack.settings.reader.user_name,
                                           PolicyArn=_reader_policy_arn(stack))


def stop_trail(stack: Stack, feed: str) -> None:
    stack.client("cloudtrail").stop_logging(Name=stack.settings.s3_feeds[feed].source.trail_name)  # type: ignore[union-attr]


def turn_off_log_file_validation(stack: Stack, feed: str) -> None:
    stack.client("cloudtrail").update_trail(Name=stack.settings.s3_feeds[feed].source.trail_name,  # type: ignore[union-attr]
                                            EnableLogFileValidation=False)


def delete_flow_log(stack: Stack, feed: str) -> None:
    ec2 = stack.client("ec2")
    bucket_arn = f"arn:aws:s3:::{stack.settings.s3_feeds[feed].bucket}"
    ids = [f["FlowLogId"] for f in ec2.describe_flow_logs()["FlowLogs"] if f.get("LogDestination") == bucket_arn]
    ec2.delete_flow_logs(FlowLogIds=ids)


def expire_after_one_day(stack: Stack, feed: str) -> None:
    stack.client("s3").put_bucket_lifecycle_configuration(
        Bucket=stack.settings.s3_feeds[feed].bucket, LifecycleConfiguration={"Rules": [
            {"ID": "socfeeds-retention", "Filter": {"Prefix": ""}, "Status": "Enabled", "Expiration": {"Days": 1}}]})


def open_public_access(stack: Stack, feed: str) -> None:
    stack.client("s3").delete_public_access_block(Bucket=stack.settings.s3_feeds[feed].bucket)


def remove_bucket_encryption(stack: Stack, feed: str) -> None:
    stack.client("s3").delete_bucket_encryption(Bucket=stack.settings.s3_feeds[feed].bucket)


def remove_bucket_policy(stack: Stack, feed: str) -> None:
    stack.client("s3").delete_bucket_policy(Bucket=stack.settings.s3_feeds[feed].bucket)


def unwire_dlq(stack: Stack, feed: str) -> None:
    stack.client("sqs").set_queue_attributes(QueueUrl=_queue(stack, feed), Attributes={"RedrivePolicy": ""})


def turn_off_queue_sse(stack: Stack, feed: str) -> None:
    stack.client("sqs").set_queue_attributes(QueueUrl=_queue(stack, feed),
                                             Attributes={"SqsManagedSseEnabled": "false"})


def delete_queue(stack: Stack, feed: str) -> None:
    stack.client("sqs").delete_queue(QueueUrl=_queue(stack, feed))


def _keep_rules_except(stack: Stack, feed: str, rule_id: str) -> None:
    s3, bucket = stack.client("s3"), stack.settings.s3_feeds[feed].bucket
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={
        "Rules": [r for r in rules if r["ID"] != rule_id]})


def drop_canary_expiry(stack: Stack, feed: str) -> None:
    _keep_rules_except(stack, feed, "socfeeds-canary-expiry")


def drop_incomplete_upload_rule(stack: Stack, feed: str) -> None:
    _keep_rules_except(stack, feed, "socfeeds-abort-incomplete-uploads")


def allow_object_acls(stack: Stack, feed: str) -> None:
    stack.client("s3").put_bucket_ownership_controls(Bucket=stack.settings.s3_feeds[feed].bucket, OwnershipControls={
        "Rules": [{"ObjectOwnership": "ObjectWriter"}]})


def use_aws_managed_sqs_key(stack: Stack, feed: str) -> None:
    stack.client("sqs").set_queue_attributes(QueueUrl=_queue(stack, feed), Attributes={
        "KmsMasterKeyId": "alias/aws/sqs", "SqsManagedSseEnabled": "false"})


def open_dlq_to_every_queue(stack: Stack, feed: str) -> None:
    dlq = queue_url(stack.aws, stack.settings.s3_feeds[feed].dlq_name)
    assert dlq is not None
    stack.client("sqs").set_queue_attributes(QueueUrl=dlq, Attributes={
        "RedriveAllowPolicy": json.dumps({"redrivePermission": "allowAll"})})


FAULTS: list[tuple[str, Fault, str, str]] = [
    # feed, fault, resource prefix, check
    ("cloudtrail", drop_source_account, "sqs:", "queue policy"),
    ("cloudtrail", drop_notification, "s3://", "notification"),
    ("cloudtrail", hide_keys_with_a_filter, "s3://", "filter"),
    ("cloudtrail", widen_reader, "iam-user:", "least privilege"),
    ("cloudtrail", detach_reader_policy, "iam-user:", "grants needed"),
    ("cloudtrail", stop_trail, "source:", "trail logging"),
    ("cloudtrail", turn_off_log_file_validation, "source:", "trail settings"),
    ("vpc-flow-logs", delete_flow_log, "source:", "flow log"),
    ("application-logs", expire_after_one_day, "s3://", "retention"),
    ("route53-resolver", open_public_access, "s3://", "public access block"),
    ("route53-resolver", remove_bucket_encryption, "s3://", "encryption"),
    ("route53-resolver", remove_bucket_policy, "s3://", "source write access"),
    ("vpc-flow-logs", unwire_dlq, "sqs:", "dead-letter queue"),
    ("vpc-flow-logs", turn_off_queue_sse, "sqs:", "encryption"),
    ("application-logs", delete_queue, "sqs:", "exists"),
    ("cloudtrail", drop_canary_expiry, "s3://", "canary expiry"),
    ("application-logs", drop_incomplete_upload_rule, "s3://", "incomplete uploads"),
    ("vpc-flow-logs", allow_object_acls, "s3://", "object ownership"),
    ("route53-resolver", open_dlq_to_every_queue, "sqs:", "dead-letter source"),
    ("application-logs", use_aws_managed_sqs_key, "sqs:", "encryption key"),
]


@pytest.mark.parametrize(("feed", "fault", "resource", "check"), FAULTS,
                         ids=[f"{feed}-{fault.__name__}" for feed, fault, _, _ in FAULTS])
def test_fault_fails_its_check_and_provision_repairs_it(stack: Stack, feed: str, fault: Fault,
                                                        resource: str, check: str) -> None:
    provision(stack, feed)
    assert status_of(checks(stack, feed), resource, check) is Status.PASS
    fault(stack, feed)
    broken = checks(stack, feed)
    assert status_of(broken, resource, check) is Status.FAIL
    failing = [f for f in broken if f.status is Status.FAIL]
    assert all(f.fix for f in failing), "every failure tells the on-call engineer what to do"
    provision(stack, feed)
    assert [f for f in checks(stack, feed) if f.status is Status.FAIL] == []


def test_dead_letters_fail_until_handled(stack: Stack) -> None:
    provision(stack, "cloudtrail")
    sqs = stack.client("sqs")
    dlq = queue_url(stack.aws, stack.settings.s3_feeds["cloudtrail"].dlq_name)
    sqs.send_message(QueueUrl=dlq, MessageBody="{}")
    dead = [f for f in checks(stack, "cloudtrail") if f.check == "dead letters"]
    assert [f.status for f in dead] == [Status.FAIL] and "start-message-move-task" in dead[0].fix
    sqs.purge_queue(QueueUrl=dlq)
    assert status_of(checks(stack, "cloudtrail"), "sqs:", "dead letters") is Status.PASS


def test_backlog_above_threshold_warns(stack: Stack) -> None:
    provision(stack, "vpc-flow-logs")
    stack.update(backlog={"max_visible_messages": 0})
    stack.client("sqs").send_message(QueueUrl=_queue(stack, "vpc-flow-logs"), MessageBody="{}")
    assert status_of(checks(stack, "vpc-flow-logs"), "sqs:", "backlog") is Status.WARN


def test_fluent_bit_output_missing_warns(stack: Stack) -> None:
    provision(stack, "application-logs")
    Path(stack.settings.s3_feeds["application-logs"].source.output_path).unlink()  # type: ignore[union-attr]
    assert status_of(checks(stack, "application-logs"), "source:", "fluent bit output") is Status.WARN


def artifacts_of(state: State[Any]) -> dict[str, Artifact]:
    """The run's artifacts by key, read back through the Prefect API as the UI reads them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    return {a.key: a for a in artifacts if a.key}


def test_verify_flow_fails_with_the_report_and_publishes_the_table(stack: Stack) -> None:
    provision_feeds(feeds=["cloudtrail"])
    stop_trail(stack, "cloudtrail")
    state = verify_feeds(feeds=["cloudtrail"], return_state=True)
    assert state.is_failed()
    findings = items_of(state)
    assert isinstance(findings, list) and all(isinstance(f, Finding) for f in findings), findings
    assert state.message is not None and "\n" not in state.message
    assert "cloudtrail source:cloudtrail trail logging: logging is stopped" in state.message
    assert "start-logging" in state.message and f"see artifact {FAILURES_ARTIFACT}" in state.message
    artifacts = artifacts_of(state)
    artifact = artifacts["verify-feeds"]
    assert isinstance(artifact.data, str) and artifact.type == "table"
    rows: list[dict[str, str]] = json.loads(artifact.data)
    assert len(rows) == len(findings)
    assert {"feed": "cloudtrail", "check": "trail logging", "status": "fail"}.items() <= rows[0].items()
    assert all(list(row)[:len(FINDING_COLUMNS)] == ["status", "fix", "feed", "resource", "check", "detail"]
               for row in rows), "status and fix come first, so they are on screen"
    ranks = [{"fail": 0, "warn": 1, "pass": 2}[row["status"]] for row in rows]
    assert ranks == sorted(ranks), "failures first, then warnings, then passes"
    assert all(row["fix"] == "" for row in rows if row["status"] == "pass")
    failures = artifacts[FAILURES_ARTIFACT]
    assert failures.type == "markdown" and isinstance(failures.data, str)
    assert failures.data.startswith("# verify-feeds: 1 of ") and "trail logging" in failures.data
    assert "start-logging" in failures.data and "| pass |" not in failures.data


def test_failed_check_marks_its_task_failed_and_the_run_keeps_every_finding(stack: Stack) -> None:
    """The red task is the one to open; the run still reports every check, without a traceback."""
    provision_feeds(feeds=["cloudtrail"])
    passing = verify_feeds(feeds=["cloudtrail"], return_state=True)
    assert passing.is_completed()
    everything = passing.result()
    warned = [f for f in everything if f.status is Status.WARN]
    summary = artifacts_of(passing)[FAILURES_ARTIFACT].data or ""
    assert (f"All {len(everything)} checks passed." in summary) is (not warned), summary
    drop_notification(stack, "cloudtrail")
    state = verify_feeds(feeds=["cloudtrail"], return_state=True)
    findings = items_of(state)
    assert isinstance(findings, list)
    checked = {(f.resource, f.check) for f in findings}
    assert {(f.resource, f.check) for f in everything if not f.resource.endswith(" notification")} <= checked
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    from deployments.local.stack import flush_prefect_logs

    run_id = state.state_details.flow_run_id
    assert run_id is not None
    flush_prefect_logs()
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(run_id).state
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert stored is not None and stored.is_failed() and stored.message == state.message
    assert state.message is not None and "notification" in state.message and "provision-feeds" in state.message
    states = {run.name: run.state for run in task_runs}
    failed_tasks = sorted(name for name, task_state in states.items() if task_state and task_state.is_failed())
    assert failed_tasks == ["check-notification[cloudtrail]"], states
    assert "notification" in (states["check-notification[cloudtrail]"].message or "")  # type: ignore[union-attr]
    assert not [log.message for log in logs if "Traceback" in log.message], "an expected failure is not a crash"


def test_plain_calls_give_what_task_runs_give(prefect_server: None) -> None:
    """A fleet account's checks run as plain calls (call_each); their items and errors match the task runs'."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows._common import call_each, concurrent_tasks, failing_when, gather

    @task(cache_policy=NO_CACHE)
    def step(items: list[str]) -> list[str]:
        if not items:
            raise RuntimeError("the check could not finish")
        return items

    checked = failing_when(step, lambda items: [i for i in items if i.startswith("bad")])
    steps: list[tuple[str, Any, tuple[Any, ...]]] = [("passes", checked, (["a", "b"],)),
                                                     ("fails", checked, (["bad c"],)), ("raises", checked, ([],))]

    @flow(task_runner=concurrent_tasks())
    def both() -> tuple[Any, Any]:
        return call_each(steps), gather((label, task.submit(*args)) for label, task, args in steps)

    plain, submitted = both()
    assert plain == submitted == (["a", "b", "bad c"], [("raises", "the check could not finish")])
