#!/bin/sh
# One container whose traffic leaves only through IFACE (default wg0), or is
# dropped. Needs `make install` (the hook in
# /usr/share/containers/oci/hooks.d) and rootful podman. The container
# shares the host's network namespace: netleak routes there.
#
#   sh examples/podman-run.sh wg0 docker.io/library/alpine wget -qO- http://ifconfig.me
set -eu
[ $# -ge 2 ] || { echo "usage: $0 IFACE IMAGE [CMD...]" >&2; exit 2; }
iface=$1; shift
exec podman run --rm --network=host --annotation "io.netleak.interface=$iface" "$@"
