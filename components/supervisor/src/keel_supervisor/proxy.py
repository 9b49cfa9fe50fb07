"""Published ports: a TCP forwarder from a host address to the container's address.

docker calls this the userland proxy. It makes ``-p 8080:80`` reachable on 127.0.0.1,
which kernel DNAT cannot do without ``route_localnet``; it runs in the container's
monitor, so it lives exactly as long as the container does.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class PortForwarder:
    """Accepts on ``listen`` and splices every connection to ``target``."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.server.settimeout(0.5)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{listen[1]}", daemon=True)

    def start(self) -> None:
        """Start accepting in a background thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop accepting; open connections end on their own."""
        self._closed.set()
        self.server.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._splice, args=(client,), daemon=True).start()

    def _splice(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        peers = {client: upstream, upstream: client}
        sel = selectors.DefaultSelector()
        for sock in peers:
            sel.register(sock, selectors.EVENT_READ)
        open_reads = 2
        try:
            while open_reads and not self._closed.is_set():
                for key, _ in sel.select(timeout=1.0):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if data:
                        peers[src].sendall(data)
                        continue
                    sel.unregister(src)
                    open_reads -= 1
                    with contextlib.suppress(OSError):
                        peers[src].shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sel.close()
            client.close()
            upstream.close()
