"""Real-process faults on a 3-member keel-store cluster, histories checked for linearizability.

Clients run gets, puts and compare-and-swaps on a few keys through the Python client
while members are killed with SIGKILL (leader included) and restarted, and cut off by
dropping their inbound peer traffic. Every recorded history must pass part 1's checker;
operations that failed or timed out count as unknown outcomes.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from keel_store.client import Client, StoreError
from keel_store.linearizability import Kind, Recorder, check
from keel_store.pb import rpcpb

pytestmark = [pytest.mark.host, pytest.mark.slow, pytest.mark.timeout(300)]

KEYS = [f"lin/{i}" for i in range(4)]


def cas(client: Client, key: str, expected: str | None, value: str) -> bool:
    k = key.encode()
    if expected is None:
        cmp = rpcpb.Compare(
            key=k, target=rpcpb.Compare.CREATE, result=rpcpb.Compare.EQUAL, create_revision=0
        )
    else:
        cmp = rpcpb.Compare(
            key=k, target=rpcpb.Compare.VALUE, result=rpcpb.Compare.EQUAL, value=expected.encode()
        )
    put = rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=k, value=value.encode()))
    return bool(client.txn(rpcpb.TxnRequest(compare=[cmp], success=[put])).succeeded)


def worker(
    wid: int,
    endpoints: list[str],
    *,
    recorder: Recorder,
    stop: threading.Event,
    lock: threading.Lock,
    done: list[int],
) -> None:
    rng = random.Random(wid)
    seen: dict[str, str | None] = {}
    # Each worker starts on a different member, so a cut-off member's clients race
    # with the others' writes (a stale read there would break linearizability).
    mine = endpoints[wid % len(endpoints) :] + endpoints[: wid % len(endpoints)]
    with Client(mine, timeout=2) as client:
        n = 0
        while not stop.is_set():
            key = rng.choice(KEYS)
            roll = rng.random()
            value = f"{wid}-{n}"
            n += 1
            with lock:
                if roll < 0.4:
                    h = recorder.invoke(wid, Kind.GET, key)
                elif roll < 0.75:
                    h = recorder.invoke(wid, Kind.PUT, key, value=value)
                else:
                    h = recorder.invoke(wid, Kind.CAS, key, value=value, expected=seen.get(key))
            try:
                if roll < 0.4:
                    kv = client.get_one(key)
                    out: object = kv.value.decode() if kv else None
                    seen[key] = out  # type: ignore[assignment]
                elif roll < 0.75:
                    client.put(key, value)
                    out = None
                else:
                    out = cas(client, key, seen.get(key), value)
            except StoreError:
                time.sleep(0.05)
                continue  # unknown outcome: stays pending in the history
            with lock:
                recorder.complete(h, out)  # type: ignore[arg-type]
                done[0] += 1


def test_kills_and_partitions_keep_history_linearizable(make_cluster) -> None:
    cluster = make_cluster(3, proxied=True)
    endpoints = [m.endpoint for m in cluster.members]
    lock = threading.Lock()
    recorder = Recorder(time.monotonic)
    stop = threading.Event()
    done = [0]
    threads = [
        threading.Thread(
            target=worker,
            args=(w, endpoints),
            kwargs={"recorder": recorder, "stop": stop, "lock": lock, "done": done},
        )
        for w in range(6)
    ]
    for t in threads:
        t.start()
    rng = random.Random(7)
    faults = []
    try:
        for round_ in range(4):
            time.sleep(2)
            if round_ % 2 == 0:
                victim = cluster.leader() if round_ == 0 else rng.choice(cluster.members)
                faults.append(f"kill -9 {victim.name}")
                victim.kill()
                time.sleep(2)
                victim.start()
            else:
                i = rng.randrange(3)
                faults.append(f"partition m{i}")
                cluster.proxies[i].cut()
                time.sleep(3)
                cluster.proxies[i].heal()
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    history = recorder.history()
    assert done[0] > 100, f"only {done[0]} operations completed under {faults}"
    result = check(history, timeout=120)
    assert result.ok is True, f"{faults}: {result}"
