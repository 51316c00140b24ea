"""Fleet runs: the targets a run covers, one child run per target through the work pool, the coverage matrix.

A settings file without a `fleet` section has one target and runs in-process exactly as before. With several
targets the run is a parent: it validates every target's settings up front, hands the targets in batches of
`fleet.accounts_per_run` to child runs of the flow's `per-account` deployment (so children land on any worker of
the pool), at most `fleet.max_concurrent_accounts` accounts at once; a child run (or a run outside a deployment)
works on its accounts concurrently, one subflow each, and the parent reads each account's `<flow>-feeds` table.
An account's failure or crash is that account's row; it never hides another's. Children's deployments
carry no `socfeeds` tag, so on-call gets one message per incident: the parent's.
"""

from __future__ import annotations

import contextvars
import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from prefect import Flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, State
from prefect.deployments import run_deployment

from socfeeds.aws import AwsClients, api_limit_name, pool_limits, session_name
from socfeeds.settings import Settings, SettingsError, load_settings
from socfeeds.targets import (
    OrgAccount,
    Target,
    discover,
    enrolled,
    lists_organization,
    not_covered,
    select,
    target_settings,
)

CHILD_DEPLOYMENT = "per-account"
ARCHIVES_FIRST = {"provision-feeds"}  # a member's source needs the archive's bucket to exist
ROWS_OF = {"rotate-reader-keys": ["reader"]}  # a flow whose per-account table is not one row per feed
FAILING = {"fail", "missing"}
ORGANIZATION_TRAIL = "organization trail"  # the cell of an account another target's organization trail logs
RANK = {"fail": 0, "missing": 1, "warn": 2, "pass": 3, ORGANIZATION_TRAIL: 4, "not declared": 4}


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
    def organization_trails(self) -> frozenset[str]:
        """Feeds a target declares as an organization trail: it logs every account of the Organization, so an
        account without that feed is covered by it, not missing it."""
        return frozenset(name for target in self.rendered.values()
                         for name, feed in {**target.s3_feeds, **target.delivering_feeds}.items()
                         if feed.organization_id)

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
    found = discover(aws.organizations, settings.fleet) if settings.fleet and lists_organization(settings, accounts) \
        else []
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
    return settings, fleet.aws.assume(target.assume, target.region, external_id, name, fleet_settings.session_seconds,
                                      pool_limits(fleet_settings.api_calls_per_second))


def ensure_api_limits(fleet: Fleet) -> list[str]:
    """Keep a Prefect global rate limit per target account and service at fleet.api_calls_per_second (slots decay
    at the rate; one second's calls at once); creates or updates only what differs. The names it changed."""
    rates = fleet.settings.fleet.api_calls_per_second if fleet.settings.fleet else {}
    wanted = {api_limit_name(t.account_id, service): rate for t in fleet.targets for service, rate in rates.items()}
    if not wanted:
        return []
    changed = []
    with get_client(sync_client=True) as client:
        existing, page = {}, client.read_global_concurrency_limits(limit=200)
        while page:
            existing.update({limit.name: limit for limit in page})
            page = client.read_global_concurrency_limits(limit=200, offset=len(existing)) if len(page) == 200 else []
        for name, rate in wanted.items():
            have = existing.get(name)
            if have is None or have.limit != math.ceil(rate) or have.slot_decay_per_second != rate or not have.active:
                client.upsert_global_concurrency_limit_by_name(name, math.ceil(rate), slot_decay_per_second=rate)
                changed.append(name)
    if changed:
        get_run_logger().info("API rate limits set from fleet.api_calls_per_second: %s", ", ".join(changed))
    return changed


@dataclass(frozen=True)
class ChildOutcome:
    """One target's result as the parent sees it: its run's final state and its per-feed table."""

    target: Target
    run_name: str
    state: str
    message: str
    feeds: dict[str, tuple[str, str]]  # feed -> (status, detail)


