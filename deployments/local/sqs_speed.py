"""Make moto's ReceiveMessage linear in the queue's size. Local stack only; moto 5.2.5.

For every message it returns, moto re-reads the queue's attributes (recounting every message)
just to learn the retention period, so one receive from a queue holding 1,000 messages takes
about a second and a canary behind such a backlog cannot finish. This reads the retention period
directly; the answer is the same.
"""

from __future__ import annotations

from typing import Any

from moto.core.utils import unix_time
from moto.sqs.models import SQSBackend


def _is_message_valid_based_on_retention_period(self: SQSBackend, queue_name: str, message: Any) -> bool:
    queue = self.get_queue(queue_name)
    retention = int(queue.message_retention_period)  # type: ignore[attr-defined]
    return bool(retention + message.sent_timestamp / 1000 > unix_time())


def apply() -> None:
    SQSBackend.is_message_valid_based_on_retention_period = (  # type: ignore[method-assign]
        _is_message_valid_based_on_retention_period)
