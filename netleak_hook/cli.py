"""netleak: status, doctor, demo and the daemon (click)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys

import click

from . import __version__, completion
from .core.config import Config
from .core.errors import Exit, NetleakError


class Env:
    """What commands need from the outside world; tests replace it."""

    def __init__(self, environ=None) -> None:
        self.environ = dict(os.environ if environ is None else environ)

    def config(self) -> Config:
        return Config.from_env(self.environ)


def _fail(e: NetleakError) -> None:
    click.echo(f"netleak: {e.message}", err=True)
    sys.exit(e.exit_status)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netleak")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Keep a process tree's traffic on one interface, or drop it.

    \b
    examples:
      netleak doctor          is this machine ready?
      netleak demo            see it work in throwaway namespaces
      netleak status          sessions of this network namespace
      netleak-exec wg0 CMD    run CMD through wg0 only
    """
    ctx.ensure_object(Env)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def doctor(env: Env, as_json: bool) -> None:
    """Check kernel, cgroup v2, bpffs, BCC, headers, privileges, rp_filter."""
    from . import doctor as doc
    results = doc.gather(env.environ)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        click.echo(doc.render(results))
    sys.exit(Exit.OK if all(r.ok for r in results) else Exit.FAILURE)


@main.command()
@click.pass_obj
def prepare(env: Env) -> None:
    """Compile the BPF programs for this kernel and pin them now, ahead of
    the first session (which would do it, taking a few seconds)."""
    from .kernel import programs
    try:
        _need_root()
        cfg = env.config()
        programs.ensure_bpffs(cfg.bpf_dir)
        from .client import compile_notice
        compile_notice(environ=env.environ)     # on a terminal, while it compiles
        pins = programs.ensure_pinned(cfg.bpf_dir)
    except NetleakError as e:
        _fail(e)
    click.echo(f"netleak: programs pinned in {pins.path}")


@main.command()
@click.option("--check", is_flag=True,
              help="only say whether it would be refused (exit 125 if so), removing nothing")
@click.pass_obj
def cleanup(env: Env, check: bool) -> None:
    """Remove what netleak keeps between sessions (daemons, pinned
    programs, run directories, its cgroup, rules and routes), once no
    session runs; refused while one does, or while netleak-daemon.service
    runs (it would start a daemon again)."""
    from . import cleanup as cl
    try:
        _need_root()
        if check:
            cl.check(env.config())
            return
        done = cl.cleanup(env.config(), env.environ)
    except NetleakError as e:
        _fail(e)
    for line in done or ["nothing to remove"]:
        click.echo(f"netleak: {line}")


@main.command()
@click.pass_obj
def demo(env: Env) -> None:
    """Show netleak at work in throwaway network namespaces."""
    from . import demo as dm
    try:
        sys.exit(dm.run(env.config()))
    except NetleakError as e:
        _fail(e)


@main.command()
@click.option("--foreground/--background", default=True, hidden=True)
@click.option("--idle-exit", type=float, default=0.0,
              help="exit after this many seconds without sessions (0: never)")
@click.option("--replace", is_flag=True,
              help="a daemon that runs already (started on demand) hands over to this one")
@click.pass_obj
def daemon(env: Env, foreground: bool, idle_exit: float, replace: bool) -> None:
    """Run the monitor and reaper of this network namespace (foreground).

    As a systemd service (Type=notify): ready once it serves requests, and
    the watchdog is fed while its loop turns."""
    from .daemon import service as dmn
    try:
        sys.exit(dmn.serve(env.config(), idle_exit=idle_exit, foreground=foreground,
                           replace=replace))
    except NetleakError as e:
        _fail(e)


@main.command("install-hook")
@click.option("--hooks-dir", default=None, metavar="DIR",
              help="where podman/CRI-O read hooks (default "
                   "/usr/share/containers/oci/hooks.d)")
@click.option("--zipapp-dir", default=None, metavar="DIR",
              help="also write the hook as one file runnable by any python3 here")
