"""Each feed's service-level objectives, from the events the canary and the audit emit: values, budgets, a chart.

Pure: the flows read the events (flows/_slo.py) and hand them here as JSON-shaped mappings, so every number an
on-call engineer sees in the `feed-slos` artifact is unit-tested without a server.

Every SLO is counted the same way, as good and bad events over the window (Google's SRE workbook, "Implementing
SLOs"): the objective's share of events must be good, the rest is the error budget. Canary success counts runs;
canary latency counts confirmed runs slower than the objective against the 5% a p95 allows; completeness counts
sampled objects the audit did not find; staleness counts audits whose newest event was older than the objective.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from socfeeds.assurance import SloObjectives
from socfeeds.errors import OnCallError
from socfeeds.report import markdown_table, table_rows

CANARY_EVENT_PREFIX = "socfeeds.canary."
CANARY_PASSED = "socfeeds.canary.passed"
CANARY_FAILED = "socfeeds.canary.failed"
AUDIT_COMPLETED = "socfeeds.audit.completed"
FEED_RESOURCE_PREFIX = "socfeeds.feed."
ACCOUNT_LABEL = "socfeeds.account"
LATENCY_QUANTILE = 0.95  # the latency objective is a p95
AT_RISK_BELOW = 0.25  # budget left under this share: warn before the objective breaks

SLO_COLUMNS = ["status", "feed", "slo", "current", "objective", "budget_left"]  # each fix: under its feed's chart


@dataclass(frozen=True)
class CanaryRun:
    """One canary run of one feed: passed or failed, and how long the marker took when it was confirmed."""

    id: str
    feed: str
    at: datetime
    passed: bool
    latency_ms: int | None


@dataclass(frozen=True)
class Audit:
    """One audit of one feed: sampled objects found in XSIAM, and the age of XSIAM's newest event."""

    id: str
    feed: str
    at: datetime
    sampled: int
    found: int
    completeness: float | None
    ci_low: float | None
    ci_high: float | None
    staleness_seconds: float | None


Observation = CanaryRun | Audit


class SloError(OnCallError):
    """An event that claims to be a canary run or an audit but cannot be read: names the event and its resource."""


def observation_of(event: Mapping[str, Any]) -> Observation | None:
    """A canary run or an audit from a Prefect event in its JSON form; None for any other event."""
    name, resource = str(event.get("event", "")), event.get("resource") or {}
    resource_id = str(resource.get("prefect.resource.id", ""))
    if not resource_id.startswith(FEED_RESOURCE_PREFIX):
        return None
    payload = event.get("payload") or {}
    event_id, feed = str(event.get("id", "")), resource_id.removeprefix(FEED_RESOURCE_PREFIX)
    at = _occurred(event)
    try:
        if name in (CANARY_PASSED, CANARY_FAILED):
            latency = payload.get("latency_ms")
            return CanaryRun(id=event_id, feed=feed, at=at, passed=name == CANARY_PASSED,
                             latency_ms=None if latency is None else int(latency))
        if name == AUDIT_COMPLETED:
            return Audit(id=event_id, feed=feed, at=at, sampled=int(payload.get("sampled") or 0),
                         found=int(payload.get("found") or 0), completeness=_number(payload.get("completeness")),
                         ci_low=_number(payload.get("ci_low")), ci_high=_number(payload.get("ci_high")),
                         staleness_seconds=_number(payload.get("staleness_seconds")))
    except (TypeError, ValueError) as error:
        raise SloError(f"event {name} {event_id} for {resource_id}: payload unreadable ({error})") from error
    return None


def merged(history: Sequence[Observation], fresh: Sequence[Observation]) -> list[Observation]:
    """History read back from the events API plus this run's own observations, each counted once (the API may
    or may not return the run's events yet)."""
    seen = {observation.id for observation in history}
    return [*history, *(observation for observation in fresh if observation.id not in seen)]


def _occurred(event: Mapping[str, Any]) -> datetime:
    occurred = event.get("occurred")
    if isinstance(occurred, datetime):
        return occurred
    try:
        return datetime.fromisoformat(str(occurred))
    except ValueError as error:
        raise SloError(f"event {event.get('event')} {event.get('id')}: occurred {occurred!r} is not a timestamp"
                       ) from error


def _number(value: object) -> float | None:
    return None if value is None else float(str(value))


def percentile(values: Sequence[float], quantile: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least `quantile` of the values at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(quantile * len(ordered))) - 1]


