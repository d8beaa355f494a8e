#!/bin/sh
# Install what netleak needs on a Debian/Ubuntu machine, as root; idempotent.
# Says what it does; installs nothing that is already there.
# "install-deps.sh test" adds what the test suite needs: podman with runc
# (its container tests), debootstrap (a Debian image without a registry) and
# a static busybox (a minimal container rootfs), and the real VPN software
# the suite runs netleak with: wireguard-go and wireguard-tools (userspace
# WireGuard, wg, wg-quick), openvpn and openssl (a TLS tunnel with
# certificates of its own) and microsocks (a SOCKS5 server), bash-completion
# and zsh (the completion scripts run in real shells), and what the
# Debian package's build needs ("install-deps.sh deb" too: debhelper,
# dh-python, lintian, and the package's dependencies); "install-deps.sh bench" adds
# iperf3 (the benchmark's traffic), microsocks (the proxy of its proxy part) and
# proxychains4 (the LD_PRELOAD peer it is measured against).
set -eu

say() { echo "deps: $*"; }

[ "$(id -u)" = 0 ] || { echo "deps: run as root (sudo make ...)" >&2; exit 125; }
command -v apt-get >/dev/null || {
    echo "deps: no apt-get: install BCC's Python module, libbpf, iproute2, tcpdump and" \
         "kernel headers with your package manager" >&2; exit 125; }

release=$(uname -r)
arch=$(dpkg --print-architecture)
want="python3-bpfcc python3-venv python3-pip iproute2 tcpdump util-linux procps iputils-ping"
if [ "${1:-}" = test ]; then
    want="$want podman runc conmon containernetworking-plugins debootstrap busybox-static"
    # iptables: wg-quick's full tunnel writes its filter rules with it when
    # nft is not there (recommended only, and recommends are not installed)
    want="$want wireguard-go wireguard-tools iptables openvpn openssl microsocks"
    # the completion scripts' tests run them in real shells
    want="$want bash-completion zsh"
elif [ "${1:-}" = bench ]; then
    want="$want iperf3 microsocks proxychains4"
fi
# the Debian package's build (debhelper, pybuild, lintian) and what it
# depends on as the distribution's packages (the test suite installs it)
if [ "${1:-}" = deb ] || [ "${1:-}" = test ]; then
    want="$want debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools"
    want="$want dpkg-dev fakeroot lintian python3-click python3-pyroute2 python3-jeepney"
fi
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
missing=""
for p in $want; do
    installed "$p" || missing="$missing $p"
done

updated=""
apt_update() {
    [ -n "$updated" ] && return 0
    say "apt-get update"
    apt-get update -qq
    updated=1
}

# libbpf, which netleak calls for its bpf(2) commands: libbpf1 (Debian 12,
# Ubuntu 24.04 and later); Ubuntu 22.04 has only libbpf0 (0.5), which works too
if ! installed libbpf1 && ! installed libbpf0; then
    apt_update
    if apt-cache show libbpf1 >/dev/null 2>&1; then
        missing="$missing libbpf1"
    else
        say "no libbpf1 in this release: using libbpf0"
        missing="$missing libbpf0"
    fi
fi

if [ -n "$missing" ]; then
    apt_update
    say "installing$missing"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# Kernel headers for BCC: the running kernel's own package when it exists,
# otherwise the distribution's generic headers linked in (the programs use
# only stable UAPI structures, so another version's headers work).
if [ ! -e "/lib/modules/$release/build/Makefile" ]; then
    apt_update
    if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
        say "installing linux-headers-$release"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$release" >/dev/null
    else
        generic="linux-headers-$arch"
        apt-cache show "$generic" >/dev/null 2>&1 || generic=linux-headers-generic
        say "no headers package for kernel $release: using $generic instead"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$generic" >/dev/null
        build=$(ls -d /usr/src/linux-headers-*-"$arch" /usr/src/linux-headers-*-generic \
                2>/dev/null | sort -V | tail -1)
        [ -n "$build" ] || { echo "deps: no headers found under /usr/src" >&2; exit 125; }
        common=$(grep -o '/usr/src/linux-headers-[^ ]*-common' "$build/Makefile" 2>/dev/null \
                 | head -1 || true)
        [ -n "$common" ] || common="${build%-*}-common"
        [ -d "$common" ] || common="$build"
        mkdir -p "/lib/modules/$release"
        ln -sfn "$build" "/lib/modules/$release/build"
        ln -sfn "$common" "/lib/modules/$release/source"
        say "linked /lib/modules/$release/build -> $build"
    fi
fi
