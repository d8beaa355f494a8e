"""make bench: warm start of `netleak-exec IFACE true` next to `python3 -c
pass`, measured side by side in one run inside a throwaway lab."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from netleak_hook import lab  # noqa: E402

ROUNDS = 40


def timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    venv_bin = os.path.dirname(sys.executable)
    exec_bin = os.path.join(venv_bin, "netleak-exec")
    with lab.Isolated("bench") as own, lab.Lab(f"nlbench{os.getpid() % 1000}") as world:
        env = own.env
        ns = world.nsenter(world.host)
        holder = world.spawn([exec_bin, "vpn0", "sleep", "600"], env=env)
        # warm: the daemon is up and vpn0 bound once the holder's session is
        deadline = time.monotonic() + 30
        while own.sessions() < 1:
            if time.monotonic() > deadline or holder.poll() is not None:
                raise SystemExit("bench: the holding session did not start")
            time.sleep(0.02)
        a, b, c = [], [], []
        for _ in range(ROUNDS):    # interleaved, so drift hits all alike
            a.append(timed(ns + [exec_bin, "vpn0", "true"], env))
            b.append(timed(ns + [sys.executable, "-c", "pass"], env))
            c.append(timed(ns + [sys.executable, "-I", "-S", "-c", "pass"], env))
        holder.kill()
        holder.wait()
    ma, mb, mc = (statistics.median(x) * 1000 for x in (a, b, c))
    print(f"warm start, median of {ROUNDS} (each under nsenter):")
    print(f"  netleak-exec vpn0 true   {ma:6.1f} ms")
    print(f"  python3 -c pass          {mb:6.1f} ms   ratio {ma / mb:.2f}x")
    print(f"  python3 -I -S -c pass    {mc:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
