#!/bin/sh
# Run a job as a transient systemd scope whose traffic leaves only by wg0.
#
#   sudo ./systemd-run-scope.sh wg0 curl https://example.org
#
# The scope's first process puts its own cgroup under control, then execs the
# job: nothing runs unprotected, and systemd still owns and accounts the
# scope (`systemctl status netleak-job-*.scope`). The session ends when the
# scope's last process exits. To take over a scope or service that is already
# running instead:
#
#   sudo netleak attach wg0 --unit myjob.scope
#   sudo netleak detach --unit myjob.scope
#
# Sockets the unit opened before `attach` are dropped from then on, not leaked.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 IFACE COMMAND [ARG]..." >&2; exit 2; }
iface=$1
shift
exec systemd-run --scope --quiet --unit="netleak-job-$$" --collect \
    sh -c 'netleak attach "$0" --pid $$ >/dev/null && exec "$@"' "$iface" "$@"
