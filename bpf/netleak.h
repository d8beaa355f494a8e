/* netleak: types shared by the BPF programs and userspace.
 *
 * Userspace mirrors these layouts in netleak_hook/core/abi.py; keep both in
 * step (the pin directory name is a hash of this source, so a change here
 * gets fresh pins and never mixes layouts).
 */
#ifndef NETLEAK_H
#define NETLEAK_H

/* Kill switch: drop everything except loopback. Set by the daemon while the
 * target interface is down, absent or being restored. */
#define NL_FLAG_KILL 0x1
/* No-network mode: loopback only (and --allow rules); no interface. */
#define NL_FLAG_BLOCK 0x2
/* Proxy mode: TCP goes to the relay (netleak's, on loopback), which carries
 * it through the proxy; DNS goes to the relay's answerer; nothing else
 * leaves. */
#define NL_FLAG_PROXY 0x4

#ifndef NL_MAX_DNS
#define NL_MAX_DNS 4        /* resolvers per session */
#endif
#ifndef NL_MAX_ALLOW
#define NL_MAX_ALLOW 8      /* --allow rules per session */
#endif
#ifndef NL_MAX_DENY
#define NL_MAX_DENY 8       /* --deny rules per session */
#endif

/* An address as the sock_addr context holds an IPv6 one: four words in
 * network order. IPv4 is kept IPv4-mapped (::ffff:a.b.c.d), so one
 * comparison serves both families and dual-stack sockets. */
struct nl_addr {
    u32 w[4];
};

/* A prefix: ADDR & MASK == ADDR for the addresses it holds. */
struct nl_prefix {
    struct nl_addr addr;
    struct nl_addr mask;
};

/* An --allow or --deny rule: the far end of a flow (a session's packet's
 * destination, or the source of one it receives). It holds an address in
 * NET of FAMILY (0: both; 4: IPv4-mapped ones only; 6: the others) and,
 * unless both are 0, a PROTO (IPPROTO_TCP or _UDP; 0: either) and ports
 * PORT_LO..PORT_HI (host order; 0, 0: any). */
struct nl_rule {
    struct nl_prefix net;
    u16 port_lo;
    u16 port_hi;
    u8 proto;
    u8 family;
    u8 pad[2];
};

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
    /* Leak guards beyond routing (userspace writes them). */
    u32 dns_n;          /* resolvers in dns[]: loopback port-53 traffic goes
                         * to one of them; 0: it is refused */
    u32 allow_n;        /* rules in allow[]: may use the main table */
    struct nl_addr dns[NL_MAX_DNS];
    struct nl_rule allow[NL_MAX_ALLOW];
    u16 relay_port;     /* proxy mode: the relay's TCP port on 127.0.0.1 and
                         * ::1, network order */
    u16 stats_slot;     /* the session's element of the map `counters` (0:
                         * none: counted in `stats` by cgroup id). It takes
                         * the upper half of what was a u32 port, which
                         * older versions' userspace masks off: the entry
                         * keeps its size, and means the same to every
                         * version that reads it (one of another namespace's
                         * daemon may), and an older entry reads as "no
                         * slot". */
    u32 dns_port;       /* proxy mode: its DNS answerer's UDP port (one that
                         * answers from the proxy, or one that refuses) */
    u32 deny_n;         /* rules in deny[]: refused and dropped, whatever
                         * else would let them through */
    struct nl_rule deny[NL_MAX_DENY];
};

/* about one second */
#define NL_WINDOW_SHIFT 30

struct nl_count {
    u64 packets;
    u64 bytes;
};

/* A session's counters (per CPU): its slot of the map `counters`. Verdicts
 * with no policy entry are counted in the map `stats`, under the socket's
 * own cgroup id. */
struct nl_stats {
    struct nl_count passed;         /* left by the interface */
    struct nl_count loopback;       /* stayed on the machine (lo) */
    struct nl_count drop_kill;      /* kill switch on */
    struct nl_count drop_device;    /* would have left by another interface */
    struct nl_count drop_nopolicy;  /* attached but no policy found: fail closed */
    u64 refused_netns;              /* sockets refused: another network namespace */
    u64 events_suppressed;          /* events held back by the rate limit */
    u64 events_lost;                /* events with no reader's ring, or a full one */
    struct nl_count allowed;        /* left for an --allow prefix (any device) */
    struct nl_count drop_block;     /* no-network mode */
    struct nl_count drop_inbound;   /* arrived by another interface: dropped */
    u64 refused_dns;                /* loopback DNS refused: no resolver to send it to */
    u64 refused_block;              /* connect/sendmsg refused in no-network mode */
    u64 dns_redirected;             /* loopback DNS sent to a session's resolver */
    u64 proxied;                    /* proxy mode: connections and DNS sent to the relay */
    u64 refused_proxy;              /* proxy mode: neither TCP nor DNS: refused */
    struct nl_count drop_proxy;     /* proxy mode: a packet that would have left directly */
    struct nl_count drop_source;    /* on loopback from an address not this machine's */
    u64 refused_source;             /* setsockopt refused: non-local source addresses */
    u64 refused_mptcp;              /* MPTCP sockets refused */
    u64 refused_limit;              /* over NL_SESSION_REDIRECTS: refused */
    u64 refused_kill_connect;       /* connect() refused: kill switch on */
    u64 refused_kill_sendmsg;       /* sendmsg() with an address refused: kill switch on */
    struct nl_count drop_deny;      /* held by a --deny rule: dropped (out or in) */
    u64 refused_deny;               /* connect/sendmsg refused by a --deny rule */
};

