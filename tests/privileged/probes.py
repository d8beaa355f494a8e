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

# A hostile workload that gives its sockets a source address that is not
# this machine's (ARGV[1], ARGV[2]: an IPv4 and an IPv6 one) and sends to
# this machine (loopback, its own addresses, local listeners): whatever
# answers (the kernel's ICMP errors and resets, a listener, netleak's DNS
# answerer) answers that source by the main table. ARGV[3] is how the
# source is had: freebind (IP_FREEBIND), transparent (IP_TRANSPARENT, root
# only) or plain (the ip_nonlocal_bind sysctl). ARGV[4:] are the cases, as
# NAME=KIND,HOST,PORT with KIND udp, tcp, ping or dns (a query over UDP);
# a v4-mapped HOST (::ffff:a.b.c.d) is sent from the v4-mapped source.
# Prints one line per case: "NAME sent N" or "NAME refused REASON".
SPOOF = r"""
import socket, sys, time
spoof4, spoof6, how = sys.argv[1], sys.argv[2], sys.argv[3]
OPT = {"freebind": {socket.AF_INET: (0, 15), socket.AF_INET6: (41, 78)},
       "transparent": {socket.AF_INET: (0, 19), socket.AF_INET6: (41, 75)}}
DNS = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04leak\x04test\x00\x00\x01\x00\x01"
PAYLOAD = {"udp": b"x" * 64, "dns": DNS, "tcp": b"",
           "ping4": b"\x08\x00\xf7\xfd\x00\x01\x00\x01", "ping6": b"\x80\x00\x00\x00\x00\x01\x00\x01"}
def sock(fam, kind, proto):
    s = socket.socket(fam, kind, proto)
    if how in OPT:
        level, name = OPT[how][fam]
        try:
            s.setsockopt(level, name, 1)
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"setsockopt: {e.strerror}")
    return s
for arg in sys.argv[4:]:
    name, spec = arg.split("=", 1)
    kind, host, port = spec.split(",")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    src = spoof4 if fam == socket.AF_INET else (
        "::ffff:" + spoof4 if host.startswith("::ffff:") else spoof6)
    stype = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    proto = 0
    payload = PAYLOAD.get(kind)
    if kind == "ping":
        proto = socket.IPPROTO_ICMP if fam == socket.AF_INET else socket.IPPROTO_ICMPV6
        payload = PAYLOAD["ping4" if fam == socket.AF_INET else "ping6"]
    sent = 0
    try:
        for _ in range(3 if kind == "tcp" else 10):
            s = sock(fam, stype, proto)
            try:
                s.bind((src, 0))
                if kind == "tcp":
                    s.setblocking(False)
                    try:
                        s.connect((host, int(port)))
                    except BlockingIOError:
                        pass
                    time.sleep(0.05)
                else:
                    s.sendto(payload, (host, int(port)))
                sent += 1
            finally:
                s.close()
        print(name, "sent", sent, flush=True)
    except OSError as e:
        print(name, "refused", e.strerror or e, flush=True)
"""


# makes a socket of each family (never used: nothing is sent) and says
# which were refused: ones no cgroup program sees, and controls it does
FAMILIES = r"""
import socket
for name, fam, kind in (("vsock", 40, socket.SOCK_STREAM), ("packet", 17, socket.SOCK_DGRAM),
                        ("xdp", 44, socket.SOCK_RAW), ("inet", 2, socket.SOCK_STREAM),
                        ("inet6", 10, socket.SOCK_DGRAM), ("unix", 1, socket.SOCK_STREAM),
                        ("netlink", 16, socket.SOCK_RAW)):
    try:
        socket.socket(fam, kind).close()        # made, never used: nothing is sent
        print(name, "made", flush=True)
    except OSError as e:
        print(name, "refused", e.strerror, flush=True)
# io_uring: its IORING_OP_SOCKET makes sockets without socket(2)
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 4, params)                  # io_uring_setup
if fd >= 0:
    os.close(fd)
    print("io_uring made", flush=True)
else:
    print("io_uring refused", os.strerror(ctypes.get_errno()), flush=True)
"""

# nobody, outside any session: holds a UDP socket connected to the server
VICTIM = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 8080))
print("ready", flush=True)
time.sleep(60)
"""

# as the same user: take the victim's socket (pidfd_getfd), and send through
# it; open its memory for writing; attach to it with ptrace
TAKE_OVER = r"""
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
pid = int(sys.argv[1])
def err():
    return os.strerror(ctypes.get_errno())
pidfd = libc.syscall(434, pid, 0)                       # pidfd_open
fd = libc.syscall(438, pidfd, 3, 0) if pidfd >= 0 else -1   # pidfd_getfd: its fd 3
if fd >= 0:
    s = socket.socket(fileno=fd)
    for _ in range(5):
        s.send(b"sent for the workload")
    print("getfd sent", flush=True)
else:
    print("getfd refused", err(), flush=True)
try:
    os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR))
    print("mem opened", flush=True)
except OSError as e:
    print("mem refused", e.strerror, flush=True)
if libc.ptrace(16, pid, None, None) == 0:               # PTRACE_ATTACH
    print("ptrace attached", flush=True)
    libc.ptrace(17, pid, None, None)                    # PTRACE_DETACH
else:
    print("ptrace refused", err(), flush=True)
