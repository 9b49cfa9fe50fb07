"""A tiny authoritative DNS server for the SRV discovery tests (UDP and TCP).

``python srv_dns.py ZONE.json [PORT]`` answers on 127.0.0.1 (port 53 by default) from
the records in ZONE.json, read again for every query so a test can change them:
``[{"name": "_etcd-server._tcp.keel.test.", "type": "SRV", "ttl": 60,
"data": "0 0 2380 m0.keel.test."}, {"name": "m0.keel.test.", "type": "A", ...}]``
(``data`` in zone-file syntax). A name with records of another type gets an empty
NOERROR answer, an unknown name NXDOMAIN. Every query is logged to stdout as
``QUERY name type``. It is run inside the test's network namespace, never on the
host's network.
"""

from __future__ import annotations

import json
import socket
import socketserver
import sys
import threading
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def answer(zone_path: Path, wire: bytes) -> bytes:
    """The response to one query in wire format."""
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    records = json.loads(zone_path.read_text())
    for question in query.question:
        print("QUERY", question.name, dns.rdatatype.to_text(question.rdtype), flush=True)
        named = [r for r in records if dns.name.from_text(r["name"]) == question.name]
        if not named:
            response.set_rcode(dns.rcode.NXDOMAIN)
            continue
        wanted = [r for r in named if dns.rdatatype.from_text(r["type"]) == question.rdtype]
        if wanted:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, question.rdtype)
            for record in wanted:
                rdata = dns.rdata.from_text(dns.rdataclass.IN, question.rdtype, record["data"])
                # Go's parser refuses a compressed SRV target (RFC 2782), which
                # dnspython would write: send the record's own, uncompressed bytes.
                raw = dns.rdata.GenericRdata(rdata.rdclass, rdata.rdtype, rdata.to_digestable())
                rrset.add(raw, int(record.get("ttl", 60)))
            response.answer.append(rrset)
    return response.to_wire()


def main(argv: list[str]) -> None:
    zone = Path(argv[0])
    port = int(argv[1]) if len(argv) > 1 else 53

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(answer(zone, data), self.client_address)

    class Tcp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while size := self.rfile.read(2):
                reply = answer(zone, self.rfile.read(int.from_bytes(size, "big")))
                self.wfile.write(len(reply).to_bytes(2, "big") + reply)

    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer(("127.0.0.1", port), Udp)
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), Tcp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    print("READY", socket.gethostname(), flush=True)
    udp.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
