"""A loopback stand-in for the Graph API's ``/{pixel}/events`` edge that answers at once (or
after a fixed latency) and only counts.

Both sides of every comparison post to the same stand-in. It reads the three body encodings
Meta documents for this edge (meta-capi.md §1.1: urlencoded form [APE], multipart form and a
JSON body [UTA]), with ``data`` either an array of events or an array of JSON-encoded events
(``list<JSON-encoded string>`` [APE], what the SDK sends), and the token in the query or the
body. It checks only what it must to count: a token, and ``data`` holding 1 to 1,000 events
(§1.3); the events themselves are not validated (the emulator in django_capi.testing does
that). ``GET /stats`` answers the totals so far.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import http.server
import itertools
import json
import threading
import time
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

MAX_EVENTS = 1000  # meta-capi.md §1.3


class StandIn:
    """The server, run on threads of the calling process: ``with StandIn(latency=0.1) as s``."""

    def __init__(self, *, latency: float = 0.0, host: str = "127.0.0.1") -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.events = 0
        self.requests = 0
        self.encodings: dict[str, int] = {}
        self.server = _Server((host, 0), _Handler)
        self.server.standin = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "events": self.events,
                "requests": self.requests,
                "encodings": dict(self.encodings),
            }

    def answer(self, query: str, content_type: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Meta's status and JSON answer for one POST."""
        try:
            encoding, params = read_params(query, content_type, body)
            data = params.get("data")
            events = json.loads(data) if isinstance(data, str | bytes) else data
        except (ValueError, UnicodeDecodeError):
            return 400, graph_error(100, "Invalid parameter: the body could not be read")
        if not params.get("access_token"):
            return 400, graph_error(190, "An access token is required", "OAuthException")
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
            return 400, graph_error(100, "Invalid parameter: data must hold 1 to 1000 events")
        with self.lock:
            self.events += len(events)
            self.requests += 1
            self.encodings[encoding] = self.encodings.get(encoding, 0) + 1
        if self.latency:
            time.sleep(self.latency)
        trace = f"Abench{next(_traces):014d}"
        return 200, {"events_received": len(events), "messages": [], "fbtrace_id": trace}


_traces = itertools.count()


def graph_error(code: int, message: str, kind: str = "OAuthException") -> dict[str, Any]:
    """The shape of a Graph API error body (meta-capi.md §7.2)."""
    return {"error": {"message": message, "type": kind, "code": code, "fbtrace_id": "Abench"}}


def read_params(query: str, content_type: str, body: bytes) -> tuple[str, dict[str, Any]]:
    """The body's encoding and its parameters, over the query string's (the body wins)."""
    params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query).items()}
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        parsed = json.loads(body)
        if not isinstance(parsed, dict):
            raise ValueError("a JSON body must be an object")
        params.update(parsed)
        return "json", params
    if kind == "multipart/form-data":
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str):
                payload = part.get_payload(decode=True)
                params[name] = payload.decode() if isinstance(payload, bytes) else payload
        return "multipart", params
    text = body.decode("ascii")
    params.update({k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()})
    return "form", params


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    standin: StandIn


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Graph and every client here use it
    # The answer goes out in two writes (headers, then body). With Nagle's algorithm the
    # body waits for the client to acknowledge the headers, which a kept-alive client delays
    # by up to 40 ms (delayed ACK): a stall per request that Graph does not have.
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        status, answer = self.server.standin.answer(
            urlsplit(self.path).query, self.headers.get("Content-Type") or "", body
        )
        self._send(status, answer)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/stats":
            self._send(200, self.server.standin.stats())
        else:
            self._send(404, graph_error(803, "Unknown path"))

    def _send(self, status: int, answer: dict[str, Any]) -> None:
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    """Run one stand-in until interrupted (``python -m bench.standin [latency]``)."""
    import sys

    latency = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    with StandIn(latency=latency) as standin:
        print(standin.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
