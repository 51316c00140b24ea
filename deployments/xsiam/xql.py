"""The subset of XSIAM's XQL public API the canary uses: start a query, then poll its results.

Accepted shape, and only this one:
    dataset = <dataset> | filter _raw_log contains "<marker>"
over `timeframe: {from, to}` in ms. Anything else FAILs with a message saying what is accepted.
The first poll answers PENDING, the next SUCCESS with the matching rows, as the real API can.
At most 4 queries run at once per tenant, as the real API allows.
"""

from __future__ import annotations

import hmac
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deployments.xsiam.store import Store

QUERY_RE = re.compile(r'^\s*dataset\s*=\s*([a-z0-9_]+)\s*\|\s*filter\s+_raw_log\s+contains\s+"([^"\\]{1,200})"\s*$')
ACCEPTED = 'dataset = <name> | filter _raw_log contains "<text>"'
MAX_RUNNING = 4


@dataclass
class Query:
    dataset: str = ""
    needle: str = ""
    from_ms: int = 0
    to_ms: int = 0
    error: str = ""
    polls: int = 0
    done: bool = False


@dataclass
class XqlApi:
    store: Store
    api_key: str
    api_key_id: str
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
        query = Query()
        match = QUERY_RE.match(str(data.get("query", "")))
        timeframe = data.get("timeframe", {})
        if not match:
            query.error = f"unsupported query {data.get('query')!r}; this stand-in accepts only: {ACCEPTED}"
        elif not isinstance(timeframe.get("from"), int) or not isinstance(timeframe.get("to"), int):
            query.error = "timeframe needs integer 'from' and 'to' in epoch milliseconds"
        else:
            query.dataset, query.needle = match.group(1), match.group(2)
            query.from_ms, query.to_ms = timeframe["from"], timeframe["to"]
        with self.lock:
            running = sum(not q.done and not q.error for q in self.queries.values())
            if running >= MAX_RUNNING and not query.error:
                return 500, {"reply": {"err_code": 500, "err_msg": "reached the maximum of 4 parallel running "
                                       "queries; fetch results of running queries first"}}
            query_id = uuid.uuid4().hex
            self.queries[query_id] = query
        return 200, {"reply": query_id}

    def results(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        data = body.get("request_data", {})
        with self.lock:
            query = self.queries.get(str(data.get("query_id")))
            if query is None:
                return 404, {"reply": {"err_code": 404, "err_msg": f"unknown query_id {data.get('query_id')!r}"}}
            query.polls += 1
            first_poll = query.polls == 1
        if query.error:
            query.done = True
            return 200, {"reply": {"status": "FAIL", "error": query.error, "number_of_results": 0}}
        if first_poll:
            return 200, {"reply": {"status": "PENDING", "number_of_results": 0}}
        rows = self.store.search(query.dataset, query.needle, query.from_ms, query.to_ms,
                                 limit=int(data.get("limit", 100)))
        query.done = True
        return 200, {"reply": {"status": "SUCCESS", "number_of_results": len(rows),
                               "results": {"data": rows}}}
