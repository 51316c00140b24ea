"""Attributes moto stores but does not report back, as AWS does. Local stack only; moto 5.2.5.

1. SQS `RedriveAllowPolicy`: moto accepts it in CreateQueue/SetQueueAttributes but GetQueueAttributes
   never returns it. AWS returns it (SQS API Reference, GetQueueAttributes: "RedriveAllowPolicy - The
   string that includes the parameters for the permissions for the dead-letter queue redrive permission").
2. Firehose encryption status: a stream created with `DeliveryStreamEncryptionConfigurationInput` is
   described without a `Status`, so it reads as not encrypted. AWS reports `Status: ENABLED` once the
   stream is active (Firehose API Reference, DeliveryStreamEncryptionConfiguration: "Status ... ENABLED").
4. SetQueueAttributes without `Policy` erases the queue's policy in moto (its attribute setter assigns
   `attributes.get("Policy")`); AWS changes only the attributes given (SQS API Reference, SetQueueAttributes:
   "Sets the value of one or more queue attributes"), so another owner's policy survives a redrive change.
3. A user's ARN when its key is authorised: moto names the caller `user/<name>`, dropping the user's path, so a
   trust policy naming the user as AWS (and moto's own GetCallerIdentity) reports it, `user/<path><name>`,
   never matches. AWS keeps the path (IAM User Guide, "IAM identifiers": user ARNs include the path).
"""

from __future__ import annotations

from typing import Any

from moto.firehose.models import DeliveryStream
from moto.iam.access_control import IAMUserAccessKey
from moto.sqs.models import Queue

_original_stream_init = DeliveryStream.__init__


def _stream_init(self: DeliveryStream, *args: Any, **kwargs: Any) -> None:
    _original_stream_init(self, *args, **kwargs)
    encryption = self.delivery_stream_encryption_configuration
    if encryption and "KeyType" in encryption:
        self.delivery_stream_encryption_configuration = {**encryption, "Status": "ENABLED"}


def _user_arn(self: IAMUserAccessKey) -> str:
    user = self.backend.get_user(self._owner_user_name)
    return str(user.arn)


_original_set_attributes = Queue._set_attributes


def _set_attributes(self: Queue, attributes: dict[str, Any], now: float | None = None) -> None:
    policy = getattr(self, "policy", None)
    _original_set_attributes(self, attributes, now)
    if "Policy" not in attributes:
        self.policy = policy


def apply() -> None:
    Queue._set_attributes = _set_attributes  # type: ignore[method-assign]
    IAMUserAccessKey.arn = property(_user_arn)  # type: ignore[assignment,method-assign]
    if "RedriveAllowPolicy" not in Queue.BASE_ATTRIBUTES:
        Queue.BASE_ATTRIBUTES.append("RedriveAllowPolicy")
        Queue.redrive_allow_policy = None  # type: ignore[attr-defined]  # unset until a queue sets it
    DeliveryStream.__init__ = _stream_init  # type: ignore[method-assign]
