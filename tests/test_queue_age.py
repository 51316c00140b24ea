"""A stalled consumer is seen by age, not count: verify reads the feed queues' AWS/SQS metrics.

The judgement is unit-tested on its own; on the local stack, deployments/local/cloudwatch_fidelity.py publishes
what SQS publishes (the age of the oldest message, visible messages, deletes), and an hour of stall, which no test
can wait for, is written as the history CloudWatch would hold (PutMetricData, which only the emulator accepts into
AWS/SQS).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import Stack

from deployments.local.processes import poll
from socfeeds.report import Finding, FindingsFor, Status
from socfeeds.settings import BacklogThresholds, Settings
from tasks.queue_activity import (
    AGE_CHECK,
    CONSUMPTION_CHECK,
    QueueActivity,
    check_activity,
    judge_activity,
    read_activity,
)
from tasks.queues import check_queue, ensure_queues, queue_url

FEED = "vpc-flow-logs"
FOUR_DAYS = 345_600
STALL_MINUTES = 65


def judged(activity: QueueActivity) -> dict[str, Finding]:
    check = FindingsFor(FEED, "sqs:q")
    judge_activity(check, "q", activity, BacklogThresholds(), FOUR_DAYS)
    return {f.check: f for f in check.findings}


@pytest.mark.parametrize(("activity", "age", "consumption", "words"), [
    (QueueActivity(3900.0, 500.0, 0.0), Status.FAIL, Status.FAIL, ["not reading q", "data source", "reader key",
                                                                    "65 min old", "4 days"]),
    (QueueActivity(3900.0, 500.0, 12.0), Status.FAIL, Status.PASS, ["falls behind (12 deleted", "65 min old"]),
    (QueueActivity(120.0, 3.0, 0.0), Status.PASS, Status.PASS, []),  # messages arrived after an idle hour
    (QueueActivity(None, 0.0, 0.0), Status.PASS, Status.PASS, []),
    (QueueActivity(None, None, 0.0), Status.WARN, Status.WARN, ["data source", "reader key", "account and region"]),
])
def test_age_and_consumption_are_judged(activity: QueueActivity, age: Status, consumption: Status,
                                        words: list[str]) -> None:
    found = judged(activity)
    assert (found[AGE_CHECK].status, found[CONSUMPTION_CHECK].status) == (age, consumption)
    failing = [f for f in found.values() if f.status is not Status.PASS]
    assert all(word in f.fix for f in failing for word in words)
    if age is Status.WARN:
        assert all(f.detail.startswith("no data: CloudWatch has no AWS/SQS metrics") for f in found.values())


def _feed_queue(stack: Stack) -> tuple[Settings, str, str]:
    """The feed's queues as provision makes them: (settings, queue name, url)."""
    settings = stack.settings  # resolved against AWS once: each read is a round of calls
    ensure_queues.fn(stack.aws, settings, FEED, False)
    name = settings.s3_feeds[FEED].queue
    url = queue_url(stack.aws, name)
    assert url is not None
    return settings, name, url


def _findings(stack: Stack, settings: Settings) -> dict[str, Finding]:
    return {f.check: f for f in check_queue.fn(stack.aws, settings, FEED)}


def test_stalled_queue_under_the_count_threshold_fails_by_age_and_consumption(stack: Stack) -> None:
    settings, name, url = _feed_queue(stack)
    sqs = stack.client("sqs")
    for batch in range(50):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": f"{batch}-{n}"} for n in range(10)])
    now, queue = datetime.now(UTC), [{"Name": "QueueName", "Value": name}]
    history = [{"MetricName": metric, "Dimensions": queue, "Value": value, "Timestamp": now - timedelta(minutes=ago)}
               for ago in range(STALL_MINUTES, 0, -1) for metric, value in (
                   ("ApproximateAgeOfOldestMessage", (STALL_MINUTES - ago + 1) * 60.0),
                   ("ApproximateNumberOfMessagesVisible", 500.0), ("NumberOfMessagesDeleted", 0.0))]
    for start in range(0, len(history), 30):  # under 10 KB a call: botocore gzips larger bodies, which moto's
        stack.client("cloudwatch").put_metric_data(  # signature check does not read
            Namespace="AWS/SQS", MetricData=history[start:start + 30])

    found = _findings(stack, settings)
    assert found["backlog"].status is Status.PASS and "500 messages waiting (limit 1000)" in found["backlog"].detail
    assert (found[AGE_CHECK].status, found[CONSUMPTION_CHECK].status) == (Status.FAIL, Status.FAIL)
    assert "none deleted in the last 60 min" in found[CONSUMPTION_CHECK].detail
    assert "data source" in found[AGE_CHECK].fix and "reader key" in found[AGE_CHECK].fix
    assert "oldest message is 65 min old" in found[AGE_CHECK].fix


def test_consumed_queue_passes_on_the_metrics_the_stack_publishes(stack: Stack) -> None:
    settings, name, url = _feed_queue(stack)
    sqs = stack.client("sqs")
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": str(n)} for n in range(10)])
    for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])  # as XSIAM does, once read
    sqs.send_message(QueueUrl=url, MessageBody="arrived since")
    poll("the deletes in AWS/SQS NumberOfMessagesDeleted",
         lambda: read_activity(stack.aws, name, settings.backlog.consumption_window_seconds).deleted == 10, 10)
    found = _findings(stack, settings)
    assert (found[AGE_CHECK].status, found[CONSUMPTION_CHECK].status) == (Status.PASS, Status.PASS)
    assert found[CONSUMPTION_CHECK].detail.startswith("10 deleted in the last 60 min")
    assert found[AGE_CHECK].detail == "every message younger than the 60 min limit"
    assert (read_activity(stack.aws, name, 3600).oldest_age_s or 60) < 60  # the waiting message's real age


def test_queue_without_metrics_is_no_data_not_a_pass(stack: Stack) -> None:
    check, unseen = FindingsFor(FEED, "sqs:unseen"), f"{stack.values['s3_feeds'][FEED]['queue']}-never-created"
    check_activity(stack.aws, check, unseen, BacklogThresholds(), {})
    assert [(f.check, f.status) for f in check.findings] == [(AGE_CHECK, Status.WARN), (CONSUMPTION_CHECK, Status.WARN)]
    assert "CloudWatch has no AWS/SQS metrics" in check.findings[0].detail
