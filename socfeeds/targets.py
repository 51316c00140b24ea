"""Targets: the (account, region) pairs a run covers, each with its own fully rendered `Settings`.

A target's settings are the settings file's values as declared, with the account's id, name, region,
clusters and overrides merged in, then validated like any settings file: names follow each account
({account_id}, {region}, {cluster}, {account_name}) and a bad override is refused naming the account.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from socfeeds.fleet import FleetSettings, TargetAccount
from socfeeds.settings import Settings, SettingsError, describe_errors


@dataclass(frozen=True)
class Target:
    """One account and region; `assume` is the role to assume there (None: the flows' own credentials)."""

    account_id: str
    name: str
    region: str
    feeds: tuple[str, ...] | None
    assume: str | None

    @property
    def key(self) -> str:
        """What a child run is given, and what the coverage matrix's rows are called."""
        return f"{self.account_id}/{self.region}"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.key})" if self.name != self.account_id else self.key

    @property
    def names(self) -> frozenset[str]:
        """What `accounts` may call it by: the account id, the account name, or `<account id>/<region>`."""
        return frozenset({self.account_id, self.name, self.key})


@dataclass(frozen=True)
class OrgAccount:
    """An Organizations account as ListAccounts (and the OU and tag filters) see it."""

    account_id: str
    name: str


def declared_targets(settings: Settings) -> list[Target]:
    """Every target the settings declare; without a fleet, the settings' own account and region."""
    fleet = settings.fleet
    if fleet is None:
        return [Target(settings.account_id, settings.account_name or settings.account_id, settings.region, None, None)]
    return [Target(account.account_id, account.label, region, tuple(account.feeds) if account.feeds else None,
                   fleet.role_arn(account.account_id))
            for account in fleet.accounts for region in account.regions or [settings.region]]


def enrolled(settings: Settings, found: Iterable[OrgAccount]) -> list[Target]:
    """Declared targets plus, when discovery enrolls them, every discovered account not declared."""
    targets = declared_targets(settings)
    fleet = settings.fleet
    if fleet is None or not fleet.organization.enroll:
        return targets
    declared = {t.account_id for t in targets}
    return [*targets, *(Target(a.account_id, a.name, settings.region, None, fleet.role_arn(a.account_id))
                        for a in found if a.account_id not in declared)]


def not_covered(targets: Iterable[Target], found: Iterable[OrgAccount]) -> list[OrgAccount]:
    """Organization accounts no target covers: accounts the SOC does not see."""
    covered = {t.account_id for t in targets}
    return [a for a in found if a.account_id not in covered]


def unknown_accounts(targets: list[Target], accounts: list[str]) -> list[str]:
    """Those of `accounts` that name none of `targets`."""
    return sorted(a for a in accounts if not any(a in t.names for t in targets))


def lists_organization(settings: Settings, accounts: list[str] | None) -> bool:
    """Whether a run must list the Organization: discovery is on, and the run covers every account (it reports
    those not covered) or names one only discovery enrolls. Each child run and account subflow names declared
    accounts, so a fleet of N lists it once, not N times."""
    discovery = settings.fleet.organization if settings.fleet else None
    if discovery is None or not discovery.enabled:
        return False
    return accounts is None or (discovery.enroll and bool(unknown_accounts(declared_targets(settings), accounts)))


def select(targets: list[Target], accounts: list[str] | None) -> list[Target]:
    """The targets a run covers: all, or those named by account id, account name, or `<account id>/<region>`."""
    if accounts is None:
        return targets
    if not accounts:
        raise SettingsError("accounts: an empty list selects no account; leave accounts out for every account")
    chosen = [t for t in targets if t.names & set(accounts)]
    unnamed = unknown_accounts(targets, accounts)
    if unnamed:
        known = sorted({t.account_id for t in targets} | {t.name for t in targets})
        raise SettingsError(f"accounts: unknown account(s) {unnamed}; the fleet has {known}")
    return chosen


def target_settings(settings: Settings, target: Target) -> Settings:
    """The settings of one target: the declared values with the account's own merged in, validated."""
    if settings.fleet is None:
        return settings
    account = next((a for a in settings.fleet.accounts if a.account_id == target.account_id),
                   TargetAccount(account_id=target.account_id, name=target.name))
    values = merged(settings.declared, {"account_id": account.account_id, "account_name": account.label,
                                        "region": target.region, **account.overrides})
    if len(account.clusters) == 1:
        values["eks_cluster_name"] = account.clusters[0]
    elif account.clusters:  # each Firehose feed once per cluster, named for it
        declared = values.get("firehose_feeds") or {name: {} for name in settings.firehose_feeds}
        values["firehose_feeds"] = {f"{name}-{cluster}": {**feed, "cluster_name": cluster}
                                    for name, feed in declared.items() for cluster in account.clusters}
    try:
        rendered = Settings.model_validate(values)
    except ValidationError as invalid:
        raise SettingsError(f"fleet account {target.label}: {len(invalid.errors())} invalid setting(s) once its "
                            f"overrides are merged in:\n{describe_errors(invalid)}") from None
    if target.feeds is None:
        return rendered
    unknown = sorted(set(target.feeds) - set(rendered.feed_names))
    if unknown:
        raise SettingsError(f"fleet account {target.label}: feeds {unknown} are not in the catalog")
    return rendered.model_copy(update={
        kind: {n: f for n, f in getattr(rendered, kind).items() if n in target.feeds}
        for kind in ("s3_feeds", "delivering_feeds", "firehose_feeds")})


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` over `base`, dictionaries merged key by key (an override names only what differs)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def discover(organizations: Any, fleet: FleetSettings) -> list[OrgAccount]:
    """Active accounts of the Organization, under the given OUs and with the given tags when set."""
    discovery = fleet.organization
    if discovery.ou_ids:
        ids: set[str] | None = set()
        for parent in discovery.ou_ids:
            for page in organizations.get_paginator("list_accounts_for_parent").paginate(ParentId=parent):
                ids |= {a["Id"] for a in page["Accounts"]}  # type: ignore[operator]
    else:
        ids = None
    found = []
    for page in organizations.get_paginator("list_accounts").paginate():
        for account in page["Accounts"]:
            if account.get("Status", "ACTIVE") != "ACTIVE" or (ids is not None and account["Id"] not in ids):
                continue
            if discovery.tags:
                tags = {t["Key"]: t["Value"] for t in organizations.list_tags_for_resource(
                    ResourceId=account["Id"]).get("Tags", [])}
                if any(tags.get(k) != v for k, v in discovery.tags.items()):
                    continue
            found.append(OrgAccount(str(account["Id"]), str(account.get("Name", account["Id"]))))
    return found
