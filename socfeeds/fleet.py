"""The fleet a settings file declares: the accounts (explicit, or found in AWS Organizations) that get feeds.

Declarations only; `socfeeds.targets` turns them into one `Settings` per account and region. A settings file
without a `fleet` section is a fleet of one (its `account_id` and `region`), run as before, with the flows'
own credentials.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_ACCOUNT_RE = re.compile(r"^\d{12}$")
_ROLE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$")
_SERVICE_RE = re.compile(r"^[a-z][a-z0-9-]{1,40}$")
_OU_RE = re.compile(r"^(ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}|r-[0-9a-z]{4,32})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetAccount(_Strict):
    """One account that gets feeds: where, which clusters, which feeds, and what differs from the shared catalog."""

    account_id: str = Field(description="12-digit AWS account id.")
    name: str = Field("", description="The account's name ({account_name} in resource names); default: the id.")
    regions: list[str] = Field(default_factory=list, description="Regions with feeds; default: the top-level region.")
    clusters: list[str] = Field(default_factory=list, description="EKS clusters whose control-plane logs are fed; "
                                "one: it is eks_cluster_name; several: each Firehose feed is repeated per cluster "
                                "as <feed>-<cluster>.")
    feeds: list[str] | None = Field(None, description="The catalog's feeds this account gets; default: all.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Settings values for this account only, "
                                      "merged into the settings file's (e.g. vpc_id, s3_feeds.cloudtrail.bucket).")

    @field_validator("account_id")
    @classmethod
    def _account(cls, value: str) -> str:
        if not _ACCOUNT_RE.match(value):
            raise ValueError(f"{value!r} is not a 12-digit AWS account id")
        return value

    @field_validator("overrides")
    @classmethod
    def _not_identity(cls, value: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted({"account_id", "region", "account_name", "fleet"} & set(value))
        if fixed:
            raise ValueError(f"overrides cannot set {fixed}: use the account's account_id, name and regions")
        return value

    @property
    def label(self) -> str:
        return self.name or self.account_id


class OrganizationDiscovery(_Strict):
    """Accounts found in AWS Organizations (organizations:ListAccounts, from the management or a delegated
    administrator account); active accounts only, optionally under given OUs and carrying given tags."""

    enabled: bool = False
    ou_ids: list[str] = Field(default_factory=list, description="Only accounts directly under these OUs or roots.")
    tags: dict[str, str] = Field(default_factory=dict, description="Only accounts carrying every one of these tags.")
    enroll: bool = Field(False, description="true: every discovered account is a target with the shared catalog. "
                         "false: discovery only reports accounts with no target as 'not covered'.")
    uncovered: Literal["fail", "warn"] = Field("fail", description="An account no target covers (one the SOC does "
                                               "not see) fails the fleet run (fail), or is only listed (warn).")

    @field_validator("ou_ids")
    @classmethod
    def _ous(cls, value: list[str]) -> list[str]:
        bad = [ou for ou in value if not _OU_RE.match(ou)]
        if bad:
            raise ValueError(f"{bad} are not OU or root ids (ou-xxxx-yyyyyyyy, r-xxxx)")
        return value


class FleetSettings(_Strict):
    """How the flows, running in a tooling account, reach every target account."""

    role_name: str = Field("socfeeds-target", description="The role the flows assume in each target account.")
    role_path: str = Field("/", description="That role's IAM path.")
    external_id: SecretStr | None = Field(None, description="sts:ExternalId the target role's trust requires.")
    session_seconds: int = Field(3600, ge=900, le=43200, description="Assumed-role session length; credentials "
                                 "are reused until 5 minutes before they expire.")
    accounts: list[TargetAccount] = Field(default_factory=list)
    organization: OrganizationDiscovery = OrganizationDiscovery()
    max_concurrent_accounts: int = Field(8, ge=1, le=256, description="Accounts worked on at once across the work "
                                         "pool: child runs at once x accounts_per_run.")
    api_calls_per_second: dict[str, float] = Field(default_factory=dict, description="Calls per second to each "
                                                   "AWS service (botocore's name: iam, sts, sqs, ...) per target "
                                                   "account, across the whole work pool; each fleet run keeps a "
                                                   "Prefect global rate limit aws-<account>-<service> at it. Unset: "
                                                   "only each client's adaptive retries pace the calls.")
    accounts_per_run: int | None = Field(None, ge=1, le=128, description="Accounts one child run works on, "
                                         "concurrently in threads (the work waits on AWS), sharing the run's fixed "
                                         "cost (a process or container start, ~4 s of CPU locally). Default: half "
                                         "of max_concurrent_accounts (at most half the accounts), so two child runs "
                                         "at once share the work across at least two workers.")

    @field_validator("role_name")
    @classmethod
    def _role(cls, value: str) -> str:
        if not _ROLE_NAME_RE.match(value):
            raise ValueError(f"{value!r} is not an IAM role name")
        return value

    @field_validator("api_calls_per_second")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(name for name, rate in value.items() if not _SERVICE_RE.match(name) or not 0 < rate <= 10_000)
        if bad:
            raise ValueError(f"{bad}: each key is an AWS service as botocore names it (iam, sts, sqs, ...), each value "
                             "calls per second, more than 0 and at most 10000")
        return value

    @model_validator(mode="after")
    def _unique(self) -> FleetSettings:
        seen: dict[str, int] = {}
        for account in self.accounts:
            seen[account.account_id] = seen.get(account.account_id, 0) + 1
        twice = sorted(account for account, count in seen.items() if count > 1)
        if twice:
            raise ValueError(f"accounts: {twice} declared more than once (one entry per account; list its regions)")
        names = [a.name for a in self.accounts if a.name]
        if len(names) != len(set(names)):
            raise ValueError("accounts: two accounts share a name")
        return self

    def role_arn(self, account_id: str) -> str:
        return f"arn:aws:iam::{account_id}:role{self.role_path}{self.role_name}"

    def run_size(self, accounts: int) -> int:
        """Accounts per child run for a fleet run over `accounts` accounts."""
        return self.accounts_per_run or max(1, -(-min(accounts, self.max_concurrent_accounts) // 2))

    def runs_at_once(self, run_size: int) -> int:
        """Child runs at once, so that at most max_concurrent_accounts accounts are worked on at once."""
        return max(1, self.max_concurrent_accounts // run_size)