@click.option("--host-dir", default=None, metavar="DIR",
              help="what the host calls --zipapp-dir (from inside a container)")
@click.pass_obj
def install_hook(env: Env, hooks_dir: str | None, zipapp_dir: str | None,
                 host_dir: str | None) -> None:
    """Write netleak.json into the hooks directory, with this install's hook.

    The NETLEAK_* settings set here (README "Configuration") are passed on
    to the hook.
    """
    try:
        click.echo(_install_hook(env, hooks_dir, zipapp_dir, host_dir))
    except NetleakError as e:
        _fail(e)


def _install_hook(env: Env, hooks_dir: str | None, zipapp_dir: str | None,
                  host_dir: str | None) -> str:
    from . import hookspec
    env.config()    # bad NETLEAK_* values are refused before anything is written
    hooks_dir = hooks_dir or hookspec.DEFAULT_HOOKS_DIR
    hook_env = hookspec.passed_on(env.environ)
    try:
        if zipapp_dir:
            os.makedirs(zipapp_dir, exist_ok=True)
            hookspec.build_zipapp(os.path.join(zipapp_dir, hookspec.ZIPAPP_NAME))
            pyz = os.path.join(host_dir or zipapp_dir, hookspec.ZIPAPP_NAME)
            # the host that runs the zipapp has no daemon to start (no BCC,
            # no netleak): without one, refuse at once
            hook_env["NETLEAK_AUTOSTART"] = "0"
            doc = hookspec.spec("/usr/bin/python3", ["python3", pyz], hook_env)
        else:
            if host_dir:
                raise NetleakError("--host-dir goes with --zipapp-dir")
            exe = os.path.join(os.path.dirname(sys.executable), "netleak-hook")
            if not os.access(exe, os.X_OK):
                raise NetleakError(f"no netleak-hook next to {sys.executable}: install "
                                   f"netleak (make install) or use --zipapp-dir")
            doc = hookspec.spec(exe, None, hook_env)
        target = hookspec.write(hooks_dir, doc)
    except OSError as e:
        raise NetleakError(f"cannot write the hook: {e}") from None
    return f"installed {target} -> {' '.join([doc['hook']['path'], *doc['hook']['args'][1:]])}"


@main.command()
@click.option("--hooks-dir", default="/host/hooks.d", show_default=True, metavar="DIR",
              help="the host's hooks directory, as mounted in the container")
@click.option("--zipapp-dir", default="/host/lib", show_default=True, metavar="DIR",
              help="a host directory for the hook, as mounted in the container")
@click.option("--host-dir", default="/opt/netleak", show_default=True, metavar="DIR",
              help="what the host calls --zipapp-dir")
@click.pass_obj
def agent(env: Env, hooks_dir: str, zipapp_dir: str, host_dir: str) -> None:
    """Node agent (the container image's entry point): install the hook on
    the host, then run the daemon in the foreground.

    The hook (a zipapp) never starts a daemon: while the agent is down,
    annotated containers are refused instead of started unprotected.
    """
    from .daemon import service as dmn
    try:
        running = _store(env).daemon_pid()
        if running:
            raise NetleakError(
                f"a netleak daemon (pid {running}) already runs for "
                f"{_store(env).path}: stop it; the agent runs its own")
        _need_root()
        click.echo(_install_hook(env, hooks_dir, zipapp_dir, host_dir))
        sys.exit(dmn.serve(env.config(), foreground=True))
    except NetleakError as e:
        _fail(e)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="complete, machine-readable output")
@click.pass_obj
def status(env: Env, as_json: bool) -> None:
    """Sessions of this network namespace: one row each.

    STATE is routed, shadowed (another tool's rule routes its packets
    elsewhere, where they are dropped), kill-switch (interface down),
    waiting (for the interface to appear, or for a gateway), starting, or
    no-policy (fail closed).
    """
    from . import status as st
    try:
        _need_root()
        data = st.gather(env.config())
    except NetleakError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(data, indent=1))
    else:
        click.echo(st.render(data["sessions"], bindings=data["bindings"]))


