"""aetcd's usual calls against one endpoint; prints a JSON summary (run as a subprocess).

Run in its own process because aetcd registers etcd's protos in protobuf's default
descriptor pool, as keel_store's stubs do.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aetcd


async def main(host: str, port: int) -> dict[str, object]:
    out: dict[str, object] = {}
    async with aetcd.Client(host=host, port=port, timeout=10) as c:
        await c.put(b"a/1", b"one")
        await c.put(b"a/2", b"two")
        await c.put(b"a/3", b"three")
        got = await c.get(b"a/1")
        out["get"] = [got.value.decode(), got.version, got.create_revision]
        rng = await c.get_prefix(b"a/", sort_order="descend", sort_target="value")
        out["get_prefix_desc_value"] = [kv.key.decode() for kv in rng]
        out["replace_ok"] = await c.replace(b"a/1", b"one", b"uno")
        out["replace_stale"] = await c.replace(b"a/1", b"one", b"eins")
        txn = await c.transaction(
            compare=[c.transactions.value(b"a/2") == b"two"],
            success=[c.transactions.put(b"a/txn", b"yes")],
            failure=[c.transactions.put(b"a/txn", b"no")],
        )
        out["txn"] = txn[0]
        lease = await c.lease(30)
        await c.put(b"leased", b"v", lease=lease)
        info = await lease.remaining_ttl()
        out["lease_ttl_ok"] = 25 <= info <= 30
        refreshed = await lease.refresh()
        out["lease_refresh"] = refreshed.TTL
        out["lease_keys"] = [k.decode() for k in await lease.keys()]
        await lease.revoke()
        out["leased_after_revoke"] = await c.get(b"leased")
        start = (await c.get(b"a/2")).mod_revision
        event = await c.watch_once(b"a/2", timeout=5, start_revision=start)
        out["watch_once"] = [str(event.kind), event.kv.value.decode()]
        async with c.lock(b"mylock", ttl=10) as lock:
            out["lock_held"] = await lock.is_acquired()
        deleted = await c.delete(b"a/3", prev_kv=True)
        out["delete_prev"] = deleted.prev_kv.value.decode()
        status = await c.status()
        out["status_version"] = status.version
        out["members"] = len([m async for m in c.members()])
        rev = (await c.put(b"z", b"1")).header.revision
        await c.compact(rev)
        try:
            await c.watch_once(b"a/1", timeout=5, start_revision=2)
            out["compacted"] = "no error"
        except aetcd.RevisionCompactedError as exc:
            out["compacted"] = exc.compacted_revision == rev
    return out


if __name__ == "__main__":
    host, port = sys.argv[1].rsplit(":", 1)
    print(json.dumps(asyncio.run(main(host, int(port))), sort_keys=True))
