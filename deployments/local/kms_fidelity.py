"""Using a customer managed KMS key needs KMS permission, as in AWS. Local stack only; moto 5.2.5.

moto never asks for KMS permission, so a principal without kms:GenerateDataKey writes to an SSE-KMS
bucket or queue locally while AWS refuses it. With IAM authentication on, this patch makes the signed
S3 and SQS calls that use a customer managed key also require the caller's identity policies to allow
the KMS action on the key's ARN (a key id, alias or alias ARN is resolved through moto's KMS backend):

- S3, "Using server-side encryption with AWS KMS keys (SSE-KMS)" and "Multipart upload API and
  permissions" (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html,
  https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html#mpuAndPermissions):
  PutObject, CopyObject and CreateMultipartUpload need kms:GenerateDataKey on the key they encrypt
  with (the request's x-amz-server-side-encryption headers, else the bucket's default encryption);
  GetObject of an SSE-KMS object, and CopyObject from one, need kms:Decrypt. A refusal is S3's
  AccessDenied (403) naming the KMS action.
- SQS, "Amazon SQS Key management"
  (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-key-management.html):
  producers (SendMessage, SendMessageBatch) need kms:GenerateDataKey and kms:Decrypt, consumers
  (ReceiveMessage) kms:Decrypt. A refusal is the KmsAccessDenied error those operations' API
  references list (awsQueryError KMS.AccessDeniedException, HTTP 400); a key that does not exist is
  KmsNotFound (KMS.NotFoundException, 400). S3 documents no error for a missing key: this patch answers
  KMS.NotFoundException (400) there too.

The policy must name the key ARN: in AWS an alias ARN in a Resource element does not reach the key
("Specifying KMS keys in IAM policy statements",
https://docs.aws.amazon.com/kms/latest/developerguide/cmks-in-iam-policies.html). AWS managed keys
(alias/aws/s3, alias/aws/sqs) and SSE-S3/SSE-SQS need nothing: their key policies allow every principal
in the account that may use the service. Identity policies only, evaluated by moto's own IAMRequest
(Deny and wildcards as moto applies them to every other action): moto does not evaluate KMS key
policies at all, so a key policy that grants a principal directly is not honoured and one that denies
is not enforced (the verify flow parses key policies instead). Only signed requests reaching the S3
and SQS front ends are checked: what S3 does internally (event notifications to an SSE-KMS queue) is
not a request and keeps working. Not covered: UploadPart's kms:Decrypt, disabled or pending-deletion
keys, grants.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import moto
from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.exceptions import JsonRESTError
from moto.iam.access_control import IAMRequest
from moto.kms.models import KmsBackend, kms_backends
from moto.s3.exceptions import S3ClientError
from moto.s3.responses import S3Response
from moto.sqs.exceptions import QueueDoesNotExist
from moto.sqs.responses import SQSResponse

PATCHED_MOTO = "5.2.5"
_KMS_ALGORITHMS = {"aws:kms", "aws:kms:dsse"}
_OBJECT_SUBRESOURCES = {"acl", "tagging", "retention", "legal-hold", "attributes", "uploadId", "partNumber", "restore",
                        "select"}
_SQS_KEY_ACTIONS = {"SendMessage": ("GenerateDataKey", "Decrypt"), "SendMessageBatch": ("GenerateDataKey", "Decrypt"),
                    "ReceiveMessage": ("Decrypt",)}

_original_s3_authorize = S3Response._authenticate_and_authorize_s3_action
_original_sqs_authorize = SQSResponse._authenticate_and_authorize_normal_action


class _Refused(Exception):
    pass


class _MissingKey(Exception):
    pass


class _KeyUse(IAMRequest):
    """moto's evaluation of the caller's identity policies, for a KMS action a service performs for the caller."""

    def __init__(self, response: Any, action: str) -> None:
        super().__init__(account_id=response.current_account, method=response.method, path=response.raw_path,
                         data=response.data, body=response.raw_body, headers=response.headers, action=action)
        self._action = f"kms:{action}"

    def _raise_access_denied(self) -> None:
        raise _Refused(f"User: {self._access_key.arn} is not authorized to perform: {self._action}")


def _auth_on() -> bool:
    return bool(ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT)


def _customer_key_arn(key_id: str, account_id: str, region: str) -> str | None:
    """The ARN of the key that key_id names in that account and region, or None for an AWS managed key."""
    if key_id.startswith("arn:"):
        region, account_id = key_id.split(":")[3:5]
    backend: KmsBackend = kms_backends[account_id][region]
    name = backend.get_alias_name(key_id)
    if name.startswith("alias/aws/"):
        return None
    raw_id = backend.get_key_id_from_alias(name) if name.startswith("alias/") else backend.get_key_id(key_id)
    key = backend.keys.get(raw_id or "")
    if key is None:
        raise _MissingKey(key_id)
    if any(alias.startswith("alias/aws/") for alias in key.aliases):
        return None
    return str(key.arn)


def _refusal(response: Any, uses: list[tuple[str, str]]) -> str | None:
    """Why the caller may not perform these (KMS action, key ARN) uses, or None if every one is allowed."""
    for action, key_arn in uses:
        try:
            _KeyUse(response, action).check_action_permitted(key_arn)
        except _Refused as refused:
            return f"{refused} on resource: {key_arn}"
    return None


def _s3_upload_key(response: Any, bucket: Any) -> str | None:
    """The KMS key a new object is encrypted with: the request's headers, else the bucket's default."""
    algorithm = response.headers.get("x-amz-server-side-encryption")
    if algorithm:
        return response.headers.get("x-amz-server-side-encryption-aws-kms-key-id") if algorithm in _KMS_ALGORITHMS \
            else None
    default = (bucket.encryption or {}).get("Rule", {}).get("ApplyServerSideEncryptionByDefault", {})
    return default.get("KMSMasterKeyID") if default.get("SSEAlgorithm") in _KMS_ALGORITHMS else None


def _s3_object_key(response: Any, bucket_name: str, key_name: str, version_id: str | None) -> str | None:
    stored = response.backend.get_object(bucket_name, key_name, version_id=version_id)
    return stored.kms_key_id if stored is not None and stored.encryption in _KMS_ALGORITHMS else None


def _s3_key_uses(response: Any, bucket: Any, key_name: str) -> Iterator[tuple[str, str | None]]:
    """The (KMS action, key id) uses of an object call; an SSE-KMS request without a key id uses aws/s3."""
    query = parse_qs(urlparse(response.uri).query, keep_blank_values=True)
    if response.method == "PUT" and not _OBJECT_SUBRESOURCES & query.keys():
        yield "GenerateDataKey", _s3_upload_key(response, bucket)
        if source := response.headers.get("x-amz-copy-source"):
            parsed = urlparse(source)
            source_bucket, source_key = unquote(parsed.path).lstrip("/").split("/", 1)
            version = parse_qs(parsed.query).get("versionId", [None])[0]
            if source_bucket in response.backend.buckets:
                yield "Decrypt", _s3_object_key(response, source_bucket, source_key, version)
    elif response.method == "POST" and "uploads" in query:
        yield "GenerateDataKey", _s3_upload_key(response, bucket)
    elif response.method == "GET" and not _OBJECT_SUBRESOURCES & query.keys():
        yield "Decrypt", _s3_object_key(response, bucket.name, key_name, query.get("versionId", [None])[0])


def _s3_authorize(self: S3Response, bucket_name: str | None = None, key_name: str | None = None) -> None:
    on = _auth_on()
    _original_s3_authorize(self, bucket_name=bucket_name, key_name=key_name)
    bucket = self.backend.buckets.get(bucket_name or "")
    if not (on and bucket and key_name and "Authorization" in self.headers):
        return
    uses: list[tuple[str, str]] = []
    for action, key_id in _s3_key_uses(self, bucket, key_name):
        try:
            key_arn = _customer_key_arn(key_id, bucket.account_id, bucket.region_name) if key_id else None
        except _MissingKey:
            raise S3ClientError("KMS.NotFoundException", f"Invalid keyId {key_id}") from None
        if key_arn:
            uses.append((action, key_arn))
    if refusal := _refusal(self, uses):
        raise S3ClientError("AccessDenied", refusal)


class _SqsKmsError(JsonRESTError):
    """An SQS JSON-protocol error as AWS sends one: the shape in __type, the awsQuery code in x-amzn-query-error."""

    def __init__(self, response: Any, shape: str, query_code: str, message: str) -> None:
        super().__init__(f"com.amazonaws.sqs#{shape}", message)
        response.response_headers.update({"x-amzn-query-error": f"{query_code};Sender",
                                          "Content-Type": "application/x-amz-json-1.0"})


def _sqs_authorize(self: SQSResponse, resource: str = "*") -> None:
    on = _auth_on()
    _original_sqs_authorize(self, resource)
    actions = _SQS_KEY_ACTIONS.get(self._get_action(), ())
    if not (on and actions and "Authorization" in self.headers):
        return
    try:
        queue = self.sqs_backend.get_queue(self._get_queue_name())
    except QueueDoesNotExist:
        return  # the action itself answers
    key_id = getattr(queue, "kms_master_key_id", None)
    try:
        key_arn = _customer_key_arn(key_id, self.current_account, self.region) if key_id else None
    except _MissingKey:
        raise _SqsKmsError(self, "KmsNotFound", "KMS.NotFoundException", f"Key '{key_id}' does not exist") from None
    if key_arn and (refusal := _refusal(self, [(action, key_arn) for action in actions])):
        raise _SqsKmsError(self, "KmsAccessDenied", "KMS.AccessDeniedException", refusal)


def apply() -> None:
    if moto.__version__ != PATCHED_MOTO:
        raise RuntimeError(f"kms_fidelity is written for moto {PATCHED_MOTO}, not {moto.__version__}")
    S3Response._authenticate_and_authorize_s3_action = _s3_authorize  # type: ignore[method-assign,assignment]
    SQSResponse._authenticate_and_authorize_normal_action = _sqs_authorize  # type: ignore[method-assign,assignment]