@dataclass(frozen=True)
class Budget:
    """Good and bad events over the window against the share that must be good."""

    events: int
    bad: int
    target: float

    @property
    def allowed(self) -> float:
        return round(self.events * (1 - self.target), 9)  # 200 * (1 - 0.99) is 2, not 2.0000000000000018

    @property
    def left(self) -> float | None:
        """Share of the budget not yet spent: 1 untouched, 0 all spent, below 0 the objective is breached; None
        when nothing was observed (no data is never a pass)."""
        if not self.events:
            return None
        if self.allowed <= 0:
            return 1.0 if not self.bad else -1.0
        return 1 - self.bad / self.allowed

    def describe(self, unit: str) -> str:
        left = self.left
        if left is None:
            return "no data"
        spent = f"({self.bad} of {_count(self.allowed)} allowed {unit})"
        return f"exhausted {spent}" if left < 0 else f"{left:.0%} {spent}"


class SloStatus(StrEnum):
    BREACHED = "breached"
    NO_DATA = "no data"
    AT_RISK = "at risk"
    MET = "met"


STATUS_ORDER = {SloStatus.BREACHED: 0, SloStatus.NO_DATA: 1, SloStatus.AT_RISK: 2, SloStatus.MET: 3}


def status_of(budget: Budget) -> SloStatus:
    left = budget.left
    if left is None:
        return SloStatus.NO_DATA
    if left < 0:
        return SloStatus.BREACHED
    return SloStatus.AT_RISK if left < AT_RISK_BELOW else SloStatus.MET


class SloRow(BaseModel):
    """One SLO of one feed as the artifact shows it."""

    model_config = ConfigDict(frozen=True)

    status: SloStatus
    feed: str
    slo: str
    current: str
    objective: str
    budget_left: str
    fix: str


@dataclass(frozen=True)
class FeedSlos:
    """A feed's SLO rows (worst first) and the canary runs its latency chart draws."""

    feed: str
    objectives: SloObjectives
    rows: list[SloRow]
    runs: list[CanaryRun]
    since: datetime
    until: datetime

    @property
    def status(self) -> SloStatus:
        return min((row.status for row in self.rows), key=STATUS_ORDER.__getitem__)


FIXES = {
    "canary success": "read the feed-canary-failures artifact of the failing runs: it names the broken leg and its fix",
    "canary latency p95": "run verify-feeds (queue backlog, age of the oldest message, dead letters): slow collection "
                          "or a backlog delays every log, not only the canary",
    "completeness": "run replay-feed for the audited window with only_missing=true; the audit-feeds artifact lists "
                    "the missing objects",
    "staleness": "XSIAM holds no recent events: run verify-feeds for the queue's age and consumption, and check the "
                 "XSIAM data source's status",
}
NO_DATA_FIXES = {
    "canary success": "no canary ran in the window: check the feed-canary deployment's schedule and its worker",
    "canary latency p95": "no canary was confirmed in the window: see canary success",
    "completeness": "no audit in the window: check the audit-feeds deployment's schedule and its worker",
    "staleness": "no audit in the window: check the audit-feeds deployment's schedule and its worker",
}


def evaluate(feed: str, objectives: SloObjectives, observations: Iterable[Observation], now: datetime) -> FeedSlos:
    """A feed's four SLOs over its window (the latest `objectives.window_days` up to `now`), worst first."""
    since = now - timedelta(days=objectives.window_days)
    mine = sorted((o for o in observations if o.feed == feed and since <= o.at <= now), key=lambda o: o.at)
    runs = [o for o in mine if isinstance(o, CanaryRun)]
    audits = [o for o in mine if isinstance(o, Audit)]
    rows = [_row(feed, "canary success", *_canary_success(runs, objectives)),
            _row(feed, "canary latency p95", *_latency(runs, objectives)),
            _row(feed, "completeness", *_completeness(audits, objectives)),
            _row(feed, "staleness", *_staleness(audits, objectives))]
    rows.sort(key=lambda row: STATUS_ORDER[row.status])
    return FeedSlos(feed=feed, objectives=objectives, rows=rows, runs=runs, since=since, until=now)


# Each SLO: its budget, the current value, the objective, and what its bad events are called.
Measured = tuple[Budget, str, str, str]


def _canary_success(runs: list[CanaryRun], objectives: SloObjectives) -> Measured:
    failed = sum(not r.passed for r in runs)
    current = (f"{1 - failed / len(runs):.1%} ({failed} of {len(runs)} runs failed"
               f"{', the latest' if not runs[-1].passed else ''})") if runs else "no data"
    return (Budget(len(runs), failed, objectives.canary_success), current,
            f">= {share(objectives.canary_success)} of runs pass", "failed runs")


