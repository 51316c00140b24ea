"""The audit's pure parts: where a feed's objects for a window live, a needle per record, sampling, the interval.

A needle is a substring of one record that XSIAM's `_raw_log` keeps verbatim and that no other record is
expected to share, so `filter _raw_log contains "<needle>"` finds that record and nothing else. Needles never
contain `"`, `\\`, `*` or a line break: an XQL string literal has no escape for `"` and reads `*` as a wildcard,
and a JSON raw log escapes quotes and backslashes its own way.
What makes each format's needle unique is said at its function.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from socfeeds.settings import (
    CloudFrontSource,
    CloudTrailSource,
    FlowLogSource,
    FluentBitSource,
    RdsLogsSource,
    ResolverQueryLogSource,
    S3Feed,
)

T = TypeVar("T")
Z_95 = 1.959963984540054  # the standard normal quantile for a two-sided 95% interval
NEEDLE_UNSAFE = re.compile(r'["\\*\r\n]')  # what an XQL string literal cannot hold as is (tasks.xql)
MIN_RUN = 16  # a free-text needle shorter than this is likely to recur in other records


# --- needles --------------------------------------------------------------------------------------

def _safe(value: object) -> str | None:
    text = str(value) if value is not None else ""
    return text if text and not NEEDLE_UNSAFE.search(text) else None


def longest_safe_run(text: str) -> str | None:
    """The longest stretch of `text` as the record's JSON escapes it with no character a needle cannot hold; None
    when shorter than MIN_RUN."""
    escaped = json.dumps(text)[1:-1]
    run = max(NEEDLE_UNSAFE.split(escaped), key=len, default="")
    return run if len(run) >= MIN_RUN else None


def cloudtrail_needle(record: Mapping[str, Any]) -> str | None:
    """`eventID`: a GUID CloudTrail generates to identify each event uniquely (CloudTrail record contents)."""
    return _safe(record.get("eventID"))


def flow_log_needle(record: Mapping[str, Any]) -> str | None:
    """The whole record line: interface id, both addresses and ports, protocol, packet and byte counts, and the
    capture window's start and end together identify one flow record of one interface (flow logs carry no id)."""
    return _safe(" ".join(str(value) for value in record.values()))


def resolver_needle(record: Mapping[str, Any]) -> str | None:
    """`query_name`, the longest value and the one most particular to a query; the log has no id, and a JSON raw log
    puts quotes between every other field, so no quote-free substring spans query_timestamp, name and srcport.
    A name queried again in the window counts as found: for this feed the estimate is an upper bound."""
    return _safe(record.get("query_name"))


def fluent_bit_needle(record: Mapping[str, Any]) -> str | None:
    """The container runtime's `time` (nanoseconds, one container's lines never share it); without it, the longest
    quote-free stretch of `log` (the application's own line) when long enough to be particular."""
    return _safe(record.get("time")) or longest_safe_run(str(record.get("log") or ""))


def cloudfront_needle(record: Mapping[str, Any]) -> str | None:
    """`x-edge-request-id`: an opaque string that uniquely identifies a request (CloudFront standard log fields)."""
    return _safe(record.get("x-edge-request-id"))


def cloudwatch_event_needle(record: Mapping[str, Any]) -> str | None:
    """RDS through Firehose: the CloudWatch Logs event `id`, 56 digits unique per log event."""
    return _safe(record.get("id"))


def eks_needle(message: str) -> str | None:
    """An EKS control-plane event as CloudWatch Logs holds it: an audit event's `auditID` (a UUID per request);
    any other line (klog: level, microsecond time, pid, source line, text) its longest quote-free stretch."""
    try:
        event = json.loads(message)
    except ValueError:
        event = None
    if isinstance(event, dict) and event.get("auditID"):
        return _safe(event["auditID"])
    return longest_safe_run(message)


NEEDLES: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "Audit Logs": cloudtrail_needle,
    "Flow Logs": flow_log_needle,
    "Route 53": resolver_needle,
    "Generic": fluent_bit_needle,
    "CloudFront": cloudfront_needle,
    "RDS": cloudwatch_event_needle,
}


def needle_for(log_type: str, record: Mapping[str, Any]) -> str | None:
    """The record's needle; None when the record has nothing particular enough (it is then not sampled)."""
    needle = NEEDLES.get(log_type, fluent_bit_needle)(record)
    return needle if needle is None or not NEEDLE_UNSAFE.search(needle) else None


def object_needles(log_type: str, records: Sequence[Mapping[str, Any]], limit: int, rng: random.Random) -> list[str]:
    """Up to `limit` distinct needles of randomly chosen records of one object."""
    needles = list(dict.fromkeys(n for n in (needle_for(log_type, r) for r in records) if n))
    return draw(needles, limit, rng)


# --- sampling and the interval --------------------------------------------------------------------

