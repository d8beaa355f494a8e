"""netleak-hook [STAGE]: the OCI hook (podman, CRI-O; see hooks/netleak.json).

createRuntime (or prestart, for runtimes without it): the container's process
exists in its cgroup but has not run its first instruction; put that cgroup
under control, or exit non-zero so the engine aborts the start. poststop: a
hint to the reaper, which ends the session on its own when the cgroup
empties. Every outcome is also appended to <run dir>/hook.log, since engines
often discard a hook's stderr.
"""
from __future__ import annotations

import os
import sys
import time

from . import client
from .core import oci
from .core.config import Config
from .core.errors import NetleakError
from .kernel import cgroupfs
from .core.lifecycle import new_session_id
from .rundir.store import Store, netns_id, run_dir

PROG = "netleak-hook"

HELP = f"""\
usage: {PROG} [STAGE]

The OCI hook of netleak for podman and CRI-O: a container annotated with
io.netleak.interface (or io.netleak.proxy) is put under netleak's control
before its first instruction runs, or the engine aborts its start. The
engine runs the hook as hooks.d/netleak.json says, with the container's
state on standard input; every outcome is also logged in the run
directory's hook.log.

stages:
  createRuntime    put the container's cgroup under control (prestart
                   too, for runtimes without createRuntime)
  poststop         a hint to the reaper, which ends the session anyway
                   once the cgroup is empty

annotations:
  io.netleak.interface=IFACE  everything leaves through IFACE or is dropped
  io.netleak.dns=ADDR,...     resolvers for loopback DNS, through IFACE
  io.netleak.allow=RULE,...   destinations that may use the main table:
                   [CIDR][:PORT[-PORT]][/tcp|/udp], e.g. 192.168.1.0/24:631/tcp
  io.netleak.deny=RULE,...    refused and dropped, even through IFACE
  io.netleak.proxy=URL        every TCP connection through this proxy
                   (socks5://, socks5h://, http://); IFACE then optional

options:
  -h, --help       this help

examples:
  podman run --annotation io.netleak.interface=wg0 IMAGE CMD
  podman run --annotation io.netleak.proxy=socks5h://127.0.0.1:9050 IMAGE CMD
"""


def protect(store: Store, st: oci.ContainerState, iface: str, autostart: bool,
            guards: dict | None = None) -> dict:
    """Attach the container's cgroup to IFACE."""
    try:
        theirs = os.stat(f"/proc/{st.pid}/ns/net").st_ino
    except OSError:
        raise NetleakError(f"container {st.short_id}: process {st.pid} is gone") from None
    if theirs != netns_id():
        raise NetleakError(
            f"container {st.short_id} has its own network namespace: netleak routes in "
            f"the host's; run it with --network=host")
    root = cgroupfs.find_cgroup2()
    rel = cgroupfs.of_pid(st.pid)
    path = cgroupfs.abspath(root, rel)
    msg = {"op": "open", "id": new_session_id(), "iface": iface, "cgroup": rel,
           "cgroup_id": cgroupfs.cgroup_id(path), "owned": False, "join": False,
           "container": st.id, **(guards or {})}
    reply = client.request_starting_daemon(store, msg, autostart=autostart)
    client.check_guards(msg, reply)
    return reply


def run(argv: list[str], raw: bytes, environ: dict) -> tuple[int, str]:
    """Exit status and the one line to report."""
    cfg = Config.from_env(environ)
    st = oci.parse_state(raw)
    stage = oci.stage(argv, st)
    iface = st.interface()
    proxied = oci.ANNOTATION_PROXY in st.annotations
    if iface is None and not proxied:
        return 0, (f"{stage} {st.short_id}: no {oci.ANNOTATION_IFACE} or "
                   f"{oci.ANNOTATION_PROXY} annotation, nothing to do")
    guards = st.guards() if stage != "poststop" else {}
    store = Store(run_dir(cfg))
    if stage == "poststop":
        try:
            client.request(store, {"op": "reap"}, timeout=5)
        except NetleakError:
            pass        # no daemon: nothing to reap; the next one collects
        return 0, f"poststop {st.short_id}: reaper told"
    if os.geteuid() != 0:
        raise NetleakError("netleak-hook needs root: it is run by a rootful container "
                           "runtime")
    reply = protect(store, st, iface or "", cfg.autostart, guards)
    if reply.get("proxy"):
        via = f" via {iface}" if iface else ""
        return 0, f"{stage} {st.short_id}: through {reply['proxy']}{via}, session {reply['id']}"
    state = client.opened_state(reply)
    return 0, f"{stage} {st.short_id}: on {iface} ({state}), session {reply['id']}"


def _log(environ: dict, line: str) -> None:
    """One line in <run dir>/hook.log (capped, never through a link)."""
    from .rundir.logfile import HOOK_LOG_MAX, append_capped
    try:
        store = Store(run_dir(Config.from_env(environ)))
        text = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {PROG}[{os.getpid()}] {line}\n"
        append_capped(store.dir_fd(create=True), "hook.log", text.encode("utf-8", "replace"),
                      HOOK_LOG_MAX, store.path)
    except (OSError, NetleakError):
        pass


def main() -> None:
    if sys.argv[1:2] in (["-h"], ["--help"]):
        sys.stdout.write(HELP)      # before stdin, which an engine fills
        sys.exit(0)
    environ = dict(os.environ)
    try:
        raw = sys.stdin.buffer.read(oci.MAX_STATE_BYTES + 1)
        status, line = run(sys.argv[1:], raw, environ)
    except NetleakError as e:
        status, line = e.exit_status, f"refused: {e.message}"
        sys.stderr.write(f"{PROG}: {e.message}\n")
    except Exception as e:  # never a traceback to the engine: one line, logged
        status, line = 125, f"failed: {type(e).__name__}: {e}"
        sys.stderr.write(f"{PROG}: {line}\n")
    _log(environ, line)
    sys.exit(status)


if __name__ == "__main__":
    main()
