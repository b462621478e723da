"""The tenants' HTTP API as a FastAPI app: pydantic models, a generated OpenAPI document.

    POST /v1/requests                          submit   {"adapter", "request", "idempotency_key"?}
    GET  /v1/requests/{id}                     status
    GET  /v1/requests/{id}/certificate         certificate (JSON)
    GET  /v1/requests/{id}/certificate.png     certificate (plot)
    GET  /v1/adapters                          the caller's adapters and their versions
    GET  /v1/certificate-key                   the caller's key of its certificates' hashes
    GET  /v1/openapi.json                      this API's OpenAPI description (generated)
    GET  /v1/status                            operator: queue, batches, engines (JSON)
    GET  /metrics                              operator: the same as Prometheus text

Errors are ``{"error": {"status": N, "message": "..."}}`` with N the HTTP status: 400 bad
input, 401 no or unknown token, 403 a token used for another tenant, 404 anything that is
not the caller's (or does not exist), 405, 409 an idempotency key reused for another body,
411 a POST without a Content-Length header (a chunked body included), 413 a body over
``MAX_BODY_BYTES`` or a request over the row limit, 429 too many failed authentications.

:func:`make_app` builds the app for one :class:`EraseService`; :mod:`.http` serves it with
uvicorn. :class:`RequestGuard`, the app's outer middleware, answers before any route or any
body byte: the failed-authentication limit first, then the framing rules.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import EraserError
from .auth_limit import FailedAuthLimit
from .errors import NotFound, ServiceError
from .facade import EraseService
from .journal import MAX_KEY_CHARS, MAX_REQUEST_IDS
from .metrics import ServiceCollector, metrics_text
from .registry import token_hash

MAX_BODY_BYTES = 1 << 20
# a refused body up to this size is read and dropped before the answer, so that the client
# reads the error instead of a connection reset; a larger one is cut off
DRAIN_LIMIT_BYTES = 16 << 20
DRAIN_SECONDS = 15.0
REQUEST_ID = re.compile(r"[A-Za-z0-9_]{1,64}")


# -- models ------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RemoveRequest(_Strict):
    """Delete rows from the adapter's training set."""

    kind: Literal["remove"]
    ids: list[str] = Field(min_length=1, description=f"row ids; at most {MAX_REQUEST_IDS} "
                           "(413 beyond)")


class QueryEdit(_Strict):
    id: str
    query: str = Field(min_length=1, description="the row's new query")


class ResponseEdit(_Strict):
    id: str
    response: str = Field(min_length=1, description="the row's new response")


class ModifyQueryRequest(_Strict):
    """Replace the queries of rows (the old rows are unlearnt, the new ones learnt)."""

    kind: Literal["modify_query"]
    edits: list[QueryEdit] = Field(min_length=1, description=f"at most {MAX_REQUEST_IDS}")


class CorrectResponseRequest(_Strict):
    """Replace the responses of rows."""

    kind: Literal["correct_response"]
    edits: list[ResponseEdit] = Field(min_length=1, description=f"at most {MAX_REQUEST_IDS}")


EraseRequest = Annotated[RemoveRequest | ModifyQueryRequest | CorrectResponseRequest,
                         Field(discriminator="kind")]


class Submit(_Strict):
    adapter: str = Field(description="the caller's adapter to erase from")
    request: EraseRequest
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=MAX_KEY_CHARS,
        description="names this request: a resubmit with the same key and body answers 200 "
                    "with the first id, with another body 409 (or the Idempotency-Key header)")


class Submitted(BaseModel):
    id: str
    state: str
    replayed: bool = Field(description="true: an earlier submit with this idempotency key")


class Status(BaseModel):
    id: str
    tenant: str
    adapter: str
    state: Literal["pending", "running", "done", "failed"]
    error: str | None = Field(description="why it failed")
    batch: int | None = Field(description="the batch that carried (or carries) it out")
    submitted: float = Field(description="Unix time")
    finished: float | None = Field(description="Unix time")
    request: dict[str, Any] = Field(description="the request as journaled")
    certificate: bool = Field(description="true: GET …/certificate has it")


class ErrorDetail(BaseModel):
    status: int
    message: str


class Error(BaseModel):
    error: ErrorDetail


_REASONS = {400: "Malformed input", 401: "Missing or unknown token",
            403: "Token of another tenant", 404: "Not found (or not the caller's)",
            405: "Method not allowed", 409: "Idempotency key reused for another request",
            411: "No Content-Length header", 413: "Too large",
            429: "Too many failed authentications from this address or with this token "
                 "(Retry-After)"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Error, "description": _REASONS[code]} for code in codes}


