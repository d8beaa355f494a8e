"""A point-to-point L3 link made of two TUN devices and this relay: tun0 in
the namespace it starts in, tunp in the namespace named by argv[1]; packets
are copied between them, as a VPN client would carry them."""
import ctypes
import fcntl
import os
import select
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main() -> None:
    local = open_tun("tun0")
    nsfd = os.open(sys.argv[1], os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(nsfd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    remote = open_tun("tunp")
    print("ready", flush=True)
    peer = {local: remote, remote: local}
    while True:
        for fd in select.select([local, remote], [], [])[0]:
            try:
                os.write(peer[fd], os.read(fd, 65535))
            except OSError:
                pass


if __name__ == "__main__":
    main()
