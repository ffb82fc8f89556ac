"""The emulator's HTTP plumbing: a threaded server that stops at once and a handler that can
answer late, reset the connection, or answer like Graph when the emulator itself breaks."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import email.utils
import http.server
import json
import selectors
import socket
import socketserver
import struct
import sys
import threading
import traceback
from typing import Any, Protocol
from urllib.parse import parse_qsl

from . import rules
from .faults import GraphError, Reply, graph_error_reply, rejection_reply

#: The longest body read: many times 1,000 events (the most one request may carry) of any
#: size Meta takes. A longer one is answered 413 unread, so no client makes the emulator
#: allocate what it announces.
MAX_BODY_BYTES = 64 * 1024 * 1024


class _UnreadableBody(Exception):
    """A body the handler will not read to its end: answered at once, then the connection
    is closed (what is left of the body cannot be told from a next request)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.reply = rejection_reply(rules.Rejection(rules.INVALID_DATA, message))
        self.reply.status = status


class Responder(Protocol):
    """What the server needs from the emulator."""

    def _respond(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply: ...

    def _pause(self, seconds: float) -> None: ...


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the default 5 drops bursts of parallel senders for a second

    def __init__(self, address: tuple[str, int], emulator: Responder) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self.timeout = 0  # handle_request() runs only once a connection is waiting
        super().__init__(address, _Handler)

    def serve_until_woken(self) -> None:
        # serve_forever() polls for shutdown, making every stop() wait up to a poll interval;
        # a wake-up socket in the same select() makes stopping immediate.
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not any(key.fileobj is self._wake_r for key, _ in selector.select()):
                self.handle_request()

    def wake(self) -> None:
        self._wake_w.send(b"!")

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can hang on a bad resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A sender that gave up (read timeout) makes the late answer fail: that is expected.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "capi-graph-emulator"
    # Headers and body are two writes: with Nagle's algorithm the body would wait for the
    # client's delayed ACK of the headers (up to 40 ms on a kept-alive connection).
    disable_nagle_algorithm = True
    server: Server

    def do_POST(self) -> None:
        try:
            body = self._read_body()
        except _UnreadableBody as exc:
            self.close_connection = True
            reply = exc.reply
        else:
            headers = dict(self.headers.items())
            try:
                reply = self.server.emulator._respond(self.command, self.path, headers, body)
            except Exception:  # noqa: BLE001 - any bug must still get an answer
                traceback.print_exc()  # a bug in the emulator: answer like Graph's own failures
                reply = graph_error_reply(GraphError(1))
        if reply.delay > 0:
            self.server.emulator._pause(reply.delay)
        if reply.reset:
            self._reset()
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def _read_body(self) -> bytes:
        too_long = f"The request body is longer than the emulator reads ({MAX_BODY_BYTES} bytes)."
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                line = self.rfile.readline(1024).split(b";")[0].strip() or b"0"
                try:
                    size = int(line, 16)
                except ValueError:
                    raise _UnreadableBody(400, "The chunked body could not be read.") from None
                if size <= 0:
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise _UnreadableBody(413, too_long)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline(1024).strip():  # trailers
                pass
            return b"".join(chunks)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            raise _UnreadableBody(413, too_long)
        return self.rfile.read(length) if length > 0 else b""

    def _reset(self) -> None:
        # Linger 0 makes close() send RST instead of FIN: the sender sees a reset.
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the makefile() reference would otherwise keep the socket open
        self.connection.close()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass


def parse_params(query: str, content_type: str, body: bytes) -> tuple[dict[str, Any], str | None]:
    """Query and body parameters merged (the body wins), and why the body is unreadable."""
    params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    mime = content_type.split(";")[0].strip().lower()
    if not body.strip():
        return params, None
    try:
        if mime == "application/json":
            decoded = json.loads(body)
            if not isinstance(decoded, dict):
                return params, "A JSON body must be an object of parameters."
            params.update(decoded)
        elif mime == "application/x-www-form-urlencoded":
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        elif mime == "multipart/form-data":
            params.update(_parse_multipart(content_type, body))
        else:
            return params, f"Unsupported Content-Type {mime or '(none)'}: send form data or JSON."
    except (ValueError, LookupError, RecursionError):  # LookupError: an unknown charset
        return params, f"The {mime} body could not be parsed."
    return params, None


def _parse_multipart(content_type: str, body: bytes) -> dict[str, str]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("not multipart")
    fields: dict[str, str] = {}
    parts: Any = message.get_payload()
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if name is None:
            continue
        payload = part.get_payload(decode=True) or b""
        fields[email.utils.collapse_rfc2231_value(name)] = payload.decode(
            part.get_content_charset() or "utf-8"
        )
    return fields