def _latency(runs: list[CanaryRun], objectives: SloObjectives) -> Measured:
    latencies = [r.latency_ms / 1000 for r in runs if r.latency_ms is not None]
    p95 = percentile(latencies, LATENCY_QUANTILE)
    current = (f"{duration(p95)} over {len(latencies)} confirmed runs (latest {duration(latencies[-1])})"
               if p95 is not None else "no data")
    slow = sum(seconds > objectives.canary_latency_p95_seconds for seconds in latencies)
    return (Budget(len(latencies), slow, LATENCY_QUANTILE), current,
            f"p95 <= {duration(objectives.canary_latency_p95_seconds)}", "slower runs")


def _completeness(audits: list[Audit], objectives: SloObjectives) -> Measured:
    sampled = [a for a in audits if a.sampled]
    current = "no data"
    if sampled:
        latest = sampled[-1]
        found = latest.completeness if latest.completeness is not None else latest.found / latest.sampled
        interval = (f"; 95% CI {latest.ci_low:.1%}-{latest.ci_high:.1%}"
                    if latest.ci_low is not None and latest.ci_high is not None else "")
        current = f"{found:.2%} ({latest.found} of {latest.sampled} found{interval}; latest audit)"
    budget = Budget(sum(a.sampled for a in sampled), sum(max(a.sampled - a.found, 0) for a in sampled),
                    objectives.completeness)
    return budget, current, f">= {share(objectives.completeness)} of sampled objects in XSIAM", "missing objects"


def _staleness(audits: list[Audit], objectives: SloObjectives) -> Measured:
    ages = [a.staleness_seconds for a in audits if a.staleness_seconds is not None]
    current = f"{duration(ages[-1])} (latest audit)" if ages else "no data"
    stale = sum(age > objectives.staleness_seconds for age in ages)
    return (Budget(len(ages), stale, objectives.staleness_compliance), current,
            f"newest event <= {duration(objectives.staleness_seconds)} old, "
            f">= {share(objectives.staleness_compliance)} of audits", "stale audits")


def _row(feed: str, slo: str, budget: Budget, current: str, objective: str, unit: str) -> SloRow:
    status = status_of(budget)
    fix = NO_DATA_FIXES[slo] if status is SloStatus.NO_DATA else "" if status is SloStatus.MET else FIXES[slo]
    return SloRow(status=status, feed=feed, slo=slo, current=current, objective=objective,
                  budget_left=budget.describe(unit), fix=fix)


def share(value: float) -> str:
    """An objective's share without noise: 99%, 99.9%, 99.95%."""
    return f"{round(value * 100, 4):g}%"


def _count(value: float) -> str:
    return f"{round(value, 2):g}"


