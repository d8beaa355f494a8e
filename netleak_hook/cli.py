"""netleak: status, doctor, demo and the daemon (click)."""
from __future__ import annotations

import json
import os
import sys
import time

import click

from . import __version__
from .config import Config
from .errors import Exit, NetleakError


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
@click.pass_obj
def daemon(env: Env, foreground: bool, idle_exit: float) -> None:
    """Run the monitor and reaper of this network namespace (foreground)."""
    from . import daemon as dmn
    try:
        sys.exit(dmn.serve(env.config(), idle_exit=idle_exit, foreground=foreground))
    except NetleakError as e:
        _fail(e)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def status(env: Env, as_json: bool) -> None:
    """Sessions of this network namespace."""
    from .store import Store, run_dir
    try:
        store = Store(run_dir(env.config()))
    except NetleakError as e:
        _fail(e)
    st = store.load()
    now = time.time()
    rows = []
    for s in sorted(st.sessions.values(), key=lambda s: s.created):
        b = st.bindings.get(s.iface)
        rows.append({"id": s.id, "iface": s.iface, "cgroup": s.cgroup,
                     "cgroup_id": s.cgroup_id, "mark": b.mark if b else None,
                     "table": b.table if b else None, "age": round(now - s.created, 1),
                     "committed": s.committed})
    if as_json:
        click.echo(json.dumps({"daemon_pid": store.daemon_pid(), "sessions": rows}, indent=1))
        return
    if not rows:
        click.echo("no sessions")
        return
    click.echo(f"{'ID':<10} {'IFACE':<10} {'AGE':>7}  CGROUP")
    for r in rows:
        click.echo(f"{r['id']:<10} {r['iface']:<10} {r['age']:>6.0f}s  {r['cgroup']}")
