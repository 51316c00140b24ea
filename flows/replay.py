"""replay-feed: after an outage, announce a window's objects XSIAM lacks to the feed's queue again, as S3 would,
and send the dead-letter queue's messages back to it.

No `from __future__ import annotations` here: Prefect resolves the flow's parameter types through the
leaves_a_record wrapper, whose module does not know `datetime`, so the annotations must be real objects.
"""

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture
from pydantic import BaseModel, ConfigDict

from flows._common import (
    concurrent_tasks,
    failed_with,
    leaves_a_record,
    one_line,
    publish,
    publish_failures,
    target_run,
)
from flows._fleet import start_fleet
from tasks.audit import WindowObject
from tasks.replay import (
    ReplayError,
    announce_objects,
    dead_letters,
    redrive_dead_letters,
    replay_window,
    replayable_feed,
    select_objects,
)

RESULT_COLUMNS = ["status", "fix", "feed", "window", "dry_run", "objects_listed", "already_in_xsiam", "to_announce",
                  "announced", "gone", "dlq_messages", "redriven", "redrive_method", "detail"]
OBJECT_COLUMNS = ["action", "bucket", "key", "size", "last_modified"]
FAILURE_COLUMNS = ["feed", "fix", "detail"]
FAILURES_ARTIFACT = "replay-feed-failures"
SHOWN_OBJECTS = 500  # rows of the objects table; the counts are always whole


class ReplayResult(BaseModel):
    """One replay, as on-call reads it: what the window held, what XSIAM had, what was sent again."""

    model_config = ConfigDict(frozen=True)

    status: str  # done | dry run | failed
    fix: str
    feed: str
    account: str
    window: str
    dry_run: bool
    objects_listed: int
    already_in_xsiam: str  # a count, or "not checked" (only_missing off)
    to_announce: int
    announced: int
    gone: int  # listed, but deleted or expired before it could be announced
    dlq_messages: int
    redriven: int
    redrive_method: str
    detail: str


class ObjectRow(BaseModel):
    action: str
    bucket: str
    key: str
    size: int
    last_modified: str


