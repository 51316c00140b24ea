"""The local XSIAM stand-in: Firehose endpoint, S3 collector over SQS, and the XQL query subset.

    python -m deployments.xsiam.server --state-dir DIR [--config collector.json]

Secrets come from the environment, as a tenant's would: XSIAM_FIREHOSE_TOKEN, XSIAM_API_KEY,
XSIAM_API_KEY_ID, and (without a `secret_id` in the config) XSIAM_READER_ACCESS_KEY_ID /
XSIAM_READER_SECRET_ACCESS_KEY. Binds 127.0.0.1 on a free port and prints {"port": N} when ready.
SIGHUP (or POST /standin/reload) reloads the reader's credentials.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from deployments.xsiam import firehose
from deployments.xsiam.collector import Collector, FeedSource, ReaderIdentity
from deployments.xsiam.store import Store, now_ms
from deployments.xsiam.xql import XqlApi

FIREHOSE_PATH = "/logs/v1/aws"
XQL_PREFIX = "/public_api/v1/xql/"


class StandIn:
    def __init__(self, store: Store, firehose_token: str, xql: XqlApi, collectors: list[Collector]) -> None:
        """One collector per AWS account whose feeds the tenant reads (a fleet: one per account, each with its
        own reader key, as XSIAM has one data source per account)."""
        self.store, self.firehose_token, self.xql, self.collectors = store, firehose_token, xql, collectors


def make_handler(app: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests carry access keys in headers: never log them

        def _send(self, status: int, body: Any, close: bool = False) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _headers(self) -> dict[str, str]:
            """Header names are case-insensitive: lower-case them once."""
            return {name.lower(): value for name, value in self.headers.items()}

        def _body(self) -> bytes | None:
            length = int(self.headers.get("Content-Length") or 0)
            if length <= firehose.MAX_BODY_BYTES:
                return self.rfile.read(length)
            while length > 0:  # drain, so the client reads our 413 instead of a broken pipe
                length -= len(self.rfile.read(min(length, 1 << 20)) or b"\0" * length)
            return None

        def do_POST(self) -> None:
            path = urlparse(self.path).path
            body = self._body()
            if body is None:
                self._send(413, {"requestId": self.headers.get("X-Amz-Firehose-Request-Id", ""),
                                 "timestamp": now_ms(), "errorMessage": "request body too large"}, close=True)
                return
            if path == FIREHOSE_PATH:
                answer = firehose.handle(self._headers(), body, app.firehose_token, app.store)
                self._send(answer.status, answer.body)
            elif path.startswith(XQL_PREFIX):
                self._xql(path.removeprefix(XQL_PREFIX), body)
            elif path == "/standin/reload" and app.collectors:
                stage = parse_qs(urlparse(self.path).query).get("stage", ["AWSCURRENT"])[0]
                for collector in app.collectors:
                    collector.reload(stage)
                self._send(200, {"key_id": ",".join(c.key_id for c in app.collectors),
                                 "key_ids": {c.account: c.key_id for c in app.collectors}})
            else:
                self._send(404, {"error": f"no route {path}"})

        def _xql(self, call: str, body: bytes) -> None:
            if not app.xql.authorized(self._headers()):
                self._send(401, {"reply": {"err_code": 401, "err_msg": "Public API request unauthorized"}})
                return
            try:
                document = json.loads(body or b"{}")
            except ValueError:
                self._send(400, {"reply": {"err_code": 400, "err_msg": "body is not JSON"}})
                return
            handlers = {"start_xql_query": app.xql.start, "get_query_results": app.xql.results}
            if call not in handlers:
                self._send(404, {"reply": {"err_code": 404, "err_msg": f"unknown XQL call {call}"}})
                return
            self._send(*handlers[call](document))

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/health":
                self._send(200, {"status": "ok"})
            elif url.path == "/standin/events":
                dataset = parse_qs(url.query).get("dataset", [None])[0]
                self._send(200, app.store.events(dataset))
            elif url.path == "/standin/count":
                query = parse_qs(url.query)
                self._send(200, {"count": app.store.count(query["dataset"][0], query.get("contains", [""])[0])})
            elif url.path == "/standin/failures":
                self._send(200, app.store.failures())
            else:
                self._send(404, {"error": f"no route {url.path}"})

    return Handler


def load_collectors(config_path: Path | None, store: Store) -> list[Collector]:
    """The config's collector; with `accounts`, one per account: its feeds, its reader's secret, and the
    operator key that reads it from the env variables the account names (`operator_key_env`_ACCESS_KEY_ID, ...)."""
    if config_path is None:
        return []
    config = json.loads(config_path.read_text())

    def collector(feeds: list[dict[str, str]], reader: dict[str, Any], account: str = "",
                  operator_env: str | None = None) -> Collector:
        identity = ReaderIdentity(
            access_key_id=os.environ.get("XSIAM_READER_ACCESS_KEY_ID", ""),
            secret_access_key=os.environ.get("XSIAM_READER_SECRET_ACCESS_KEY", ""),
            secret_id=reader.get("secret_id"), role_arn=reader.get("role_arn"),
            external_id=os.environ.get("XSIAM_READER_EXTERNAL_ID") or None,
            operator_key_id=os.environ[f"{operator_env}_ACCESS_KEY_ID"] if operator_env else None,
            operator_secret_access_key=os.environ[f"{operator_env}_SECRET_ACCESS_KEY"] if operator_env else None,
        )
        sources = [FeedSource(f["name"], f["queue_url"], f["log_type"]) for f in feeds]
        return Collector(store, sources, identity, config["region"], config.get("endpoint_url"),
                         reload_seconds=config.get("reload_seconds"), account=account)

    if "accounts" in config:
        return [collector(a["feeds"], a.get("reader", {}), a["account_id"], a.get("operator_key_env"))
                for a in config["accounts"]]
    return [collector(config["feeds"], config.get("reader", {}))]


def reload_all(collectors: list[Collector]) -> None:
    for collector in collectors:
        collector.reload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, help="collector config (feeds, region, endpoint, reader)")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    store = Store(args.state_dir)
    xql = XqlApi(store, os.environ["XSIAM_API_KEY"], os.environ["XSIAM_API_KEY_ID"])
    collectors = load_collectors(args.config, store)
    app = StandIn(store, os.environ["XSIAM_FIREHOSE_TOKEN"], xql, collectors)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(app))
    server.daemon_threads = True
    for collector in collectors:
        collector.start()
    if collectors:
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload_all, args=(collectors,),
                                                                  daemon=True).start())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()
    for collector in collectors:
        collector.stop()
    store.close()


if __name__ == "__main__":
    main()
