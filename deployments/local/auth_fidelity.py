"""Three fixes to moto's IAM enforcement, so least-privilege policies are tested as AWS applies them.
Local stack only; moto 5.2.5.

1. Signatures of REST GET/DELETE requests without a body.
With IAM authentication on, moto recomputes a request's SigV4 signature over the request's parsed
parameters when the body is empty, so an EKS `GET /clusters/<name>` (path parameters, no body)
never matches what botocore signed (an empty payload) and fails with SignatureDoesNotMatch.
AWS signs and checks the empty payload; so does this patch.

2. Resources of CloudWatch Logs actions. moto authorises every Logs call against resource '*',
so a policy scoped to a log group (the canary writer's) can never allow anything, nor be refused.
AWS evaluates an action on a log stream (a logStreamName in the request: CreateLogStream,
PutLogEvents, GetLogEvents, DeleteLogStream) against `log-group:NAME:log-stream:STREAM`, and every
other action on a log group against `log-group:NAME:*`, except TagResource, UntagResource and
ListTagsForResource (their resourceArn) and the legacy TagLogGroup, UntagLogGroup and ListTagsLogGroup,
which take the bare `log-group:NAME`: a grant on the bare group ARN allows no CreateLogStream.
This patch evaluates the same forms. Sources: CloudWatch Logs API reference, LogGroup data type, field `arn`
(https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_LogGroup.html), and the
Service Authorization Reference for CloudWatch Logs, resource types log-group and log-stream
(https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazoncloudwatchlogs.html).

3. Wildcards in Resource and Action. moto turns a pattern into a regular expression by replacing `*` alone, so
`?` (AWS: any one character, as in a Secrets Manager ARN's `-??????` suffix) makes the expression invalid (a
500 for every call the policy is evaluated for), and `.` or `+` in a name match what they should not. AWS: "*"
matches any run of characters, "?" any single character, everything else itself (IAM User Guide, "IAM JSON
policy elements: Resource", https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html).
"""

from __future__ import annotations

import re
from re import Match
from typing import Any

from botocore.awsrequest import AWSRequest
from moto.iam.access_control import IAMPolicyStatement, IAMRequestBase
from moto.logs.responses import LogsResponse
from moto.utilities.utils import get_partition

_RESOURCE_ARN_TAGGING = {"TagResource", "UntagResource", "ListTagsForResource"}
_LEGACY_TAGGING = {"TagLogGroup", "UntagLogGroup", "ListTagsLogGroup"}

_original = IAMRequestBase._create_aws_request


def _create_aws_request(self: Any) -> AWSRequest:
    request = _original(self)
    if self._method in {"GET", "HEAD", "DELETE"} and not self._body:
        request.data = b""
    return request


def _match(pattern: str, string: str) -> Match[str] | None:
    """AWS's wildcard matching: `*` any run of characters, `?` one character, the rest literal."""
    expression = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.match(f"^{expression}$", string, flags=re.DOTALL)


def apply() -> None:
    IAMRequestBase._create_aws_request = _create_aws_request  # type: ignore[method-assign]
    IAMPolicyStatement._match = staticmethod(_match)  # type: ignore[method-assign]
    LogsResponse._determine_resource = _logs_resource  # type: ignore[attr-defined]


def _logs_resource(self: Any) -> str:
    """The ARN AWS authorises a CloudWatch Logs action against (moto: '*')."""
    action = self._get_action()
    if action in _RESOURCE_ARN_TAGGING:
        return str(self._get_param("resourceArn") or "*")
    identifier = self._get_param("logGroupName") or self._get_param("logGroupIdentifier")
    if not identifier:
        return "*"
    if identifier.startswith("arn:"):  # logGroupIdentifier may be the group's ARN, with or without ":*"
        group = str(identifier).removesuffix(":*")
    else:
        group = f"arn:{get_partition(self.region)}:logs:{self.region}:{self.current_account}:log-group:{identifier}"
    if action in _LEGACY_TAGGING:
        return group
    stream = self._get_param("logStreamName")
    return f"{group}:log-stream:{stream}" if stream else f"{group}:*"