@flow(name="replay-feed", task_runner=concurrent_tasks())
@leaves_a_record("replay-feed")
def replay_feed(feed: str, start: datetime, end: datetime | None = None, only_missing: bool = True,
                dry_run: bool = False, accounts: list[str] | None = None) -> ReplayResult:
    """Announce the window's objects to the feed's queue again as S3 event notifications, and redrive its
    dead-letter queue back to it, so XSIAM ingests what an outage lost.

    At least once: an object announced twice is ingested twice (SQS and XSIAM do not deduplicate), so by default
    only the objects XSIAM lacks are announced, and a rerun after a crash sends again only what is still missing.
    Publishes the `replay-feed` table (counts) and `replay-feed-objects` (the objects), and `replay-feed-failures`.

    Args:
        feed: One S3 feed's name from settings.
        start: The window's start (UTC when no zone is given).
        end: The window's end; default now. At most 14 days after start.
        only_missing: Announce only the objects XSIAM does not hold (checked through the XQL API, every object).
        dry_run: List the objects and count the dead letters; send nothing, move nothing.
        accounts: One fleet account (id, name, or id/region) when the settings declare several.
    """
    window = replay_window(start, end, datetime.now(UTC))
    fleet = start_fleet(None, accounts)
    if fleet.fans_out:
        raise ReplayError(f"accounts: replay-feed replays one account's feed at a time; name one of "
                          f"{[target.label for target in fleet.targets]}")
    run = target_run(fleet, None, "replay-feed")
    declared = replayable_feed(run.settings, feed)
    selection = select_objects(run.aws, run.settings, feed, *window, only_missing)
    shown = f"{window[0].isoformat()} .. {window[1].isoformat()}"
    keys = [(o.bucket, o.key) for o in selection.chosen]
    in_xsiam = str(len(selection.listed) - len(selection.chosen)) if selection.checked else "not checked"
    base: dict[str, Any] = {"feed": feed, "account": run.settings.account_id, "window": shown, "dry_run": dry_run,
                            "objects_listed": len(selection.listed), "already_in_xsiam": in_xsiam,
                            "to_announce": len(keys)}
    if dry_run:
        _, held = dead_letters(run.aws, declared)
        result = ReplayResult(status="dry run", fix="", announced=0, gone=0, dlq_messages=held, redriven=0,
                              redrive_method="none", detail=f"would announce {len(keys)} objects to {declared.queue} "
                              f"and move {held} dead letters back from {declared.dlq_name}", **base)
        return _published(result, [("would announce", o) for o in selection.chosen])
    announcing = announce_objects.submit(run.aws, run.settings, feed, keys) if keys else None
    redriving = redrive_dead_letters.submit(run.aws, run.settings, feed)
    announced, announce_error = _outcome(announcing)
    redrive, redrive_error = _outcome(redriving)
    sent = set(announced or [])
    problems = [f"{step} failed: {error}" for step, error in (("announce", announce_error),
                                                               ("redrive", redrive_error)) if error]
    if redrive and redrive.left:
        problems.append(f"{redrive.left} dead letters still in {declared.dlq_name}")
    done = [f"announced {len(sent)} of {len(keys)} to {declared.queue}", *([redrive.detail] if redrive else [])]
    result = ReplayResult(
        status="failed" if problems else "done",
        fix="rerun replay-feed with the same window: it announces only what XSIAM still lacks and moves what the "
            "dead-letter queue still holds" if problems else "",
        announced=len(sent), gone=0 if announce_error else len(keys) - len(sent),
        dlq_messages=redrive.moved + redrive.left if redrive else 0, redriven=redrive.moved if redrive else 0,
        redrive_method=redrive.method if redrive else "failed", detail=one_line("; ".join([*problems, *done])),
        **base)
    _published(result, [("announced" if address(o) in sent else "not sent" if announce_error else "gone", o)
                        for o in selection.chosen])
    if problems:
        return failed_with(f"replay-feed{run.at}: {feed}: {'; '.join(problems)} -> {result.fix}; see artifact "
                           f"{FAILURES_ARTIFACT}", result)
    return result


def address(obj: WindowObject) -> str:
    return f"s3://{obj.bucket}/{obj.key}"


def _outcome(future: PrefectFuture[Any] | None) -> tuple[Any, str | None]:
    """A task's value and None, or None and its error in one line (the flow still reports the other task)."""
    if future is None:
        return None, None
    future.wait()
    value = future.state.result(raise_on_failure=False)
    if isinstance(value, BaseException):
        return None, one_line(str(value))
    return value, None


def _published(result: ReplayResult, objects: list[tuple[str, WindowObject]]) -> ReplayResult:
    """The replay's counts, its objects (what was done with each), and the failures-only artifact."""
    rows = [ObjectRow(action=action, bucket=o.bucket, key=o.key, size=o.size, last_modified=o.last_modified.isoformat())
            for action, o in objects[:SHOWN_OBJECTS]]
    more = f" (the first {SHOWN_OBJECTS})" if len(objects) > SHOWN_OBJECTS else ""
    publish("replay-feed-objects", f"replay-feed {result.feed}: {len(objects)} objects{more}", rows, OBJECT_COLUMNS)
    done = (f"would announce {result.to_announce}, {result.dlq_messages} dead letters to redrive" if result.dry_run
            else f"{result.announced} of {result.to_announce} announced, {result.redriven} dead letters redriven")
    summary = (f"replay-feed {result.feed}{' (dry run)' if result.dry_run else ''}: {result.objects_listed} objects "
               f"in the window (already in XSIAM: {result.already_in_xsiam}); {done}")
    publish("replay-feed", summary, [result], RESULT_COLUMNS)
    publish_failures(FAILURES_ARTIFACT, summary, [result] if result.status == "failed" else [], FAILURE_COLUMNS,
                     "Nothing failed.")
    return result
