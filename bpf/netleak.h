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
    u32 event_rate; /* blocked-attempt events per second at most (0: none) */
    u64 netns;      /* cookie of the network namespace the session lives in;
                     * sockets opened in any other one are refused (0: any) */
    /* The event rate limiter's state, kept by the programs (userspace
     * writes zeros; a rewrite of the entry only restarts the window). */
    u64 ev_window;      /* current window: boot time in ns >> NL_WINDOW_SHIFT */
    u64 ev_sent;        /* events sent in that window */
    u64 ev_suppressed;  /* events held back since the last one sent */
};

/* about one second */
#define NL_WINDOW_SHIFT 30

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
    u64 events_suppressed;          /* events held back by the rate limit */
    u64 events_lost;                /* events with no reader's ring, or a full one */
};

/* Why an attempt was blocked (struct nl_event.reason). */
enum nl_reason {
    NL_R_KILL = 1,      /* kill switch on: packet dropped, or connect/sendmsg
                         * that routing refuses (no route while the switch is on) */
    NL_R_DEVICE = 2,    /* packet would have left by another interface */
    NL_R_NOPOLICY = 3,  /* attached but no policy entry: dropped, fail closed */
    NL_R_NETNS = 4,     /* socket opened in another network namespace: refused */
};

/* Where the attempt was seen (struct nl_event.hook). */
enum nl_hook {
    NL_H_EGRESS = 1,
    NL_H_SOCK = 2,
    NL_H_CONNECT = 3,
    NL_H_SENDMSG = 4,
};

/* One blocked attempt, sent through the ring of the session's network
 * namespace. Userspace mirrors it in netleak_hook/events.py. */
struct nl_event {
    u64 time_ns;        /* bpf_ktime_get_boot_ns() */
    u64 cgroup;         /* the session's cgroup id (the policy key) */
    u64 sock_cgroup;    /* the cgroup the socket or task is in (maybe nested) */
    u32 pid;            /* tgid of the task, 0 when not in task context */
    u32 suppressed;     /* events of this session held back before this one */
    u8 reason;          /* enum nl_reason */
    u8 hook;            /* enum nl_hook */
    u8 family;          /* AF_INET, AF_INET6 */
    u8 protocol;        /* IPPROTO_*; 0 when unknown */
    u16 dport;          /* destination port, host order; 0 when none */
    u16 pad;
    u8 daddr[16];       /* IPv4 in the first 4 bytes */
    char comm[16];      /* empty when not in task context */
};

#define LOOPBACK_IFINDEX 1

#ifndef NL_MAX_DEPTH
/* How many cgroup levels the ancestor walk covers. */
#define NL_MAX_DEPTH 16
#endif

#ifndef NL_MAX_ENTRIES
#define NL_MAX_ENTRIES 4096
#endif

/* Events per window for all drops with no policy entry together. */
#ifndef NL_NOPOLICY_RATE
#define NL_NOPOLICY_RATE 50
#endif

/* Rings of event readers, one per network namespace (daemon). */
#ifndef NL_MAX_RINGS
#define NL_MAX_RINGS 256
#endif

/* Each ring's size in pages (a power of two). */
#ifndef NL_RING_PAGES
#define NL_RING_PAGES 16
#endif

#endif /* NETLEAK_H */