def fan_out(flow_name: str, fleet: Fleet, parameters: dict[str, Any],
            here: Flow[..., Any]) -> list[ChildOutcome]:
    """Each target's outcome; for provision-feeds, the accounts whose buckets others deliver into first. A
    deployment's run hands the targets to `<flow>/per-account` child runs, several accounts each
    (`fleet.accounts_per_run`), so they land on any worker of the pool; a child run (or a run outside a
    deployment) works on its accounts itself, concurrently, one subflow each."""
    wanted = parameters.get("feeds")
    targets = [t for t in fleet.targets if wanted is None or set(wanted) & set(fleet.catalog(t))]
    first = fleet.archives if flow_name in ARCHIVES_FIRST else frozenset()
    waves = [wave for wave in ([t for t in targets if t.account_id in first],
                               [t for t in targets if t.account_id not in first]) if wave]
    assert fleet.settings.fleet is not None  # several targets: a fleet
    limits = fleet.settings.fleet
    if runtime.deployment.name != CHILD_DEPLOYMENT:  # its parent did
        ensure_api_limits(fleet)
    if runtime.deployment.name in {None, CHILD_DEPLOYMENT}:
        return [outcome for wave in waves
                for outcome in in_process(flow_name, wave, parameters, here, limits.max_concurrent_accounts)]
    size = limits.run_size(len(targets))
    outcomes: list[ChildOutcome] = []
    with ThreadPoolExecutor(max_workers=limits.runs_at_once(size)) as pool:  # each thread waits on its child run
        for wave in waves:
            futures = [pool.submit(contextvars.copy_context().run, through_pool, flow_name, wave[i:i + size],
                                   parameters) for i in range(0, len(wave), size)]
            outcomes += [outcome for future in futures for outcome in future.result()]
    return outcomes


class OneStartAtATime:
    """Subflows that start one at a time, then run together.

    Prefect's server on SQLite answers concurrent creates of flow and task runs with 503 (database is locked),
    and the client backs off 2, 4, 8, 16 s: measured on 2 cores, 25 accounts' subflows started at once took 60 s
    to verify and 135 s to provision (one account never started); started one at a time, 16-20 s and 35 s. Only
    the start, from the call to the subflow's Running state, is serial; the work overlaps.
    """

    def __init__(self) -> None:
        self._starting = threading.Lock()

    def call(self, subflow: Flow[..., Any], **parameters: Any) -> State[Any]:
        started = threading.Event()

        def release() -> None:
            if not started.is_set():
                started.set()
                self._starting.release()

        def next_account_may_start(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
            release()

        self._starting.acquire()
        try:
            gated = subflow.with_options(on_running=[*subflow.on_running_hooks, next_account_may_start])
            return cast(State[Any], gated(**parameters, return_state=True))
        finally:
            release()  # when it never reached Running


def in_process(flow_name: str, targets: list[Target], parameters: dict[str, Any], here: Flow[..., Any],
               at_once: int) -> list[ChildOutcome]:
    """The targets `at_once` at a time, each a subflow in its own thread: the work waits on AWS, and the process
    start is paid once. A subflow that raises or crashes is that target's outcome only."""

    starts = OneStartAtATime()

    def account(target: Target) -> tuple[Target, State[Any] | str]:
        try:
            return target, starts.call(here, **parameters, accounts=[target.key])
        except Exception as error:  # the subflow never ran (e.g. the Prefect API refused its run): its cells only
            return target, f"{type(error).__name__}: {error}"

    with ThreadPoolExecutor(max_workers=min(len(targets), at_once)) as pool:
        done = [future.result() for future in [pool.submit(contextvars.copy_context().run, account, target)
                                               for target in targets]]  # this run's context: its subflows
    for target, error in done:
        if isinstance(error, str):
            get_run_logger().error("%s: its run could not start: %s", target.label, error)
    ran = [(target, state) for target, state in done if not isinstance(state, str)]
    run_ids = [state.state_details.flow_run_id for _, state in ran]
    tables = feed_tables(flow_name, [run_id for run_id in run_ids if run_id])
    outcomes = {target.key: ChildOutcome(target, str(run_id)[:8], str(state.name), str(state.message or ""),
                                         tables.get(run_id, {}) if run_id else {})
                for (target, state), run_id in zip(ran, run_ids, strict=True)}
    return [outcomes.get(target.key) or ChildOutcome(target, "(none)", "Crashed", f"its run could not start: {error}",
                                                     {}) for target, error in done]


def through_pool(flow_name: str, batch: list[Target], parameters: dict[str, Any]) -> list[ChildOutcome]:
    """One `<flow>/per-account` child run for a batch of targets, and each target's outcome: the child's own for a
    batch of one, else the subflow it ran for that target; a target with no subflow (the child crashed before it)
    gets the child's state, its feeds missing."""
    child: Any = run_deployment(f"{flow_name}/{CHILD_DEPLOYMENT}", parameters={
        **parameters, "accounts": [t.key for t in batch]}, timeout=None, poll_interval=2, as_subflow=True)
    runs: dict[str, FlowRun] = {batch[0].key: child}
    if len(batch) > 1:
        with get_client(sync_client=True) as client:
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[child.id])), limit=len(batch) * 2)
        runs = {str(sub.parameters["accounts"][0]): sub for sub in subflows if sub.parameters.get("accounts")}
    tables = feed_tables(flow_name, [run.id for run in runs.values()])
    outcomes = []
    for target in batch:
        run = runs.get(target.key, child)
        note = "" if target.key in runs else f"child run {child.name} ended before this account ran: "
        outcomes.append(ChildOutcome(target, str(run.name), str(run.state.name) if run.state else "Unknown",
                                     note + str(run.state.message or "" if run.state else ""),
                                     tables.get(run.id, {}) if target.key in runs else {}))
    return outcomes


