"""The subset of XSIAM's XQL public API the canary and the audit use: start a query, then poll its results.

Accepted shape, and only this one (each part valid XQL: the `dataset`, `filter`, `fields` and `comp`
stages, the `contains` and `or` operators, the `count` and `max` aggregates):
    dataset = <dataset>
      [| filter _raw_log contains "<text>" [or _raw_log contains "<text>" ...]]
      [| fields _raw_log]
      [| comp count() as <name> | comp max(_time) as <name>]
over `timeframe: {from, to}` in ms, matched against `_time` (the event's time, else its arrival).
`contains` is case-insensitive, XQL's default; texts holding `"`, `\\` or `*` (a wildcard in XQL) are
refused. Anything else FAILs with a message saying what is accepted.

As in XSIAM, a query runs on the server on its own: it is PENDING for `execution_seconds`, then
SUCCESS, whether or not anyone polls it, and holds one of the tenant's 4 query slots only while it
runs. Results are capped at 1,000 rows (get_query_results' maximum).
"""

from __future__ import annotations

import hmac
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from deployments.xsiam.store import Store

TEXT = r'"([^"\\*\r\n]{1,1000})"'
CONTAINS = rf"_raw_log\s+contains\s+{TEXT}"
QUERY_RE = re.compile(
    r"^\s*dataset\s*=\s*(?P<dataset>[a-z0-9_]+)"
    rf"(?:\s*\|\s*filter\s+(?P<filter>{CONTAINS}(?:\s+or\s+{CONTAINS})*))?"
    r"(?P<fields>\s*\|\s*fields\s+_raw_log)?"
    r"(?:\s*\|\s*comp\s+(?:(?P<count>count\(\s*\))|(?P<max>max\(\s*_time\s*\)))\s+as\s+(?P<alias>[a-z_][a-z0-9_]*))?"
    r"\s*$", re.IGNORECASE)
NEEDLE_RE = re.compile(rf"contains\s+{TEXT}", re.IGNORECASE)
ACCEPTED = ('dataset = <name> [| filter _raw_log contains "<text>" [or _raw_log contains "<text>" ...]] '
            '[| fields _raw_log] [| comp count() as <name> | comp max(_time) as <name>], texts without ", \\ or *')
MAX_RUNNING = 4
MAX_RESULTS = 1000
EXECUTION_SECONDS = 0.1
KEEP_SECONDS = 3600.0  # finished queries' results stay fetchable this long


@dataclass
class Query:
    dataset: str = ""
    needles: tuple[str, ...] = ()
    only_raw_log: bool = False
    aggregate: Literal["count", "max_time"] | None = None
    alias: str = ""
    from_ms: int = 0
    to_ms: int = 0
    error: str = ""
    runs_until: float = 0.0  # monotonic time the query completes at
    rows: list[dict[str, Any]] | None = None  # computed once, at the first fetch after completion

    def running(self, now: float) -> bool:
        return not self.error and now < self.runs_until


def parse(text: str, timeframe: Mapping[str, Any]) -> Query:
    """The query as the stand-in runs it; `error` says what is wrong and what is accepted."""
    match = QUERY_RE.match(text)
    if not match:
        return Query(error=f"unsupported query {text!r}; this stand-in accepts only: {ACCEPTED}")
    if not isinstance(timeframe.get("from"), int) or not isinstance(timeframe.get("to"), int):
        return Query(error="timeframe needs integer 'from' and 'to' in epoch milliseconds")
    aggregate: Literal["count", "max_time"] | None = "count" if match["count"] else "max_time" if match["max"] else None
    return Query(dataset=match["dataset"], needles=tuple(NEEDLE_RE.findall(match["filter"] or "")),
                 only_raw_log=bool(match["fields"]), aggregate=aggregate, alias=match["alias"] or "",
                 from_ms=timeframe["from"], to_ms=timeframe["to"])


@dataclass
class XqlApi:
    store: Store
    api_key: str
    api_key_id: str
    execution_seconds: float = EXECUTION_SECONDS
    queries: dict[str, Query] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """`headers` with lower-case names."""
        key, key_id = headers.get("authorization", ""), headers.get("x-xdr-auth-id", "")
        ok = hmac.compare_digest(key.encode(), self.api_key.encode()) and key_id == self.api_key_id
        if not ok:
            self.store.add_failure("xql", "auth", "wrong API key or key id", key_id=key_id or None)
        return ok

    def start(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        data = body.get("request_data", {})
        query = parse(str(data.get("query", "")), data.get("timeframe") or {})
        now = time.monotonic()
        with self.lock:
            self.queries = {i: q for i, q in self.queries.items() if q.runs_until > now - KEEP_SECONDS}
            running = sum(q.running(now) for q in self.queries.values())
            if running >= MAX_RUNNING and not query.error:
                return 500, {"reply": {"err_code": 500, "err_msg": f"reached the maximum of {MAX_RUNNING} parallel "
                                       "running queries; start again when one of them has finished"}}
            query.runs_until = now if query.error else now + self.execution_seconds
            query_id = uuid.uuid4().hex
            self.queries[query_id] = query
        return 200, {"reply": query_id}

    def results(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        data = body.get("request_data", {})
        with self.lock:
            query = self.queries.get(str(data.get("query_id")))
        if query is None:
            return 404, {"reply": {"err_code": 404, "err_msg": f"unknown query_id {data.get('query_id')!r}"}}
        if query.error:
            return 200, {"reply": {"status": "FAIL", "error": query.error, "number_of_results": 0}}
        if query.running(time.monotonic()):
            return 200, {"reply": {"status": "PENDING", "number_of_results": 0}}
        if query.rows is None:
            query.rows = self._rows(query)
        limit = min(max(int(data.get("limit", 100)), 1), MAX_RESULTS)
        rows = query.rows[:limit]
        return 200, {"reply": {"status": "SUCCESS", "number_of_results": len(rows), "results": {"data": rows}}}

    def _rows(self, query: Query) -> list[dict[str, Any]]:
        if query.aggregate:
            value = self.store.aggregate(query.dataset, query.needles, query.from_ms, query.to_ms, query.aggregate)
            return [{query.alias: value}]
        rows = self.store.search(query.dataset, query.needles, query.from_ms, query.to_ms, limit=MAX_RESULTS)
        return [{"_raw_log": row["_raw_log"]} for row in rows] if query.only_raw_log else rows
