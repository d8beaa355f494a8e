"""Reading /proc/self/mountinfo (pure parsing)."""
from __future__ import annotations


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def find_mounts(mountinfo: str, fstype: str) -> list[str]:
    """Mount points of FSTYPE, in mount order."""
    points = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) >= 5 and rfields and rfields[0] == fstype:
            points.append(_unescape(fields[4]))
    return points


def cgroup2_mount(mountinfo: str) -> str | None:
    """The cgroup2 mount point: /sys/fs/cgroup when pure v2, otherwise the
    first one found (/sys/fs/cgroup/unified on hybrid systems)."""
    points = find_mounts(mountinfo, "cgroup2")
    if not points:
        return None
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if preferred in points:
            return preferred
    return points[0]
