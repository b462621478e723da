"""The HTTP API's framing errors, on a data root with one tenant and nothing else (no model)."""

from __future__ import annotations

import http.client
import json

import pytest

from eraser_dist.service import EraseService
from eraser_dist.service.http import make_server, start_in_thread

SUBMIT = {"adapter": "a1", "request": {"kind": "remove", "ids": ["r1"]}}


@pytest.fixture
def server(tmp_path):
    service = EraseService(tmp_path / "root")
    token = service.add_tenant("acme")
    server = make_server(service, "127.0.0.1", 0)
    start_in_thread(server)
    yield service, token, server.server_address[1]
    server.shutdown()
    server.server_close()


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
    assert {"400", "401", "403", "404", "409", "413"} <= set(responses)
