"""netleak demo: the main job, shown in throwaway network namespaces."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from . import lab
from .core.config import Config
from .core.errors import NetleakError


def _trace(text: str) -> tuple[list[str], str]:
    """The client's answers, and a trace of them: + answered, x refused."""
    answers = [ln for ln in text.splitlines() if ln.strip()]
    return answers, "".join("+" if a.startswith("ok") else "x" for a in answers)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _result(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def run(cfg: Config) -> int:
    if os.geteuid() != 0:
        raise NetleakError("the demo builds network namespaces: run it as root (sudo)")
    for tool in ("ip", "nsenter", "tcpdump"):
        if shutil.which(tool) is None:
            raise NetleakError(f"the demo needs '{tool}': run 'make deps' or install it")
    tag = f"nldemo{os.getpid() % 100000}"
    exec_cmd = [sys.executable, "-m", "netleak_hook.execcmd"]
    ok = True
    _say("netleak demo: two throwaway network namespaces stand in for this machine")
    _say(f"  {tag}-host: the machine, with uplink up0 (default route) and vpn0")
    _say(f"  {tag}-net:  the world, with a server at {lab.SERVER4} that answers")
    _say("               with the address it saw the request come from")
    _say()
    # run directory, cgroups and pins of its own: the demo leaves nothing behind
    with lab.Isolated("demo") as own, lab.Lab(tag) as world:
        env = own.env
        world.start_server()
        r = world.run(world.client())
        _say("1. A plain request leaves by the default route (up0, 192.0.2.2):")
        _say(f"   server saw: {_result(r.stdout)}")
        _say()
        t0 = time.monotonic()
        r = world.run(exec_cmd + ["vpn0"] + world.client(), env=env)
        _say("2. The same request under 'netleak-exec vpn0' leaves by vpn0 "
             "(198.51.100.2):")
        _say(f"   server saw: {_result(r.stdout or r.stderr)}"
             f"   ({time.monotonic() - t0:.2f}s, including the first start)")
        ok &= "198.51.100.2" in r.stdout
        _say()
        _say("3. A program under 'netleak-exec vpn0' keeps asking (every 0.2s) "
             "while vpn0")
        _say("   is deleted and then re-created with a new ifindex; a capture on "
             "up0")
        _say("   counts every packet that would leak by the default route:")
        p = world.spawn(exec_cmd + ["vpn0"] + world.client(tries=20), env=env,
                        stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        first = p.stdout.readline()     # the session is up and answering
        with world.capture("up0") as cap:
            world.ip(world.host, "link", "del", "vpn0")
            time.sleep(1.5)
            world.recreate("vpn0")
            out, _ = p.communicate(timeout=60)
            leaked = cap.stop()
        answers, trace = _trace(first + out)
        _say(f"   answers: {trace}   (+ via vpn0, x refused)")
        resumed = bool(answers) and answers[-1].startswith("ok")
        _say("   traffic " + ("resumed by vpn0 once it was back" if resumed
                              else "did NOT resume"))
        _say(f"   packets leaked on up0: {leaked}")
        ok &= leaked == 0 and resumed and "x" in trace
        with world.capture("up0") as cap:
            world.run(world.client())
            control = cap.stop()
        _say(f"   (control: the same capture sees a plain request: {control} packets)")
        ok &= control > 0
        _say()
        _say("4. A program started while vpn0 is absent (before 'wg-quick up') waits")
        _say("   for it, blocked, and is routed once vpn0 appears:")
        world.ip(world.host, "link", "del", "vpn0")
        with world.capture("up0") as cap:
            p = world.spawn(exec_cmd + ["vpn0"] + world.client(tries=40), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert p.stdout is not None
            first = p.stdout.readline()     # the session runs, waiting
            time.sleep(1.0)
            world.recreate("vpn0")
            out, err = p.communicate(timeout=60)
            leaked = cap.stop()
        answers, trace = _trace(first + out)
        _say(f"   {(err.strip().splitlines() or ['(nothing)'])[0]}")
        _say(f"   answers: {trace}   (x refused while waiting, + via vpn0)")
        _say(f"   packets leaked on up0: {leaked}")
        ok &= leaked == 0 and trace.startswith("x") and trace.endswith("+")
    _say()
    _say("Everything the demo made is removed." if ok else
         "Something did not behave as promised: see above, and run 'netleak doctor'.")
    return 0 if ok else 1
