"""The HTTP API's framing, timeouts, errors and OpenAPI document, on a data root with one
tenant and nothing else (no model)."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from eraser_dist.service import EraseService
from eraser_dist.service.http import HttpServer

SUBMIT = {"adapter": "a1", "request": {"kind": "remove", "ids": ["r1"]}}


@pytest.fixture
def server(tmp_path):
    service = EraseService(tmp_path / "root")
    token = service.add_tenant("acme")
    with HttpServer(service, "127.0.0.1", 0, idle_timeout_s=0.5) as server:
        yield service, token, server.address[1]


def answer(connection: http.client.HTTPConnection) -> tuple[int, str, dict]:
    response = connection.getresponse()
    return response.status, response.headers["Content-Type"], json.loads(response.read())


def test_a_post_without_content_length_gets_411(server):
    service, token, port = server
    bare = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bare.putrequest("POST", "/v1/requests")
    bare.putheader("Authorization", f"Bearer {token}")
    bare.putheader("Content-Type", "application/json")
    bare.endheaders()  # no Content-Length, no body
    chunked = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    chunked.request("POST", "/v1/requests", body=iter([json.dumps(SUBMIT).encode()]),
                    headers={"Authorization": f"Bearer {token}",
                             "Content-Type": "application/json"}, encode_chunked=True)
    for connection in (bare, chunked):
        status, kind, payload = answer(connection)
        connection.close()
        assert (status, kind) == (411, "application/json")
        assert payload == {"error": {"status": 411,
                                     "message": "a Content-Length header is required"}}
    assert service.journal.queue() == []


def test_the_openapi_description_lists_411_for_submits(server):
    _, _, port = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/v1/openapi.json")
    status, _, spec = answer(connection)
    connection.close()
    assert status == 200
    responses = spec["paths"]["/v1/requests"]["post"]["responses"]
    assert responses["411"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    assert {"400", "401", "403", "404", "409", "413", "429"} <= set(responses)
    # generated from the pydantic models: the request is one of three kinds, by "kind";
    # FastAPI's 422 is not listed, since this API answers 400
    request = spec["components"]["schemas"]["Submit"]["properties"]["request"]
    assert set(request["discriminator"]["mapping"]) == {"remove", "modify_query",
                                                       "correct_response"}
    assert "422" not in json.dumps(spec)
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_a_bad_body_is_a_400_that_names_the_field(server):
    _, token, port = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for body, message in [
            ({"adapter": "a1", "request": {"kind": "remove", "ids": []}},
             "request.remove.ids: List should have at least 1 item after validation, not 0"),
            ({"adapter": "a1", "request": {"kind": "correct_response",
                                           "edits": [{"id": "r1", "query": "q"}]}},
             "request.correct_response.edits.0.response: Field required"),
            (b"{not json", "the body is not valid JSON: Expecting property name enclosed in "
                           "double quotes")]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection.request("POST", "/v1/requests", body=raw, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        status, _, payload = answer(connection)
        assert (status, payload["error"]["message"].split(";")[0]) == (400, message)
    connection.close()


def test_an_internal_error_is_a_500_that_is_audited_and_leaks_nothing(server, monkeypatch):
    service, token, port = server

    def broken(*_):
        raise RuntimeError("disk gone at /srv/secret/tenants")

    monkeypatch.setattr(service, "adapters", broken)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/v1/adapters", headers={"Authorization": f"Bearer {token}"})
    status, kind, payload = answer(connection)
    connection.close()
    assert (status, kind) == (500, "application/json")
    assert payload == {"error": {"status": 500, "message": "internal error (logged)"}}
    audit = service.registry.audit_log()[-1]
    assert (audit["action"], audit["allowed"]) == ("http", 0)
    assert "/srv/secret/tenants" in audit["detail"]


def test_connections_that_stall_before_a_whole_request_are_closed(server):
    """Idle from the start, stalled in the headers, stalled in the body: each is closed
    after the idle timeout (0.5 s here), while a whole request on another connection is
    answered; uvicorn alone held the first two forever."""
    _, token, port = server
    stalls = [b"", b"POST /v1/requests HTTP/1.1\r\nHost: x\r\n",
              b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"a"]
    opened = time.monotonic()
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in stalls]
    for sock, data in zip(sockets, stalls, strict=True):
        sock.sendall(data)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/v1/adapters", headers={"Authorization": f"Bearer {token}"})
    assert answer(connection)[:2] == (200, "application/json")
    assert [sock.recv(1024) for sock in sockets] == [b""] * 3  # closed, no answer
    assert time.monotonic() - opened < 5  # by the timeout, not by the client's 10 s
    for sock in sockets + [connection]:
        sock.close()


@pytest.mark.parametrize("address", ["busy", "127.0.0.1:http", "127.0.0.1:70000"])
def test_serve_on_an_address_it_cannot_use_is_a_one_line_error(server, address, capsys):
    from eraser_dist import cli

    service, _, port = server
    address = f"127.0.0.1:{port}" if address == "busy" else address
    code = cli.main(["serve", "--root", str(service.root), "--drain", "--quiet",
                     "--http", address])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("eraser: error: ")
    assert ("cannot listen on" if address[-1].isdigit() else "expected HOST:PORT") in err