"""

MPTCP = r"""
import socket, sys
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)     # IPPROTO_MPTCP
    s.settimeout(2)
    s.connect((sys.argv[1], 8080))
    print("mptcp", s.recv(100).decode().strip(), flush=True)
except OSError as e:
    print("mptcp refused", e.strerror, flush=True)
s = socket.create_connection((sys.argv[1], 8080), timeout=2)
print("tcp", s.recv(100).decode().strip(), flush=True)
"""


# setsockopt(2) through the 32-bit entry (int 0x80) from this 64-bit
# process, where the kernel runs no cgroup program (x86_64 only), then a
# bind to a forged source and datagrams to each HOST:PORT of ARGV[4:] (a
# %zone allowed). ARGV[1]: 4 or 6, ARGV[2]: the forged source, ARGV[3]:
# freebind or transparent. Prints what each step gave.
COMPAT = r"""
import ctypes, mmap, socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
level = 41 if fam == socket.AF_INET6 else 0
name = {("6", "freebind"): 78, ("4", "freebind"): 15, ("6", "transparent"): 75,
        ("4", "transparent"): 19}[(sys.argv[1], sys.argv[3])]
# push rbx; mov ebx,edi; mov eax,esi; mov esi,ecx; mov ecx,eax; mov edi,r8d;
# mov eax,366; int 0x80; pop rbx; ret  (setsockopt(fd, level, name, val, len))
code = bytes.fromhex("5389fb89f089ce89c14489c7b86e010000cd805bc3")
low = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40,  # MAP_32BIT
                prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
low.write(code)
base = ctypes.addressof(ctypes.c_char.from_buffer(low))
val = base + 1024
ctypes.c_int.from_address(val).value = 1
call = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                        ctypes.c_uint64, ctypes.c_int)(base)
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
r = call(s.fileno(), level, name, val, 4)
print("compat", "ok" if r == 0 else f"refused {-r}", flush=True)
try:
    s.bind((sys.argv[2], 0))
    print("bind ok", flush=True)
except OSError as e:
    print("bind refused", e.strerror, flush=True)
    sys.exit(0)
for target in sys.argv[4:]:
    host, port = target.rsplit(":", 1)
    try:
        for _ in range(3):
            s.sendto(b"forged", (host.strip("[]"), int(port)))
        print(target, "sent", flush=True)
    except OSError as e:
        print(target, "refused", e.strerror, flush=True)
"""

# Socket calls while the kill switch is on, on command: one command a line
# of stdin, then "done". ARGV: the server's IPv4 and IPv6 address, its port,
# then this machine's own non-loopback addresses. Commands:
#   tcp N    N TCP connects to the server, IPv4 and IPv6 in turn
#   udp M    M UDP sendtos to the server, in turn: IPv4, IPv6, IPv4-mapped on
#            an IPv6 socket, IPv4 from a socket bound to up0
#   local    a TCP connect and a UDP sendto to loopback (127.0.0.1, ::1) and to
#            each own address (listeners of its own on a free port)
# Prints one line per call: "KIND ok" or "KIND refused STRERROR".
KILL_CALLS = r"""
import socket, sys
server4, server6, port, own = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
A4, A6 = socket.AF_INET, socket.AF_INET6
def attempt(kind, fam, proto, host, p, dev=None):
    try:
        with socket.socket(fam, proto) as s:
            s.settimeout(5)
            if dev:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev)
            if proto == socket.SOCK_STREAM:
                s.connect((host, p))
            else:
                s.sendto(b"hi", (host, p))
        print(kind, "ok", flush=True)
    except OSError as e:
        print(kind, "refused", e.strerror, flush=True)
UDP = (("udp4", A4, server4, None), ("udp6", A6, server6, None),
       ("udp4mapped", A6, "::ffff:" + server4, None), ("udp4bound", A4, server4, b"up0"))
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "tcp":
        for i in range(int(arg[0])):
            fam, host = (A4, server4) if i % 2 == 0 else (A6, server6)
            attempt("tcp", fam, socket.SOCK_STREAM, host, port)
    elif cmd == "udp":
        for i in range(int(arg[0])):
            kind, fam, host, dev = UDP[i % len(UDP)]
            attempt(kind, fam, socket.SOCK_DGRAM, host, port, dev)
    elif cmd == "local":
        for host in ["127.0.0.1", "::1", *own]:
            fam = A6 if ":" in host else A4
            with socket.socket(fam, socket.SOCK_STREAM) as ear:
                ear.bind((host, 0))
                ear.listen(1)
                attempt("local-tcp " + host, fam, socket.SOCK_STREAM, host, ear.getsockname()[1])
            attempt("local-udp " + host, fam, socket.SOCK_DGRAM, host, port)
    print("done", flush=True)
"""

# A UDP socket bound to up0 and connected to ARGV[1] port 8080 while the
# switch is off; on each line of stdin, it sends 5 datagrams by send() (no
# sendmsg program sees those) and prints what each did, then "done".
CONNECTED_BOUND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"up0")
s.connect((sys.argv[1], 8080))
print("ready", flush=True)
for line in sys.stdin:
    for _ in range(5):
        try:
            s.send(b"leak?")
            print("sent", flush=True)
        except OSError as e:
            print("refused", e.strerror, flush=True)
    print("done", flush=True)
"""