/* Why an attempt was blocked (struct nl_event.reason). */
enum nl_reason {
    NL_R_KILL = 1,      /* kill switch on: packet dropped, or connect/sendmsg
                         * refused */
    NL_R_DEVICE = 2,    /* packet would have left by another interface */
    NL_R_NOPOLICY = 3,  /* attached but no policy entry: dropped, fail closed */
    NL_R_NETNS = 4,     /* socket opened in another network namespace: refused */
    NL_R_DNS = 5,       /* loopback DNS with no resolver of its family: refused */
    NL_R_BLOCK = 6,     /* no-network mode: refused or dropped */
    NL_R_PROXY = 7,     /* proxy mode: not TCP (nor DNS), or a packet that would
                         * have left directly: refused or dropped */
    NL_R_SOURCE = 8,    /* a source address that is not this machine's: a
                         * setsockopt that would allow one refused, or a
                         * loopback packet that carries one dropped */
    NL_R_MPTCP = 9,     /* an MPTCP socket: refused */
    NL_R_LIMIT = 10,    /* more than NL_SESSION_REDIRECTS of the session's sockets
                         * sent elsewhere at once: refused */
    NL_R_DENY = 11,     /* held by a --deny rule (nl_event.rule): refused or
                         * dropped */
};

/* Where the attempt was seen (struct nl_event.hook). */
enum nl_hook {
    NL_H_EGRESS = 1,
    NL_H_SOCK = 2,
    NL_H_CONNECT = 3,
    NL_H_SENDMSG = 4,
    NL_H_SETSOCKOPT = 5,
};

/* One blocked attempt, sent through the ring of the session's network
 * namespace. Userspace mirrors it in netleak_hook/core/abi.py. */
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
    u16 rule;           /* NL_R_DENY: which of the session's deny rules */
    u8 daddr[16];       /* IPv4 in the first 4 bytes */
    char comm[16];      /* empty when not in task context */
};

#define LOOPBACK_IFINDEX 1
#define DNS_PORT 53

/* A connect() or sendmsg() sent elsewhere (loopback DNS to a resolver, or
 * proxy mode's to the relay), by socket cookie: what the app asked for, so
 * replies and getpeername show it, and so the relay (which asks the kernel
 * for the cookie of the socket it hears from) learns where it was going
 * and whose it is. Kept while the socket lives: the release program
 * removes it. Userspace mirrors it in netleak_hook/relay.py. */
struct nl_redirect {
    struct nl_addr orig;
    struct nl_addr server;
    u32 orig_port;      /* network order, as in user_port */
    u32 server_port;    /* network order */
    u64 cgroup;         /* the session (policy key) */
    u32 proxy;          /* a TCP connection to the relay */
    u32 pad;
};

#ifndef NL_MAX_REDIRECTS
#define NL_MAX_REDIRECTS 1048576    /* sockets sent elsewhere, all sessions (the map
                                     * allocates as it fills) */
#endif
#ifndef NL_SESSION_REDIRECTS
#define NL_SESSION_REDIRECTS 8192   /* ... of one session at once: no workload can
                                     * crowd out the others' */
#endif

/* This machine's addresses, by network namespace (the daemon of each keeps
 * its own from netlink): a session's packet must come from one of them, or
 * from loopback. */
struct nl_local_key {
    u64 netns;
    struct nl_addr addr;
};

#ifndef NL_MAX_LOCALS
#define NL_MAX_LOCALS 16384
#endif

/* Kept on a socket the programs sent to the relay (socket storage): the
 * relay's port it went to, network order. The relay's own ingress program
 * takes only packets of such sockets. */
struct nl_relayed {
    u32 port;
    u32 pad;
};

/* Kept on each UDP socket of a session (socket storage), and on each
 * socket that connect() or sendmsg() saw: what `netleak connections`
 * reads by socket diagnostics (TCP's bytes and segments it takes from the
 * kernel's own tcp_info). Bytes are UDP payload. */
struct nl_flowstat {
    u64 session;        /* the session's cgroup id (policy key) */
    u64 first_ns;       /* bpf_ktime_get_boot_ns() when first seen */
    u32 pid;            /* tgid of the task that connected or sent (0: none seen) */
    u32 pad;
    u64 tx_packets;
    u64 tx_bytes;
    u64 rx_packets;
    u64 rx_bytes;
};

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
