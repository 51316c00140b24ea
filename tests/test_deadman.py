"""The dead-man's switch: proactive automations that tell on-call when a flow has stopped reporting per feed and
account (deployments/alerts.py). Pure parts without servers; one end-to-end test on the session's Prefect server
with a 10 s window (Prefect's proactive minimum)."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import prefect_events
from pydantic import ValidationError

from deployments.alerts import (
    ACCOUNT_LABEL,
    ALERT_PREFIX,
    ARMED_EVENT,
    WATCHED,
    apply_alerts,
    dead_mans_switch,
    span,
    watched_feeds,
)
from deployments.local.chat import ChatInbox
from deployments.local.stack import REPO_ROOT
from socfeeds.settings import Settings, default_s3_feeds

WINDOW_S = 10  # canary.expected_every and audit.expected_every in the end-to-end test
REPORT_AFTER_S = 2  # when account A's cloudtrail reports: inside the first window, which a deploy opened
ALERT_SLACK_S = 60  # measured ~3-5 s after a window closes (test-output/deadman-latency.txt); room for CI
MEASUREMENTS = REPO_ROOT / "test-output" / "deadman-latency.txt"
LINK = "http://127.0.0.1:4200/deployments/deployment/d"


def fleet_settings(accounts: list[dict[str, Any]], **values: Any) -> Settings:
    """Two S3 feeds of the catalog (no EKS), over the given fleet accounts; the first account is the settings'."""
    feeds = {name: feed.model_dump(mode="json", exclude_none=True) for name, feed in default_s3_feeds().items()
             if name in ("cloudtrail", "application-logs")}
    return Settings(account_id=accounts[0]["account_id"], s3_feeds=feeds, firehose_feeds={},
                    fleet={"accounts": accounts}, **values)


def armed_or_passed(event: str, account: str, at: datetime) -> dict[str, Any]:
    """The template context of a firing: the last event the account's window heard."""
    from prefect.server.events.schemas.events import ReceivedEvent

    return {"event": ReceivedEvent(event=event, occurred=at, id=uuid.uuid4(), resource={
        "prefect.resource.id": "socfeeds.feed.cloudtrail", "prefect.resource.name": "cloudtrail",
        ACCOUNT_LABEL: account})}


def rendered(subject: str, body: str, context: dict[str, Any]) -> str:
    """As the server renders a notification, and as the on-call block posts it ("*subject*\\nbody")."""
    from prefect.server.events.jinja_filters import all_filters
    from prefect.server.utilities.user_templates import register_user_template_filters, render_user_template_sync

    register_user_template_filters(all_filters)
    return f"*{render_user_template_sync(subject, context)}*\n{render_user_template_sync(body, context)}"


def switch_message(kind: str, feed: str, account: str, window: str, link: str, heard: str) -> str:
    """What on-call reads; `heard` is the line about the last event the window heard."""
    noun, verb, deployment = {"canary": ("canary", "passed", "feed-canary/daily"),
                              "audit": ("audit", "completed", "audit-feeds/daily")}[kind]
    return (f"*socfeeds: no {noun} has {verb} for {feed} in {window}*\n"
            f"No {noun} has {verb} for {feed} of account {account} in {window}: worker down, schedule paused, or the "
            f"{noun} failing before it emits.\n{heard}\n"
            f"Deployment (schedule, work pool, last runs): {link}\n"
            f"Once the worker runs and the schedule is active: prefect deployment run '{deployment}' "
            f"--param feeds='[\"{feed}\"]' --param accounts='[\"{account}\"]' --watch")


# --- without servers ---------------------------------------------------------------------------------------------


