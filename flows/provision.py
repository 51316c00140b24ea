"""provision-feeds: make every selected feed exist as declared (or, with dry_run, say what would change)."""

from __future__ import annotations

import json
from typing import cast

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture
from pydantic import BaseModel

import tasks.rds  # noqa: F401 (registers the RDS and CloudFront source wiring)
from flows._common import (
    Run,
    concurrent_tasks,
    failed_with,
    feed_of,
    fleet_result,
    gather,
    leaves_a_record,
    one_line,
    publish,
    publish_failures,
    target_run,
)
from flows._fleet import Fleet, publish_feed_status, start_fleet
from socfeeds import target_role, terraform
from socfeeds.report import Change
from socfeeds.resolve import flows_identity, resolve
from tasks.buckets import ensure_bucket
from tasks.canary import ensure_canary_writer
from tasks.firehose import ensure_cluster_logging, ensure_delivery_stream, ensure_subscription
from tasks.kms import ensure_key_policies
from tasks.notifications import ensure_notification
from tasks.queues import ensure_queues
from tasks.reader import ensure_reader
from tasks.sources import ensure_source
from tasks.target_role import ensure_target_role

CHANGE_COLUMNS = ["feed", "resource", "action", "detail", "applied", "owner"]
STEP_COLUMNS = ["step", "outcome", "detail"]
FAILURES_ARTIFACT = "provision-feeds-failures"
EXTERNAL_ID_PLACEHOLDER = "<fleet.external_id>"


class StepProblem(BaseModel):
    """A step that failed (its error carries the fix) or was skipped because a step it waits on failed."""

    step: str
    outcome: str
    detail: str


@flow(name="provision-feeds", task_runner=concurrent_tasks())
@leaves_a_record("provision-feeds")
def provision_feeds(feeds: list[str] | None = None, dry_run: bool = False,
                    accounts: list[str] | None = None) -> list[Change]:
    """Create or adopt every feed's resources: for S3 feeds the bucket, queues, notification and source;
    for the EKS feed the cluster's logging, the delivery stream and the subscription; the XSIAM reader
    and the canary's writer role.

    Idempotent: a rerun after any failure converges, and a run with nothing to do reports no
    changes. Nothing is ever deleted.

    Args:
        feeds: Feed names from settings; None means every feed.
        dry_run: Change nothing; report every change that would be made.
        accounts: Fleet accounts (id, name, or id/region); None means every account, one child run each.
    """
    fleet = start_fleet(feeds, accounts)
    tooling = tooling_identity(fleet) if fleet.settings.fleet else None
    tooling_role = ensure_tooling_role(fleet, tooling, dry_run)  # before any run assumes it there
    if fleet.fans_out:
        return cast(list[Change], fleet_result("provision-feeds", fleet, {"feeds": feeds, "dry_run": dry_run},
                                               provision_feeds))
    run = target_run(fleet, feeds, "provision-feeds")
    if run.target and tooling:
        publish_role_documents(fleet, run, tooling[1], tooling_role)
    shared = dry_run or run.settings.managed_by == "terraform"  # the reader, the writer, key policies
    keys = ensure_key_policies.submit(run.aws, run.settings, shared)  # S3 and CloudTrail test the key on setup
    steps: list[tuple[str, PrefectFuture[list[Change]]]] = [
        ("ensure-key-policies", keys),
        ("ensure-reader", ensure_reader.submit(run.aws, run.settings, shared)),
        ("ensure-canary-writer", ensure_canary_writer.submit(run.aws, run.settings, shared))]
    for name in run.s3_feeds:
        plan_only = dry_run or run.owner(name) == "terraform"  # Terraform's resources are reported, never written
        bucket = ensure_bucket.submit(run.aws, run.settings, name, plan_only)
        queues = ensure_queues.submit(run.aws, run.settings, name, plan_only)
        steps += [
            (f"ensure-bucket[{name}]", bucket),
            (f"ensure-queues[{name}]", queues),
            (f"ensure-notification[{name}]",
             ensure_notification.submit(run.aws, run.settings, name, plan_only, return_state=False,
                                       wait_for=[bucket, queues, keys])),
            (f"ensure-source[{name}]", ensure_source.submit(run.aws, run.settings, name, plan_only,
                                                             return_state=False, wait_for=[bucket, keys])),
        ]
    for name in run.delivering_feeds:  # the bucket is another account's: only the source is wired here
        plan_only = dry_run or run.owner(name) == "terraform"
        steps.append((f"ensure-source[{name}]", ensure_source.submit(run.aws, run.settings, name, plan_only)))
    for name in run.firehose_feeds:
        plan_only = dry_run or run.owner(name) == "terraform"
        logging = ensure_cluster_logging.submit(run.aws, run.settings, name, plan_only)
        stream = ensure_delivery_stream.submit(run.aws, run.settings, name, plan_only)
        steps += [
            (f"ensure-cluster-logging[{name}]", logging),
            (f"ensure-delivery-stream[{name}]", stream),
            (f"ensure-subscription[{name}]", ensure_subscription.submit(
                run.aws, run.settings, name, plan_only, return_state=False, wait_for=[logging, stream])),
        ]
    planned, errors = gather(steps)
    changes = [c.model_copy(update={"owner": run.owner(c.feed)}) for c in planned]
    verb = "would make" if dry_run else "made"
    summary = f"provision-feeds {verb} {len(changes)} changes" if changes else "provision-feeds: no changes"
    handed_over = [c for c in changes if c.owner == "terraform"]
    if handed_over:
        summary += f" ({len(handed_over)} for Terraform to make: see the provision-feeds-terraform artifact)"
        create_markdown_artifact(key="provision-feeds-terraform", description="Changes for the Terraform that owns "
                                 "these resources (socfeeds wrote none of them)",
                                 markdown=f"```hcl\n{terraform.snippet(handed_over)}\n```\n")
    publish("provision-feeds", summary, changes, CHANGE_COLUMNS)
    problems = [StepProblem(step=label, outcome="skipped" if error.startswith("skipped: ") else "failed",
                            detail=one_line(error.removeprefix("skipped: "))) for label, error in errors]
    problems.sort(key=lambda problem: problem.outcome)  # what failed (and its fix) before what it held up
    publish_failures(FAILURES_ARTIFACT, f"provision-feeds: {len(problems)} of {len(steps)} steps did not finish",
                     problems, STEP_COLUMNS, f"All {len(steps)} steps finished: {summary}.")
    publish_feed_status("provision-feeds", run.target, feed_status(run.feeds, changes, problems))
    if problems:
        return failed_with(f"provision-feeds{run.at}: {len(problems)} of {len(steps)} steps did not finish: "
                           + "; ".join(f"{p.step} {p.outcome}: {p.detail}" for p in problems)
                           + f"; see artifact {FAILURES_ARTIFACT}. Rerun after the fix: provision converges", changes)
    return changes


