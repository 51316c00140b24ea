"""Role trust policies evaluated as AWS evaluates them, across accounts too. Local stack only; moto 5.2.5.

moto's check of a role's trust policy on sts:AssumeRole misses what a fleet's target role relies on:
1. A role in another account is never looked up there, so any caller assumes it whatever its trust policy says,
   and a role that does not exist is "assumed" too. AWS evaluates the trust policy of the role in the role's
   account and refuses a role that does not exist (IAM User Guide, "Cross account resource access in IAM").
2. A condition on a key the request does not carry passes: AssumeRole without the `sts:ExternalId` a trust
   requires succeeds. AWS: a condition on a missing key is false, unless its operator ends in `IfExists`
   (IAM User Guide, "IAM JSON policy elements: Condition operators" and "How to use an external ID").
3. A trust policy naming a role (`arn:aws:iam::<acct>:role/<path><name>`) never matches that role's sessions,
   which moto names `arn:aws:sts::<acct>:assumed-role/<name>/<session>`; AWS matches them. Naming the account
   (`arn:aws:iam::<acct>:root`, or the bare id) trusts the account's principals whose own policies allow the
   call (IAM User Guide, "AWS JSON policy elements: Principal").
4. Statements are combined as AWS combines them: a Deny that applies wins, else any Allow that applies allows.
   moto stops at the first statement whose principal differs, so a second Allow is never reached.
The caller's own policies are still checked by moto first: AWS requires both. Only `sts:ExternalId` is in the
request context (as in moto); conditions on other keys are left unevaluated, as moto leaves them.
"""

from __future__ import annotations

import json
from typing import Any

from moto.iam.models import IAMBackend, Role, iam_backends
from moto.iam.utils import REQUIRE_RESOURCE_ACCESS_POLICIES_CHECK, format_incoming_conditional_values
from moto.utilities.utils import get_partition

from deployments.local.policy_conditions import STRING_OPERATORS, allows_action, listed

_KNOWN_KEYS = {"sts:externalid"}


def _role(arn: str, region: str) -> Role | None:
    """The role an ARN names, in the account the ARN names (None when there is no such role)."""
    parts = arn.split(":", 5)
    if len(parts) < 6 or parts[2] != "iam" or not parts[5].startswith("role/") or parts[4] not in iam_backends:
        return None
    backend: IAMBackend = iam_backends[parts[4]][get_partition(region)]
    return next((role for role in backend.roles.values() if role.arn == arn), None)


def _caller_names(request: Any) -> set[str]:
    """Every Principal value that names the caller: its ARN, its role's ARN for a session, its account."""
    arn = str(request._access_key.arn)
    account = arn.split(":")[4]
    names = {arn, f"arn:aws:iam::{account}:root", account}
    if ":assumed-role/" in arn:
        role_name = arn.split(":assumed-role/", 1)[1].split("/")[0]
        backend: IAMBackend = iam_backends[account][get_partition(request._region)]
        names |= {role.arn for role in backend.roles.values() if role.name == role_name}
    return names


def _conditions_hold(conditions: dict[str, Any], context: dict[str, str]) -> bool:
    for operator, keys in conditions.items():
        base = operator.removesuffix("IfExists")
        for key, expected in keys.items():
            if key.lower() not in _KNOWN_KEYS or base not in STRING_OPERATORS:
                continue  # not in the request context moto builds: left as moto leaves it
            actual = next((value for name, value in context.items() if name.lower() == key.lower()), None)
            if actual is None:
                if not (operator.endswith("IfExists") or base.startswith("StringNot")):
                    return False
            elif not STRING_OPERATORS[base](actual, [str(e) for e in listed(expected)]):
                return False
    return True


def _applies(statement: dict[str, Any], action: str, names: set[str], context: dict[str, str]) -> bool:
    if not allows_action(statement.get("Action", []), action):
        return False
    principal = statement.get("Principal")
    trusted = principal if principal == "*" else listed((principal or {}).get("AWS", []))
    if trusted != "*" and "*" not in trusted and not names & set(trusted):
        return False
    return _conditions_hold(statement.get("Condition", {}), context)


def _is_assuming_role_operation(self: Any, resource_arn: str) -> bool:
    return ":role/" in resource_arn and self._action in REQUIRE_RESOURCE_ACCESS_POLICIES_CHECK


def _check_role_trust_relationship(self: Any, role_arn: str) -> bool:
    role = _role(role_arn, self._region)
    if role is None:
        return False
    statements = listed(json.loads(role.assume_role_policy_document)["Statement"])
    names, context = _caller_names(self), format_incoming_conditional_values(self._data)
    applying = [s for s in statements if _applies(s, self._action, names, context)]
    return any(s.get("Effect") == "Allow" for s in applying) and not any(s.get("Effect") == "Deny" for s in applying)


def apply() -> None:
    from moto.iam.access_control import IAMRequestBase

    IAMRequestBase._is_assuming_role_operation = _is_assuming_role_operation  # type: ignore[method-assign]
    IAMRequestBase._check_role_trust_relationship = _check_role_trust_relationship  # type: ignore[method-assign]