def test_each_account_is_watched_for_its_own_feeds_with_its_longest_window() -> None:
    """A feed delivering into another account's bucket is the bucket owner's to report (its canary and audit run
    there), so the delivering account is not watched for it; a fleet override of the window applies."""
    settings = fleet_settings([
        {"account_id": "111111111111"},
        {"account_id": "222222222222", "feeds": ["cloudtrail"], "overrides": {"canary": {"expected_every": "PT30H"}}},
        {"account_id": "333333333333", "overrides": {"s3_feeds": {"application-logs": {
            "bucket": "central-app-logs", "bucket_account": "111111111111"}}}}])
    watched = watched_feeds(settings)
    assert {feed: sorted(accounts) for feed, accounts in watched.items()} == {
        "cloudtrail": ["111111111111", "222222222222", "333333333333"], "application-logs": ["111111111111"]}
    assert watched["cloudtrail"]["222222222222"].canary.expected_every == timedelta(hours=30)


@pytest.mark.parametrize(("window", "said"), [(timedelta(hours=26), "26 h"), (timedelta(minutes=90), "90 min"),
                                              (timedelta(seconds=75), "75 s")])
def test_the_window_is_said_as_set(window: timedelta, said: str) -> None:
    assert span(window) == said


def test_the_message_names_feed_account_window_last_event_and_the_deployment() -> None:
    canary, audit = WATCHED
    at = datetime(2026, 11, 28, 3, 4, 5, 600_000, tzinfo=UTC)
    default = fleet_settings([{"account_id": "111122223333"}]).canary.expected_every
    never = dead_mans_switch(canary, "cloudtrail", default, LINK)
    assert rendered(never.subject, never.body, armed_or_passed(ARMED_EVENT, "111122223333", at)) == switch_message(
        "canary", "cloudtrail", "111122223333", "26 h", LINK,
        "Nothing since this switch was armed by a deploy at 2026-11-28 03:04:05 UTC.")
    stopped = dead_mans_switch(audit, "cloudtrail", timedelta(hours=26), LINK)
    completed = armed_or_passed("socfeeds.audit.completed", "111122223333", at)
    assert rendered(stopped.subject, stopped.body, completed) == switch_message(
        "audit", "cloudtrail", "111122223333", "26 h", LINK, "Last completed at 2026-11-28 03:04:05 UTC.")
    assert never.silent_for == timedelta(hours=26) and never.after == {"socfeeds.canary.passed", ARMED_EVENT}


