"""The kernel layer: bpf(2), cgroup v2, rtnetlink, socket diagnostics, confinement; thin."""