@main.command()
@click.option("--output", "-o", default=None, metavar="FILE",
              help="replace FILE atomically instead of printing (for node-exporter's "
                   "textfile collector: a .prom file in its directory)")
@click.pass_obj
def metrics(env: Env, output: str | None) -> None:
    """Counters in the Prometheus text format: sessions by state, packets and
    bytes by verdict, refused sockets."""
    from . import client
    from . import metrics as mt
    from . import status as st
    try:
        _need_root()
        data = st.gather(env.config())
        if data.get("sessions"):
            data["connections"] = client.connections(_store(env))
        text = mt.render(data)
        if output:
            try:
                mt.write(output, text)
            except OSError as e:
                raise NetleakError(f"cannot write {output}: {e.strerror or e}") from None
    except NetleakError as e:
        _fail(e)
    if not output:
        click.echo(text, nl=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.option("--follow", "-f", is_flag=True,
              help="print events as they happen (from now on) until interrupted")
@click.option("--session", "session", metavar="ID", shell_complete=completion.complete_session,
              help="only this session (an id or "
              "its start, as 'netleak status' shows it)")
@click.pass_obj
def events(env: Env, as_json: bool, follow: bool, session: str | None) -> None:
    """Blocked attempts of this namespace's sessions: what, by whom, where to,
    and why (kill-switch, wrong-device, no-policy, netns).

    \b
    The kernel reports them at most NETLEAK_EVENT_RATE times a second per
    session (50 by default); a line starting with '#' says how many were
    held back. Without --follow, the events the daemon has recorded.
    """
    from .core import events as ev
    from .rundir import eventlog
    try:
        _need_root()
        run = _store(env).path
    except NetleakError as e:
        _fail(e)

    def emit(e: dict) -> None:
        if not ev.matches(e, session):
            return
        if as_json:
            click.echo(json.dumps(e, sort_keys=True))
        else:
            note = ev.held_back(e)
            if note:
                click.echo(note)
            click.echo(ev.line(e))
        sys.stdout.flush()

    try:
        if not as_json:
            click.echo(ev.HEADER)
        if follow:
            eventlog.follow(run, emit, stop=lambda: False)
        else:
            for e in eventlog.recorded(run):
                emit(e)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # the reader went away (| head): nothing left to say to anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@main.command()
@click.option("--session", "session", metavar="ID", shell_complete=completion.complete_session,
              help="only this session (an id or its start, as 'netleak status' shows it)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.option("--follow", "-f", is_flag=True,
              help="the current connections, then opens, updates and closes as they "
                   "happen, until interrupted")
@click.option("--watch", "-w", is_flag=True, help="refresh the table in place, as top does")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              metavar="SECONDS", help="how often --follow and --watch look")
@click.pass_obj
def connections(env: Env, session: str | None, as_json: bool, follow: bool, watch: bool,
                interval: float) -> None:
    """Every connection (and UDP flow) of the controlled sessions, allowed
    ones included: process, protocol, far end (in proxy mode the real
    destination and the name asked for), bytes and packets each way, age,
    state. Busiest first.

    \b
    The kernel keeps the figures per socket (TCP's own counters, and for UDP
    a socket storage of netleak's): no event per packet. Listening sockets
    and traffic of no socket (ICMP errors the kernel sends) are not shown.
    """
    import time
    from . import client
    from .core import connections as conn
    try:
        _need_root()
        if follow and watch:
            raise NetleakError("--follow or --watch, not both")
        store = _store(env)
        rows = client.connections(store, session)
    except NetleakError as e:
        _fail(e)
    try:
        if follow:
            stream = conn.Follow()
            while True:
                for e in stream.step(rows, time.monotonic()):
                    click.echo(json.dumps(e, sort_keys=True) if as_json else
                               f"{e['event']:<7} " + conn.table([e], 72).splitlines()[1])
                sys.stdout.flush()
                time.sleep(interval)
                rows = client.connections(store, session)
        while True:
            if as_json:
                for r in rows:
                    click.echo(json.dumps(r, sort_keys=True))
            else:
                width = shutil.get_terminal_size((80, 24)).columns if watch else 80
                text = conn.table(rows, width)
                click.echo("\x1b[H\x1b[2J" + text if watch else text)
            if not watch:
                return
            sys.stdout.flush()
            time.sleep(interval)
            rows = client.connections(store, session)
    except NetleakError as e:
        _fail(e)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


