"""The `feed-slos` artifact: each feed's SLO history read from the Prefect events API, this run's events added.

History is the events the flows emit anyway (`socfeeds.canary.passed|failed`, `socfeeds.audit.completed`), so a
run writes no extra state on its critical path; the read is one paginated events query for every feed, started
early (`prefetch_history`) so it runs while the flow waits on its own work. A run's own events are passed in
directly: the events API may not show them yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.events.schemas.events import ResourceSpecification

from socfeeds.report import render_table, table_rows
from socfeeds.settings import Settings
from socfeeds.slo import (
    ACCOUNT_LABEL,
    AUDIT_COMPLETED,
    CANARY_EVENT_PREFIX,
    FEED_RESOURCE_PREFIX,
    SLO_COLUMNS,
    FeedSlos,
    Observation,
    SloError,
    evaluate,
    feed_slos_markdown,
    merged,
    observation_of,
    ordered_rows,
    title_of,
)

SLO_ARTIFACT = "feed-slos"
EVENTS_PAGE = 50  # the events API's largest page
_readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="feed-slos-history")


@dataclass
class History:
    """What the events say: canary runs and audits, and the events claiming to be one that could not be read
    (skipped and reported, so one hand-made event cannot stop every canary for a whole window)."""

    observations: list[Observation] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def add(self, events: Iterable[Event | None]) -> History:
        for event in events:
            if event is None:
                continue
            try:
                observation = observation_of(event.model_dump(mode="json"))
            except SloError as error:
                self.unreadable.append(str(error))
                continue
            if observation is not None:
                self.observations.append(observation)
        return self


def read_history(account: str, since: datetime) -> History:
    """Every canary run and audit of the account's feeds since `since`: one events query, paginated."""
    query = EventFilter(occurred=EventOccurredFilter(since=since, until=datetime.now(UTC)),
                        event=EventNameFilter(prefix=[CANARY_EVENT_PREFIX, AUDIT_COMPLETED]),
                        resource=EventResourceFilter(id_prefix=[FEED_RESOURCE_PREFIX],
                                                     labels=ResourceSpecification({ACCOUNT_LABEL: account})))
    history = History()
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=query, limit=EVENTS_PAGE)
        while True:
            history.add(page.events)
            if not page.next_page:
                return history
            page = client.read_events_page(str(page.next_page))


def observed(events: Iterable[Event | None]) -> list[Observation]:
    """This run's canary runs or audits, from the events emit_event returned (None where events are off)."""
    return History().add(events).observations


def prefetch_history(settings: Settings, feeds: Sequence[str]) -> Future[History]:
    """Start reading the history of `feeds` now, in the background, over the longest of their windows."""
    days = max((settings.feed(name).slo.window_days for name in feeds), default=1)
    return _readers.submit(read_history, settings.account_id, datetime.now(UTC) - timedelta(days=days))


def publish_feed_slos(settings: Settings, feeds: Sequence[str], fresh_observations: Sequence[Observation],
                      history: Future[History] | None = None) -> list[FeedSlos]:
    """Publish the `feed-slos` markdown artifact for `feeds` and log its table; returns each feed's SLOs.

    fresh_observations: this run's own canary runs or audits (see `observed`), counted once even when the
    events API already returns them. history: a `prefetch_history` started earlier; read now when None.
    """
    past = (history or prefetch_history(settings, feeds)).result()
    everything = merged(past.observations, fresh_observations)
    now = max([datetime.now(UTC), *(o.at for o in fresh_observations)])
    slos = [evaluate(name, settings.feed(name).slo, everything, now) for name in feeds]
    oldest = min((o.at for o in past.observations), default=None)
    title = title_of(slos)
    create_markdown_artifact(key=SLO_ARTIFACT, description=title, markdown=feed_slos_markdown(
        slos, len(past.observations), oldest, past.unreadable))
    logger = get_run_logger()
    logger.info("%s\n%s", title, render_table(table_rows(ordered_rows(slos), SLO_COLUMNS), SLO_COLUMNS))
    for problem in past.unreadable:
        logger.warning("feed-slos skipped an unreadable event: %s", problem)
    return slos
