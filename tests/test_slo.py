"""Feed SLOs: the numbers (pure, no servers), then one canary run whose feed-slos artifact reads the events API and
renders in the Prefect UI."""

from __future__ import annotations

import base64
import os
import re
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import chromium
import pytest
from conftest import Stack, prefect_events
from test_deployments import SCREENSHOTS
from test_verify import artifacts_of
from test_xsiam_standin import eventually

from socfeeds.assurance import SloObjectives
from socfeeds.slo import (
    Audit,
    Budget,
    CanaryRun,
    Observation,
    SloError,
    SloStatus,
    chart_image,
    duration,
    evaluate,
    feed_slos_markdown,
    latency_chart,
    merged,
    observation_of,
    percentile,
    status_of,
)

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def run(day: float, latency_s: float | None, feed: str = "cloudtrail", passed: bool | None = None) -> CanaryRun:
    """A canary run `day` days before NOW; no latency means it failed."""
    return CanaryRun(id=f"{feed}-{day}", feed=feed, at=NOW - timedelta(days=day),
                     passed=latency_s is not None if passed is None else passed,
                     latency_ms=None if latency_s is None else int(latency_s * 1000))


def audit(day: float, sampled: int, found: int, staleness_s: float, feed: str = "cloudtrail") -> Audit:
    return Audit(id=f"audit-{feed}-{day}", feed=feed, at=NOW - timedelta(days=day),
                 sampled=sampled, found=found, completeness=found / sampled, ci_low=None, ci_high=None,
                 staleness_seconds=staleness_s)


def rows_of(observations: list[Observation], objectives: SloObjectives | None = None) -> dict[str, Any]:
    slos = evaluate("cloudtrail", objectives or SloObjectives(), observations, NOW)
    return {row.slo: row for row in slos.rows}


def test_p95_is_the_nearest_rank() -> None:
    assert percentile(list(range(1, 21)), 0.95) == 19  # 19 of 20 values at or below it
    assert percentile([3.0, 1.0, 2.0], 0.95) == 3.0  # too few runs: the slowest one
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.95) is None


@pytest.mark.parametrize(("failed", "left", "status"), [(0, "100%", SloStatus.MET), (1, "50%", SloStatus.MET),
                                                        (2, "0%", SloStatus.AT_RISK),
                                                        (3, "exhausted", SloStatus.BREACHED)])
def test_canary_success_budget_is_allowed_failures_against_failures_seen(failed: int, left: str,
                                                                         status: SloStatus) -> None:
    """99% over 200 runs allows 2 failures."""
    runs = [run(i / 10, None if i < failed else 1.0) for i in range(200)]
    row = rows_of(list(runs))["canary success"]
    assert row.status is status
    assert row.budget_left == f"{left} ({failed} of 2 allowed failed runs)"
    assert (row.fix != "") is (status is not SloStatus.MET)


def test_latency_budget_allows_the_slowest_five_percent() -> None:
    objectives = SloObjectives(canary_latency_p95_seconds=60)
    within = [run(i, 10.0 + i) for i in range(19)]
    one_slow = rows_of([*within, run(19.5, 90.0)], objectives)["canary latency p95"]
    assert one_slow.status is SloStatus.AT_RISK and one_slow.budget_left == "0% (1 of 1 allowed slower runs)"
    assert one_slow.current == "28 s over 20 confirmed runs (latest 10 s)"  # p95 = the 19th of 20, 10 + 18
    two_slow = rows_of([*within, run(19.5, 90.0), run(0.5, 61.0)], objectives)["canary latency p95"]
    assert two_slow.status is SloStatus.BREACHED and two_slow.current.startswith("1 min 1 s over 21")
    assert rows_of([run(1, None)])["canary latency p95"].status is SloStatus.NO_DATA  # failed runs have no latency


def test_completeness_counts_sampled_objects_and_shows_the_latest_audit() -> None:
    rows = rows_of([audit(3, 1000, 1000, 60), audit(2, 1000, 999, 60), audit(1, 50, 49, 120)])
    completeness = rows["completeness"]
    # 2,050 sampled at 99.9% allows 2.05 missing; 2 seen
    assert completeness.budget_left == "2% (2 of 2.05 allowed missing objects)"
    assert completeness.status is SloStatus.AT_RISK
    assert completeness.current == "98.00% (49 of 50 found; latest audit)"
    assert rows["staleness"].current == "2 min (latest audit)" and rows["staleness"].status is SloStatus.MET


def test_staleness_breaches_when_more_audits_are_stale_than_allowed() -> None:
    rows = rows_of([audit(day, 50, 50, 4000 if day == 1 else 30) for day in range(1, 11)])
    assert rows["staleness"].status is SloStatus.BREACHED  # 1 stale of 10 audits; 99% allows 0.1
    assert rows["staleness"].budget_left == "exhausted (1 of 0.1 allowed stale audits)"