def publish_feed_status(flow_name: str, target: Target | None, statuses: dict[str, tuple[str, str]]) -> None:
    """The per-feed rows a fleet parent reads back from a target's run: feed, status (pass, warn, fail), one-line
    detail. Not published for a single-account settings file, where no parent reads it."""
    if target is None:
        return
    rows = [{"feed": feed, "status": status, "detail": detail} for feed, (status, detail) in statuses.items()]
    create_table_artifact(key=f"{flow_name}-feeds", table=rows, description=f"## {flow_name}: status per feed")


def feed_tables(flow_name: str, run_ids: list[UUID]) -> dict[UUID, dict[str, tuple[str, str]]]:
    """Each run's `<flow>-feeds` rows (one read for all the runs)."""
    if not run_ids:
        return {}
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=run_ids), key=ArtifactFilterKey(any_=[f"{flow_name}-feeds"])))
    return {artifact.flow_run_id: {row["feed"]: (row["status"], row["detail"]) for row in json.loads(artifact.data)}
            for artifact in artifacts if artifact.flow_run_id and isinstance(artifact.data, str)}


def matrix(fleet: Fleet, outcomes: list[ChildOutcome], flow_name: str = ""
           ) -> tuple[list[str], list[tuple[ChildOutcome, list[str]]]]:
    """Feeds (columns) and, per target, each feed's cell: its status, `missing` (declared, no result: the
    child crashed or never got to it), `organization trail` (not declared here, logged by another target's
    organization trail), or `not declared`. Targets with failures first."""

    def declared(target: Target) -> list[str]:
        return ROWS_OF.get(flow_name) or fleet.catalog(target)

    feeds = sorted({feed for o in outcomes for feed in [*o.feeds, *declared(o.target)]})
    organization_trails = fleet.organization_trails  # read once: it walks every target's feeds
    rows = []
    for outcome in outcomes:
        expected = set(declared(outcome.target)) | set(outcome.feeds)
        rows.append((outcome, [outcome.feeds[f][0] if f in outcome.feeds else "missing" if f in expected
                               else ORGANIZATION_TRAIL if f in organization_trails else "not declared"
                               for f in feeds]))
    rows.sort(key=lambda row: min((RANK[c] for c in row[1]), default=RANK["pass"]))
    return feeds, rows


def report(flow_name: str, fleet: Fleet, outcomes: list[ChildOutcome]) -> str | None:
    """Publish `<flow>-fleet` (the accounts x feeds matrix, failures first, then the Organization accounts no
    target covers); returns the parent's one-line failure message, or None when every target passed."""
    markdown, message = summary(flow_name, fleet, outcomes)
    if runtime.deployment.name != CHILD_DEPLOYMENT:  # a child run's accounts are rows of its parent's matrix
        create_markdown_artifact(key=f"{flow_name}-fleet", description=f"{flow_name}: accounts x feeds",
                                 markdown=markdown)
    get_run_logger().info("%s", markdown.splitlines()[0].removeprefix("# "))
    return message


def summary(flow_name: str, fleet: Fleet, outcomes: list[ChildOutcome]) -> tuple[str, str | None]:
    """The matrix as markdown, and the one-line failure message (None when every target passed and no uncovered
    account fails the run)."""
    feeds, rows = matrix(fleet, outcomes, flow_name)
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
