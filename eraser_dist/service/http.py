"""The tenants' HTTP API (stdlib ``http.server``; JSON in and out, bearer tokens).

    POST /v1/requests                          submit   {"adapter", "request", "idempotency_key"?}
    GET  /v1/requests/{id}                     status
    GET  /v1/requests/{id}/certificate         certificate (JSON)
    GET  /v1/requests/{id}/certificate.png     certificate (plot)
    GET  /v1/adapters                          the caller's adapters and their versions
    GET  /v1/certificate-key                   the caller's key of its certificates' hashes
    GET  /v1/openapi.json                      this API's OpenAPI 3.1 description

Errors are ``{"error": {"status": N, "message": "..."}}`` with N the HTTP status: 400 bad
input, 401 no or unknown token, 403 a token used for another tenant, 404 anything that is
not the caller's (or does not exist), 405, 409 an idempotency key reused for another body,
411 a POST without a Content-Length header (a chunked body included), 413 a body over
``MAX_BODY_BYTES`` or a request over the row limit.
"""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import EraserError
from .auth_limit import FailedAuthLimit
from .errors import ServiceError
from .facade import EraseService
from .journal import MAX_REQUEST_IDS
from .registry import token_hash

MAX_BODY_BYTES = 1 << 20
DRAIN_LIMIT_BYTES = 16 << 20
SUBMIT_FIELDS = {"adapter", "request", "idempotency_key"}
REQUEST_PATH = re.compile(r"/v1/requests/([A-Za-z0-9_]{1,64})(/certificate(\.png)?)?")


