"""Which failed calls the Python client retries on its next endpoint.

A mutation is retried only when it certainly never reached a server (no connection
could be made). After a connection broke with the request sent, the server may have
applied it: a retry of a compare-and-swap could then fail its compare against its own
write and report a swap that happened as not done (found by the fault test's
linearizability check).
"""

from __future__ import annotations

import grpc
import pytest

from keel_store.client import Client, StoreError
from keel_store.pb import rpcpb


class _Unavailable(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details


class _Stub:
    """A KV stub whose first endpoint fails with ``details`` and whose others answer."""

    def __init__(self, client: Client, details: str, calls: list[str]) -> None:
        self._client, self._details, self._calls = client, details, calls

    def _answer(self, response: object) -> object:
        endpoint = self._client.endpoints[self._client._index]
        self._calls.append(endpoint)
        if endpoint == "127.0.0.1:1":
            raise _Unavailable(self._details)
        return response

    def Txn(self, request: object, timeout: float) -> object:
        return self._answer(rpcpb.TxnResponse(succeeded=True))

    def Range(self, request: object, timeout: float) -> object:
        return self._answer(rpcpb.RangeResponse())


@pytest.fixture
def client(monkeypatch):
    calls: list[str] = []
    details = {"value": ""}

    def connect(self: Client) -> None:
        self.kv = _Stub(self, details["value"], calls)

    monkeypatch.setattr(Client, "_connect", connect)
    monkeypatch.setattr(Client, "close", lambda self: None)
    monkeypatch.setattr(
        Client,
        "_rotate",
        lambda self: (
            setattr(self, "_index", (self._index + 1) % len(self.endpoints)),
            connect(self),
        ),
    )

    def make(failure: str) -> tuple[Client, list[str]]:
        details["value"] = failure
        return Client(["127.0.0.1:1", "127.0.0.1:2"], timeout=1), calls

    return make


@pytest.mark.parametrize(
    "failure",
    [
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
        "Failed to connect to remote host: Connection refused",
        "Failed to connect to remote host: Connection refused",
    ],
)
def test_a_mutation_that_never_left_is_retried_elsewhere(client, failure):
    c, calls = client(failure)
    assert c.txn(rpcpb.TxnRequest()).succeeded
    assert calls == ["127.0.0.1:1", "127.0.0.1:2"]


@pytest.mark.parametrize(
    "failure", ["Socket closed", "recvmsg:Connection reset by peer", "GOAWAY received"]
)
def test_a_mutation_whose_connection_broke_is_an_unknown_outcome(client, failure):
    c, calls = client(failure)
    with pytest.raises(StoreError) as err:
        c.txn(rpcpb.TxnRequest())
    assert err.value.code == "UNAVAILABLE"
    assert calls == ["127.0.0.1:1"]  # not sent again: it may have been applied


def test_a_read_whose_connection_broke_is_retried_elsewhere(client):
    c, calls = client("Socket closed")
    c.get_one("k")
    assert calls == ["127.0.0.1:1", "127.0.0.1:2"]