def feed_status(feeds: list[str], changes: list[Change], problems: list[StepProblem]) -> dict[str, tuple[str, str]]:
    """Each feed's cell in the fleet matrix (fail with its first problem, else pass with its change count), and a
    `shared` cell when a step every feed relies on (reader, writer, key policies) did not finish."""
    def of(feed: str) -> list[StepProblem]:
        return [p for p in problems if feed_of(p.step) == ("" if feed == "shared" else feed)]

    cells = {feed: ("fail", of(feed)[0].detail) if of(feed) else ("pass", f"{sum(c.feed == feed for c in changes)} "
                                                                          "changes") for feed in feeds}
    return {"shared": ("fail", of("shared")[0].detail), **cells} if of("shared") else cells


def tooling_identity(fleet: Fleet) -> tuple[str, str]:
    """The account the flows run in and the principal a target role's trust names."""
    caller = str(fleet.aws.sts.get_caller_identity()["Arn"])
    return caller.split(":")[4], flows_identity(fleet.aws, caller)


def ensure_tooling_role(fleet: Fleet, tooling: tuple[str, str] | None, dry_run: bool) -> list[Change]:
    """The fleet role in the flows' own account (`tooling`: account, principal), when that account is a target:
    the one role provision can make."""
    if tooling is None:
        return []
    account, principal = tooling
    mine = [t for t in fleet.targets if t.account_id == account]
    if not mine:
        return []
    settings = resolve(fleet.rendered[mine[0].key], fleet.aws)
    changes = ensure_target_role(fleet.aws, settings, [principal], dry_run)
    if changes:
        get_run_logger().info("fleet role in the tooling account %s: %s", account,
                              "; ".join(f"{c.action} {c.detail}" for c in changes))
    return changes


def publish_role_documents(fleet: Fleet, run: Run, principal: str, tooling_role: list[Change]) -> None:
    """The target role this account needs, for its platform team: trust (naming the tooling `principal`), the
    read-only grant to give first, the provision grant (in managed-policy parts)."""
    assert run.target is not None and fleet.settings.fleet is not None
    external = EXTERNAL_ID_PLACEHOLDER if fleet.settings.fleet.external_id else None  # a secret: never published
    docs = target_role.documents(run.settings, [principal], external)
    parts = target_role.attachable(docs["provision"])
    made = "".join(f"- {c.action}: {c.detail}{'' if c.applied else ' (not applied)'}\n" for c in tooling_role)
    create_markdown_artifact(key="provision-feeds-target-role", description=f"Target role for {run.target.label}",
                             markdown=(
        f"# Role {fleet.settings.fleet.role_name} in {run.target.label}\n\n"
        + (f"Made in the tooling account by this run:\n\n{made}\n" if made else "")
        + f"Trust (put the external id from the vault where it says {EXTERNAL_ID_PLACEHOLDER}; keep it out of "
        "version control):\n\n"
        f"```json\n{json.dumps(docs['trust'], indent=1)}\n```\n\n"
        "## Read-only grant (verify-feeds and a dry-run provision): grant this first\n\n"
        f"```json\n{json.dumps(docs['verify'], indent=1)}\n```\n\n"
        f"## Provision grant ({len(parts)} managed policies, attach all)\n\n"
        + "\n\n".join(f"```json\n{json.dumps(part, indent=1)}\n```" for part in parts) + "\n"))
