"""Serving the HTTP API (:mod:`.app`) with uvicorn, in a thread beside the batch worker.

uvicorn gives the listen backlog (2048), HTTP/1.1 framing (h11 refuses a malformed or
negative Content-Length) and the idle timeout between requests. Two gaps of its h11 protocol
are closed here by :class:`_H11`: it times out only idle connections after a response, so a
connection that never completes its request (headers or body: the attack run's stalled
clients) was held forever; and its own 400 for an unparseable request is plain text, not
this API's JSON.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import EraserError
from .app import error_body, make_app
from .auth_limit import FailedAuthLimit
from .facade import EraseService

START_SECONDS = 30.0
BACKLOG = 2048  # the socket's listen queue, also told to uvicorn, which listens again


class _H11(H11Protocol):
    """uvicorn's h11 protocol, which also closes a connection that has not sent a whole
    request (line, headers and body) within ``timeout_keep_alive`` of the request's first
    byte, nor begun one within that time of opening or of its last answer; and which answers
    an unparseable request with this API's JSON error."""

    _deadline: asyncio.TimerHandle | None = None
    _receiving = False  # the first byte of the next request has arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_deadline()

    def data_received(self, data: bytes) -> None:
        if not self._receiving and self.conn.their_state is h11.IDLE:
            self._receiving = True
            self._arm_deadline()
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._receiving = False
        self._arm_deadline()
        super().on_response_complete()

    def _arm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.timeout_keep_alive, self._close_if_incomplete)

    def _close_if_incomplete(self) -> None:
        # IDLE: no whole request line and headers yet; SEND_BODY: the body is still short
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = error_body(400, msg)
        for event in (h11.Response(status_code=400, reason=b"Bad Request", headers=[
                (b"content-type", b"application/json"), (b"connection", b"close"),
                (b"content-length", str(len(body)).encode())]),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


class HttpServer:
    """The HTTP API of ``service`` on ``host:port`` (port 0 picks a free one), served by
    uvicorn in a daemon thread::

        with HttpServer(service, port=0) as server:
            print(server.url)

    ``auth_limit``: failed authentications allowed per client address and per token
    (default :class:`FailedAuthLimit`: 20 a minute); past it, 429 with Retry-After.
    ``idle_timeout_s``: a connection that has not sent a whole request this long after it
    opened, or after its last answer, is closed."""

    def __init__(self, service: EraseService, host: str = "127.0.0.1", port: int = 8080,
                 auth_limit: FailedAuthLimit | None = None, idle_timeout_s: float = 15.0):
        try:
            self._socket = socket.create_server((host, port), backlog=BACKLOG)
        except (OSError, OverflowError) as err:
            raise EraserError(f"cannot listen on {host}:{port}: {err}") from None
        # the asyncio loop, not uvloop even where ray[serve] installed it: the deadlines of
        # _H11 were tested on asyncio's
        config = uvicorn.Config(make_app(service, auth_limit), http=_H11, loop="asyncio",
                                lifespan="off",
                                log_config=None, access_log=False, backlog=BACKLOG,
                                timeout_keep_alive=idle_timeout_s, timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]},
                                        name="eraser-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> HttpServer:
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise EraserError(f"the HTTP API did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join()
        self._socket.close()

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
