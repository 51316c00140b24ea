"""The XSIAM XQL public API: find a canary's marker or an audit's sampled records, and the newest event's time.

XSIAM runs at most 4 API queries at once per tenant ("Running XQL Query APIs"), so every query in
this process takes a slot first and keeps it until XSIAM reports the query finished. A query runs on
the server whether or not anyone fetches its results, and the public API has no call to cancel one
(start_xql_query, get_query_results, get_query_results_stream, get_xql_quota; only the Query Center
UI cancels), so a query reaching the caller's deadline is still polled to its end for up to
FINISH_SECONDS: the slot is given back when XSIAM's is, and the next run never meets "reached the
maximum of 4 parallel running queries" left by this one. The API key is sent, never logged, and
never part of an error.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import httpx
from pydantic import SecretStr

from socfeeds.settings import Settings

MAX_PARALLEL_QUERIES = 4
NEEDLES_PER_QUERY = 12  # an audit of 50 objects x 3 records: 13 lookups and 1 staleness query, < 1 per 10 records
RESULT_LIMIT = 1000  # get_query_results returns at most 1,000 rows (more only through the results stream)
SEARCH_LIMIT = 100
FINISH_SECONDS = 5.0  # past the deadline, how long a running query is still polled to its end
BUSY_MESSAGE = "parallel running queries"  # XSIAM's answer when its 4 query slots are taken
DATASET_RE = re.compile(r"^[a-z0-9_]+$")
_slots = threading.BoundedSemaphore(MAX_PARALLEL_QUERIES)


class XqlError(RuntimeError):
    """The query API refused or failed; the message says what to check (never the key)."""


class XqlBusy(XqlError):
    """XSIAM already runs 4 queries (another process's): starting is retried until the deadline."""


def check_needle(needle: str) -> str:
    """A needle goes into an XQL string literal as is: XQL has no escape for `"` there, reads `\\` literally
    and `*` as a wildcard (XQL `filter` stage reference), so needles holding any of them are refused."""
    if not needle or any(char in needle for char in '"\\*\n\r'):
        raise XqlError(f"needle {needle!r} cannot be searched with XQL contains: it must be non-empty, on one "
                       "line, without '\"', '\\' or '*'; choose another distinctive substring of the record")
    return needle


def _check_dataset(dataset: str) -> str:
    if not DATASET_RE.match(dataset):
        raise XqlError(f"dataset {dataset!r} is not an XSIAM dataset name (lower-case letters, digits, '_')")
    return dataset


def contains_query(dataset: str, needles: Sequence[str]) -> str:
    """`dataset = d | filter _raw_log contains "a" or _raw_log contains "b" ...`."""
    either = " or ".join(f'_raw_log contains "{check_needle(n)}"' for n in needles)
    return f"dataset = {_check_dataset(dataset)} | filter {either}"


class XqlClient:
    """One HTTP connection pool per client (reused across queries), thread-safe; close it, or use `with`."""

    def __init__(self, api_url: str, api_key_id: str, api_key: SecretStr, timeout_s: float = 30) -> None:
        self.api_url, self.api_key_id = api_url.rstrip("/"), api_key_id
        self._api_key, self.timeout_s = api_key, timeout_s
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
                                  limits=httpx.Limits(max_connections=MAX_PARALLEL_QUERIES * 2))
        self._counter = threading.Lock()
        self.queries_started = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> XqlClient:
        tenant = settings.xsiam
        if not tenant.api_url or not tenant.api_key_id or settings.xsiam_api_key is None:
            raise XqlError("the siem canary strategy needs xsiam.api_url, xsiam.api_key_id and xsiam_api_key "
                           "(SOCFEEDS_XSIAM_API_KEY or a secret store); set them or use the queue strategy")
        return cls(tenant.api_url, tenant.api_key_id, settings.xsiam_api_key)

    def __repr__(self) -> str:
        return f"XqlClient({self.api_url}, key id {self.api_key_id})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> XqlClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # --- the API calls -----------------------------------------------------------------------

    def _post(self, call: str, data: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": self._api_key.get_secret_value(), "x-xdr-auth-id": self.api_key_id}
        try:
            answer = self._http.post(f"{self.api_url}/xql/{call}", json={"request_data": data}, headers=headers)
        except httpx.HTTPError as error:
            raise XqlError(f"XSIAM API at {self.api_url} unreachable: {error}") from None
        if answer.status_code != 200:
            if BUSY_MESSAGE in answer.text:
                raise XqlBusy(f"XSIAM {call} answered {answer.status_code}: {answer.content[:300]!r}")
            hint = "check xsiam_api_key and xsiam.api_key_id" if answer.status_code in (401, 403) else "retry later"
            raise XqlError(f"XSIAM {call} answered {answer.status_code}: {answer.content[:300]!r}; {hint}")
        try:
            return dict(answer.json())
        except ValueError:
            raise XqlError(f"XSIAM {call} answered 200 with a body that is not JSON: {answer.content[:300]!r}") \
                from None

    def _start(self, query: str, from_ms: int, to_ms: int, deadline: float) -> str:
        """Start the query; while XSIAM's slots are all taken (by another process), retry until the deadline."""
        pause = 0.2
        while True:
            try:
                reply = self._post("start_xql_query", {"query": query, "tenants": [],
                                                       "timeframe": {"from": from_ms, "to": to_ms}})
            except XqlBusy:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            with self._counter:
                self.queries_started += 1
            return str(reply["reply"])

    def _run(self, query: str, from_ms: int, to_ms: int, deadline: float,
             limit: int) -> tuple[list[dict[str, Any]], bool] | None:
        """(rows, whether the limit cut them) once XSIAM finishes the query; None if it still ran FINISH_SECONDS
        past the deadline (XSIAM then ends it on its own: no call cancels it)."""
        with _slots:
            query_id = self._start(query, from_ms, to_ms, deadline)
            finish_by, pause = deadline + FINISH_SECONDS, 0.05
            while True:
                reply = self._post("get_query_results", {"query_id": query_id, "pending_flag": True,
                                                         "limit": limit, "format": "json"})["reply"]
                if reply.get("status") == "SUCCESS":
                    results = reply.get("results") or {}
                    rows = list(results.get("data") or [])
                    return rows, len(rows) >= limit or "stream_id" in results
                if reply.get("status") == "FAIL":
                    raise XqlError(f"XQL query failed: {reply.get('error')}")
                if time.monotonic() + pause > finish_by:
                    return None
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    # --- what callers ask --------------------------------------------------------------------

    def search(self, dataset: str, marker: str, from_ms: int, to_ms: int, deadline: float) -> list[dict[str, Any]]:
        """One query for rows holding `marker`: its rows (possibly none), or none when it did not finish in time."""
        answer = self._run(contains_query(dataset, [marker]), from_ms, to_ms, deadline, SEARCH_LIMIT)
        return answer[0] if answer else []

    def find(self, dataset: str, needles: Sequence[str], from_ms: int, to_ms: int, deadline: float) -> set[str]:
        """Which needles XSIAM holds in the dataset over the timeframe (epoch ms).

        NEEDLES_PER_QUERY needles per query, up to 4 queries at once; needles are matched in the returned rows
        as XQL's `contains` does (case-insensitive). Raises XqlError when a query fails or does not finish by
        the deadline: an unanswered needle is never reported as missing."""
        wanted = list(dict.fromkeys(check_needle(n) for n in needles))
        batches = [wanted[i:i + NEEDLES_PER_QUERY] for i in range(0, len(wanted), NEEDLES_PER_QUERY)]
        with ThreadPoolExecutor(max_workers=MAX_PARALLEL_QUERIES, thread_name_prefix="xql") as pool:
            futures = [pool.submit(self._find_batch, dataset, batch, from_ms, to_ms, deadline) for batch in batches]
            try:
                return set().union(*(future.result() for future in futures))
            except BaseException:
                for future in futures:  # one batch failed: the answer is incomplete, start no more queries
                    future.cancel()
                raise

    def _find_batch(self, dataset: str, batch: list[str], from_ms: int, to_ms: int, deadline: float) -> set[str]:
        """A batch whose rows reach RESULT_LIMIT may hide needles in the rows cut off: those still unseen are
        asked again, on their own (halved when a round finds none of them), until the answer is complete."""
        if time.monotonic() >= deadline:
            raise XqlError(f"the deadline passed before {len(batch)} needles were asked of {dataset}; rerun with a "
                           "longer deadline or a smaller sample")
        answer = self._run(contains_query(dataset, batch), from_ms, to_ms, deadline, RESULT_LIMIT)
        if answer is None:
            raise XqlError(f"an XQL query on {dataset} for {len(batch)} needles did not finish within "
                           f"{FINISH_SECONDS:.0f} s of the deadline; rerun with a longer deadline or a smaller sample")
        rows, cut = answer
        texts = [str(row.get("_raw_log", "")).casefold() for row in rows]
        hits = {needle for needle in batch if any(needle.casefold() in text for text in texts)}
        unseen = [needle for needle in batch if needle not in hits]
        if not cut or not unseen:
            return hits
        if hits:
            return hits | self._find_batch(dataset, unseen, from_ms, to_ms, deadline)
        if len(batch) == 1:
            return hits  # a limit's worth of rows matched it case-insensitively, none exactly
        half = len(batch) // 2
        return (self._find_batch(dataset, batch[:half], from_ms, to_ms, deadline)
                | self._find_batch(dataset, batch[half:], from_ms, to_ms, deadline))

    def newest_ms(self, dataset: str, from_ms: int, to_ms: int, deadline: float,
                  contains: str | None = None) -> int | None:
        """The newest event's `_time` (epoch ms) in the dataset over the timeframe, optionally only events holding
        `contains`; None when there is none. Raises XqlError when the query does not finish by the deadline."""
        query = contains_query(dataset, [contains]) if contains else f"dataset = {_check_dataset(dataset)}"
        answer = self._run(f"{query} | comp max(_time) as newest", from_ms, to_ms, deadline, 1)
        if answer is None:
            raise XqlError(f"the XQL query for the newest event in {dataset} did not finish within "
                           f"{FINISH_SECONDS:.0f} s of the deadline")
        rows = answer[0]
        newest = rows[0].get("newest") if rows else None
        return int(newest) if newest is not None else None
