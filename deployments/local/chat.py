"""The on-call channel of the local stack: an incoming webhook that keeps what automations post.

It answers as Slack's and Teams' incoming webhooks do (POST JSON with `text` to a secret path,
200 "ok"; anything else 404), so the same notification block reaches it and a production channel.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from deployments.local.processes import StackError


class ChatInbox:
    """An HTTP receiver on 127.0.0.1 in a thread of this process; messages also go to a JSONL file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.path = f"/services/{secrets.token_urlsafe(16)}"  # the credential, as a Slack hook's path is
        self._messages: list[str] = []
        self.arrived_at: dict[str, datetime] = {}  # when each message came, for measuring alert latency
        self._arrived = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="chat-inbox", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{self.path}"

    def start(self) -> ChatInbox:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def messages(self) -> list[str]:
        with self._arrived:
            return list(self._messages)

    def wait_for(self, wanted: Callable[[str], bool], deadline_s: float, what: str) -> str:
        """The first message `wanted` accepts, waiting on arrivals until the deadline."""
        end = time.monotonic() + deadline_s
        with self._arrived:
            while True:
                found = next((m for m in self._messages if wanted(m)), None)
                if found is not None:
                    return found
                left = end - time.monotonic()
                if left <= 0:
                    raise StackError(f"no {what} in the on-call inbox after {deadline_s:.0f} s; "
                                     f"{len(self._messages)} other messages: {self._messages[-3:]}")
                self._arrived.wait(left)

    def _receive(self, text: str) -> None:
        with self._arrived:
            self._messages.append(text)
            self.arrived_at.setdefault(text, datetime.now(UTC))
            with self.log_path.open("a") as log:
                log.write(json.dumps({"text": text}) + "\n")
            self._arrived.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        inbox = self

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    text = json.loads(body)["text"] if self.path == inbox.path else None
                except (ValueError, KeyError, TypeError):
                    self._answer(400, b"invalid_payload")
                    return
                if text is None:
                    self._answer(404, b"no_service")
                    return
                inbox._receive(str(text))
                self._answer(200, b"ok")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the messages themselves are kept in the inbox's file."""

        return Hook
