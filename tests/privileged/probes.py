"""Small workloads the privileged tests run inside a session."""
from __future__ import annotations

# A UDP socket that tries to leave by up0 (the default uplink) in one of
# three ways; it sends 5 datagrams to ARGV[2] port 8080 and prints what
# came back.
ESCAPE = r"""
import socket, struct, sys
how = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
if how == "bindtodevice":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"up0")
elif how == "unicast_if":
    idx = socket.if_nametoindex("up0")
    s.setsockopt(socket.IPPROTO_IP, 50, struct.pack("!I", idx))   # IP_UNICAST_IF
elif how == "mark":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0)
sent = 0
for _ in range(5):
    try:
        s.sendto(b"leak?", (sys.argv[2], 8080)); sent += 1
        print("ok", s.recv(100).decode().strip())
    except OSError as e:
        print("refused", e.strerror or e)
"""

# A socket opened after `unshare -n`: in another network namespace.
UNSHARE_SOCKET = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"

# Another tool's cgroup_skb program (BCC): counts packets and passes them all.
THEIRS = rb"""
BPF_ARRAY(seen, u64, 1);
int theirs(struct __sk_buff *skb) {
    int k = 0;
    u64 *v = seen.lookup(&k);
    if (v) __sync_fetch_and_add(v, 1);
    return 1;
}
"""
