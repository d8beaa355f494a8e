"""Socket diagnostics: the request for one socket, the answer read back,
and a real round trip on loopback (no privileges needed)."""
from __future__ import annotations

import socket
import struct

from netleak_hook.kernel import sockdiag

SO_COOKIE = 57


def test_request_layout_tcp_and_udp():
    tcp = sockdiag.request(socket.IPPROTO_TCP, ("127.0.0.1", 40000), ("127.0.0.1", 1021), seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("<IHHII", tcp)
    assert (length, kind, flags, seq) == (len(tcp), 20, 1, 7) and len(tcp) == 16 + 56
    fam, proto, _, _, states = struct.unpack_from("<BBBBI", tcp, 16)
    assert (fam, proto, states) == (socket.AF_INET, 6, 0xFFFFFFFF)
    sport, dport = struct.unpack_from(">HH", tcp, 24)
    assert (sport, dport) == (40000, 1021)          # TCP: the socket's own end first
    udp = sockdiag.request(socket.IPPROTO_UDP, ("127.0.0.1", 40000), ("127.0.0.1", 1021))
    assert struct.unpack_from(">HH", udp, 24) == (1021, 40000)   # UDP: the other way round
    assert udp[-8:] == b"\xff" * 8                  # any cookie


def test_parse_an_error_is_none():
    err = struct.pack("<IHHII", 36, 2, 0, 1, 0) + struct.pack("<i", -2) + b"\0" * 16
    assert sockdiag.parse(err) is None
    assert sockdiag.parse(b"") is None


def test_round_trip_names_the_peer_socket():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    try:
        found = sockdiag.lookup(socket.IPPROTO_TCP, a.getpeername(), a.getsockname())
        assert found is not None
        assert found.cookie == int.from_bytes(c.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8),
                                              "little")
        assert found.cgroup_id > 0
        assert sockdiag.lookup(socket.IPPROTO_TCP, ("127.0.0.1", 1), a.getsockname()) is None
    finally:
        for s in (a, c, srv):
            s.close()