@pytest.mark.parametrize("field", ["canary", "audit"])
def test_a_window_prefect_cannot_watch_is_refused_naming_the_field(field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        fleet_settings([{"account_id": "111111111111"}], **{field: {"expected_every": 5}})
    assert f"{field}.expected_every" in str(refused.value) and "greater than or equal to 10 seconds" in str(
        refused.value)


# --- on the real Prefect server ----------------------------------------------------------------------------------


@pytest.fixture
def inbox(prefect_server: None, tmp_path: Path) -> Iterator[ChatInbox]:
    """The on-call channel; the switches this test applied are removed after it, so they alert nobody later."""
    from prefect.client.orchestration import get_client

    chat = ChatInbox(tmp_path / "chat.jsonl").start()
    yield chat
    chat.stop()
    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            if automation.name.startswith(ALERT_PREFIX):
                client.delete_automation(automation.id)


def deployment_links() -> dict[str, str]:
    """The watched flows' deployments, as `prefect deploy` would leave them (nothing runs them here)."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.urls import url_for

    links = {}
    with get_client(sync_client=True) as client:
        for watched in WATCHED:
            flow, name = watched.deployment.split("/")
            deployment_id = client.create_deployment(flow_id=client.create_flow_from_name(flow), name=name)
            links[watched.noun] = str(url_for("deployment", obj_id=deployment_id))
    return links


def test_the_switch_fires_once_per_silent_feed_and_account_and_a_pass_restarts_the_window(
        inbox: ChatInbox) -> None:
    """Account A's cloudtrail passes (canary) and completes (audit) in the window, as the real flows emit it; A's
    application-logs and B's cloudtrail stay silent. The silent pairs alert when the window after the deploy
    closes; A's cloudtrail only a window after its pass, once, naming the pass. Deploying twice changes nothing."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    a, b = (str(random.randrange(10**11, 10**12)) for _ in range(2))  # accounts no other test emits for
    settings = fleet_settings([{"account_id": a}, {"account_id": b, "feeds": ["cloudtrail"]}],
                              canary={"expected_every": WINDOW_S}, audit={"expected_every": WINDOW_S},
                              alerts={"webhook_url": inbox.url})
    links = deployment_links()
    first, again = apply_alerts(settings), apply_alerts(settings)
    switches = [f"socfeeds: no {w.noun} {w.verb}: {feed}" for w in WATCHED for feed in ("cloudtrail",
                                                                                          "application-logs")]
    assert {f"alerts: created {name!r}" for name in switches} <= set(first), first
    assert {f"alerts: unchanged {name!r}" for name in switches} <= set(again), "a redeploy keeps the open windows"
    assert first[-1] == again[-1] == "alerts: dead-man's switches armed for 3 feed x account pairs"

    passed: list[datetime] = []

    def a_cloudtrail_reports() -> None:
        passed.append(datetime.now(UTC))
        resource = {"prefect.resource.id": "socfeeds.feed.cloudtrail", "prefect.resource.name": "cloudtrail",
                    ACCOUNT_LABEL: a}
        for watched in WATCHED:
            emit_event(event=watched.event, resource=resource, occurred=passed[0], payload={"account": a})
        EventsWorker.drain_all(timeout=5)

    scheduled = threading.Timer(REPORT_AFTER_S, a_cloudtrail_reports)  # as a schedule would run the flows
    scheduled.start()
    try:
        after_pass = [inbox.wait_for(about(w.noun, a, "cloudtrail"), WINDOW_S * 2 + ALERT_SLACK_S,
                                     f"{w.noun} switch for {a}'s cloudtrail") for w in WATCHED]
    finally:
        scheduled.cancel()
    [pass_at] = passed
    armed: dict[tuple[str, str], set[str]] = {}  # each deploy arms every pair; the window names the one it opened at
    for event in prefect_events(ARMED_EVENT):
        armed.setdefault((event["resource"][ACCOUNT_LABEL], event["resource"]["prefect.resource.name"]),
                         set()).add(utc(event["occurred"]))
    assert sorted(after_pass) == sorted(switch_message(w.noun, "cloudtrail", a, f"{WINDOW_S} s", links[w.noun],
                                                       f"Last {w.verb} at {utc(pass_at)}.") for w in WATCHED)
    silent = []
    for w in WATCHED:
        for account, feed in ((a, "application-logs"), (b, "cloudtrail")):
            naming_a_deploy = {switch_message(w.noun, feed, account, f"{WINDOW_S} s", links[w.noun],
                                              f"Nothing since this switch was armed by a deploy at {at}.")
                               for at in armed[account, feed]}
            silent.append(inbox.wait_for(naming_a_deploy.__contains__, ALERT_SLACK_S,
                                         f"{w.noun} switch for {account}'s {feed}"))
    assert sorted(inbox.messages()) == sorted([*silent, *after_pass]), "one message per silent pair, no other"
    late = [(inbox.arrived_at[message] - pass_at).total_seconds() for message in after_pass]
    assert min(late) >= WINDOW_S, f"A's cloudtrail alerted {late} s after its pass, inside its window"
    record_latency([seconds - WINDOW_S for seconds in late])


def about(noun: str, account: str, feed: str) -> Callable[[str], bool]:
    return lambda text: text.startswith(f"*socfeeds: no {noun} ") and f" {feed} of account {account} " in text


def utc(moment: str | datetime) -> str:
    """An event time as the message shows it."""
    return (datetime.fromisoformat(moment) if isinstance(moment, str) else moment).astimezone(UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def record_latency(after_close: list[float]) -> None:
    """Measured, never asserted: how long after a window closes its message reaches the webhook."""
    MEASUREMENTS.parent.mkdir(parents=True, exist_ok=True)
    with MEASUREMENTS.open("a") as out:
        out.write(f"dead-man's switch, {WINDOW_S} s window: window closed -> on-call message: "
                  f"{', '.join(f'{seconds:.1f} s' for seconds in after_close)}\n")
