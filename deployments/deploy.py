"""`make deploy`: prefect.yaml's deployments and the on-call alerts, to the server in PREFECT_API_URL.

One command for both, so a deployment never goes live without its alerts; each deployment's `feeds`
parameter is then limited to the feed names the settings declare. The settings
(SOCFEEDS_SETTINGS_FILE / SOCFEEDS_*) are validated first: a bad value stops the deploy with the
field named. The work pool is not touched: create it once (README, Deployments).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags
from prefect.exceptions import PrefectHTTPStatusError

from deployments.alerts import DEPLOYMENT_TAG, apply_alerts
from socfeeds.settings import Settings, load_settings
from socfeeds.targets import declared_targets, target_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


class DeployFailed(RuntimeError):
    """`prefect deploy` refused; the message carries its output."""


def deploy(settings: Settings) -> list[str]:
    answer = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    if answer.returncode != 0:
        raise DeployFailed(f"prefect deploy --all failed:\n{answer.stdout[-2000:]}{answer.stderr[-2000:]}")
    return ["deployments: prefect.yaml applied", limit_feeds_parameter(settings), *apply_alerts(settings)]


# --- the feeds parameter: only declared feed names -----------------------------------------------------------------


def limit_feeds_parameter(settings: Settings) -> str:
    """Narrow each socfeeds deployment's `feeds` parameter to the feed names declared in the settings.

    Prefect generates `list[str] | None` from the flow signature, so a typo (`cloudtral`) or an empty list would
    start a run that only fails on the worker. With the names as an enum and `minItems: 1` in the deployment's
    schema (enforced), the server refuses such a run before it is created and the UI offers the names as choices.
    None (or no value) still means every feed. In a fleet, the names are every declared account's (an account's
    clusters name its Firehose feeds).
    """
    names = declared_feed_names(settings)
    with get_client(sync_client=True) as client:
        mine = DeploymentFilter(tags=DeploymentFilterTags(all_=[DEPLOYMENT_TAG]))
        for deployment in client.read_deployments(deployment_filter=mine):
            schema = copy.deepcopy(deployment.parameter_openapi_schema or {})
            properties = schema.get("properties", {})
            feeds, feed = properties.get("feeds"), properties.get("feed")
            if feeds is None and feed is None:
                continue  # e.g. rotate-reader-keys
            where = f"{client.read_flow(deployment.flow_id).name}/{deployment.name}"
            if feeds is not None:
                _limit_to(feeds, names, where)
            if feed is not None:  # replay-feed: one S3 feed
                feed.update(enum=declared_feed_names(settings, s3_only=True))
            try:
                client.update_deployment(deployment.id, DeploymentUpdate(
                    parameter_openapi_schema=schema, enforce_parameter_schema=True))
            except PrefectHTTPStatusError as refused:  # e.g. a default `feeds` naming an undeclared feed
                raise DeployFailed(f"{where}: feeds parameter schema refused: {refused.response.text}") from None
    return f"deployments: feeds parameter limited to {len(names)} declared feeds"


def declared_feed_names(settings: Settings, s3_only: bool = False) -> list[str]:
    """Every feed name a run may be given: each declared account's, in declaration order (only S3 feeds: those
    replay-feed takes)."""
    rendered = [target_settings(settings, target) for target in declared_targets(settings)]
    return list(dict.fromkeys(name for each in rendered
                              for name in (each.s3_feeds if s3_only else each.feed_names)))


def _limit_to(feeds: dict[str, Any], names: list[str], where: str) -> None:
    """Set the enum and minItems on the property's array form (Prefect writes `anyOf: [array, null]`)."""
    arrays = [form for form in feeds.get("anyOf", [feeds]) if form.get("type") == "array"]
    if not arrays:
        raise DeployFailed(f"{where}: the feeds parameter is no longer a list; cannot limit it: {feeds}")
    for form in arrays:
        form.update(items={"type": "string", "enum": names}, minItems=1)


def main() -> int:
    try:
        for line in deploy(load_settings()):
            print(line, flush=True)
    except (DeployFailed, ValueError) as error:
        print(f"deploy stopped: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
