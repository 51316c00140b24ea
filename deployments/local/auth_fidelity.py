"""Two fixes to moto's IAM enforcement, so least-privilege policies are tested as AWS applies them.
Local stack only; moto 5.2.5.

1. Signatures of REST GET/DELETE requests without a body.
With IAM authentication on, moto recomputes a request's SigV4 signature over the request's parsed
parameters when the body is empty, so an EKS `GET /clusters/<name>` (path parameters, no body)
never matches what botocore signed (an empty payload) and fails with SignatureDoesNotMatch.
AWS signs and checks the empty payload; so does this patch.

2. Resources of CloudWatch Logs actions. moto authorises every Logs call against resource '*',
so a policy scoped to a log group (the canary writer's) can never allow anything. AWS authorises
CreateLogStream on the log group ARN and PutLogEvents on the log stream ARN; so does this patch.
"""

from __future__ import annotations

from typing import Any

from botocore.awsrequest import AWSRequest
from moto.iam.access_control import IAMRequestBase
from moto.logs.responses import LogsResponse

_original = IAMRequestBase._create_aws_request


def _create_aws_request(self: Any) -> AWSRequest:
    request = _original(self)
    if self._method in {"GET", "HEAD", "DELETE"} and not self._body:
        request.data = b""
    return request


def apply() -> None:
    IAMRequestBase._create_aws_request = _create_aws_request  # type: ignore[method-assign]
    LogsResponse._determine_resource = _logs_resource  # type: ignore[attr-defined]


def _logs_resource(self: Any) -> str:
    """CloudWatch Logs actions are authorised on the log group / log stream ARN, as in AWS (moto: '*')."""
    group = self._get_param("logGroupName")
    if not group:
        return "*"
    arn = f"arn:aws:logs:{self.region}:{self.current_account}:log-group:{group}"
    stream = self._get_param("logStreamName")
    if self._get_action() == "PutLogEvents" and stream:
        return f"{arn}:log-stream:{stream}"
    return arn
