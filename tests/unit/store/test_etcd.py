"""The etcd client against a scripted gateway (httpx.MockTransport): its decoding of answers,
its reading of etcd's refusals, and its watch's silence check. tests/integration/store runs it
against real etcd (auth, TLS, compaction, a frozen member, a restart mid-watch)."""

import asyncio
import json

import httpx
import pytest

from vxnet.errors import RevisionCompacted, StoreAuthError, StoreError, StoreUnavailable
from vxnet.store import txn
from vxnet.store.etcd import DELETE, PUT, Credentials, Etcd, KeyValue, WatchEvent, prefix_end

HEADER = {"header": {"revision": "9"}}


def test_proto3_json_zero_values_are_left_out_and_int64s_are_strings():
    kv = KeyValue.of({"key": "L3AvYQ==", "mod_revision": "7"})  # a deleted key's event
    assert kv == KeyValue(b"/p/a", b"", 0, 7, 0)
    ev = WatchEvent.of({"type": "DELETE", "kv": {"key": "L3AvYQ=="}})
    assert ev.type == DELETE
    assert WatchEvent.of({"kv": {"key": "L3AvYQ==", "value": "eA==", "lease": "12"}}).type == PUT


def test_prefix_end_is_etcds():
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_transaction_ops_say_what_etcd_expects():
    assert txn.put(b"k", b"v") == {"request_put": {"key": "aw==", "value": "dg=="}}
    assert txn.put(b"k", b"v", 5)["request_put"]["lease"] == 5
    assert txn.created_is(b"k", 0, b"l") == {"target": "CREATE", "key": "aw==",
                                            "create_revision": 0, "range_end": "bA=="}


def gateway(answer):
    """An Etcd whose requests `answer(path, body)` answers: bytes, or an httpx.Response."""
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        if request.url.path == "/v3/auth/authenticate":
            return httpx.Response(200, json={"token": "t0k3n"})
        out = answer(request.url.path, body)
        return out if isinstance(out, httpx.Response) else httpx.Response(200, content=out)
    return Etcd("http://etcd-a:2379,http://etcd-b:2379", timeout=0.5,
                auth=Credentials("node", "pw"), transport=httpx.MockTransport(handle))


@pytest.mark.parametrize(("raw", "error", "text"), [
    (b'{"error":"etcdserver: request timed out","code":14}', StoreUnavailable, "timed out"),
    (b'{"error":"etcdserver: invalid auth token","code":16}', StoreUnavailable,
     "authenticating again"),
    (b'{"error":"etcdserver: permission denied","code":7}', StoreAuthError,
     "permission denied to user 'node'"),
    (b'{"error":"etcdserver: user name is empty","code":3}', StoreAuthError,
     "give --etcd-username"),
    (b'{"error":"etcdserver: mvcc: required revision has been compacted","code":11}',
     RevisionCompacted, "compacted"),
    (b'{"error":"etcdserver: requested lease not found","code":5}', StoreError, "not found"),
    (b"<html>404 page not found</html>", StoreUnavailable, "not an answer from etcd"),
])
async def test_each_refusal_is_a_typed_error_that_names_the_endpoint(raw, error, text):
    etcd = gateway(lambda path, body: raw)
    with pytest.raises(error, match=text) as e:
        await etcd.get(b"/k")
    assert "http://etcd-a:2379" in str(e.value)
    if error is StoreError:
        assert e.value.code == 5
    # only "this member cannot answer now" moves to the next one
    rotated = error is StoreUnavailable and b"auth token" not in raw
    assert str(etcd.endpoint) == ("http://etcd-b:2379" if rotated else "http://etcd-a:2379")
    await etcd.close()


async def test_the_token_goes_with_every_request_and_answers_decode():
    seen = []

    def answer(path, body):
        seen.append(path)
        if path == "/v3/kv/txn":
            return json.dumps({**HEADER, "succeeded": True, "responses": [
                {"response_put": HEADER},
                {"response_range": {"kvs": [{"key": "aw==", "mod_revision": "9"}]}}]}).encode()
        return json.dumps({**HEADER, "kvs": [{"key": "aw==", "value": "dg=="}]}).encode()

    etcd = gateway(answer)
    assert (await etcd.get(b"k")).value == b"v"
    ok, got = await etcd.txn([txn.version_is(b"k", 0)], [txn.put(b"k", b"v"), txn.get(b"k")])
    assert ok and got == [KeyValue(b"k", b"", 0, 9, 0)]
    assert seen == ["/v3/kv/range", "/v3/kv/txn"]
    await etcd.close()


async def test_a_silent_watch_is_given_up_when_the_member_answers_no_read():
    """Nothing can be sent on an open HTTP/1.1 watch: after `silence` seconds the member is
    asked a read, and no answer to it means the stream is given up, on to the next member."""
    class Silent(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield json.dumps({"result": {**HEADER, "created": True}}).encode() + b"\n"
            await asyncio.Event().wait()  # then nothing, ever

    asked = []

    def answer(path, body):
        if path == "/v3/watch":
            return httpx.Response(200, stream=Silent())
        asked.append(body.get("count_only"))
        if len(asked) == 1:
            return json.dumps({**HEADER, "count": "3"}).encode()  # the first check: answered
        raise httpx.ConnectTimeout("no route")

    etcd = gateway(answer)
    stream = etcd.watch_prefix(b"/p/", 1, silence=0.1)
    with pytest.raises(StoreUnavailable, match="silent, and the member answers no read"):
        await asyncio.wait_for(anext(stream), 5)
    assert asked == [True, True] and not etcd.watching
    assert str(etcd.endpoint) == "http://etcd-b:2379"
    await etcd.close()


async def test_watch_answers_events_compaction_and_cancellation():
    lines = [{"result": {**HEADER, "created": True}},
             {"result": {**HEADER, "events": [{"kv": {"key": "L3AvYQ==", "value": "eA=="}},
                                              {"type": "DELETE", "kv": {"key": "L3AvYg=="}}]}},
             {"result": {**HEADER, "canceled": True, "compact_revision": "5"}}]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    etcd = gateway(lambda path, b: body)
    stream = etcd.watch_prefix(b"/p/", 1)
    events = await anext(stream)
    assert [(e.type, e.kv.key) for e in events] == [(PUT, b"/p/a"), (DELETE, b"/p/b")]
    with pytest.raises(RevisionCompacted) as e:
        await anext(stream)
    assert e.value.revision == 5
    await etcd.close()