def draw(items: Sequence[T], k: int, rng: random.Random) -> list[T]:
    """A simple random sample without replacement (all of them when there are no more than k), in input order."""
    if len(items) <= k:
        return list(items)
    chosen = set(rng.sample(range(len(items)), k))
    return [item for index, item in enumerate(items) if index in chosen]


def wilson(found: int, sampled: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion: sound at 0 and 100% and for small samples, where the normal
    approximation collapses to a zero-width interval. No sample: the whole [0, 1]."""
    if sampled == 0:
        return 0.0, 1.0
    if not 0 <= found <= sampled:
        raise ValueError(f"found {found} is not between 0 and sampled {sampled}")
    p, n = found / sampled, sampled
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if found == 0 else max(0.0, centre - half)), (1.0 if found == sampled else min(1.0, centre + half))


# --- where a window's objects are -------------------------------------------------------------------

@dataclass(frozen=True)
class Listing:
    """One S3 listing of a window: the prefix, where each `*/` is a folder level discovered first (a CloudTrail
    region, a resolver VPC of another account, an organization trail's accounts), then the day folders
    `YYYY/MM/DD/` under each."""

    prefix: str
    dated: bool = True  # False: the layout has no day folder (CloudFront): the prefix is listed and filtered

    def folders(self, subfolders: Callable[[str], list[str]]) -> list[str]:
        """The folders the prefix names, each `*/` expanded by `subfolders` (one delimited S3 listing: the
        folders directly under a prefix, never the objects beneath)."""
        first, *after_each_level = self.prefix.split("*/")
        found = [first]
        for after in after_each_level:
            found = [folder + after for prefix in found for folder in subfolders(prefix)]
        return found

    def day_prefixes(self, folders: Iterable[str], days: Iterable[datetime]) -> list[str]:
        if not self.dated:
            return list(folders)
        return [f"{folder}{day:%Y/%m/%d}/" for folder in folders for day in days]


def window_days(start: datetime, end: datetime) -> list[datetime]:
    """Every UTC day the window touches (S3 layouts partition by the UTC day)."""
    first, last = _utc(start).date(), _utc(end).date()
    return [datetime(d.year, d.month, d.day, tzinfo=UTC)
            for d in (first + timedelta(days=n) for n in range((last - first).days + 1))]


def _utc(at: datetime) -> datetime:
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def listings(feed: S3Feed, account_id: str, region: str) -> list[Listing]:
    """Where the feed's source writes, as AWS lays each format out (socfeeds.formats writes the same keys).

    CloudTrail: `AWSLogs/<acct>/CloudTrail/<region>/YYYY/MM/DD/` for every region of a multi-region trail (the
    regions are discovered, one folder level); an organization trail's member accounts under
    `AWSLogs/<organization id>/<acct>/CloudTrail/<region>/` (accounts and regions discovered). Flow logs:
    `.../vpcflowlogs/<region>/YYYY/MM/DD/`. Resolver:
    `.../vpcdnsquerylogs/<vpc>/YYYY/MM/DD/` (the VPC of another account discovered). A central archive's feed
    lists every source account. Fluent Bit: `<key_prefix>/YYYY/MM/DD/`; RDS through Firehose:
    `<key_prefix>/YYYY/MM/DD/`. CloudFront v2: `AWSLogs/<acct>/CloudFront/` (hours in the file name, no day
    folder; a custom suffix path is listed from its fixed part). No source declared: the whole bucket.
    """
    source = feed.source
    accounts = list(dict.fromkeys((account_id, *feed.source_accounts)))
    if isinstance(source, FlowLogSource):
        return [Listing(f"AWSLogs/{a}/vpcflowlogs/{region}/") for a in accounts]
    if isinstance(source, ResolverQueryLogSource):
        return [Listing(f"AWSLogs/{a}/vpcdnsquerylogs/{source.vpc_id}/") if a == account_id
                else Listing(f"AWSLogs/{a}/vpcdnsquerylogs/*/") for a in accounts]
    if isinstance(source, FluentBitSource | RdsLogsSource):
        return [Listing(source.key_prefix.strip("/") + "/")]
    if isinstance(source, CloudFrontSource):
        fixed = (source.key_prefix or "").split("{", 1)[0].strip("/")
        return [Listing(f"AWSLogs/{account_id}/CloudFront/" + (f"{fixed}/" if fixed else ""), dated=False)]
    if source is None:
        return [Listing("", dated=False)]
    assert isinstance(source, CloudTrailSource)
    organization = [Listing(f"AWSLogs/{source.organization_id}/*/CloudTrail/*/")] if source.organization_id else []
    return [Listing(f"AWSLogs/{feed.trail_account(account_id)}/CloudTrail/*/"), *organization]


def in_window(key: str, last_modified: datetime, start: datetime, settled_before: datetime,
              excluded_prefix: str) -> bool:
    """An object of the window: written in [start, settled_before) and not the canary's."""
    return not key.startswith(excluded_prefix) and _utc(start) <= _utc(last_modified) < _utc(settled_before)
