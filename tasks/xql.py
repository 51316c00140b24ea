"""The XSIAM XQL public API, as the canary uses it: find a marker in a dataset, within a deadline.

At most 4 queries may run at once per tenant (XSIAM's limit), so every query in this process takes
a slot first. The API key is sent, never logged, and never part of an error.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from pydantic import SecretStr

from socfeeds.settings import Settings

MAX_PARALLEL_QUERIES = 4
_slots = threading.BoundedSemaphore(MAX_PARALLEL_QUERIES)


class XqlError(RuntimeError):
    """The query API refused or failed; the message says what to check (never the key)."""


class XqlClient:
    def __init__(self, api_url: str, api_key_id: str, api_key: SecretStr, timeout_s: float = 30) -> None:
        self.api_url, self.api_key_id = api_url.rstrip("/"), api_key_id
        self._api_key, self.timeout_s = api_key, timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> XqlClient:
        tenant = settings.xsiam
        if not tenant.api_url or not tenant.api_key_id or settings.xsiam_api_key is None:
            raise XqlError("the siem canary strategy needs xsiam.api_url, xsiam.api_key_id and xsiam_api_key "
                           "(SOCFEEDS_XSIAM_API_KEY or a secret store); set them or use the queue strategy")
        return cls(tenant.api_url, tenant.api_key_id, settings.xsiam_api_key)

    def __repr__(self) -> str:
        return f"XqlClient({self.api_url}, key id {self.api_key_id})"

    def _post(self, call: str, data: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (the tenant URL from settings)
            f"{self.api_url}/xql/{call}", data=json.dumps({"request_data": data}).encode(), method="POST",
            headers={"Authorization": self._api_key.get_secret_value(), "x-xdr-auth-id": self.api_key_id,
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310
                return dict(json.loads(answer.read()))
        except urllib.error.HTTPError as error:
            hint = "check xsiam_api_key and xsiam.api_key_id" if error.code in (401, 403) else "retry later"
            raise XqlError(f"XSIAM {call} answered {error.code}: {error.read()[:300]!r}; {hint}") from None
        except (urllib.error.URLError, OSError) as error:
            raise XqlError(f"XSIAM API at {self.api_url} unreachable: {error}") from None

    def search(self, dataset: str, marker: str, from_ms: int, to_ms: int, deadline: float) -> list[dict[str, Any]]:
        """One query, polled until SUCCESS (rows, possibly none) or the deadline (then no rows)."""
        query = f'dataset = {dataset} | filter _raw_log contains "{marker}"'
        with _slots:
            query_id = str(self._post("start_xql_query", {"query": query, "tenants": [],
                                                          "timeframe": {"from": from_ms, "to": to_ms}})["reply"])
            pause = 0.05
            while True:
                reply = self._post("get_query_results", {"query_id": query_id, "pending_flag": True,
                                                         "limit": 100, "format": "json"})["reply"]
                if reply.get("status") == "SUCCESS":
                    return list(reply.get("results", {}).get("data", []))
                if reply.get("status") == "FAIL":
                    raise XqlError(f"XQL query failed: {reply.get('error')}")
                if time.monotonic() + pause > deadline:
                    return []
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
