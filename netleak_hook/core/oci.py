"""The OCI runtime state a hook reads on stdin, and netleak's annotations
(pure). Everything here comes from images and users: validate it all."""
from __future__ import annotations

import json
import re

from .errors import NetleakError
from .validate import allow_rules, deny_rules, dns_servers, interface_name

ANNOTATION_IFACE = "io.netleak.interface"
ANNOTATION_DNS = "io.netleak.dns"        # resolvers, comma-separated (as --dns)
ANNOTATION_ALLOW = "io.netleak.allow"    # rules, comma-separated (as --allow)
ANNOTATION_DENY = "io.netleak.deny"      # rules, comma-separated (as --deny)
ANNOTATION_PROXY = "io.netleak.proxy"    # a proxy URL (as --proxy)
MAX_STATE_BYTES = 1 << 20      # a state with huge annotations is refused
MAX_PID = 1 << 22              # the kernel's PID_MAX_LIMIT
STAGES = ("createRuntime", "prestart", "poststop")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# stricter than the kernel for names that come from images and users
_IFACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,14}$")


class ContainerState:
    """What netleak needs of the OCI state."""

    __slots__ = ("id", "pid", "bundle", "annotations", "status")

    def __init__(self, id: str, pid: int, bundle: str, annotations: dict[str, str],
                 status: str = "") -> None:
        self.id = id
        self.pid = pid
        self.bundle = bundle
        self.annotations = annotations
        self.status = status

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def interface(self) -> str | None:
        """The validated interface the container asks for; None if it asks
        for none."""
        value = self.annotations.get(ANNOTATION_IFACE)
        if value is None:
            return None
        try:
            name = interface_name(value)
        except NetleakError as e:
            raise NetleakError(f"annotation {ANNOTATION_IFACE}={value[:40]!r}: "
                               f"{e.message}") from None
        if not _IFACE_RE.fullmatch(name):
            raise NetleakError(f"annotation {ANNOTATION_IFACE}={value[:40]!r}: use an "
                               f"interface name of letters, digits and _ . @ - such as wg0")
        return name

    def guards(self) -> dict:
        """The validated resolvers and rules the container asks for."""
        out: dict = {}
        for key, name, check in ((ANNOTATION_DNS, "dns", dns_servers),
                                 (ANNOTATION_ALLOW, "allow", allow_rules),
                                 (ANNOTATION_DENY, "deny", deny_rules)):
            value = self.annotations.get(key)
            if value is None:
                continue
            items = [v.strip() for v in value.split(",") if v.strip()]
            out[name] = list(check(items, f"annotation {key}"))
        value = self.annotations.get(ANNOTATION_PROXY)
        if value is not None:
            from .proxyspec import parse, resolve
            spec = parse(value.strip(), f"annotation {ANNOTATION_PROXY}")
            out["proxy"] = spec.url(secret=True)
            out["proxy_addr"] = resolve(spec)
        return out


def parse_state(raw: bytes) -> ContainerState:
    """Parse and check the state JSON; NetleakError says what is wrong."""
    if len(raw) > MAX_STATE_BYTES:
        raise NetleakError(f"OCI state on stdin is larger than {MAX_STATE_BYTES} bytes: "
                           f"refusing it")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise NetleakError("stdin is not OCI state JSON: netleak-hook must be run by a "
                           "container runtime as an OCI hook") from None
    if not isinstance(doc, dict):
        raise NetleakError("OCI state is not a JSON object")
    cid = doc.get("id")
    if not isinstance(cid, str) or not _ID_RE.fullmatch(cid):
        raise NetleakError("OCI state has no valid container id")
    pid = doc.get("pid", 0)
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < MAX_PID:
        raise NetleakError(f"OCI state of {cid[:12]} has an invalid pid")
    bundle = doc.get("bundle", "")
    if not isinstance(bundle, str):
        raise NetleakError(f"OCI state of {cid[:12]} has an invalid bundle")
    ann = doc.get("annotations")
    ann = {} if ann is None else ann
    if not isinstance(ann, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in ann.items()):
        raise NetleakError(f"OCI state of {cid[:12]} has invalid annotations")
    status = doc.get("status", "")
    if not isinstance(status, str):
        raise NetleakError(f"OCI state of {cid[:12]} has an invalid status")
    return ContainerState(cid, pid, bundle, ann, status)


def stage(argv: list[str], state: ContainerState) -> str:
    """The hook stage: given on the command line, or told by the state's
    status (one hooks.d file can then serve set-up and poststop)."""
    if len(argv) > 1 or (argv and argv[0] not in STAGES):
        raise NetleakError(f"usage: netleak-hook [{'|'.join(STAGES)}] < OCI state "
                           f"(run by the container runtime; see hooks/netleak.json)")
    if argv:
        found = argv[0]
    else:
        found = "poststop" if state.status == "stopped" else "createRuntime"
    if found != "poststop" and state.pid == 0:
        raise NetleakError(f"OCI state of {state.short_id} has no pid: the hook must run "
                           f"at createRuntime or prestart")
    return found