def duration(seconds: float) -> str:
    """A duration as a person reads it: 0.08 s, 12 s, 4 min 30 s, 2 h 5 min."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


# The chart: an SVG the artifact embeds as a data: URI image. The Prefect UI's markdown sanitiser breaks inline <svg>
# (measured: its elements vanish, their text runs together), while an image's data: URI reaches the browser intact.
WIDTH, HEIGHT = 640, 170
LEFT, RIGHT, TOP, BOTTOM = 80, 110, 14, 34
GOOD, BAD, OBJECTIVE, INK, GRID = "#2563eb", "#dc2626", "#d97706", "#374151", "#e5e7eb"


def latency_chart(slos: FeedSlos) -> str:
    """An SVG of the feed's canary latencies over the window: one dot per confirmed run (red above the objective),
    a red cross on the top edge per failed run, the objective as a dashed line and the p95 as a solid one."""
    objective_s = slos.objectives.canary_latency_p95_seconds
    latencies = [r.latency_ms / 1000 for r in slos.runs if r.latency_ms is not None]
    p95 = percentile(latencies, LATENCY_QUANTILE)
    top = max([objective_s, *latencies]) * 1.1
    span = (slos.until - slos.since).total_seconds()
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(at: datetime) -> float:
        return LEFT + plot_w * (at - slos.since).total_seconds() / span

    def y(seconds: float) -> float:
        return TOP + plot_h * (1 - seconds / top)

    label = f"canary latency of {slos.feed}, last {slos.objectives.window_days} days"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11" role="img" '
             f'aria-label="{html.escape(label)}">',
             f"<title>{html.escape(label)}</title>",
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',  # readable in the UI's dark theme too
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#ffffff" stroke="{GRID}"/>',
             _text(LEFT - 6, y(0) + 4, "0 s", anchor="end"), _text(LEFT - 6, TOP + 10, duration(top), anchor="end"),
             _text(LEFT, HEIGHT - BOTTOM + 14, slos.since.strftime("%b %d")),
             _text(LEFT + plot_w, HEIGHT - BOTTOM + 14, "now", anchor="end"),
             _hline(y(objective_s), OBJECTIVE, dashed=True),
             _text(LEFT + plot_w + 6, y(objective_s) + 4, f"objective {duration(objective_s)}", fill=OBJECTIVE)]
    if p95 is not None:
        parts += [_hline(y(p95), GOOD if p95 <= objective_s else BAD),
                  _text(LEFT + plot_w + 6, y(p95) + 4 + (12 if abs(y(p95) - y(objective_s)) < 12 else 0),
                        f"p95 {duration(p95)}", fill=GOOD if p95 <= objective_s else BAD)]
    for run in slos.runs:
        if run.latency_ms is None:
            cx = x(run.at)
            parts.append(f'<path d="M{cx - 3:.1f} {TOP + 1:.1f}l6 6m0 -6l-6 6" stroke="{BAD}" stroke-width="1.5"/>')
        else:
            seconds = run.latency_ms / 1000
            parts.append(f'<circle cx="{x(run.at):.1f}" cy="{y(seconds):.1f}" r="2.5" '
                         f'fill="{GOOD if seconds <= objective_s else BAD}"/>')
    failed = sum(not r.passed for r in slos.runs)
    legend = (f"{len(latencies)} confirmed runs (dots), {failed} failed (crosses on the top edge)" if slos.runs
              else "no canary runs in the window")
    parts += [_text(LEFT, HEIGHT - 6, legend, fill=INK if slos.runs else BAD), "</svg>"]
    return "".join(parts)


def chart_image(slos: FeedSlos) -> str:
    """The latency chart as a markdown image whose source is a data: URI (no file, no server to host it)."""
    encoded = base64.b64encode(latency_chart(slos).encode()).decode()
    return f"![canary latency of {slos.feed}](data:image/svg+xml;base64,{encoded})"


def title_of(feeds: Sequence[FeedSlos]) -> str:
    breached = sum(f.status is SloStatus.BREACHED for f in feeds)
    blind = sum(any(row.status is SloStatus.NO_DATA for row in f.rows) for f in feeds)
    return (f"feed-slos: {breached} of {len(feeds)} feeds breach an objective"
            + (f", {blind} without data for one" if blind else ""))


def ordered_rows(feeds: Sequence[FeedSlos]) -> list[SloRow]:
    """Every feed's rows, the worst status first, then by feed."""
    return sorted((row for f in feeds for row in f.rows), key=lambda row: (STATUS_ORDER[row.status], row.feed))


def feed_slos_markdown(feeds: Sequence[FeedSlos], events_read: int, oldest: datetime | None,
                       unreadable: Sequence[str] = ()) -> str:
    """The artifact: one table of every SLO (worst first), then each feed's latency chart (worst feed first).
    `unreadable`: events skipped because their payload could not be read, named so someone can fix the sender."""
    longest = max((f.objectives.window_days for f in feeds), default=0)
    days = {f.objectives.window_days for f in feeds}
    windows = (f"{longest} days" if len(days) == 1
               else ", ".join(f"{f.feed} {f.objectives.window_days} days" for f in feeds))
    read = f"{events_read} event{'' if events_read == 1 else 's'} read"
    history = f"{read}, the oldest from {oldest.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if oldest else "no events read"
    lines = [f"# {title_of(feeds)}", "",
             "Each feed's objectives (settings `slo`) against the `socfeeds.canary.*` and `socfeeds.audit.completed` "
             f"events of its window ({windows}), the budgets counted over it; an SLO without events shows **no data**, "
             f"never met. History: {history}. A Prefect "
             "server keeps events for `PREFECT_SERVER_EVENTS_RETENTION_PERIOD` (7 days by default): set it to at least "
             f"{longest} days or the budgets count less than the window.", "",
             *([f"**{len(unreadable)} unreadable events skipped** (the run log lists them), the first: "
                f"{unreadable[0]}", ""] if unreadable else []),
             markdown_table(table_rows(ordered_rows(feeds), SLO_COLUMNS), SLO_COLUMNS), ""]
    for slos in sorted(feeds, key=lambda f: (STATUS_ORDER[f.status], f.feed)):
        fixes = [f"- **{row.slo}** ({row.status}): {row.fix}" for row in slos.rows if row.fix]
        lines += [f"## {slos.feed}: {slos.status}", "", chart_image(slos), "", *fixes, ""]
    return "\n".join(lines)


def _hline(at_y: float, colour: str, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    return f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{at_y:.1f}" y2="{at_y:.1f}" stroke="{colour}"{dash}/>'


def _text(at_x: float, at_y: float, text: str, anchor: str = "start", fill: str = INK) -> str:
    return (f'<text x="{at_x:.1f}" y="{at_y:.1f}" text-anchor="{anchor}" fill="{fill}">'
            f"{html.escape(text)}</text>")
