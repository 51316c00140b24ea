"""Fix moto's signature check for REST GET/DELETE requests without a body. Local stack only; moto 5.2.5.

With IAM authentication on, moto recomputes a request's SigV4 signature over the request's parsed
parameters when the body is empty, so an EKS `GET /clusters/<name>` (path parameters, no body)
never matches what botocore signed (an empty payload) and fails with SignatureDoesNotMatch.
AWS signs and checks the empty payload; so does this patch.
"""

from __future__ import annotations

from typing import Any

from botocore.awsrequest import AWSRequest
from moto.iam.access_control import IAMRequestBase

_original = IAMRequestBase._create_aws_request


def _create_aws_request(self: Any) -> AWSRequest:
    request = _original(self)
    if self._method in {"GET", "HEAD", "DELETE"} and not self._body:
        request.data = b""
    return request


def apply() -> None:
    IAMRequestBase._create_aws_request = _create_aws_request  # type: ignore[method-assign]