def _error_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "message"],
        "properties": {"status": {"type": "integer"}, "message": {"type": "string"}}}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {400: "Malformed input", 401: "Missing or unknown token",
               403: "Token of another tenant", 404: "Not found (or not the caller's)",
               409: "Idempotency key reused for another request",
               411: "No Content-Length header", 413: "Too large",
               429: "Too many failed authentications from this address or with this token "
                    "(Retry-After)"}
    return {str(c): {"description": reasons[c], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for c in codes}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description served at /v1/openapi.json."""
    request_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    json_of = lambda ref: {"application/json": {"schema": {"$ref": ref}}}  # noqa: E731
    return {
        "openapi": "3.1.0",
        "info": {"title": "eraser_dist erase service", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _error_schema(),
                "EraseRequest": {"oneOf": [
                    {"type": "object", "additionalProperties": False,
                     "required": ["kind", "ids"], "properties": {
                         "kind": {"const": "remove"},
                         "ids": {"type": "array", "minItems": 1, "maxItems": MAX_REQUEST_IDS,
                                 "items": {"type": "string"}}}},
                    {"type": "object", "additionalProperties": False,
                     "required": ["kind", "edits"], "properties": {
                         "kind": {"enum": ["modify_query", "correct_response"]},
                         "edits": {"type": "array", "minItems": 1, "maxItems": MAX_REQUEST_IDS,
                                   "items": {"type": "object", "required": ["id"],
                                             "properties": {"id": {"type": "string"},
                                                            "query": {"type": "string"},
                                                            "response": {"type": "string"}}}}}},
                ]},
                "Submit": {"type": "object", "additionalProperties": False,
                           "required": ["adapter", "request"], "properties": {
                               "adapter": {"type": "string"},
                               "request": {"$ref": "#/components/schemas/EraseRequest"},
                               "idempotency_key": {"type": "string", "maxLength": 200}}},
                "Submitted": {"type": "object", "properties": {
                    "id": {"type": "string"}, "state": {"type": "string"},
                    "replayed": {"type": "boolean"}}},
                "Status": {"type": "object", "properties": {
                    "id": {"type": "string"}, "adapter": {"type": "string"},
                    "state": {"enum": ["pending", "running", "done", "failed"]},
                    "error": {"type": ["string", "null"]},
                    "certificate": {"type": "boolean"}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/requests": {"post": {
                "summary": "Submit an erase request (journaled before the answer)",
                "requestBody": {"required": True,
                                "content": json_of("#/components/schemas/Submit")},
                "responses": {"202": {"description": "Journaled",
                                      "content": json_of("#/components/schemas/Submitted")},
                              "200": {"description": "Idempotent replay of an earlier submit",
                                      "content": json_of("#/components/schemas/Submitted")},
                              **_errors(400, 401, 403, 404, 409, 411, 413, 429)}}},
            "/v1/requests/{id}": {"get": {
                "summary": "A request's state", "parameters": [request_id],
                "responses": {"200": {"description": "The request",
                                      "content": json_of("#/components/schemas/Status")},
                              **_errors(401, 404, 429)}}},
            "/v1/requests/{id}/certificate": {"get": {
                "summary": "The erasure certificate of a done request",
                "parameters": [request_id],
                "responses": {"200": {"description": "Certificate (JSON)"},
                              **_errors(401, 404, 429)}}},
            "/v1/requests/{id}/certificate.png": {"get": {
                "summary": "The certificate's plot", "parameters": [request_id],
                "responses": {"200": {"description": "PNG",
                                      "content": {"image/png": {}}}, **_errors(401, 404, 429)}}},
            "/v1/adapters": {"get": {
                "summary": "The caller's adapters and current versions",
                "responses": {"200": {"description": "Adapters"}, **_errors(401, 429)}}},
            "/v1/certificate-key": {"get": {
                "summary": "The caller's key of its certificates' row hashes (HMAC-SHA256)",
                "responses": {"200": {"description": "Key (hex) and how rows are hashed"},
                              **_errors(401, 429)}}},
            "/v1/openapi.json": {"get": {"summary": "This description", "security": [],
                                         "responses": {"200": {"description": "OpenAPI"}}}},
        },
    }


class _Handler(BaseHTTPRequestHandler):
    service: EraseService  # set on the subclass made by make_server
    auth_limit: FailedAuthLimit  # likewise: one per server, shared by its threads
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # audit log instead of stderr
        return

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self.body_read = False
        self._answer(self._post)

    def do_PUT(self) -> None:  # noqa: N802
        self._answer(self._not_allowed)

    do_DELETE = do_PATCH = do_PUT  # noqa: N815

    def _discard_body(self) -> None:
        """Read a refused body (up to ``DRAIN_LIMIT_BYTES``) before answering, so that the
        client gets the error instead of a broken pipe; beyond that, close the connection."""
        self.close_connection = True
        if "Content-Length" not in self.headers and self.headers.get(
                "Transfer-Encoding", "").strip().lower() == "chunked":
            self._discard_chunks()
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return
        if 0 < length <= DRAIN_LIMIT_BYTES:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)

    def _discard_chunks(self) -> None:
        """Read a refused chunked body to its last chunk (up to ``DRAIN_LIMIT_BYTES``): a
        chunked client is still sending when the 411 is ready, and closing on unread data
        resets its connection before it reads the answer."""
        left = DRAIN_LIMIT_BYTES
        while True:
            try:
                size = int(self.rfile.readline(64).split(b";")[0].strip(), 16)
            except ValueError:
                return
            if size == 0:  # the last chunk: skip the trailers up to the blank line
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return
            if size > left:
                return
            self.rfile.read(size + 2)  # the chunk and its CRLF
            left -= size

    def _not_allowed(self):
        raise _HttpError(405, f"{self.command} is not allowed here")

    def _token(self) -> str | None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _get(self):
        if self.headers.get("Content-Length", "0") != "0" or self.headers.get(
                "Transfer-Encoding") is not None:
            # its body would be read as the next request on this connection
            self.close_connection = True
            raise _HttpError(400, "a GET takes no body")
        path = self.path.split("?", 1)[0]
        if path == "/v1/openapi.json":
            return 200, openapi()
        if path == "/v1/adapters":
            return 200, {"adapters": self.service.adapters(self._token())}
        if path == "/v1/certificate-key":
            return 200, self.service.certificate_key(self._token())
        match = REQUEST_PATH.fullmatch(path)
        if match is None:
            raise _HttpError(404, f"no such resource {path[:100]!r}")
        request_id, part, png = match.groups()
        if part is None:
            return 200, self.service.status(self._token(), request_id)
        if png:
            return 200, self.service.certificate_png(self._token(), request_id)
        return 200, self.service.certificate(self._token(), request_id)

    def _post(self):
        if self.path.split("?", 1)[0] != "/v1/requests":
            raise _HttpError(404 if not self.path.startswith("/v1/requests") else 405,
                             f"cannot POST to {self.path[:100]!r}")
        token = self._token()
        body = self._json_body()
        if not isinstance(body, dict):
            raise _HttpError(400, "the body must be a JSON object")
        unknown = sorted(set(body) - SUBMIT_FIELDS)
        if unknown:
            raise _HttpError(400, f"unknown field(s) {', '.join(map(repr, unknown))[:200]}")
        if "adapter" not in body or "request" not in body:
            raise _HttpError(400, "the body needs 'adapter' and 'request'")
        key = body.get("idempotency_key", self.headers.get("Idempotency-Key"))
        result = self.service.submit(token, body["adapter"], body["request"], key)
        return (200 if result["replayed"] else 202), result

    def _json_body(self) -> Any:
        """The body as JSON, its size checked before a byte is read (and before the token).
        Only a Content-Length frames a body: a chunked one is 411, and one with both headers
        400 (two framings are how a second request is smuggled in one)."""
        if self.headers.get("Transfer-Encoding") is not None and "Content-Length" in self.headers:
            raise _HttpError(400, "both Transfer-Encoding and Content-Length: send only a "
                             "Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise _HttpError(411, "a Content-Length header is required") from None
        if length < 0:  # rfile.read(-1) would read to the end of the stream, past the cap
            raise _HttpError(400, f"Content-Length {length} is negative")
        if length > MAX_BODY_BYTES:
            raise _HttpError(413, f"the body is {length} bytes; at most {MAX_BODY_BYTES}")
        raw = self.rfile.read(length)
        self.body_read = True
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            # ValueError: malformed, or an integer beyond Python's digit limit;
            # RecursionError: nesting deeper than the parser's stack
            raise _HttpError(400, f"the body is not valid JSON: {str(err)[:200]}") from None

    def _answer(self, handler) -> None:
        extra: dict[str, str] = {}
        token = self._token()
        clients = (("address", self.client_address[0]),) + (
            (("token", token_hash(token)),) if token else ())
        try:
            wait = self.auth_limit.wait(*clients)
            if wait > 0:
                seconds = math.ceil(wait)
                self.service.registry.audit(None, "rate limit", False, f"client "
                                            f"{self.client_address[0]}: retry in {seconds} s")
                raise _HttpError(429, f"too many failed authentications: retry in {seconds} s",
                                 {"Retry-After": str(seconds)})
            status, payload = handler()
        except _HttpError as err:
            status, payload, extra = err.status, _error(err.status, str(err)), err.headers
        except ServiceError as err:
            status, payload = err.status, _error(err.status, str(err))
        except EraserError as err:  # a bad request body found by the core checks
            status, payload = 400, _error(400, str(err))
        except Exception as err:  # a bug: say so without leaking internals
            self.service.registry.audit(None, "http", False, f"internal error: {err!r}")
            status, payload = 500, _error(500, "internal error (logged)")
        if isinstance(payload, bytes):
            body, kind = payload, "image/png"
        else:
            body, kind = (json.dumps(payload, sort_keys=True) + "\n").encode(), "application/json"
        if status >= 400 and not getattr(self, "body_read", True):
            self._discard_body()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
            self.auth_limit.failed(*clients)
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "message": message}}


class _Server(ThreadingHTTPServer):
    # the listen backlog: socketserver's 5 reset 2-10 of 40 concurrent submits
    request_queue_size = 128


def make_server(service: EraseService, host: str = "127.0.0.1", port: int = 8080,
                auth_limit: FailedAuthLimit | None = None,
                idle_timeout_s: float = 15.0) -> ThreadingHTTPServer:
    """An HTTP server for ``service`` (call ``serve_forever``; port 0 picks a free one).
    ``auth_limit``: failed authentications allowed per client address and per token
    (default :class:`FailedAuthLimit`: 20 a minute); past it, 429 with Retry-After.
    ``idle_timeout_s``: a connection that sends nothing for this long is closed, so that
    idle or stalled clients do not each hold a thread."""
    handler = type("Handler", (_Handler,), {"service": service,
                                            "auth_limit": auth_limit or FailedAuthLimit(),
                                            "timeout": idle_timeout_s})
    server = _Server((host, port), handler)
    server.daemon_threads = True
    return server


def start_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="eraser-http", daemon=True)
    thread.start()
    return thread