def error_body(status: int, message: str) -> bytes:
    return (json.dumps({"error": {"status": status, "message": message}}, sort_keys=True)
            + "\n").encode()


def _error_response(status: int, message: str,
                    headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(status, message), status, headers,
                    media_type="application/json")


# -- the guard: before any route and any body byte ---------------------------------------------

def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def framing_refusal(method: str, headers: Headers) -> tuple[int, str] | None:
    """Why a request's framing is refused, or None. Only a Content-Length frames a body, and
    the server (h11) reads exactly that many bytes, so checking it before a byte is read
    bounds the body: a chunked POST is 411, two framings 400 (how a second request is
    smuggled inside one), a GET's body 400 (it would be read as the next request)."""
    length, chunked = headers.get("content-length"), "transfer-encoding" in headers
    if method != "POST":
        return (400, f"a {method} takes no body") if chunked or length not in (None, "0") \
            else None
    if chunked and length is not None:
        return 400, "both Transfer-Encoding and Content-Length: send only a Content-Length"
    if length is None:
        return 411, "a Content-Length header is required"
    if not length.isdigit():  # h11 refuses these itself; another ASGI server may not
        return 400, f"Content-Length {length[:20]!r} is not a byte count"
    if int(length) > MAX_BODY_BYTES:
        return 413, f"the body is {length} bytes; at most {MAX_BODY_BYTES}"
    return None


class RequestGuard:
    """ASGI middleware in front of every route. In order: a client (address, or presented
    token) past its failed-authentication limit gets 429 with Retry-After (audited); a
    request whose framing is refused (:func:`framing_refusal`) gets its status; every 401
    the app answers counts against the client. A refused body of up to
    ``DRAIN_LIMIT_BYTES`` is read and dropped first, so that the client reads the answer."""

    def __init__(self, app: ASGIApp, service: EraseService, auth_limit: FailedAuthLimit):
        self.app, self.service, self.auth_limit = app, service, auth_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        address = scope["client"][0] if scope.get("client") else "unknown"
        token = bearer_token(headers.get("authorization"))
        clients = (("address", address),) + ((("token", token_hash(token)),) if token else ())
        body_done = False

        async def tracked_receive() -> Message:
            nonlocal body_done
            message = await receive()
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def drain() -> None:
            length = headers.get("content-length")
            if body_done or length is not None and (
                    "transfer-encoding" in headers or not length.isdigit()
                    or int(length) > DRAIN_LIMIT_BYTES):
                return  # nothing left, an ambiguous framing, or too much to read
            left = DRAIN_LIMIT_BYTES
            with anyio.move_on_after(DRAIN_SECONDS):
                while not body_done and left > 0:
                    left -= len((await tracked_receive()).get("body", b""))

        async def refuse(status: int, message: str, extra: dict[str, str]) -> None:
            await drain()
            response = _error_response(status, message, {"Connection": "close", **extra})
            await response(scope, tracked_receive, send)

        wait = self.auth_limit.wait(*clients)
        if wait > 0:
            seconds = math.ceil(wait)
            await anyio.to_thread.run_sync(  # SQLite: not on the event loop
                self.service.registry.audit, None, "rate limit", False,
                f"client {address}: retry in {seconds} s")
            await refuse(429, f"too many failed authentications: retry in {seconds} s",
                         {"Retry-After": str(seconds)})
            return
        refusal = framing_refusal(scope["method"], headers)
        if refusal is not None:
            await refuse(*refusal, {})
            return

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == 401:
                    self.auth_limit.failed(*clients)
                if message["status"] >= 400:
                    await drain()
            await send(message)

        await self.app(scope, tracked_receive, guarded_send)


# -- the app -----------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="the tenant's token")


def _presented_token(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                            Depends(_bearer)]) -> str | None:
    """The presented token; the service authenticates it (401, audited, if bad)."""
    return credentials.credentials if credentials else None


def _request_id(id: str) -> str:  # noqa: A002 (the path's name)
    if REQUEST_ID.fullmatch(id) is None:
        raise NotFound(f"no request {id[:100]!r}")
    return id


Token = Annotated[str | None, Depends(_presented_token)]
RequestId = Annotated[str, Depends(_request_id)]