def test_no_data_is_shown_as_such_never_as_met() -> None:
    stale: list[Observation] = [run(40, 1.0), audit(31, 50, 50, 10), run(1, 1.0, feed="rds")]  # old, or not ours
    slos = evaluate("cloudtrail", SloObjectives(), stale, NOW)
    assert {row.status for row in slos.rows} == {SloStatus.NO_DATA}
    assert all(row.current == "no data" and row.budget_left == "no data" and row.fix for row in slos.rows)
    assert slos.status is SloStatus.NO_DATA
    assert "no canary runs in the window" in latency_chart(slos)


def test_a_target_of_one_allows_nothing() -> None:
    assert Budget(events=10, bad=0, target=1).left == 1.0
    assert Budget(events=10, bad=1, target=1).left == -1.0  # breached by one bad event
    assert status_of(Budget(events=10, bad=1, target=1)) is SloStatus.BREACHED


def test_events_become_observations_and_this_runs_events_count_once() -> None:
    passed = {"id": "e1", "event": "socfeeds.canary.passed", "occurred": "2026-11-28T11:00:00.5Z",
              "resource": {"prefect.resource.id": "socfeeds.feed.cloudtrail", "socfeeds.account": "123456789012"},
              "payload": {"latency_ms": 812, "leg": None}}
    audited = {"id": "e2", "event": "socfeeds.audit.completed", "occurred": "2026-11-28T11:00:00+00:00",
               "resource": {"prefect.resource.id": "socfeeds.feed.rds"},
               "payload": {"sampled": 50, "found": 49, "completeness": 0.98, "ci_low": 0.9, "ci_high": 0.99,
                           "staleness_seconds": 30, "account": "210987654321"}}
    canary = observation_of(passed)
    assert canary == CanaryRun(id="e1", feed="cloudtrail", passed=True, latency_ms=812,
                               at=datetime(2026, 11, 28, 11, 0, 0, 500000, tzinfo=UTC))
    found = observation_of(audited)
    assert isinstance(found, Audit) and (found.feed, found.found, found.ci_low, found.staleness_seconds) == (
        "rds", 49, 0.9, 30)
    assert observation_of({**passed, "event": "socfeeds.run.recovered"}) is None
    assert observation_of({**passed, "resource": {"prefect.resource.id": "socfeeds.deployment.x"}}) is None
    with pytest.raises(SloError, match=r"socfeeds.audit.completed e2 for socfeeds.feed.rds: payload unreadable"):
        observation_of({**audited, "payload": {"sampled": "many"}})
    assert merged([canary], [canary, found]) == [canary, found]


def test_an_unreadable_event_is_skipped_and_reported_not_fatal() -> None:
    """Anyone with API access can emit an event: one bad payload must not fail every canary for a whole window."""
    from prefect.events import Event

    from flows._slo import History

    resource = {"prefect.resource.id": "socfeeds.feed.cloudtrail"}
    good = Event(event="socfeeds.canary.passed", resource=resource, payload={"latency_ms": 5})
    bad = Event(event="socfeeds.canary.passed", resource=resource, payload={"latency_ms": "fast"})
    history = History().add([good, bad, None])
    assert [o.id for o in history.observations] == [str(good.id)]
    assert history.unreadable == [f"event socfeeds.canary.passed {bad.id} for socfeeds.feed.cloudtrail: payload "
                                  "unreadable (invalid literal for int() with base 10: 'fast')"]
    slos = [evaluate("cloudtrail", SloObjectives(), history.observations, datetime.now(UTC))]
    text = feed_slos_markdown(slos, 1, None, history.unreadable)
    assert f"**1 unreadable events skipped** (the run log lists them), the first: {history.unreadable[0]}" in text


def test_the_chart_draws_each_run_against_the_objective() -> None:
    objectives = SloObjectives(canary_latency_p95_seconds=60)
    runs = [run(3, 20.0), run(2, 75.0), run(1, None), run(0.5, 30.0)]
    slos = evaluate("cloudtrail", objectives, runs, NOW)
    svg = ET.fromstring(latency_chart(slos))  # noqa: S314 (our own SVG)
    dots = svg.findall(f"{SVG}circle")
    assert [dot.get("fill") for dot in dots] == ["#2563eb", "#dc2626", "#2563eb"]  # red: above the objective
    assert float(dots[0].get("cx", 0)) < float(dots[1].get("cx", 0)) < float(dots[2].get("cx", 0))  # by time
    assert float(dots[1].get("cy", 0)) < float(dots[0].get("cy", 0))  # slower is higher
    assert len(svg.findall(f"{SVG}path")) == 1  # the failed run
    labels = [text.text for text in svg.findall(f"{SVG}text")]
    assert "objective 1 min" in labels and "p95 1 min 15 s" in labels
    assert "3 confirmed runs (dots), 1 failed (crosses on the top edge)" in labels
    image = chart_image(slos)
    encoded = re.fullmatch(r"!\[canary latency of cloudtrail\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", image)
    assert encoded and base64.b64decode(encoded.group(1)).decode() == latency_chart(slos)


