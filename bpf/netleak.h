/* netleak: types shared by the BPF programs and userspace.
 *
 * Userspace mirrors these layouts in netleak_hook/policy.py; keep both in
 * step (the pin directory name is a hash of this source, so a change here
 * gets fresh pins and never mixes layouts).
 */
#ifndef NETLEAK_H
#define NETLEAK_H

/* Kill switch: drop everything except loopback. Set by the daemon while the
 * target interface is down, absent or being restored. */
#define NL_FLAG_KILL 0x1

/* Policy of one controlled cgroup, keyed by its cgroup id (the inode of its
 * cgroup2 directory). */
struct nl_policy {
    u32 ifindex;    /* the only non-loopback device packets may leave by */
    u32 mark;       /* fwmark given to every socket created in the cgroup */
    u32 flags;      /* NL_FLAG_* */
    u32 reserved;
    u64 netns;      /* cookie of the network namespace the session lives in;
                     * sockets opened in any other one are refused (0: any) */
};

struct nl_count {
    u64 packets;
    u64 bytes;
};

/* Per-cgroup counters (per CPU), keyed like the policy. Packets of a cgroup
 * with no policy are counted under the socket's own cgroup id. */
struct nl_stats {
    struct nl_count passed;         /* left by the interface */
    struct nl_count loopback;       /* stayed on the machine (lo) */
    struct nl_count drop_kill;      /* kill switch on */
    struct nl_count drop_device;    /* would have left by another interface */
    struct nl_count drop_nopolicy;  /* attached but no policy found: fail closed */
    u64 refused_netns;              /* sockets refused: another network namespace */
};

#define LOOPBACK_IFINDEX 1

#ifndef NL_MAX_DEPTH
/* How many cgroup levels the ancestor walk covers. */
#define NL_MAX_DEPTH 16
#endif

#ifndef NL_MAX_ENTRIES
#define NL_MAX_ENTRIES 4096
#endif

#endif /* NETLEAK_H */
