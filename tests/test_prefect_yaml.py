"""prefect.yaml declares one deployment per flow and purpose, scheduled in London time, typed."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow

from flows._fleet import CHILD_DEPLOYMENT

ROOT = Path(__file__).resolve().parents[1]


def deployments() -> list[dict[str, Any]]:
    return list(yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"])


def flow_of(entrypoint: str) -> Flow[Any, Any]:
    path, name = entrypoint.split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
    assert isinstance(flow, Flow)
    return flow


def test_every_deployment_names_a_flow_the_outside_world_relies_on() -> None:
    names = {f"{flow_of(d['entrypoint']).name}/{d['name']}" for d in deployments()}
    assert names == {"provision-feeds/on-demand", "verify-feeds/daily", "feed-canary/daily",
                     "rotate-reader-keys/weekly", "rotate-reader-keys/on-demand", "audit-feeds/daily",
                     "replay-feed/on-demand", *(
                         f"{flow}/{CHILD_DEPLOYMENT}" for flow in ("provision-feeds", "verify-feeds", "feed-canary",
                                                                    "rotate-reader-keys", "audit-feeds"))}


def test_schedules_are_cron_in_london_and_parameters_enforced() -> None:
    for deployment in deployments():
        assert deployment["enforce_parameter_schema"] is True and deployment["work_pool"]["name"] == "socfeeds"
        for schedule in deployment.get("schedules", []):
            assert schedule["timezone"] == "Europe/London" and len(schedule["cron"].split()) == 5
        flow = flow_of(deployment["entrypoint"])
        assert set(deployment.get("parameters", {})) <= set(flow.parameters.properties)
        if deployment.get("schedules"):  # the UI shows no time zone for a schedule: the description says it
            assert deployment["description"].endswith("Europe/London.")
    weekly = next(d for d in deployments() if d["name"] == "weekly")
    assert weekly["parameters"] == {"dry_run": False, "force": False}


def test_no_secret_in_the_file() -> None:
    text = (ROOT / "prefect.yaml").read_text().lower()
    assert not any(word in text for word in ("api_key", "secret_access_key", "token:", "password"))


def test_every_deployment_people_run_carries_the_tag_the_failure_alert_matches_and_children_do_not() -> None:
    """A fleet's failing account alerts once, through its parent: the children's deployments lack the tag."""
    from deployments.alerts import DEPLOYMENT_TAG

    for deployment in deployments():
        child = deployment["name"] == CHILD_DEPLOYMENT
        assert (DEPLOYMENT_TAG in deployment["tags"]) is not child, deployment["name"]
        assert not (child and deployment.get("schedules")), "children are started by their parent only"
