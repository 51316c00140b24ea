"""The local XSIAM stand-in: Firehose endpoint, S3 collector over SQS, and the XQL query subset.

    python -m deployments.xsiam.server --state-dir DIR [--config collector.json]

Secrets come from the environment, as a tenant's would: XSIAM_FIREHOSE_TOKEN, XSIAM_API_KEY,
XSIAM_API_KEY_ID, and (without a `secret_id` in the config) XSIAM_READER_ACCESS_KEY_ID /
XSIAM_READER_SECRET_ACCESS_KEY. Binds 127.0.0.1 on a free port and prints {"port": N} when ready;
SIGTERM stops it. SIGHUP (or POST /standin/reload) reloads the reader's credentials.

HTTP is FastAPI (Starlette) on uvicorn, its access log off: requests carry keys in headers.
Test controls: POST /standin/collector?mode=running|paused|dropping, POST /standin/xql?execution_seconds=N;
reads: GET /standin/events[?dataset=], /standin/count?dataset=&contains=, /standin/failures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from deployments.xsiam import firehose
from deployments.xsiam.collector import MODES, Collector, FeedSource, ReaderIdentity
from deployments.xsiam.store import Store, now_ms
from deployments.xsiam.xql import XqlApi

FIREHOSE_PATH = "/logs/v1/aws"
XQL_PREFIX = "/public_api/v1/xql/"
GRACEFUL_SHUTDOWN_SECONDS = 5


class StandIn:
    def __init__(self, store: Store, firehose_token: str, xql: XqlApi, collectors: list[Collector]) -> None:
        """One collector per AWS account whose feeds the tenant reads (a fleet: one per account, each with its
        own reader key, as XSIAM has one data source per account)."""
        self.store, self.firehose_token, self.xql, self.collectors = store, firehose_token, xql, collectors


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None when it exceeds `limit` (then read to its end and dropped, so the client reads the 413
    instead of a broken pipe)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    return b"".join(chunks) if size <= limit else None


def headers_of(request: Request) -> dict[str, str]:
    """Header names lower-cased, as the Firehose and XQL handlers take them."""
    return {name.lower(): value for name, value in request.headers.items()}


def create_app(standin: StandIn) -> FastAPI:
    app = FastAPI(title="XSIAM stand-in", openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, error: HTTPException) -> JSONResponse:
        """Unknown paths and methods answer 404 naming the path, as the stand-in always has."""
        if error.status_code in (404, 405):
            return JSONResponse({"error": f"no route {request.url.path}"}, status_code=404)
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.post(FIREHOSE_PATH)
    async def firehose_delivery(request: Request) -> Response:
        body = await read_capped(request, firehose.MAX_BODY_BYTES)
        if body is None:
            return JSONResponse({"requestId": request.headers.get("x-amz-firehose-request-id", ""),
                                 "timestamp": now_ms(), "errorMessage": "request body too large"},
                                status_code=413, headers={"Connection": "close"})
        answer = await run_in_threadpool(firehose.handle, headers_of(request), body, standin.firehose_token,
                                         standin.store)
        return JSONResponse(answer.body, status_code=answer.status)

    @app.post(XQL_PREFIX + "{call}")
    async def xql(call: str, request: Request) -> Response:
        if not standin.xql.authorized(headers_of(request)):
            return JSONResponse({"reply": {"err_code": 401, "err_msg": "Public API request unauthorized"}}, 401)
        try:
            document = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"reply": {"err_code": 400, "err_msg": "body is not JSON"}}, 400)
        handlers = {"start_xql_query": standin.xql.start, "get_query_results": standin.xql.results}
        if call not in handlers:
            return JSONResponse({"reply": {"err_code": 404, "err_msg": f"unknown XQL call {call}"}}, 404)
        status, reply = await run_in_threadpool(handlers[call], document)
        return JSONResponse(reply, status)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/standin/events")
    def events(dataset: str | None = None) -> list[dict[str, Any]]:
        return standin.store.events(dataset)

    @app.get("/standin/count")
    def count(dataset: str, contains: str = "") -> dict[str, int]:
        return {"count": standin.store.count(dataset, contains)}

    @app.get("/standin/failures")
    def failures() -> list[dict[str, Any]]:
        return standin.store.failures()

    @app.post("/standin/xql")
    def query_execution(execution_seconds: float) -> dict[str, float]:
        """How long each XQL query runs before it completes (tests of deadlines and the 4-query limit)."""
        standin.xql.execution_seconds = max(0.0, execution_seconds)
        return {"execution_seconds": standin.xql.execution_seconds}

    if not standin.collectors:
        return app

    @app.post("/standin/reload")
    def reload(stage: str = "AWSCURRENT") -> dict[str, Any]:
        for collector in standin.collectors:
            collector.reload(stage)
        return {"key_id": ",".join(c.key_id for c in standin.collectors),
                "key_ids": {c.account: c.key_id for c in standin.collectors}}

    @app.post("/standin/collector")
    def collector_mode(mode: str) -> Response:
        """running (collect), paused (leave messages queued) or dropping (delete them unread: silent loss)."""
        if mode not in MODES:
            return JSONResponse({"error": f"mode must be one of {', '.join(MODES)}, not {mode!r}"}, 400)
        for collector in standin.collectors:
            collector.set_mode(mode)
        return JSONResponse({"mode": mode})

    return app


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


def listening_socket(port: int) -> socket.socket:
    """Bound and listening before uvicorn starts, so the port is printed only once connections queue on it.

    Made with proto IPPROTO_TCP so asyncio sets TCP_NODELAY on each connection (it checks the proto): without it
    a keep-alive client waits out a 40 ms delayed ACK on every response (Nagle)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, help="collector config (feeds, region, endpoint, reader)")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    store = Store(args.state_dir)
    xql = XqlApi(store, os.environ["XSIAM_API_KEY"], os.environ["XSIAM_API_KEY_ID"])
    collectors = load_collectors(args.config, store)
    app = create_app(StandIn(store, os.environ["XSIAM_FIREHOSE_TOKEN"], xql, collectors))
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS))
    sock = listening_socket(args.port)
    for collector in collectors:
        collector.start()
    if collectors:
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload_all, args=(collectors,),
                                                                  daemon=True).start())
    for signum in (signal.SIGTERM, signal.SIGINT):  # before uvicorn takes them over, and re-raised to these after
        signal.signal(signum, lambda *_: setattr(server, "should_exit", True))
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    server.run(sockets=[sock])
    for collector in collectors:
        collector.stop()
    store.close()


if __name__ == "__main__":
    main()
