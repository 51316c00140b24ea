"""Fleet runs: the targets a run covers, one child run per target through the work pool, the coverage matrix.

A settings file without a `fleet` section has one target and runs in-process exactly as before. With several
targets the run is a parent: it validates every target's settings up front, starts one child run per target
through the flow's `per-account` deployment (so children land on any worker of the pool; outside a deployment,
as subflows here), at most `fleet.max_concurrent_accounts` at once, and reads each child's `<flow>-feeds`
table. A child's failure or crash is that target's row; it never hides another's. Children's deployments
carry no `socfeeds` tag, so on-call gets one message per incident: the parent's.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.client.schemas.objects import State
from prefect.deployments import run_deployment

from socfeeds.aws import AwsClients, session_name
from socfeeds.settings import Settings, SettingsError, load_settings
from socfeeds.targets import OrgAccount, Target, discover, enrolled, not_covered, select, target_settings

CHILD_DEPLOYMENT = "per-account"
FAILING = {"fail", "missing"}
RANK = {"fail": 0, "missing": 1, "warn": 2, "pass": 3, "not declared": 4}


@dataclass(frozen=True)
class Fleet:
    """What a run covers: the loaded settings, the tooling account's clients, the selected targets."""

    settings: Settings
    aws: AwsClients
    targets: list[Target]
    uncovered: list[OrgAccount]
    rendered: dict[str, Settings]  # target key -> that target's settings, rendered and validated up front

    @property
    def fans_out(self) -> bool:
        return len(self.targets) > 1

    def catalog(self, target: Target) -> list[str]:
        return self.rendered[target.key].feed_names

    @property
    def archives(self) -> frozenset[str]:
        """Accounts whose buckets other targets deliver into."""
        return frozenset(str(feed.bucket_account) for target in self.rendered.values()
                         for feed in target.delivering_feeds.values())


def start_fleet(feeds: list[str] | None, accounts: list[str] | None) -> Fleet:
    """Load and check everything a run covers before any target is touched: every target's settings render,
    `feeds` names feeds some target has, `accounts` names declared or discovered accounts."""
    settings = load_settings()
    aws = AwsClients.from_settings(settings)
    discovery = settings.fleet.organization if settings.fleet else None
    found = discover(aws.organizations, settings.fleet) if settings.fleet and discovery and discovery.enabled else []
    everyone = enrolled(settings, found)
    targets = select(everyone, accounts)
    rendered = {t.key: target_settings(settings, t) for t in targets}
    known = sorted({name for target in rendered.values() for name in target.feed_names})
    if feeds is not None and not feeds:
        settings.select_feeds(feeds)  # refuses the empty list, with the reason
    unknown = sorted(set(feeds or []) - set(known))
    if unknown:
        raise SettingsError(f"feeds: unknown feed(s) {unknown}; known: {known}")
    return Fleet(settings, aws, targets, not_covered(everyone, found) if accounts is None else [], rendered)


def target_inputs(fleet: Fleet, target: Target, flow_name: str) -> tuple[Settings, AwsClients]:
    """A target's settings and clients: its own credentials (the fleet role, assumed) when it is not the
    flows' own account-and-credentials single target."""
    settings = fleet.rendered[target.key]
    if target.assume is None or fleet.settings.fleet is None:
        return settings, fleet.aws
    fleet_settings = fleet.settings.fleet
    external_id = fleet_settings.external_id.get_secret_value() if fleet_settings.external_id else None
    name = session_name(flow_name, runtime.flow_run.name or "local")
    return settings, fleet.aws.assume(target.assume, target.region, external_id, name, fleet_settings.session_seconds)


@dataclass(frozen=True)
class ChildOutcome:
    """One target's result as the parent sees it: the child's final state and its per-feed table."""

    target: Target
    run_name: str
    state: str
    message: str
    feeds: dict[str, tuple[str, str]]  # feed -> (status, detail)


def fan_out(flow_name: str, fleet: Fleet, parameters: dict[str, Any],
            here: Callable[..., State[Any]]) -> list[ChildOutcome]:
    """One child run per target, at most max_concurrent_accounts at once, the accounts whose buckets others deliver
    into first; each child's outcome."""
    limit = fleet.settings.fleet.max_concurrent_accounts if fleet.settings.fleet else 1
    deployment = runtime.deployment.name

    def child(target: Target) -> ChildOutcome:
        child_parameters = {**parameters, "accounts": [target.key]}
        if deployment:
            run = run_deployment(f"{flow_name}/{CHILD_DEPLOYMENT}", parameters=child_parameters, timeout=None,
                                 poll_interval=2, as_subflow=True)
            run_id, run_name, state = run.id, run.name, run.state  # type: ignore[union-attr]
        else:
            state = here(**child_parameters, return_state=True)
            run_id = state.state_details.flow_run_id
            run_name = str(run_id)[:8]
        return ChildOutcome(target, str(run_name), str(state.name) if state else "Unknown",
                            str(state.message or "") if state else "", feed_table(flow_name, run_id))

    wanted = parameters.get("feeds")
    targets = [t for t in fleet.targets if wanted is None or set(wanted) & set(fleet.catalog(t))]
    waves = [[t for t in targets if t.account_id in fleet.archives],  # a member's source needs the archive's bucket
             [t for t in targets if t.account_id not in fleet.archives]]
    if not deployment:  # subflows share this process's run context: one at a time
        return [child(target) for wave in waves for target in wave]
    outcomes: list[ChildOutcome] = []
    with ThreadPoolExecutor(max_workers=limit) as pool:  # each thread waits on its child; the work is elsewhere
        for wave in waves:
            futures = [pool.submit(contextvars.copy_context().run, child, target) for target in wave]
            outcomes += [future.result() for future in futures]
    return outcomes


