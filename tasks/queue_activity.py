"""Is XSIAM consuming a feed queue? Judged by CloudWatch's AWS/SQS metrics, never by receiving messages.

A count alone misses a stalled consumer (500 messages under a 1,000 threshold, none read for hours), and receiving
messages to look at them would raise their receive count toward the dead-letter queue. So verify reads what SQS
publishes every minute: the age of the oldest message (the platform's sister team alarms at 1 h) and whether
anything was deleted over the consumption window while messages waited. No metrics is reported as such, never as
a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from socfeeds.aws import AwsClients
from socfeeds.report import FindingsFor, Status
from socfeeds.settings import BacklogThresholds

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.type_defs import MetricDataQueryTypeDef, MetricDataResultTypeDef, MetricStatTypeDef

NAMESPACE = "AWS/SQS"
PERIOD_S = 300  # the newest 5-minute statistics stand for "now"; few periods to read over an hour
RECENT_S = 900  # SQS metrics can arrive minutes late: older than this, a queue's metrics no longer say "now"
AGE_CHECK, CONSUMPTION_CHECK = "oldest message", "consumption"
QUERIES = {"age": ("ApproximateAgeOfOldestMessage", "Maximum"), "waiting": ("ApproximateNumberOfMessagesVisible",
           "Maximum"), "deleted": ("NumberOfMessagesDeleted", "Sum")}


@dataclass(frozen=True)
class QueueActivity:
    """A queue's AWS/SQS metrics: the newest statistics (None: none recent) and the deletes over the window."""

    oldest_age_s: float | None  # SQS reports it only while a message waits
    waiting: float | None
    deleted: float

    @property
    def has_data(self) -> bool:
        """SQS reports the visible count every minute for an active queue, and the age whenever a message waits."""
        return self.waiting is not None or self.oldest_age_s is not None


def _newest(result: MetricDataResultTypeDef, since: datetime) -> float | None:
    points = [(t, v) for t, v in zip(result.get("Timestamps", []), result.get("Values", []), strict=True) if t >= since]
    return max(points)[1] if points else None


def read_activity(aws: AwsClients, queue: str, window_s: int, now: datetime | None = None) -> QueueActivity:
    """One GetMetricData call: the three statistics of `queue` over the last `window_s` seconds."""
    end = now or datetime.now(UTC)
    metric_stats: dict[str, MetricStatTypeDef] = {
        key: {"Metric": {"Namespace": NAMESPACE, "MetricName": metric,
                         "Dimensions": [{"Name": "QueueName", "Value": queue}]}, "Period": PERIOD_S, "Stat": stat}
        for key, (metric, stat) in QUERIES.items()}
    queries: list[MetricDataQueryTypeDef] = [{"Id": key, "MetricStat": stat} for key, stat in metric_stats.items()]
    answer = aws.cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=end - timedelta(seconds=window_s),
                                            EndTime=end)
    results = {r["Id"]: r for r in answer["MetricDataResults"]}
    recent = end - timedelta(seconds=min(RECENT_S, window_s))
    return QueueActivity(oldest_age_s=_newest(results["age"], recent), waiting=_newest(results["waiting"], recent),
                         deleted=sum(results["deleted"].get("Values", [])))


def minutes(seconds: float) -> str:
    return f"{round(seconds / 60)} min"


def _span(seconds: int) -> str:
    return minutes(seconds) if seconds < 7200 else f"{seconds // 3600} h" if seconds < 172_800 else \
        f"{seconds // 86_400} days"


def judge_activity(check: FindingsFor, queue: str, activity: QueueActivity, backlog: BacklogThresholds,
                   retention_s: int) -> None:
    """Two findings: the oldest message's age against its limit, and consumption over the window."""
    window, limit = backlog.consumption_window_seconds, backlog.max_oldest_message_age_seconds
    if not activity.has_data:
        recent = minutes(min(RECENT_S, window))
        detail = (f"no data: CloudWatch has no AWS/SQS metrics for {queue} in the last {recent}, so its age and "
                  "consumption are unknown")
        fix = (f"SQS publishes them every minute for a queue that had an API call in the last 6 h, and XSIAM polls "
               f"its queue all the time: check the XSIAM data source and the reader key; if XSIAM is reading, check "
               f"that verify reads {queue}'s own account and region")
        for name in (AGE_CHECK, CONSUMPTION_CHECK):
            check.add(name, Status.WARN, detail, fix)
        return
    age, waiting, deleted = activity.oldest_age_s or 0.0, round(activity.waiting or 0), round(activity.deleted)
    stopped = deleted == 0 and age >= window  # messages waited the whole window and none was deleted
    oldest = f"the oldest message is {minutes(age)} old and messages expire unread after {_span(retention_s)}"
    fix = (f"XSIAM is not reading {queue}: check the XSIAM data source (status, errors) and the reader key (active, "
           f"still granted); {oldest}" if deleted == 0 else
           f"XSIAM reads {queue} but falls behind ({deleted} deleted in the last {minutes(window)}): check the data "
           f"source's errors and throughput in XSIAM; {oldest}")
    young = "no message waiting" if activity.oldest_age_s is None else \
        f"every message younger than the {minutes(limit)} limit"  # no live age: verify reruns compare equal
    check.expect(AGE_CHECK, age <= limit, young if age <= limit else
                 f"oldest message {minutes(age)} old (limit {minutes(limit)})", fix)
    check.expect(CONSUMPTION_CHECK, not stopped,
                 f"{waiting} messages waiting and none deleted in the last {minutes(window)}: the consumer has stopped"
                 if stopped else f"{deleted} deleted in the last {minutes(window)}, up to {waiting} waiting", fix)


def check_activity(aws: AwsClients, check: FindingsFor, queue: str, backlog: BacklogThresholds,
                   attributes: dict[str, str]) -> None:
    """The queue's age and consumption findings, from its metrics over the consumption window."""
    activity = read_activity(aws, queue, backlog.consumption_window_seconds)
    judge_activity(check, queue, activity, backlog, int(attributes.get("MessageRetentionPeriod", "345600")))

