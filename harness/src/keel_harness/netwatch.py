"""When a guest on QEMU's user network gets its IPv4 address, seen from the host.

Probing the forwarded SSH port before the guest has an address costs the guest later:
QEMU's user network accepts each probe on the host at once and keeps trying to deliver it,
even after the harness closed it, so every early probe becomes one more sshd child when
the address comes (dozens with a fine-grained probe). A ``filter-dump`` on the user NIC
writes its packets (truncated: headers only) to a pcap file; :class:`AddressWatch` reads it
and answers whether the guest has an address: QEMU's DHCP server answered it, or the guest
sent a packet from an address of its own (a static one answers QEMU's ARP). The SSH probe
runs slowly until then and fast after.
"""

from __future__ import annotations

import struct
from pathlib import Path

PCAP_HEADER = 24
RECORD_HEADER = 16
SNAPLEN = 64
"""Bytes kept of each packet: Ethernet, IPv4 and UDP headers (what is read here)."""

_ETH_IPV4 = 0x0800
_ETH_ARP = 0x0806
_UDP = 17


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def guest_has_address(frame: bytes, guest_mac: bytes) -> bool:
    """Whether ``frame`` shows that the guest with ``guest_mac`` has an IPv4 address."""
    if len(frame) < 14:
        return False
    source = frame[6:12]
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == _ETH_ARP and len(frame) >= 32 and source == guest_mac:
        return frame[28:32] != b"\0\0\0\0"  # the sender's protocol address
    if ethertype != _ETH_IPV4 or len(frame) < 34:
        return False
    if source == guest_mac:
        return frame[26:30] != b"\0\0\0\0"
    header = (frame[14] & 0x0F) * 4
    if frame[23] != _UDP or len(frame) < 14 + header + 4:
        return False
    sport, dport = struct.unpack_from("!HH", frame, 14 + header)
    return bool(sport == 67 and dport == 68)  # a DHCP offer or ack: the address follows


class AddressWatch:
    """Reads a ``filter-dump`` pcap from ``offset`` on; remembers once the address is seen."""

    def __init__(self, path: Path, guest_mac: str, offset: int = 0) -> None:
        self.path = path
        self.guest_mac = _mac(guest_mac)
        self.offset = max(offset, PCAP_HEADER)
        self.seen = False

    def __call__(self) -> bool:
        """Whether the guest has its address (reads what QEMU wrote since the last call)."""
        if self.seen:
            return True
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return False
        at = 0
        while len(data) - at >= RECORD_HEADER:
            length = struct.unpack_from("<I", data, at + 8)[0]
            if len(data) - at - RECORD_HEADER < length:
                break  # a record QEMU is still writing
            frame = data[at + RECORD_HEADER : at + RECORD_HEADER + length]
            at += RECORD_HEADER + length
            if guest_has_address(frame, self.guest_mac):
                self.seen = True
                break
        self.offset += at
        return self.seen


def end_of(path: Path) -> int:
    """The current size of ``path`` (0 if missing): where the next boot's packets start."""
    return path.stat().st_size if path.exists() else 0