def publish_feed_status(flow_name: str, target: Target | None, statuses: dict[str, tuple[str, str]]) -> None:
    """The per-feed rows a fleet parent reads back from a target's run: feed, status (pass, warn, fail), one-line
    detail. Not published for a single-account settings file, where no parent reads it."""
    if target is None:
        return
    rows = [{"feed": feed, "status": status, "detail": detail} for feed, (status, detail) in statuses.items()]
    create_table_artifact(key=f"{flow_name}-feeds", table=rows, description=f"## {flow_name}: status per feed")


def feed_table(flow_name: str, run_id: UUID | None) -> dict[str, tuple[str, str]]:
    if run_id is None:
        return {}
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=[f"{flow_name}-feeds"])))
    if not artifacts or not isinstance(artifacts[0].data, str):
        return {}
    return {row["feed"]: (row["status"], row["detail"]) for row in json.loads(artifacts[0].data)}


def matrix(fleet: Fleet, outcomes: list[ChildOutcome]) -> tuple[list[str], list[tuple[ChildOutcome, list[str]]]]:
    """Feeds (columns) and, per target, each feed's cell: its status, `missing` (declared, no result: the
    child crashed or never got to it), or `not declared`. Targets with failures first."""
    feeds = sorted({feed for o in outcomes for feed in [*o.feeds, *fleet.catalog(o.target)]})
    rows = []
    for outcome in outcomes:
        declared = set(fleet.catalog(outcome.target)) | set(outcome.feeds)
        rows.append((outcome, [outcome.feeds[f][0] if f in outcome.feeds else "missing" if f in declared
                               else "not declared" for f in feeds]))
    rows.sort(key=lambda row: min((RANK[c] for c in row[1]), default=RANK["pass"]))
    return feeds, rows


def report(flow_name: str, fleet: Fleet, outcomes: list[ChildOutcome]) -> str | None:
    """Publish `<flow>-fleet` (the accounts x feeds matrix, failures first, then the Organization accounts no
    target covers); returns the parent's one-line failure message, or None when every target passed."""
    markdown, message = summary(flow_name, fleet, outcomes)
    create_markdown_artifact(key=f"{flow_name}-fleet", description=f"{flow_name}: accounts x feeds", markdown=markdown)
    get_run_logger().info("%s", markdown.splitlines()[0].removeprefix("# "))
    return message


def summary(flow_name: str, fleet: Fleet, outcomes: list[ChildOutcome]) -> tuple[str, str | None]:
    """The matrix as markdown, and the one-line failure message (None when every target passed and no uncovered
    account fails the run)."""
    feeds, rows = matrix(fleet, outcomes)
    header = "| account | run | " + " | ".join(feeds) + " |\n|" + "---|" * (len(feeds) + 2)
    lines = [f"| {o.target.label} | {o.run_name} ({o.state}) | " + " | ".join(cells) + " |" for o, cells in rows]
    failing = [(o, cells) for o, cells in rows if o.state != "Completed" or any(c in FAILING for c in cells)]
    uncovered = "\n".join(f"- {a.name} ({a.account_id})" for a in fleet.uncovered) or "none"
    details = "\n".join(f"- **{o.target.label}** {o.state}: {o.message}" for o, _ in failing)
    markdown = (f"# {flow_name}: {len(failing)} of {len(rows)} accounts failing, {len(fleet.uncovered)} not covered"
                f"\n\n{header}\n" + "\n".join(lines) + (f"\n\n## Failing accounts\n\n{details}" if details else "")
                + f"\n\n## Organization accounts with no target (not covered)\n\n{uncovered}\n")
    problems = [f"{o.target.label}: " + (", ".join(f"{feed} {cell}" for feed, cell in zip(feeds, cells, strict=True)
                                                   if cell in FAILING) or o.state)
                for o, cells in failing]
    discovery = fleet.settings.fleet.organization if fleet.settings.fleet else None
    if fleet.uncovered and discovery and discovery.uncovered == "fail":
        problems.append(f"{len(fleet.uncovered)} Organization account(s) not covered: "
                        + ", ".join(f"{a.name} ({a.account_id})" for a in fleet.uncovered)
                        + " (add them to fleet.accounts, or set fleet.organization.enroll = true)")
    if not problems:
        return markdown, None
    return markdown, (f"{flow_name}: {len(failing)} of {len(rows)} accounts failing: " + "; ".join(problems)
                      + f"; see artifact {flow_name}-fleet")