_TARGET_HELP = """\b
Name the cgroup in one of three ways:
  --cgroup PATH  as /proc/PID/cgroup or systemd print it, or its full path
  --pid PID      the cgroup a process is in
  --unit UNIT    a systemd unit's cgroup (the unit must be running)"""


def _target(env: Env, cgroup: str | None, pid: int | None, unit: str | None) -> str:
    from .core import targets
    if sum(x is not None for x in (cgroup, pid, unit)) != 1:
        raise click.UsageError("give exactly one of --cgroup PATH, --pid PID, --unit UNIT")
    from .kernel import cgroupfs
    return targets.resolve(cgroupfs.find_cgroup2(), cgroup=cgroup, pid=pid, unit=unit)


def _target_options(f):
    f = click.option("--unit", metavar="UNIT", help="a running systemd unit",
                     shell_complete=completion.complete_unit)(f)
    f = click.option("--pid", type=int, metavar="PID", help="a process in the cgroup")(f)
    f = click.option("--cgroup", "cgroup", metavar="PATH", help="the cgroup's path")(f)
    return f


def _store(env: Env):
    """The run directory's Store, refused when others may write it."""
    from .rundir.store import Store, run_dir
    store = Store(run_dir(env.config()))
    store.check()
    return store


def _need_root() -> None:
    if os.geteuid() != 0:
        raise NetleakError("needs root (cgroups, BPF, routing): run it with sudo")


@main.command(epilog=_TARGET_HELP)
@click.argument("iface", required=False, shell_complete=completion.complete_iface)
@_target_options
@click.option("--via", multiple=True, metavar="ADDR",
              help="gateway on IFACE, once per IP family (as for netleak-exec)")
@click.option("--dns", multiple=True, metavar="ADDR",
              help="resolver for the cgroup's loopback DNS, through IFACE (repeatable)")
@click.option("--allow", multiple=True, metavar="RULE",
              help="destinations that may use the main routing table: "
                   "[CIDR][:PORT[-PORT]][/tcp|/udp] (repeatable)")
@click.option("--deny", multiple=True, metavar="RULE",
              help="refused and dropped, even through IFACE: same syntax (repeatable)")
@click.option("--block", is_flag=True, help="no network: loopback only (no IFACE)")
@click.pass_obj
def attach(env: Env, iface: str | None, cgroup: str | None, pid: int | None,
           unit: str | None, via: tuple[str, ...], dns: tuple[str, ...],
           allow: tuple[str, ...], deny: tuple[str, ...], block: bool) -> None:
    """Put an existing cgroup's traffic on IFACE (or drop it), or with
    --block cut it off the network.

    Its processes keep running; sockets they opened before are dropped from
    now on, not leaked. Release it with 'netleak detach'.
    """
    from . import client
    from .core import validate
    from .kernel import cgroupfs
    from .core.lifecycle import new_session_id
    try:
        if block == bool(iface):
            raise NetleakError("give an IFACE or --block (not both)")
        name = "" if block else validate.interface_name(iface or "")
        via4, via6 = validate.gateways(list(via))
        guards = validate.guard_request(list(dns), list(allow), block, list(via),
                                        list(deny))
        rel = _target(env, cgroup, pid, unit)
        _need_root()
        path = cgroupfs.abspath(cgroupfs.find_cgroup2(), rel)
        if rel and not os.path.isfile(os.path.join(path, "cgroup.procs")):
            raise NetleakError(f"no cgroup /{rel} (looked for {path}): check the path")
        cid = cgroupfs.cgroup_id(path)
        reply = client.request_starting_daemon(_store(env), {
            "op": "open", "id": new_session_id(), "iface": name, "via4": via4,
            "via6": via6, "cgroup": rel, "cgroup_id": cid, "owned": False,
            "join": False, **guards,
            # a service or scope named: pinned across its restarts, until
            # detach (a slice, a socket's cgroup is attached as a cgroup)
            **({"unit": rel.rpartition("/")[2], "pinned": True}
               if unit and rel.endswith((".service", ".scope")) else {})},
            autostart=env.config().autostart)
        client.check_guards(guards, reply)
    except NetleakError as e:
        _fail(e)
    if reply.get("warning"):
        click.echo(f"netleak: warning: {reply['warning']}", err=True)
    if block:
        click.echo(f"/{rel}: no network (loopback only), session {reply['id']}")
        return
    state = client.opened_state(reply)
    click.echo(f"/{rel}: on {name} ({state}), session {reply['id']}")