def test_the_markdown_puts_breached_slos_and_feeds_first() -> None:
    healthy = evaluate("rds", SloObjectives(), [run(1, 1.0, feed="rds"), audit(1, 50, 50, 10, feed="rds")], NOW)
    failing = evaluate("cloudtrail", SloObjectives(), [run(1, None), audit(1, 50, 50, 10)], NOW)
    text = feed_slos_markdown([healthy, failing], events_read=4, oldest=NOW - timedelta(days=1))
    assert text.startswith("# feed-slos: 1 of 2 feeds breach an objective, 1 without data for one\n")
    table = [line for line in text.splitlines() if line.startswith(("breached", "no data", "met", "at risk"))]
    assert table[0].startswith("breached | cloudtrail | canary success | 0.0% (1 of 1 runs failed, the latest)")
    assert table[1].startswith("no data | cloudtrail | canary latency p95 | no data")
    assert [line for line in text.splitlines() if line.startswith("## ")] == ["## cloudtrail: breached", "## rds: met"]
    assert "4 events read, the oldest from 2026-11-27 12:00 UTC" in text


def test_durations_read_as_a_person_says_them() -> None:
    assert [duration(s) for s in (0.08, 12.4, 270, 900, 7500)] == ["0.08 s", "12 s", "4 min 30 s", "15 min",
                                                                   "2 h 5 min"]


def test_the_canary_publishes_feed_slos_from_the_events_api_and_the_ui_shows_the_chart(stack: Stack) -> None:
    """History (an audit emitted earlier) comes from the events API; this run's failure (the feed's bucket does
    not exist) is passed in directly. The artifact renders in the Prefect UI with its chart."""
    from prefect.events import emit_event

    from flows._slo import SLO_ARTIFACT, read_history
    from flows.canary import feed_canary
    from tasks.canary import ensure_canary_writer

    name = f"cloudtrail-{uuid.uuid4().hex[:6]}"  # this test's feed alone: other tests' canaries pass for cloudtrail
    stack.update(s3_feeds={name: stack.values["s3_feeds"]["cloudtrail"]})
    settings = stack.settings
    ensure_canary_writer.fn(stack.aws, settings, False)
    account = settings.account_id
    feed = {"prefect.resource.id": f"socfeeds.feed.{name}", "prefect.resource.name": name,
            "socfeeds.account": account}  # as the flows emit them
    days_ago = [datetime.now(UTC) - timedelta(days=day) for day in range(6)]
    history = [emit_event(event="socfeeds.canary.passed", occurred=at, resource=feed,
                          payload={"latency_ms": 60_000 * day, "account": account}) for day, at in
               enumerate(days_ago[1:], start=1)]
    history.append(emit_event(event="socfeeds.audit.completed", occurred=days_ago[0] - timedelta(minutes=1),
                              resource=feed, payload={"sampled": 81, "found": 80, "completeness": 0.9876,
                                                      "ci_low": 0.93, "ci_high": 0.998, "staleness_seconds": 4321,
                                                      "account": account}))
    elsewhere = emit_event(event="socfeeds.canary.failed", resource={**feed, "socfeeds.account": "999999999999"},
                           payload={"latency_ms": None, "account": "999999999999"})  # another account's feed
    assert elsewhere is not None
    eventually("the other account's event", lambda: any(e["id"] == str(elsewhere.id) for e in
                                                         prefect_events("socfeeds.canary.failed")))
    expected = {str(event.id) for event in history if event}

    def read() -> set[str]:
        return {o.id for o in read_history(account, datetime.now(UTC) - timedelta(days=7)).observations}

    eventually("the history events", lambda: read() >= expected)
    assert str(elsewhere.id) not in read(), "read_history returned another account's event"

    state = feed_canary(feeds=[name], return_state=True)
    assert state.is_failed()
    artifact = artifacts_of(state)[SLO_ARTIFACT]
    text = str(artifact.data)
    rows = {line.split(" | ")[2]: line for line in text.splitlines() if f" | {name} | " in line}
    assert rows["completeness"].split(" | ")[3] == "98.76% (80 of 81 found; 95% CI 93.0%-99.8%; latest audit)"
    assert rows["staleness"].split(" | ")[3] == "1 h 12 min (latest audit)"
    assert rows["canary success"].split(" | ")[3].endswith(" runs failed, the latest)")  # this run, passed in
    assert rows["canary latency p95"].split(" | ")[3].startswith("5 min over ")  # the slowest of the five
    assert f"## {name}: " in text and "](data:image/svg+xml;base64," in text

    ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
    dom = chromium.page_dom(chromium.find_or_install(), f"{ui}/artifacts/artifact/{artifact.id}",
                            SCREENSHOTS / "feed-slos.png", (1920, 1200))
    assert 'src="data:image/svg+xml;base64,' in dom, "the UI dropped the chart image"
    assert "feed-slos: " in dom and "98.76% (80 of 81" in dom and "run replay-feed for the audited window" in dom
