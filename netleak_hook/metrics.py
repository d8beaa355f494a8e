"""`netleak metrics`: the kernel counters in the Prometheus text exposition
format (version 0.0.4), e.g. for node-exporter's textfile collector (pure)."""
from __future__ import annotations

from .core.policy import REFUSALS
from .rundir import files
from .status import STATES

# packet verdicts, as the counters name them (<verdict>_packets, _bytes)
VERDICTS = ("passed", "loopback", "allowed", "drop_kill", "drop_device", "drop_nopolicy",
            "drop_block", "drop_inbound", "drop_proxy", "drop_source", "drop_deny")
# socket calls refused: REFUSALS (core/policy.py), refused_<reason>; the
# kill switch's are counted by call (refused_kill_connect, _sendmsg)
KILL_CALLS = ("connect", "sendmsg")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items()) + "}"


def render(data: dict) -> str:
    """DATA as `netleak status --json` gives it."""
    sessions = data.get("sessions", [])
    out = [
        "# HELP netleak_sessions Sessions of this network namespace, by state.",
        "# TYPE netleak_sessions gauge",
    ]
    for state in STATES:
        n = sum(1 for s in sessions if s["state"] == state)
        out.append(f"netleak_sessions{_labels(state=state)} {n}")
    series = (
        ("netleak_packets_total", "Packets of a session, by verdict: passed (left by "
         "its interface), loopback, allowed (for an --allow rule), drop_kill (kill "
         "switch on), drop_device (would have left by another interface), drop_nopolicy "
         "(no policy entry: fail closed), drop_block (no-network mode), drop_inbound "
         "(arrived by another interface), drop_proxy (proxy mode: would have left "
         "directly), drop_source (on loopback from an address not this machine's), "
         "drop_deny (held by a --deny rule, out or in).",
         "packets"),
        ("netleak_bytes_total", "Bytes of a session, by verdict (as netleak_packets_total).",
         "bytes"),
    )
    for name, help_text, unit in series:
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for s in sessions:
            c = s.get("counters")
            if not c:
                continue
            for v in VERDICTS:
                out.append(f"{name}{_labels(**_ids(s), verdict=v)} "
                           f"{c.get(f'{v}_{unit}', 0)}")
    out += ["# HELP netleak_sockets_refused_total Socket calls of a session refused: "
            "kill (connect or sendmsg while the kill switch is on), "
            "netns (socket opened in another network namespace), dns (loopback DNS with "
            "no resolver to send it to), block (connect or sendmsg in no-network mode), "
            "proxy (proxy mode: neither TCP nor DNS), source (setsockopt for a source "
            "address not this machine's), mptcp (MPTCP sockets), limit (more sockets "
            "sent to a resolver or the relay at once than a session may hold), deny "
            "(connect or sendmsg held by a --deny rule).",
            "# TYPE netleak_sockets_refused_total counter"]
    for s in sessions:
        c = s.get("counters")
        if c:
            for why in REFUSALS:
                n = (sum(c[f"refused_kill_{call}"] for call in KILL_CALLS) if why == "kill"
                     else c.get(f"refused_{why}", 0))
                out.append(f"netleak_sockets_refused_total{_labels(**_ids(s), reason=why)} {n}")
    out += ["# HELP netleak_kill_switch_refused_total Socket calls of a session refused "
            "while the kill switch is on, by call: connect (TCP or UDP), sendmsg (UDP "
            "with an address: sendto, sendmsg, sendmmsg).",
            "# TYPE netleak_kill_switch_refused_total counter"]
    for s in sessions:
        c = s.get("counters")
        if c:
            for call in KILL_CALLS:
                out.append(f"netleak_kill_switch_refused_total{_labels(**_ids(s), call=call)} "
                           f"{c[f'refused_kill_{call}']}")
    out += ["# HELP netleak_dns_redirected_total Loopback DNS queries of a session sent "
            "to its resolvers through the interface.",
            "# TYPE netleak_dns_redirected_total counter"]
    for s in sessions:
        c = s.get("counters")
        if c:
            out.append(f"netleak_dns_redirected_total{_labels(**_ids(s))} "
                       f"{c['dns_redirected']}")
    out += ["# HELP netleak_events_undelivered_total Blocked-attempt events of a session that did not "
            "reach 'netleak events': suppressed (over the rate limit), lost (no reader, "
            "or its ring full).",
            "# TYPE netleak_events_undelivered_total counter"]
    for s in sessions:
        c = s.get("counters")
        if c:
            for fate in ("suppressed", "lost"):
                out.append(f"netleak_events_undelivered_total{_labels(**_ids(s), reason=fate)} "
                           f"{c[f'events_{fate}']}")
    out += ["# HELP netleak_connections Open connections and UDP flows of a session, "
            "by protocol (as 'netleak connections' shows them).",
            "# TYPE netleak_connections gauge"]
    if "connections" in data:
        from .core.connections import counts
        n = counts(data["connections"])
        for s in sessions:
            for proto in ("tcp", "udp"):
                out.append(f"netleak_connections{_labels(**_ids(s), proto=proto)} "
                           f"{n.get((s['id'], proto), 0)}")
    return "\n".join(out) + "\n"


def _ids(s: dict) -> dict[str, str]:
    return {"session": s["id"], "iface": s["iface"], "cgroup": s["cgroup"],
            "container": s.get("container") or ""}


def write(path: str, text: str) -> None:
    """Replace PATH atomically: a collector never reads half a file."""
    files.replace(path, text)
