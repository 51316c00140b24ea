"""CloudWatch as AWS runs it beside SQS. Local stack only; moto 5.2.5.

1. AWS/SQS metrics. moto publishes none, so a check of a queue's age or consumption would only ever read "no
   data". AWS publishes, for every active queue, once a minute, into namespace `AWS/SQS` with the one dimension
   `QueueName` (SQS Developer Guide, "Available CloudWatch metrics for Amazon SQS",
   https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-available-cloudwatch-metrics.html):
   - `ApproximateAgeOfOldestMessage` (Seconds): the age of the oldest unprocessed message, reported only while the
     queue holds one; a message received three or more times and not deleted is moved to the back, so the metric
     shows the next one (poison pills are left out);
   - `ApproximateNumberOfMessagesVisible` (Count): messages available for retrieval;
   - `NumberOfMessagesDeleted` (Count): every successful DeleteMessage with a valid receipt handle, including a
     repeated delete of the same message.
   This thread samples moto's SQS backends (the messages' sent timestamps and receive counts, and a counter of
   deletes) every `SAMPLE_EVERY_S` and folds the samples into one statistic set per queue, metric and minute in the
   queue's own account and region, as AWS stores a minute's datapoint. Differences, all towards fresher data:
   AWS publishes a minute after it ends (metrics can lag by minutes) and only for queues with an API call in the
   last six hours; here the current minute is readable while it fills, and every queue is published.
2. CloudWatch's IAM prefix. moto names the action after the request's signing name, `monitoring:GetMetricData`,
   so a policy granting `cloudwatch:GetMetricData` (the Service Authorization Reference's prefix for Amazon
   CloudWatch, https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazoncloudwatch.html) is
   refused and one granting `monitoring:*` would be allowed. This authorises CloudWatch calls as `cloudwatch:<Action>`.
"""

from __future__ import annotations

import threading
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

from moto.cloudwatch.models import CloudWatchBackend, MetricAggregatedDatum, cloudwatch_backends
from moto.core.utils import unix_time, utcnow
from moto.iam.access_control import IAMRequestBase
from moto.sqs.models import Queue, sqs_backends

NAMESPACE = "AWS/SQS"
SAMPLE_EVERY_S = 1.0  # AWS: one datapoint a minute; sampling finer changes no minute's statistics
POISON_RECEIVES = 3  # received this often and not deleted: moved to the back, out of the age metric

_deleted: Counter[str] = Counter()  # queue ARN -> deletes not yet published
_deleted_lock = threading.Lock()
_original_delete = Queue.delete_message
_original_request_init = IAMRequestBase.__init__


def _delete_message(self: Queue, receipt_handle: str) -> None:
    _original_delete(self, receipt_handle)  # raises on an invalid receipt handle: not counted, as in AWS
    with _deleted_lock:
        _deleted[self.queue_arn] += 1


def _queues() -> Iterator[tuple[CloudWatchBackend, Queue]]:
    """Every queue of every account and region, with the CloudWatch backend of its account and region."""
    for account_id, regions in list(sqs_backends.items()):
        for region, backend in list(regions.items()):
            for queue in list(backend.queues.values()):
                yield cloudwatch_backends[account_id][region], queue


def samples(queue: Queue, now_s: float) -> dict[str, tuple[float, str]]:
    """metric -> (value, unit) of one queue now, as SQS computes it; one pass over the messages, one clock read
    (moto's own visible/delayed properties read the clock per message)."""
    now_ms, visible, oldest_ms = now_s * 1000, 0, None
    for message in list(queue._messages):
        sent: Any = message.sent_timestamp  # moto types it None until the message is sent
        visible += message.visible_at < now_ms and message.delayed_until <= now_ms
        if sent is not None and message.approximate_receive_count < POISON_RECEIVES:
            oldest_ms = sent if oldest_ms is None else min(oldest_ms, sent)
    with _deleted_lock:
        deleted = _deleted.pop(queue.queue_arn, 0)
    found = {"ApproximateNumberOfMessagesVisible": (float(visible), "Count"),
             "NumberOfMessagesDeleted": (float(deleted), "Count")}
    if oldest_ms is not None:
        found["ApproximateAgeOfOldestMessage"] = (max(0.0, now_s - oldest_ms / 1000), "Seconds")
    return found


class Publisher:
    """Folds each sample into its minute's statistic set (Minimum, Maximum, Sum, SampleCount)."""

    def __init__(self) -> None:
        self._minutes: dict[tuple[int, str, str], MetricAggregatedDatum] = {}

    def publish(self) -> None:
        minute, now_s = utcnow().replace(second=0, microsecond=0), unix_time()
        current: dict[tuple[int, str, str], MetricAggregatedDatum] = {}
        for cloudwatch, queue in _queues():
            for metric, (value, unit) in samples(queue, now_s).items():
                key = (id(cloudwatch), queue.queue_arn, metric)  # a reset makes new backends: new keys
                datum = self._minutes.get(key)
                if datum is None or datum.timestamp != minute:
                    datum = MetricAggregatedDatum(NAMESPACE, metric, value, value, 1, value,
                                                  [{"Name": "QueueName", "Value": queue.name}], minute, unit)
                    cloudwatch.metric_data.append(datum)
                else:
                    datum.min, datum.max = min(datum.min, value), max(datum.max, value)
                    datum.sum, datum.sample_count = datum.sum + value, datum.sample_count + 1
                current[key] = datum
        self._minutes = current

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(SAMPLE_EVERY_S):
            try:
                self.publish()
            except RuntimeError:  # a backend's dict changed size under us: the next sample catches up
                continue
            except Exception:  # one bad sample must not end the metrics: its trace goes to the server log
                traceback.print_exc()


def _request_init(self: IAMRequestBase, *args: Any, **kwargs: Any) -> None:
    _original_request_init(self, *args, **kwargs)
    if self._service == "monitoring":
        self._action = "cloudwatch:" + self._action.split(":", 1)[1]


def apply() -> threading.Event:
    """Patches moto and starts publishing; set the returned event to stop."""
    Queue.delete_message = _delete_message  # type: ignore[method-assign]
    IAMRequestBase.__init__ = _request_init  # type: ignore[method-assign]
    stop = threading.Event()
    threading.Thread(target=Publisher().run, args=(stop,), name="sqs-metrics", daemon=True).start()
    return stop