def make_app(service: EraseService, auth_limit: FailedAuthLimit | None = None) -> FastAPI:
    """The HTTP API of ``service``. ``auth_limit``: failed authentications allowed per
    client address and per token (default :class:`FailedAuthLimit`: 20 a minute). Every
    answer comes from the data root, so any process may serve it: the serve process's
    thread (:mod:`.http`) or Ray Serve replicas (:mod:`actors.api`)."""
    app = FastAPI(title="eraser_dist erase service", version="1",
                  openapi_url="/v1/openapi.json", docs_url=None, redoc_url=None)
    app.add_middleware(RequestGuard, service=service,
                       auth_limit=auth_limit or FailedAuthLimit())
    @app.post("/v1/requests", status_code=202, response_model=Submitted,
              summary="Submit an erase request (journaled before the answer)",
              responses={200: {"model": Submitted,
                               "description": "Idempotent replay of an earlier submit"},
                         **_errors(400, 401, 403, 404, 409, 411, 413, 429)})
    def submit(body: Submit, token: Token, response: Response,
               idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None
               ) -> dict[str, Any]:
        key = body.idempotency_key if body.idempotency_key is not None else idempotency_key
        result = service.submit(token, body.adapter,
                                body.request.model_dump(exclude_unset=True), key)
        if result["replayed"]:
            response.status_code = 200
        return result

    @app.get("/v1/requests/{id}", response_model=Status, summary="A request's state",
             responses=_errors(401, 404, 429))
    def status(id: RequestId, token: Token) -> dict[str, Any]:  # noqa: A002
        return service.status(token, id)

    @app.get("/v1/requests/{id}/certificate", summary="The erasure certificate of a done "
             "request", responses=_errors(401, 404, 429))
    def certificate(id: RequestId, token: Token) -> dict[str, Any]:  # noqa: A002
        return service.certificate(token, id)

    @app.get("/v1/requests/{id}/certificate.png", summary="The certificate's plot",
             response_class=Response, responses={
                 200: {"content": {"image/png": {}}, "description": "PNG"},
                 **_errors(401, 404, 429)})
    def certificate_png(id: RequestId, token: Token) -> Response:  # noqa: A002
        return Response(service.certificate_png(token, id), media_type="image/png")

    @app.get("/v1/adapters", summary="The caller's adapters and current versions",
             responses=_errors(401, 429))
    def adapters(token: Token) -> dict[str, Any]:
        return {"adapters": service.adapters(token)}

    @app.get("/v1/certificate-key", summary="The caller's key of its certificates' row "
             "hashes (HMAC-SHA256)", responses=_errors(401, 429))
    def certificate_key(token: Token) -> dict[str, str]:
        return service.certificate_key(token)

    @app.get("/v1/status", summary="Operator: requests waiting per tenant and adapter, "
             "running batches, the last batch's seconds by phase, the serve's engines",
             responses=_errors(401, 429))
    def status_overview(token: Token) -> dict[str, Any]:
        return service.overview(token)

    @app.get("/metrics", summary="Operator: the service's metrics, Prometheus text format",
             response_class=Response, responses={
                 200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "metrics"},
                 **_errors(401, 429)})
    def metrics(token: Token) -> Response:
        service.registry.authenticate_operator(token, "metrics")
        return Response(metrics_text(ServiceCollector(service.registry)),
                        media_type=CONTENT_TYPE_LATEST)

    _answer_errors_as_json(app, service)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _answer_errors_as_json(app: FastAPI, service: EraseService) -> None:
    """Every error, whoever raises it, as ``{"error": {"status", "message"}}``."""

    @app.exception_handler(ServiceError)
    def service_error(_: Request, err: ServiceError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return _error_response(err.status, str(err), headers)

    @app.exception_handler(EraserError)
    def bad_request(_: Request, err: EraserError) -> Response:  # found by the core checks
        return _error_response(400, str(err))

    @app.exception_handler(RequestValidationError)
    def invalid(_: Request, err: RequestValidationError) -> Response:
        # FastAPI's 422 is this API's 400: the contract predates the framework
        problems = [f"the body is not valid JSON: {e['ctx']['error']}"
                    if e["type"] == "json_invalid" else
                    f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}"
                    for e in err.errors()[:3]]
        return _error_response(400, "; ".join(problems)[:500])

    @app.exception_handler(HTTPException)
    def http_error(request: Request, err: HTTPException) -> Response:
        message = {404: f"no such resource {request.url.path[:100]!r}",
                   405: f"{request.method} is not allowed here"}.get(err.status_code,
                                                                      str(err.detail))
        return _error_response(err.status_code, message, err.headers)

    @app.exception_handler(Exception)
    def internal(_: Request, err: Exception) -> Response:  # a bug: say so, leak nothing
        service.registry.audit(None, "http", False, f"internal error: {err!r}")
        return _error_response(500, "internal error (logged)")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated description, without FastAPI's 422 (this API answers 400 instead)."""
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for methods in spec["paths"].values():
            for operation in methods.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            spec.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = spec
    return app.openapi_schema
