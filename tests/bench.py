"""make bench: figures measured side by side in one run, inside throwaway
labs: warm start of `netleak-exec IFACE true` next to `python3 -c pass`, and
the per-packet cost of the kernel counters (the same programs compiled with
and without them, each on its own cgroup, iperf3 through the same link)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from netleak_hook import lab  # noqa: E402

ROUNDS = 40
TRAFFIC_ROUNDS = 15     # interleaved runs of each variant
TRAFFIC_SECONDS = 1


def timed(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def warm_start() -> None:
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


def _iperf(world: lab.Lab, cgroup: str, udp: bool) -> float:
    """One iperf3 run from CGROUP to the lab's server: bits/s sent (TCP) or
    64-byte datagrams/s sent (UDP)."""
    # client and server pinned to CPUs of their own: less noise between runs
    args = ["iperf3", "-c", lab.SERVER4, "-t", str(TRAFFIC_SECONDS), "-J", "-A", "0,1"]
    if udp:
        args += ["-u", "-l", "64", "-b", "0"]
    join = f'echo $$ > {cgroup}/cgroup.procs && exec "$@"'
    r = world.run(["sh", "-c", join, "sh", *args], timeout=TRAFFIC_SECONDS + 30)
    if r.returncode != 0:
        raise SystemExit(f"bench: iperf3 failed: {r.stdout[-300:]}{r.stderr[-300:]}")
    end = json.loads(r.stdout)["end"]
    if udp:
        return end["sum"]["packets"] / end["sum"]["seconds"]
    return end["sum_sent"]["bits_per_second"]


def counters_cost(extra_ns: float) -> None:
    """The egress program with counters next to the same program without
    them (compiled with -DNL_NO_STATS), and next to no program at all."""
    from netleak_hook.kernel import bpfsys, cgroupfs, programs
    from netleak_hook.policy import Policy, pack_key
    with lab.Isolated("bench") as own, lab.Lab(f"nlbenc{os.getpid() % 1000}") as world:
        programs.ensure_bpffs(own.bpf_dir)
        variants = {"counters": programs.ensure_pinned(own.bpf_dir),
                    "no counters": programs.ensure_pinned(own.bpf_dir, ("-DNL_NO_STATS",)),
                    "no program": None}
        parent = cgroupfs.abspath(cgroupfs.find_cgroup2(), own.parent)
        up0 = json.loads(world.ip(world.host, "-j", "link", "show", "up0").stdout)[0]["ifindex"]
        cgroups = {}
        for i, (name, pins) in enumerate(variants.items()):
            path = os.path.join(parent, f"v{i}")
            cgroupfs.make(path)
            cgroups[name] = path
            if pins is None:
                continue
            progs, maps = programs.Programs(pins), programs.Maps(pins)
            try:
                # routed by the main table through up0: the program's checks
                # all run and pass, as for a session's traffic
                bpfsys.map_update(maps.policy, pack_key(cgroupfs.cgroup_id(path)),
                                  Policy(ifindex=up0, mark=0, killed=False).pack())
                progs.attach(path)
            finally:
                progs.close()
                maps.close()
        server = world.spawn(["iperf3", "-s", "-B", lab.SERVER4], ns=world.net,
                             stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        results: dict[str, dict[str, list[float]]] = {n: {"tcp": [], "udp": []}
                                                      for n in variants}
        try:
            for _ in range(TRAFFIC_ROUNDS):
                for kind in ("tcp", "udp"):
                    for name in variants:
                        results[name][kind].append(
                            _iperf(world, cgroups[name], kind == "udp"))
        finally:
            server.kill()
            server.wait()
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    spread = {n: {k: (max(v) - min(v)) / statistics.median(v) for k, v in r.items()}
              for n, r in results.items()}
    base = med["no counters"]
    print(f"per-packet cost of the counters, median of {TRAFFIC_ROUNDS} interleaved "
          f"{TRAFFIC_SECONDS}-s iperf3 runs through the same veth (spread: max-min over "
          f"median):")
    print(f"  {'':<12} {'UDP 64B kpps':>12} {'ratio':>6} {'spread':>6}   "
          f"{'TCP Gbit/s':>10} {'ratio':>6} {'spread':>6}")
    for name in variants:
        tcp, udp = med[name]["tcp"], med[name]["udp"]
        print(f"  {name:<12} {udp / 1e3:12.1f} {udp / base['udp']:6.3f} "
              f"{spread[name]['udp']:6.0%}   {tcp / 1e9:10.2f} {tcp / base['tcp']:6.3f} "
              f"{spread[name]['tcp']:6.0%}")
    print("  ratio: against the same programs without counters; goal >= 0.97. Small "
          "datagrams\n  show the per-packet cost; TCP sends few, large segments.")
    pps = base["udp"]
    print(f"  the counters' {extra_ns:.0f} ns per packet at {pps / 1e3:.0f} kpps: ratio "
          f"{1 / (1 + extra_ns * 1e-9 * pps):.4f}; at 1 Mpps per CPU: "
          f"{1 / (1 + extra_ns * 1e-3):.3f}")


def _udp_packet() -> bytes:
    """Ethernet, IPv4 and UDP headers and 18 bytes: a 64-byte frame."""
    import socket
    import struct
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0, 64, 17, 0,
                     socket.inet_aton("192.0.2.2"), socket.inet_aton(lab.SERVER4))
    return b"\0" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", 40000, 53, 26, 0) + b"x" * 18


def program_cost() -> float:
    """The egress program's own time per packet, with and without counters:
    the kernel runs it on a 64-byte UDP packet a million times in a row
    (BPF_PROG_TEST_RUN) from a process inside a cgroup with a policy, on the
    path of a packet leaving by its interface."""
    import socket
    import struct
    from netleak_hook.kernel import bpfsys, cgroupfs, programs
    from netleak_hook.policy import Policy, pack_key
    # any device of this namespace will do as "the interface": nothing is sent
    ifindex = next(i for i, name in socket.if_nameindex() if name != "lo")
    ctx = struct.pack("<11I", *([0] * 10 + [ifindex]))   # __sk_buff up to ifindex
    with lab.Isolated("bench") as own:
        programs.ensure_bpffs(own.bpf_dir)
        variants = {"counters": programs.ensure_pinned(own.bpf_dir),
                    "no counters": programs.ensure_pinned(own.bpf_dir, ("-DNL_NO_STATS",))}
        parent = cgroupfs.abspath(cgroupfs.find_cgroup2(), own.parent)
        path = os.path.join(parent, "test-run")
        cgroupfs.make(path)
        fds = {}
        for name, pins in variants.items():
            maps = programs.Maps(pins)
            bpfsys.map_update(maps.policy, pack_key(cgroupfs.cgroup_id(path)),
                              Policy(ifindex=ifindex, mark=0, killed=False).pack())
            maps.close()
            fds[name] = bpfsys.obj_get(pins.pin("prog_egress"))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:        # the child runs inside the cgroup: the packet's socket is its
            try:
                cgroupfs.join(path)
                out = {n: [] for n in fds}
                for _ in range(TRAFFIC_ROUNDS):
                    for name, fd in fds.items():
                        ret, ns = bpfsys.prog_test_run(fd, _udp_packet(), ctx, 1_000_000)
                        out[name].append(ns if ret == 1 else -1)
                os.write(w, json.dumps(out).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            data = f.read()
        os.waitpid(pid, 0)
        for fd in fds.values():
            os.close(fd)
        cgroupfs.remove_tree(path)
    res = json.loads(data or "{}")
    if not res or any(ns < 0 for v in res.values() for ns in v):
        raise SystemExit("bench: the egress program did not pass the test packet")
    on, off = (statistics.median(res[n]) for n in ("counters", "no counters"))
    print(f"egress program time per packet, median of {TRAFFIC_ROUNDS} x 1,000,000 runs "
          f"(BPF_PROG_TEST_RUN):")
    print(f"  counters     {on:5.0f} ns")
    print(f"  no counters  {off:5.0f} ns   (+{on - off:.0f} ns per packet)")
    return on - off


def main() -> int:
    which = sys.argv[1:] or ["start", "counters"]
    if "start" in which:
        warm_start()
    if "counters" in which:
        counters_cost(program_cost())
    return 0


if __name__ == "__main__":
    sys.exit(main())
