"""Peer transport: Raft messages and leader calls between members, over TCP.

Every member listens on its peer URL; for each peer it keeps one outgoing connection
with a send queue, so messages to one peer stay in order, and everything queued while a
write is in flight goes out in the next write (batching and pipelining). A connection
starts with a hello naming the cluster token, the cluster ID and the sender; a peer with
the wrong token or of another cluster (etcd's ``X-Etcd-Cluster-ID`` check: "request
cluster ID mismatch") is refused, so two clusters cannot mix, even on the same peer
URLs: it is told so with a MISMATCH frame and dials again a second later. A member
removed from the cluster is refused too, with a GONE frame written back before the
connection closes: it stops when it reads it (etcd's peers answer a removed member's
streams with 410 Gone and it stops, "the member has been permanently removed from the
cluster"). A hello that asks for the members (from a member joining the cluster, which
has no ID yet) is answered with a MEMBERS frame the same way (:func:`ask_members`).
Frames are ``u32 length, u8 kind, payload``, at most :data:`MAX_FRAME` bytes. A larger
payload (a snapshot for a member that fell behind: 83 MB for 80 values of 1 MiB, a few
hundred MB after ``etcdctl check perf --load=l``) goes as PART frames of
:data:`PART_BYTES` and a last frame of its own kind, back to back on the connection; the
receiver joins them (up to :data:`MAX_MESSAGE`). The sender writes one part at a time
and waits for the socket to take it, so the copies are spread over the loop's turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from keel_store.raft import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from keel_store.server import san_check, tls

log = logging.getLogger("keel_store.transport")

_FRAME = struct.Struct(">IB")
_MSG = struct.Struct(">BQQQQQQBQIIB")
_ENT = struct.Struct(">QQBI")
_SNAP = struct.Struct(">QQHHI")
MAX_FRAME = 64 << 20
"""The largest frame a peer accepts; larger payloads are sent in parts."""
PART_BYTES = 8 << 20
"""Payload bytes per PART frame."""
MAX_MESSAGE = 8 << 30
"""The largest payload a peer joins from parts (etcd's largest suggested
``--quota-backend-bytes``, 8 GiB): past it the connection is dropped."""

REFUSED_LINGER = 5.0
"""Seconds a connection from a removed member stays open after its GONE frame."""
REFUSED_LOG_EVERY = 5.0
"""Seconds between two warnings about the same refused peer (a removed member dials
again every 50 ms until it has stopped; a member of another cluster, every second)."""

HELLO, RAFT, CALL, REPLY, PART, GONE, MEMBERS, MISMATCH = 1, 2, 3, 4, 5, 6, 7, 8
ASK_TIMEOUT = 2.0
"""Seconds a member joining a cluster waits for one peer's member list."""
_GONE_FRAME = _FRAME.pack(1, GONE)
"""The frame a member writes on a connection it accepted from a removed member."""
_MISMATCH = struct.Struct(">IBQ")
"""A MISMATCH frame: the refusing member's cluster ID."""
_MISMATCH_HEAD = _FRAME.pack(_MISMATCH.size - 4, MISMATCH)
MISMATCH_RETRY = 1.0
"""Seconds before dialing again a peer that refused us as of another cluster."""