@main.command(epilog=_TARGET_HELP)
@_target_options
@click.option("--id", "sid", metavar="ID", help="a session id from 'netleak status'",
              shell_complete=completion.complete_detachable)
@click.pass_obj
def detach(env: Env, cgroup: str | None, pid: int | None, unit: str | None,
           sid: str | None) -> None:
    """Release a cgroup put under control with 'netleak attach'."""
    from . import client
    try:
        msg: dict = {"op": "detach"}
        if sid is not None:
            if cgroup or pid is not None or unit:
                raise NetleakError("give --id or one of --cgroup/--pid/--unit, not both")
            msg["id"] = sid
        elif unit is not None and cgroup is None and pid is None:
            from .core import targets
            msg["unit"] = targets.unit_name(unit)
            # a stopped service has no cgroup: a pinned one is found by name
            with contextlib.suppress(NetleakError):
                msg["cgroup"] = _target(env, None, None, unit)
        else:
            msg["cgroup"] = _target(env, cgroup, pid, unit)
        _need_root()
        store = _store(env)
        if store.daemon_pid() is None:
            from .daemon.units import DROPIN_HEAD
            from .kernel.systemd import remove_dropin_of_netleak
            # a drop-in a crashed daemon left would pin the unit's next start
            if msg.get("unit") and remove_dropin_of_netleak(msg["unit"], DROPIN_HEAD):
                click.echo(f"{msg['unit']}: removed the drop-in that pinned it (no "
                           f"daemon runs, so nothing else was attached)")
                return
            raise NetleakError("no netleak daemon runs in this network namespace, so "
                               "nothing is attached here: see 'netleak status'")
        reply = client.request(store, msg)
    except NetleakError as e:
        _fail(e)
    click.echo(f"/{reply['cgroup']}: released from {reply['iface'] or 'no-network mode'} "
               f"(session {reply['id']})")
    if reply.get("warning"):
        click.echo(f"netleak: warning: {reply['warning']}", err=True)



@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def gc(env: Env, as_json: bool) -> None:
    """Collect what crashes or a reboot left: sessions of empty cgroups,
    half-done set-ups, stale map entries, rules and routes."""
    from . import client
    try:
        _need_root()
        reply = client.request_starting_daemon(_store(env), {"op": "gc"},
                                               autostart=env.config().autostart)
    except NetleakError as e:
        _fail(e)
    report = reply["report"]
    if as_json:
        click.echo(json.dumps(report, indent=1, sort_keys=True))
        return
    parts = [f"{len(report['reaped'])} sessions reaped",
             f"{len(report['adopted'])} adopted",
             f"{report['entries_removed']} map entries",
             f"{report['routes_removed']} routes",
             f"{len(report['cgroups_removed'])} cgroups removed"]
    click.echo("gc: " + ", ".join(parts) + f"; {report['sessions']} sessions remain")


if __name__ == "__main__":
    main()