class _Large:
    """A payload too large for one frame, queued as the buffers it is made of and cut
    into frames as it is written (the copies are made one part at a time)."""

    __slots__ = ("buffers", "kind", "on_sent", "total")

    def __init__(
        self,
        kind: int,
        buffers: Sequence[bytes],
        total: int,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self.buffers = buffers
        self.total = total
        self.on_sent = on_sent

    def frames(self) -> Iterator[bytes]:
        part: list[bytes | memoryview] = []
        have = done = 0
        for buffer in self.buffers:
            view = memoryview(buffer)
            while view:
                take = min(len(view), PART_BYTES - have)
                part.append(view[:take])
                view = view[take:]
                have += take
                done += take
                if have == PART_BYTES and done < self.total:
                    yield b"".join([_FRAME.pack(have + 1, PART), *part])
                    part, have = [], 0
        yield b"".join([_FRAME.pack(have + 1, self.kind), *part])

    def size(self) -> int:
        parts = (self.total + PART_BYTES - 1) // PART_BYTES
        return self.total + parts * _FRAME.size


def encode_message(m: Message) -> bytes:
    """Raft message to bytes (stable, versionless: all members run the same code)."""
    return b"".join(encode_buffers(m))


def encode_buffers(m: Message) -> list[bytes]:
    """:func:`encode_message` as the buffers to join, the snapshot's data among them
    uncopied (for :meth:`PeerTransport.send`, which cuts a large message into parts
    without joining it: a 300 MB join took 0.27 s here)."""
    parts = [
        _MSG.pack(
            m.type,
            m.to,
            m.sender,
            m.term,
            m.log_term,
            m.index,
            m.commit,
            m.reject | m.quiet << 1,
            m.reject_hint,
            len(m.context),
            len(m.entries),
            m.snapshot is not None,
        ),
        m.context,
    ]
    for e in m.entries:
        parts.append(_ENT.pack(e.term, e.index, e.type, len(e.data)))
        parts.append(e.data)
    if m.snapshot is not None:
        meta = m.snapshot.meta
        parts.append(
            _SNAP.pack(
                meta.index,
                meta.term,
                len(meta.conf.voters),
                len(meta.conf.learners),
                len(m.snapshot.data),
            )
        )
        ids = (*meta.conf.voters, *meta.conf.learners)
        parts.append(struct.pack(f">{len(ids)}Q", *ids))
        parts.append(m.snapshot.data)
    return parts


def decode_message(data: bytes) -> Message:
    """Inverse of :func:`encode_message`; ValueError (struct.error) if malformed."""
    (mtype, to, sender, term, log_term, index, commit, flags, hint, clen, nent, has_snap) = (
        _MSG.unpack_from(data)
    )
    pos = _MSG.size
    context = data[pos : pos + clen]
    pos += clen
    entries = []
    for _ in range(nent):
        eterm, eindex, etype, dlen = _ENT.unpack_from(data, pos)
        pos += _ENT.size
        entries.append(Entry(eterm, eindex, EntryType(etype), data[pos : pos + dlen]))
        pos += dlen
    snapshot = None
    if has_snap:
        sindex, sterm, nv, nl, dlen = _SNAP.unpack_from(data, pos)
        pos += _SNAP.size
        ids = struct.unpack_from(f">{nv + nl}Q", data, pos)
        pos += 8 * (nv + nl)
        conf = ConfState(voters=tuple(ids[:nv]), learners=tuple(ids[nv:]))
        snapshot = Snapshot(SnapshotMeta(sindex, sterm, conf), data[pos : pos + dlen])
    return Message(
        MessageType(mtype),
        to,
        sender,
        term,
        log_term,
        index,
        tuple(entries),
        commit,
        bool(flags & 1),
        hint,
        snapshot,
        context,
        bool(flags & 2),
    )


async def ask_members(
    url: str, token: str, context: ssl.SSLContext | None, timeout: float = ASK_TIMEOUT
) -> dict[str, Any]:
    """Ask the member at peer URL ``url`` for the cluster ID and its member list (a
    member joining a running cluster does, as etcd's asks ``/members``): ``{"cluster_id":
    int, "members": [{"id", "name", "peer_urls", "is_learner"}]}``. OSError if it cannot
    be reached or refuses (a wrong token), TimeoutError, ValueError on a bad answer."""
    async with asyncio.timeout(timeout):
        reader, writer = await _dial(url, context)
        try:
            hello = json.dumps({"token": token, "ask": "members"}).encode()
            writer.write(_FRAME.pack(len(hello) + 1, HELLO) + hello)
            try:
                size, kind = _FRAME.unpack(await reader.readexactly(_FRAME.size))
                body = await reader.readexactly(size - 1)
            except asyncio.IncompleteReadError:
                raise ConnectionRefusedError(f"{url} refused (wrong cluster token?)") from None
            if kind != MEMBERS:
                raise ValueError(f"{url} answered with a frame of kind {kind}")
            answer = json.loads(body)
            if not isinstance(answer, dict) or not isinstance(answer.get("members"), list):
                raise ValueError(f"{url} answered {body[:200]!r}")
            return answer
        finally:
            writer.close()


class PeerCertificateRefused(ConnectionRefusedError):
    """The peer's TLS certificate fails ``--peer-cert-allowed-cn``/``-hostname``."""


async def _dial(
    url: str, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the member at peer URL ``url``, over TLS with ``context`` (its
    certificate checked against the peer policy: :class:`PeerCertificateRefused`)."""
    host, port = host_port(url)
    if context is None:
        return await asyncio.open_connection(host, port)
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    if tls.refused(writer.transport):  # aborted it
        raise PeerCertificateRefused(f"{url}: certificate refused")
    return reader, writer


def host_port(url: str) -> tuple[str, int]:
    """``http://127.0.0.1:2380`` -> ("127.0.0.1", 2380)."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"URL needs a host and a port: {url!r}")
    return parts.hostname, parts.port


class PeerTransport:
    """Sends frames to peers and hands received frames to the node."""

    def __init__(
        self,
        member_id: int,
        token: str,
        on_frame: Callable[[int, int, bytes], None],
        *,
        cluster_id: int = 0,
    ) -> None:
        """``cluster_id``: sent in every hello and checked in the peers' (0: neither)."""
        self.member_id = member_id
        self.token = token
        self.cluster_id = cluster_id
        self.on_frame = on_frame
        self.peers: dict[int, str] = {}
        self._queues: dict[int, asyncio.Queue[bytes | _Large]] = {}
        self._senders: dict[int, asyncio.Task[None]] = {}
        self._writers: dict[int, asyncio.StreamWriter] = {}
        """Connected peers: a frame for an idle connection is written at once."""
        self._large: dict[int, int] = {}
        """Peer ID -> payloads in parts queued or being written to it. While there is
        one, frames for that peer queue: one written at once could land between two
        parts."""
        self._server: asyncio.Server | None = None
        self._inbound_conns: set[_Inbound] = set()
        """Connections peers opened to us (read by :class:`_Inbound`)."""
        self.sent_bytes: dict[int, int] = {}
        """Peer ID -> bytes of frames sent to it (etcd_network_peer_sent_bytes_total)."""
        self.received_bytes: dict[int, int] = {}
        """Peer ID -> bytes of frames received from it."""
        self.paused: set[int] = set()
        """Peers whose traffic is dropped (fault injection from tests)."""
        self.hello_info: dict[str, object] = {}
        """Sent to every peer on connect (this member's name and client URLs)."""
        self.on_hello: Callable[[int, dict[str, object]], None] | None = None
        self.server_ssl: ssl.SSLContext | None = None
        """Peer TLS (``--peer-cert-file`` ...): accept peers over TLS."""
        self.client_ssl: ssl.SSLContext | None = None
        """Peer TLS: dial peers over TLS, verifying them against the peer CA."""
        self.on_peer_lost: Callable[[int], None] | None = None
        """Called with a peer's ID when its last connection to us closes (its process
        died, most likely: the kernel closes its sockets at once)."""
        self.on_frames_done: Callable[[], None] | None = None
        """Called after the frames of one read from a peer went to ``on_frame``."""
        self._active_since: dict[int, float] = {}
        """Peer ID -> since when (monotonic) a connection from it has been open without
        a break: etcd's ``ActiveSince`` (the peer's process is up and reaches us)."""
        self.is_removed: Callable[[int], bool] = lambda peer: False
        """Whether a peer was removed from the cluster: its connections are refused."""
        self.on_removed: Callable[[int], None] | None = None
        """Called with a peer's ID when that peer refused us as a removed member."""
        self.members_info: Callable[[], dict[str, object]] | None = None
        """The cluster ID and member list, for a member that joins and asks (a hello
        with ``"ask": "members"`` rather than a sender: :func:`ask_members`)."""
        self._refused_logged: dict[tuple[str, int], float] = {}
        """(why, peer ID) -> when a refusal of or by that peer was last logged
        (monotonic): a refused peer dials again and again."""
        self._hold_until: dict[int, float] = {}
        """Peer ID -> not dialed again before (monotonic): it refused us as of another
        cluster."""
        self._closing = False

    def refuse(self, peer: int) -> None:
        """Close the connections ``peer`` opened to us (it was just removed): when it
        connects again, its hello is refused and it learns that it was removed."""
        for conn in [c for c in self._inbound_conns if c.sender == peer]:
            conn.close()

    def active_since(self, peer: int) -> float | None:
        """Since when ``peer`` has been connected to us without a break (monotonic
        seconds), or None while it is not."""
        return self._active_since.get(peer)

    async def listen(self, url: str) -> None:
        host, port = host_port(url)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Inbound(self), host, port, ssl=self.server_ssl
        )

    def set_peers(self, peers: dict[int, str]) -> None:
        """Peer ID -> peer URL; starts senders for new peers, stops removed ones."""
        for pid in [p for p in self._senders if p not in peers]:
            self._senders.pop(pid).cancel()
            self._queues.pop(pid, None)
            self._writers.pop(pid, None)
            self._large.pop(pid, None)
        self.peers = {p: u for p, u in peers.items() if p != self.member_id}
        for pid in self.peers:
            if pid not in self._senders:
                self._queues[pid] = asyncio.Queue()
                self._senders[pid] = asyncio.create_task(self._send_loop(pid))

    def send(
        self,
        to: int,
        kind: int,
        payload: bytes | Sequence[bytes],
        *,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        """Queue one frame for ``to`` (dropped if ``to`` is unknown); ``payload`` may be
        given as the buffers it is made of. ``on_sent``: for a payload sent in parts
        (over :data:`PART_BYTES`), called once its last part is written to the socket
        (not if the connection fails first)."""
        queue = self._queues.get(to)
        if queue is None or to in self.paused:
            return
        if not isinstance(payload, bytes):
            total = sum(map(len, payload))
            if total > PART_BYTES:
                large = _Large(kind, payload, total, on_sent)
                self.sent_bytes[to] = self.sent_bytes.get(to, 0) + large.size()
                self._large[to] = self._large.get(to, 0) + 1
                queue.put_nowait(large)
                return
            payload = b"".join(payload)
        elif len(payload) > PART_BYTES:
            self.send(to, kind, [payload], on_sent=on_sent)
            return
        frame = _FRAME.pack(len(payload) + 1, kind) + payload
        self.sent_bytes[to] = self.sent_bytes.get(to, 0) + len(frame)
        writer = self._writers.get(to)
        if (
            writer is not None
            and queue.empty()
            and not self._large.get(to)
            and not writer.is_closing()
        ):
            # Nothing queued before it (the sender writes what it takes from the queue
            # in the same step), so order holds. Written now rather than by the sender
            # task on a later loop turn: a leader's APPEND must be on the wire before
            # its own fsync starts, so that the followers' fsyncs overlap it.
            writer.write(frame)
        else:
            queue.put_nowait(frame)

    def sending_large(self, to: int) -> bool:
        """Whether a payload in parts for ``to`` is queued or being written."""
        return self._large.get(to, 0) > 0

    async def close(self) -> None:
        self._closing = True
        for task in self._senders.values():
            task.cancel()
        for conn in list(self._inbound_conns):
            conn.close()
        for task in self._senders.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _send_loop(self, pid: int) -> None:
        queue = self._queues[pid]
        while True:
            hold = self._hold_until.pop(pid, 0.0) - time.monotonic()
            if hold > 0:
                await asyncio.sleep(hold)
            said: dict[str, object] = {"token": self.token, "from": self.member_id}
            if self.cluster_id:
                said["cluster"] = self.cluster_id
            hello = json.dumps({**self.hello_info, **said}).encode()
            writer = None
            watcher = None
            try:
                try:
                    reader, writer = await _dial(self.peers[pid], self.client_ssl)
                except PeerCertificateRefused:
                    await asyncio.sleep(1.0)  # not fixed by retrying at once
                    raise
                writer.write(_FRAME.pack(len(hello) + 1, HELLO) + hello)
                self._writers[pid] = writer
                watcher = asyncio.create_task(self._watch_closed(pid, reader, writer, queue))
                while True:
                    items = [await queue.get()]
                    while not queue.empty():
                        items.append(queue.get_nowait())
                    if writer.is_closing():
                        raise ConnectionResetError(f"peer {pid:x} closed the connection")
                    if any(isinstance(item, _Large) for item in items):
                        await self._write_large(pid, writer, items)
                    else:
                        writer.write(b"".join(items))  # type: ignore[arg-type]
                    await writer.drain()
            except asyncio.CancelledError:
                raise
            except (OSError, ConnectionError, KeyError, ssl.SSLError):
                self._forget_writer(pid, writer)
                await asyncio.sleep(0.05)
                while not queue.empty():  # Raft retransmits; stale frames only slow recovery
                    queue.get_nowait()
                self._large.pop(pid, None)  # dropped with the rest (or cut off mid-way)
            finally:
                if watcher is not None:
                    watcher.cancel()
                self._forget_writer(pid, writer)
                if writer is not None:
                    writer.close()

    async def _write_large(
        self, pid: int, writer: asyncio.StreamWriter, items: list[bytes | _Large]
    ) -> None:
        """Write ``items`` in order, the large ones a part at a time, each taken by the
        socket before the next is cut; nothing else is written to ``pid`` meanwhile
        (its count in ``_large`` holds :meth:`send` back until the last part is out)."""
        small: list[bytes] = []
        for item in items:
            if isinstance(item, bytes):
                small.append(item)
                continue
            if small:
                writer.write(b"".join(small))
                small = []
            for frame in item.frames():
                if writer.is_closing():
                    raise ConnectionResetError(f"peer {pid:x} closed the connection")
                writer.write(frame)
                await writer.drain()
            self._large[pid] = self._large.get(pid, 1) - 1
            if item.on_sent is not None:
                item.on_sent()
        if small:
            writer.write(b"".join(small))

    async def _watch_closed(
        self,
        pid: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        queue: asyncio.Queue[bytes | _Large],
    ) -> None:
        """Notice at once when the peer closes our connection (it died or restarted).

        On a connection from this loop, a peer writes only to refuse us: a GONE frame
        (we were removed: ``on_removed`` is called) or a MISMATCH frame (we are of
        another cluster: logged, and the peer is dialed again after
        :data:`MISMATCH_RETRY` seconds); then it closes. Anything else is ignored.
        Without this, an idle connection (one follower to another) would stay in
        ``_writers`` after the peer restarted, and the next frame (a vote request,
        typically) would be written into the dead socket and lost, costing a whole
        election timeout.
        """
        said = b""
        with contextlib.suppress(OSError, ConnectionError, ssl.SSLError):
            while chunk := await reader.read(4096):
                said = (said + chunk)[: _MISMATCH.size]
                if said == _GONE_FRAME:
                    if self.on_removed is not None and not self._closing:
                        self.on_removed(pid)
                    break
                if len(said) == _MISMATCH.size and said[: _FRAME.size] == _MISMATCH_HEAD:
                    self._ignored(pid, _MISMATCH.unpack(said)[2])
                    break
        self._forget_writer(pid, writer)
        writer.close()
        queue.put_nowait(b"")  # wake the sender: it reconnects

    def _ignored(self, pid: int, remote_cluster: int) -> None:
        """Peer ``pid`` refused us as of another cluster (its ID ``remote_cluster``)."""
        self._hold_until[pid] = time.monotonic() + MISMATCH_RETRY
        if self._log_refusal("ignored", pid):
            log.warning(
                "request sent was ignored by remote peer due to cluster ID mismatch "
                "(remote peer %x, its cluster %x; this member %x, cluster %x)",
                pid,
                remote_cluster,
                self.member_id,
                self.cluster_id,
            )

    def _log_refusal(self, why: str, peer: int) -> bool:
        """Whether to log a refusal of (or by) ``peer`` now: once per
        :data:`REFUSED_LOG_EVERY` seconds for each peer and reason."""
        now = time.monotonic()
        if now - self._refused_logged.get((why, peer), -REFUSED_LOG_EVERY) < REFUSED_LOG_EVERY:
            return False
        self._refused_logged[why, peer] = now
        return True

    def _forget_writer(self, pid: int, writer: asyncio.StreamWriter | None) -> None:
        if writer is not None and self._writers.get(pid) is writer:
            del self._writers[pid]

    @property
    def _inbound(self) -> dict[int, int]:
        """Peer ID -> open connections from it (those past the hello)."""
        return dict(Counter(c.sender for c in self._inbound_conns if c.sender is not None))

    def _lost_inbound(self, sender: int) -> None:
        if sender in self._inbound:
            return  # another connection from it is still open
        self._active_since.pop(sender, None)
        if self.on_peer_lost is not None and not self._closing:
            self.on_peer_lost(sender)


class _Inbound(asyncio.Protocol):
    """A connection a peer opened to us: frames are cut out of the bytes as they arrive
    and handed to ``on_frame`` at once (no reader task and stream buffer in between:
    a follower's APPEND and a leader's acknowledgements are on the write path).

    The first frame must be the hello with the cluster token. A wrong token, a removed
    sender (told so with a GONE frame), a malformed or oversize frame, or a frame that
    ``on_frame`` cannot decode closes this connection only.
    """

    def __init__(self, owner: PeerTransport) -> None:
        self.owner = owner
        self.transport: asyncio.BaseTransport | None = None
        self.sender: int | None = None
        self._pending: list[bytes] = []
        """The start of an incomplete frame, in the pieces it arrived in."""
        self._have = 0
        self._need = _FRAME.size
        """Bytes needed before parsing is worth trying again (joining on every piece of
        a 64 MiB snapshot frame would be quadratic)."""
        self._parts: list[bytes] = []
        """The PART payloads of a large message so far."""
        self._parts_size = 0
        self.answered = False
        """The hello was answered (a removed member told so, or a joining member given
        the member list): the connection waits for the peer to close it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.owner._inbound_conns.add(self)
        if tls.refused(transport):  # a revoked or not allowed peer certificate: closed
            return
        san_check.screen(transport)  # its SANs against its address (etcd's checkSAN)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._inbound_conns.discard(self)
        if self.sender is not None:
            self.owner._lost_inbound(self.sender)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # the peer's frames after its hello: read and dropped
        if self._pending:
            self._pending.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            data = b"".join(self._pending)
            self._pending = []
        try:
            pos = self._frames(data)
        except (ValueError, TypeError, AttributeError, KeyError, struct.error) as exc:
            # A malformed hello (not a JSON object, no integer "from") or a Raft message
            # that does not decode.
            log.warning("peer %s: bad frame (%s); dropping connection", self.sender, exc)
            self.close()
            pos = -1
        if self.owner.on_frames_done is not None:
            self.owner.on_frames_done()
        if pos < 0:
            return
        if pos < len(data):
            tail = data[pos:]
            self._pending = [tail]
            self._have = len(tail)
            self._need = (
                _FRAME.size
                if len(tail) < _FRAME.size
                else _FRAME.size - 1 + _FRAME.unpack_from(tail)[0]
            )

    def _frames(self, data: bytes) -> int:
        """Hand over the complete frames in ``data``; where the incomplete rest begins,
        or -1 once the connection is being closed."""
        owner = self.owner
        pos, n = 0, len(data)
        while n - pos >= _FRAME.size:
            size, kind = _FRAME.unpack_from(data, pos)
            if size < 1 or size - 1 > MAX_FRAME:
                log.warning(
                    "peer %s sent a frame of %d bytes; dropping connection", self.sender, size
                )
                self.close()
                return -1
            end = pos + _FRAME.size - 1 + size
            if end > n:
                break
            payload = data[pos + _FRAME.size : end]
            pos = end
            sender = self.sender
            if sender is None:
                if not self._hello(kind, payload):
                    if not self.answered:
                        self.close()
                    return -1
                continue
            owner.received_bytes[sender] = (
                owner.received_bytes.get(sender, 0) + _FRAME.size + size - 1
            )
            if kind == PART:
                self._parts.append(payload)
                self._parts_size += len(payload)
                if self._parts_size > MAX_MESSAGE:
                    log.warning(
                        "peer %s sent a message of over %d bytes in parts; dropping connection",
                        sender,
                        MAX_MESSAGE,
                    )
                    self.close()
                    return -1
                continue
            if self._parts:
                self._parts.append(payload)
                payload = b"".join(self._parts)
                self._parts, self._parts_size = [], 0
            if sender not in owner.paused:
                owner.on_frame(sender, kind, payload)
        return pos

    def _refuse_removed(self, sender: int) -> None:
        """Tell a removed member so (a GONE frame) and end the connection without a
        reset: it is closed once the member closes its side, or after
        :data:`REFUSED_LINGER` seconds. Closing at once, with the member's next frames
        unread, would send a reset that can discard the GONE frame on its way."""
        if self.owner._log_refusal("removed", sender):
            log.warning("rejected the stream from peer %x since it was removed", sender)
        self._answer_and_end(_GONE_FRAME)

    def _answer_and_end(self, frame: bytes) -> None:
        """Write the one frame a member writes on a connection it accepted, then end it:
        at the peer's close, or after :data:`REFUSED_LINGER` seconds."""
        self.answered = True
        # A transport of uvloop's is no asyncio.WriteTransport subclass: no isinstance.
        conn = cast(asyncio.Transport, self.transport)
        conn.write(frame)
        if conn.can_write_eof():  # not over TLS
            conn.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER, self.close)

    def _hello(self, kind: int, payload: bytes) -> bool:
        owner = self.owner
        hello = json.loads(payload) if kind == HELLO else {}
        if hello.get("token") != owner.token:
            log.warning("peer refused: wrong cluster token %r", hello.get("token"))
            return False
        if hello.get("ask") == "members" and owner.members_info is not None:
            body = json.dumps(owner.members_info()).encode()
            self._answer_and_end(_FRAME.pack(len(body) + 1, MEMBERS) + body)
            return False
        sender = int(hello["from"])
        theirs = hello.get("cluster")  # absent from a member that does not know it
        if theirs is not None and owner.cluster_id and int(theirs) != owner.cluster_id:
            if owner._log_refusal("mismatch", sender):
                log.warning(
                    "request cluster ID mismatch (remote peer %x, its cluster %x; "
                    "this member %x, cluster %x)",
                    sender,
                    int(theirs),
                    owner.member_id,
                    owner.cluster_id,
                )
            self._answer_and_end(_MISMATCH.pack(_MISMATCH.size - 4, MISMATCH, owner.cluster_id))
            return False
        if owner.is_removed(sender):
            self._refuse_removed(sender)
            return False
        self.sender = sender
        owner._active_since.setdefault(sender, time.monotonic())
        if owner.on_hello is not None:
            owner.on_hello(sender, hello)
        return True
