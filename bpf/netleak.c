/* netleak: mark every socket of a controlled cgroup and drop every packet of
 * it that would leave by anything but its interface or loopback (or by an
 * --allow rule), and everything a --deny rule holds; send its loopback DNS to the session's resolvers, and
 * in proxy mode its TCP and DNS to netleak's relay; drop
 * what arrives by another interface; count each verdict, and report
 * blocked attempts through a ring buffer.
 *
 * Compiled by BCC (netleak_hook/kernel/programs.py) with -I for this folder
 * and -D for the sizes, then pinned; later runs only open the pins.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include "netleak.h"

#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#endif
#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif
/* socket options that let a socket carry a source address that is not
 * this machine's (uapi/linux/in.h, in6.h) */
#define NL_SOL_IP 0
#define NL_SOL_IPV6 41
#define NL_IP_FREEBIND 15
#define NL_IP_TRANSPARENT 19
#define NL_IPV6_TRANSPARENT 75
#define NL_IPV6_FREEBIND 78

BPF_HASH(policy, u64, struct nl_policy, NL_MAX_ENTRIES);
/* Readers' rings, keyed by the netns cookie of the daemon that reads it;
 * ring_tmpl only gives the inner maps their shape. */
BPF_RINGBUF_OUTPUT(ring_tmpl, NL_RING_PAGES);
BPF_HASH_OF_MAPS(rings, u64, "ring_tmpl", NL_MAX_RINGS);

enum nl_verdict { V_PASS, V_LOOPBACK, V_KILL, V_DEVICE, V_NOPOLICY, V_NETNS,
                  V_SUPPRESSED, V_LOST, V_ALLOWED, V_BLOCK, V_INBOUND, V_REFUSED_DNS,
                  V_REFUSED_BLOCK, V_DNS, V_PROXIED, V_REFUSED_PROXY, V_PROXY, V_SOURCE,
                  V_REFUSED_SOURCE, V_REFUSED_MPTCP, V_REFUSED_LIMIT, V_REFUSED_KILL_CONNECT,
                  V_REFUSED_KILL_SENDMSG, V_DENY, V_REFUSED_DENY };

/* Counters of the sessions, by the slot their policy entry names
 * (nl_policy.stats_slot): a per-CPU array, whose lookup the verifier
 * inlines to a bounds check and an address. The egress program has the
 * policy entry at hand anyway, so counting a packet costs a few
 * instructions, where a per-CPU hash keyed by the cgroup id cost a second
 * hash lookup (about 30 ns a packet). Not cgroup storage: that goes with
 * the cgroup (a systemd scope's before the reaper reads its last figures)
 * and belongs to the cgroup a program is attached to, not to the session
 * whose verdict it counts. Slot 0 is never given: "no slot". */
BPF_PERCPU_ARRAY(counters, struct nl_stats, NL_MAX_ENTRIES);

/* Who holds each slot: the session's cgroup id, and the netns cookie of the
 * daemon that claimed it (so that no daemon gives back, or moves, another
 * namespace's). Userspace claims one with BPF_NOEXIST, so daemons of
 * different network namespaces sharing these maps never take the same; the
 * programs never read it. */
struct nl_slot_owner {
    u64 cgroup;
    u64 netns;
};
BPF_HASH(slots, u32, struct nl_slot_owner, NL_MAX_ENTRIES);

/* Counters by cgroup id, for a verdict with no policy entry (or an entry
 * with no slot): the socket's own cgroup id. The cold path. */
BPF_PERCPU_HASH(stats, u64, struct nl_stats, NL_MAX_ENTRIES);

/* What stats_of() files a new entry from (never written): a struct
 * nl_stats on the stack would take most of the 512 bytes the verifier
 * allows, in each place count() is inlined. */
BPF_ARRAY(stats_zero, struct nl_stats, 1);

/* CGID's entry in `stats`, filed when it has none (NULL: the map is full;
 * counting is best effort, the verdict is not). */
static __always_inline struct nl_stats *stats_of(u64 cgid)
{
    struct nl_stats *s = stats.lookup(&cgid);
    u32 first = 0;
    struct nl_stats *zero;

    if (s)
        return s;
    zero = stats_zero.lookup(&first);
    if (!zero)
        return 0;
    stats.insert(&cgid, zero);
    return stats.lookup(&cgid);
}

/* Count verdict V of a LEN-byte packet (0: a call) for the session of
 * policy P, or for cgroup CGID when P is NULL or has no slot. */
static __always_inline void count(const struct nl_policy *p, u64 cgid, enum nl_verdict v,
                                  u32 len)
{
#ifndef NL_NO_STATS
    struct nl_stats *s = 0;
    struct nl_count *c;

    if (p && p->stats_slot) {
        u32 slot = p->stats_slot;
        s = counters.lookup(&slot);
    }
    if (!s)
        s = stats_of(cgid);
    if (!s)
        return;
    /* per-CPU values: plain increments are race free */
    switch (v) {
    case V_PASS:     c = &s->passed; break;
    case V_LOOPBACK: c = &s->loopback; break;
    case V_KILL:     c = &s->drop_kill; break;
    case V_DEVICE:   c = &s->drop_device; break;
    case V_NOPOLICY: c = &s->drop_nopolicy; break;
    case V_ALLOWED:  c = &s->allowed; break;
    case V_BLOCK:    c = &s->drop_block; break;
    case V_INBOUND:  c = &s->drop_inbound; break;
    case V_PROXY:    c = &s->drop_proxy; break;
    case V_SOURCE:   c = &s->drop_source; break;
    case V_DENY:     c = &s->drop_deny; break;
    case V_NETNS:    s->refused_netns++; return;
    case V_SUPPRESSED: s->events_suppressed++; return;
    case V_REFUSED_DNS: s->refused_dns++; return;
    case V_REFUSED_BLOCK: s->refused_block++; return;
    case V_DNS:      s->dns_redirected++; return;
    case V_PROXIED:  s->proxied++; return;
    case V_REFUSED_PROXY: s->refused_proxy++; return;
    case V_REFUSED_SOURCE: s->refused_source++; return;
    case V_REFUSED_MPTCP: s->refused_mptcp++; return;
    case V_REFUSED_LIMIT: s->refused_limit++; return;
    case V_REFUSED_KILL_CONNECT: s->refused_kill_connect++; return;
    case V_REFUSED_KILL_SENDMSG: s->refused_kill_sendmsg++; return;
    case V_REFUSED_DENY: s->refused_deny++; return;
    default:         s->events_lost++; return;
    }
    c->packets++;
    c->bytes += len;
#endif
}

/* The rate limit: at most p->event_rate events per window and session.
 * Returns whether to send; *held gets how many were held back before. */
static __always_inline int admit(struct nl_policy *p, u64 now, u32 *held)
{
    u64 window = now >> NL_WINDOW_SHIFT;
    u64 n;

    if (!p->event_rate)
        return 0;
    if (p->ev_window != window) {
        p->ev_window = window;  /* a race here only lets a few more through */
        p->ev_sent = 0;
    }
    if (p->ev_sent >= p->event_rate) {
        __sync_fetch_and_add(&p->ev_suppressed, 1);
        return 0;
    }
    __sync_fetch_and_add(&p->ev_sent, 1);
    n = p->ev_suppressed;
    if (n)
        __sync_fetch_and_add(&p->ev_suppressed, -n);
    *held = n > 0xffffffff ? 0xffffffff : n;
    return 1;
}

/* Fill in the task's pid and comm when the task is in the socket's cgroup
 * (sendmsg, connect, socket); in softirq context the current task is an
 * unrelated one and both stay empty. Kernels give these helpers to socket
 * programs since 6.1 (NL_TASK_SOCK) and to egress programs only lately
 * (NL_TASK_EGRESS); the compile tries each level in turn. */
static __always_inline void task_of(struct nl_event *e, int egress)
{
#ifndef NL_TASK_EGRESS
    if (egress)
        return;
#endif
#ifndef NL_TASK_SOCK
    if (!egress)
        return;
#endif
    if (bpf_get_current_cgroup_id() != e->sock_cgroup)
        return;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
}

/* Send E through the ring of network namespace NETNS, or count it lost
 * (and give back to P the count of held-back events it carried). */
static __always_inline void send(u64 netns, struct nl_event *e, struct nl_policy *p)
{
    void *ring = rings.lookup(&netns);

    if (!ring || bpf_ringbuf_output(ring, e, sizeof(*e), 0) != 0) {
        count(p, e->cgroup, V_LOST, 0);
        if (p && e->suppressed)
            __sync_fetch_and_add(&p->ev_suppressed, e->suppressed);
    }
}

/* Drops with no policy entry have no session's limiter: one shared one
 * bounds them all (approximately: its counters are updated without locks). */
BPF_ARRAY(nopolicy_rate, struct nl_policy, 1);

/* Report a blocked attempt of session KEY (policy P, may be NULL). */
static __always_inline void report(struct nl_event *e, struct nl_policy *p, u64 netns,
                                   int egress)
{
    u32 held = 0;
    struct nl_policy *limit = p;
    int zero = 0;

    if (!limit) {
        limit = nopolicy_rate.lookup(&zero);
        if (!limit)
            return;
        limit->event_rate = NL_NOPOLICY_RATE;
    }
    if (!admit(limit, e->time_ns, &held)) {
        if (limit->event_rate)
            count(p, e->cgroup, V_SUPPRESSED, 0);
        return;
    }
    e->suppressed = held;
    task_of(e, egress);
    send(netns, e, p);
}

/* ---------- addresses ---------- */

static __always_inline void mapped4(struct nl_addr *a, u32 v4)
{
    a->w[0] = 0;
    a->w[1] = 0;
    a->w[2] = bpf_htonl(0xffff);
    a->w[3] = v4;
}

static __always_inline int is_mapped(const struct nl_addr *a)
{
    return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

static __always_inline int same(const struct nl_addr *a, const struct nl_addr *b)
{
    return a->w[0] == b->w[0] && a->w[1] == b->w[1] &&
           a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

/* Addresses the kernel delivers locally by loopback: 127.0.0.0/8 and
 * 0.0.0.0/8 (also IPv4-mapped), ::1 and :: */
static __always_inline int is_loopback(const struct nl_addr *a)
{
    if (is_mapped(a)) {
        u32 top = bpf_ntohl(a->w[3]) >> 24;
        return top == 127 || top == 0;
    }
    return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == 0 &&
           (a->w[3] == bpf_htonl(1) || a->w[3] == 0);
}

/* ---------- --allow and --deny rules ---------- */

/* A flow's protocol when extension headers (or a raw socket's own IP
 * header) hide it. */
#define NL_P_UNKNOWN 255

/* Whether rule R holds a flow whose far end is A, of protocol PROTO
 * (IPPROTO_*, or NL_P_UNKNOWN) and far port PORT (host order; 0 when not
 * known: a later fragment, a raw socket). What is not known is held by a
 * DENY rule that asks for it (fail closed), and by no allow rule. */
static __always_inline int rule_holds(const struct nl_rule *r, const struct nl_addr *a,
                                      u8 proto, u16 port, int deny)
{
    if ((a->w[0] & r->net.mask.w[0]) != r->net.addr.w[0] ||
        (a->w[1] & r->net.mask.w[1]) != r->net.addr.w[1] ||
        (a->w[2] & r->net.mask.w[2]) != r->net.addr.w[2] ||
        (a->w[3] & r->net.mask.w[3]) != r->net.addr.w[3])
        return 0;
    if (r->family && (r->family == 4) != is_mapped(a))
        return 0;
    if (!r->proto && !r->port_hi)
        return 1;           /* addresses only */
    if (proto == NL_P_UNKNOWN)
        return deny;
    if (r->proto ? proto != r->proto : (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
        return 0;
    if (!r->port_hi)
        return 1;
    if (!port)
        return deny;
    return port >= r->port_lo && port <= r->port_hi;
}

/* Whether one of the session's --allow rules holds the flow. */
static __always_inline int allowed(const struct nl_policy *p, const struct nl_addr *a,
                                   u8 proto, u16 port)
{
#pragma unroll
    for (int i = 0; i < NL_MAX_ALLOW; i++) {
        if (i >= p->allow_n)
            break;
        if (rule_holds(&p->allow[i], a, proto, port, 0))
            return 1;
    }
    return 0;
}

/* 1 + the index of the first of the session's --deny rules that holds the
 * flow; 0 when none does. */
static __always_inline int denied(const struct nl_policy *p, const struct nl_addr *a,
                                  u8 proto, u16 port)
{
#pragma unroll
    for (int i = 0; i < NL_MAX_DENY; i++) {
        if (i >= p->deny_n)
            break;
        if (rule_holds(&p->deny[i], a, proto, port, 1))
            return i + 1;
    }
    return 0;
}

/* The packet's source (SRC) or destination address. */
static __always_inline int skb_addr(struct __sk_buff *skb, int src, struct nl_addr *a)
{
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        u32 v4 = 0;
        if (bpf_skb_load_bytes(skb, src ? 12 : 16, &v4, 4) != 0)
            return 0;
        mapped4(a, v4);
        return 1;
    }
    if (skb->protocol == bpf_htons(ETH_P_IPV6))
        return bpf_skb_load_bytes(skb, src ? 8 : 24, a, 16) == 0;
    return 0;
}

/* A packet's far end as the rules see it. */
struct nl_flow {
    struct nl_addr a;
    u16 port;       /* host order; 0 when not known */
    u8 proto;       /* IPPROTO_*; NL_P_UNKNOWN behind extension headers */
    u8 pad;
};

/* Whether an IPv6 next-header value is an extension header (or ESP),
 * which hides the protocol that follows. */
static __always_inline int ext_header(u8 h)
{
    return h == 0 || h == 43 || h == 44 || h == 50 || h == 51 || h == 60 ||
           h == 135 || h == 139 || h == 140 || h == 253 || h == 254;
}

/* The far end of a packet: its destination (SRC 0: egress) or its source
 * (SRC 1: ingress), with protocol and port. 0 when it is not IP. */
static __always_inline int skb_flow(struct __sk_buff *skb, int src, struct nl_flow *f)
{
    u8 buf[40] = {};
    u32 l4 = 0;
    u16 port = 0;

    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        u32 v4;
        if (bpf_skb_load_bytes(skb, 0, buf, 20) != 0)
            return 0;
        __builtin_memcpy(&v4, src ? &buf[12] : &buf[16], 4);
        mapped4(&f->a, v4);
        f->proto = buf[9];
        if (!((buf[6] & 0x1f) || buf[7]))
            l4 = (buf[0] & 0xf) * 4;    /* not a later fragment */
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        if (bpf_skb_load_bytes(skb, 0, buf, 40) != 0)
            return 0;
        __builtin_memcpy(&f->a, src ? &buf[8] : &buf[24], 16);
        f->proto = ext_header(buf[6]) ? NL_P_UNKNOWN : buf[6];
        l4 = 40;
    } else {
        return 0;
    }
    if ((f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) && l4 >= 20 && l4 <= 60 &&
        bpf_skb_load_bytes(skb, l4 + (src ? 0 : 2), &port, 2) == 0)
        f->port = bpf_ntohs(port);
    return 1;
}

/* Destination of an egress packet: skb data starts at the network header. */
static __always_inline void packet_dest(struct __sk_buff *skb, struct nl_event *e)
{
    u8 buf[44] = {};
    u32 l4 = 0;

    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        if (bpf_skb_load_bytes(skb, 0, buf, 20) != 0)
            return;
        e->family = 2;      /* AF_INET */
        e->protocol = buf[9];
        __builtin_memcpy(e->daddr, &buf[16], 4);
        if ((buf[6] & 0x1f) || buf[7])
            return;         /* a later fragment: no ports in it */
        l4 = (buf[0] & 0xf) * 4;
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        if (bpf_skb_load_bytes(skb, 0, buf, 40) != 0)
            return;
        e->family = 10;     /* AF_INET6 */
        e->protocol = buf[6];   /* extension headers are not followed */
        __builtin_memcpy(e->daddr, &buf[24], 16);
        l4 = 40;
    } else {
        return;
    }
    if (e->protocol == IPPROTO_TCP || e->protocol == IPPROTO_UDP) {
        u16 port = 0;
        if (l4 <= 60 && bpf_skb_load_bytes(skb, l4 + 2, &port, 2) == 0)
            e->dport = bpf_ntohs(port);
    }
}

BPF_F_TABLE("hash", struct nl_local_key, u32, locals, NL_MAX_LOCALS, BPF_F_NO_PREALLOC);

/* ---------- per-connection counters ---------- */

/* Per socket, so it goes with the socket and needs no key, no lookup and
 * no bound of its own; read by socket diagnostics, never by events. */
BPF_SK_STORAGE(flows, struct nl_flowstat);

/* Count a packet of session KEY's UDP socket (IN: arriving) in its
 * storage. TCP is counted by the kernel already (tcp_info). UDP is told by
 * the packet's own header, read in place: the socket's protocol would cost
 * a full-socket lookup, and the storage helper takes the socket as it is
 * (none for a request or time-wait socket). */
static __always_inline void flow_count(struct __sk_buff *skb, u64 key, int in)
{
#ifndef NL_NO_FLOWS
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct bpf_sock *sk = skb->sk;
    struct nl_flowstat *f;
    u8 *h = data;
    u32 hdr;

    if (!sk || data + 10 > end)
        return;
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        if (h[9] != IPPROTO_UDP)
            return;
        hdr = (h[0] & 0xf) * 4 + 8;
    } else {
        if (h[6] != IPPROTO_UDP)
            return;
        hdr = 48;       /* IPv6 and UDP headers */
    }
    if (skb->len < hdr)
        return;
    f = flows.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!f)
        return;
    if (!f->session) {
        f->session = key;
        f->first_ns = bpf_ktime_get_boot_ns();
    }
    if (in) {
        __sync_fetch_and_add(&f->rx_packets, 1);
        __sync_fetch_and_add(&f->rx_bytes, skb->len - hdr);
    } else {
        __sync_fetch_and_add(&f->tx_packets, 1);
        __sync_fetch_and_add(&f->tx_bytes, skb->len - hdr);
    }
#endif
}

/* A socket call of session KEY: who made it, and since when it is seen. */
static __always_inline void flow_owner(struct bpf_sock *sk, u64 key)
{
#ifndef NL_NO_FLOWS
    struct nl_flowstat *f;

    if (!sk)
        return;
    f = flows.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!f)
        return;
#ifdef NL_TASK_SOCK     /* else the daemon finds the owner by the inode */
    f->pid = bpf_get_current_pid_tgid() >> 32;
#endif
    if (!f->session) {
        f->session = key;
        f->first_ns = bpf_ktime_get_boot_ns();
    }
#endif
}

/* Whether a packet's source is this machine's: a loopback address, or one
 * of the addresses of its namespace (the daemon keeps them in `locals`,
 * before any session starts, and as they come and go). A socket given
 * another source (IP_FREEBIND, IP_TRANSPARENT, ip_nonlocal_bind,
 * IPV6_PKTINFO, a 32-bit setsockopt that no program sees) would have
 * whatever answers it (the kernel's ICMP errors and resets, a local
 * listener, a multicast listener taking the local copy, netleak's own DNS
 * answerer), from outside the session, answer that address by the main
 * table: out of the default route. This program runs before the copy of a
 * multicast or broadcast packet is looped back, so dropping it drops both.
 * An address added while no daemon runs is not in the map yet: its packets
 * are dropped until one does (fail closed). Not IP: no. */
static __always_inline int source_ok(struct __sk_buff *skb, const struct nl_policy *p)
{
    struct nl_local_key k = {};

    if (!skb_addr(skb, 1, &k.addr))
        return 0;
    if (is_loopback(&k.addr))
        return 1;
    k.netns = p->netns;
    return locals.lookup(&k) != 0;
}

/* Whether a loopback packet goes to port 53 (UDP or TCP). */
static __always_inline int loopback_dns(struct __sk_buff *skb)
{
    struct nl_event e = {};

    packet_dest(skb, &e);
    return e.dport == DNS_PORT &&
           (e.protocol == IPPROTO_TCP || e.protocol == IPPROTO_UDP);
}

static __always_inline struct nl_policy *lookup_skb(struct __sk_buff *skb, u64 self, u64 *key)
{
    struct nl_policy *p;

    *key = self;
    p = policy.lookup(key);
    if (p)
        return p;
#pragma unroll
    for (int level = NL_MAX_DEPTH; level >= 1; level--) {
        u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
        if (id == 0 || id == self)
            continue;   /* deeper than the socket's cgroup, or itself */
        *key = id;
        p = policy.lookup(key);
        if (p)
            return p;
    }
    *key = self;
    return 0;
}

static __always_inline struct nl_policy *lookup_task(u64 *key)
{
    u64 self = bpf_get_current_cgroup_id();
    struct nl_policy *p;

    *key = self;
    p = policy.lookup(key);
    if (p)
        return p;
#pragma unroll
    for (int level = NL_MAX_DEPTH; level >= 1; level--) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (id == 0 || id == self)
            continue;
        *key = id;
        p = policy.lookup(key);
        if (p)
            return p;
    }
    *key = self;
    return 0;
}

static __always_inline int drop_rule(struct __sk_buff *skb, struct nl_policy *p, u64 key,
                                     u64 self, enum nl_verdict v, u8 reason, u16 rule)
{
    struct nl_event e = {};
    u64 netns;

    count(p, key, v, skb->len);
    if (p) {
        netns = p->netns;
    } else {
#ifdef NL_SKB_NETNS_COOKIE
        netns = bpf_get_netns_cookie(skb);
#else
        return 0;       /* no session to tell, no namespace to tell it in */
#endif
    }
    e.time_ns = bpf_ktime_get_boot_ns();
    e.cgroup = key;
    e.sock_cgroup = self;
    e.reason = reason;
    e.hook = NL_H_EGRESS;
    e.rule = rule;
    packet_dest(skb, &e);
    report(&e, p, netns, 1);
    return 0;
}

static __always_inline int drop(struct __sk_buff *skb, struct nl_policy *p, u64 key,
                                u64 self, enum nl_verdict v, u8 reason)
{
    return drop_rule(skb, p, key, self, v, reason, 0);
}

/* Egress: key on the packet's *socket* cgroup, not the current task's:
 * ACKs and retransmits are sent from softirq context on behalf of the
 * socket. The deepest cgroup with a policy wins, so a nested child cgroup
 * of a controlled one is covered by its ancestor's entry. */
int nl_egress(struct __sk_buff *skb)
{
    u64 self = bpf_skb_cgroup_id(skb);
    u64 key;
    struct nl_policy *p = lookup_skb(skb, self, &key);
    struct nl_flow f = {};
    int known = 0, d = 0;

    if (!p) {
        /* This program only runs for cgroups we attached to (and their
         * descendants): a missing entry means half set up or half torn
         * down. Fail closed. */
        return drop(skb, p, self, self, V_NOPOLICY, NL_R_NOPOLICY);
    }
    if (!source_ok(skb, p))
        return drop(skb, p, key, self, V_SOURCE, NL_R_SOURCE);
    if (p->allow_n || p->deny_n)
        known = skb_flow(skb, 0, &f);
    /* --deny holds on every device; but in proxy mode what goes to the
     * relay on loopback was judged at connect, by where it was going */
    if (known && p->deny_n &&
        !(skb->ifindex == LOOPBACK_IFINDEX && (p->flags & NL_FLAG_PROXY)))
        d = denied(p, &f.a, f.proto, f.port);
    if (d)
        return drop_rule(skb, p, key, self, V_DENY, NL_R_DENY, d - 1);
    if (skb->ifindex == LOOPBACK_IFINDEX) {
        /* loopback never leaves the machine: local IPC keeps working. But
         * DNS that reached it unrewritten (a socket connected before the
         * session began, a resolver on one of the host's own addresses)
         * would be forwarded by the default route: fail closed. */
        if (loopback_dns(skb))
            return drop(skb, p, key, self, V_REFUSED_DNS, NL_R_DNS);
        count(p, key, V_LOOPBACK, skb->len);
        flow_count(skb, key, 0);
        return 1;
    }
    if (known && p->allow_n && allowed(p, &f.a, f.proto, f.port)) {
        /* an --allow rule: the main table chose the device */
        count(p, key, V_ALLOWED, skb->len);
        flow_count(skb, key, 0);
        return 1;
    }
    if (p->flags & NL_FLAG_BLOCK)
        return drop(skb, p, key, self, V_BLOCK, NL_R_BLOCK);
    if (p->flags & NL_FLAG_PROXY)   /* only the relay sends, from outside */
        return drop(skb, p, key, self, V_PROXY, NL_R_PROXY);
    if (p->flags & NL_FLAG_KILL)
        return drop(skb, p, key, self, V_KILL, NL_R_KILL);
    if (skb->ifindex != p->ifindex)
        return drop(skb, p, key, self, V_DEVICE, NL_R_DEVICE);
    count(p, key, V_PASS, skb->len);
    flow_count(skb, key, 0);
    return 1;
}

/* Socket creation: give the socket the interface's fwmark so policy routing
 * sends it to the interface's table. Runs in the creating task's context,
 * so the task's cgroup (and its ancestors) identify the session. A socket
 * left unmarked is still caught by nl_egress.
 *
 * A socket opened in another network namespace (after unshare -n or setns)
 * is refused: there, neither our rules nor the interface's ifindex mean
 * anything, and interface numbers of two namespaces may coincide. */
int nl_sock_create(struct bpf_sock *sk)
{
    u64 key;
    struct nl_policy *p = lookup_task(&key);

    if (!p)
        return 1;   /* egress decides (and fails closed) */
    if (sk->protocol == IPPROTO_MPTCP) {
        /* Its subflows are the kernel's own sockets, which this program
         * never marks: they would route by the main table and be dropped.
         * Refused at once instead, so programs fall back to TCP. */
        struct nl_event e = {};

        count(p, key, V_REFUSED_MPTCP, 0);
        e.time_ns = bpf_ktime_get_boot_ns();
        e.cgroup = key;
        e.sock_cgroup = bpf_get_current_cgroup_id();
        e.reason = NL_R_MPTCP;
        e.hook = NL_H_SOCK;
        e.family = sk->family;
        e.protocol = 0;     /* 262 does not fit; the reason says it */
        report(&e, p, p->netns, 0);
        return 0;
    }
    if (p->netns && bpf_get_netns_cookie(sk) != p->netns) {
        struct nl_event e = {};

        count(p, key, V_NETNS, 0);
        e.time_ns = bpf_ktime_get_boot_ns();
        e.cgroup = key;
        e.sock_cgroup = bpf_get_current_cgroup_id();
        e.reason = NL_R_NETNS;
        e.hook = NL_H_SOCK;
        e.family = sk->family;
        e.protocol = sk->protocol;
        report(&e, p, p->netns, 0);
        return 0;   /* EPERM to the caller */
    }
    sk->mark = p->mark;
    return 1;
}

/* Ingress: a controlled cgroup's sockets hear only from loopback, their
 * interface and --allow rules (in proxy mode, not from the interface:
 * the relay hears for them), and never from what a --deny rule holds; a
 * server inside is not reachable from the LAN. The device is the one the
 * packet arrived by. */
int nl_ingress(struct __sk_buff *skb)
{
    u64 self = bpf_skb_cgroup_id(skb);
    u64 key;
    struct nl_policy *p = lookup_skb(skb, self, &key);
    u32 dev = skb->ingress_ifindex;
    struct nl_flow f = {};
    int known = 0;

    if (dev == LOOPBACK_IFINDEX) {
        if (p)
            flow_count(skb, key, 1);
        return 1;
    }
    if (p && (p->allow_n || p->deny_n))
        known = skb_flow(skb, 1, &f);
    if (known && p->deny_n && denied(p, &f.a, f.proto, f.port)) {
        count(p, key, V_DENY, skb->len);
        return 0;
    }
    if ((p && !(p->flags & (NL_FLAG_BLOCK | NL_FLAG_PROXY)) && dev == p->ifindex) ||
        (known && p->allow_n && allowed(p, &f.a, f.proto, f.port))) {
        flow_count(skb, key, 1);
        return 1;
    }
    count(p, key, V_INBOUND, skb->len);
    return 0;
}

/* ---------- connect, sendmsg, recvmsg, getpeername ---------- */

static __always_inline void ctx_addr(struct bpf_sock_addr *ctx, int v6, struct nl_addr *a)
{
    if (!v6) {
        mapped4(a, ctx->user_ip4);
    } else {
        a->w[0] = ctx->user_ip6[0];
        a->w[1] = ctx->user_ip6[1];
        a->w[2] = ctx->user_ip6[2];
        a->w[3] = ctx->user_ip6[3];
    }
}

static __always_inline void set_ctx_addr(struct bpf_sock_addr *ctx, int v6,
                                         const struct nl_addr *a, u32 port)
{
    if (!v6) {
        ctx->user_ip4 = a->w[3];
    } else {
        ctx->user_ip6[0] = a->w[0];
        ctx->user_ip6[1] = a->w[1];
        ctx->user_ip6[2] = a->w[2];
        ctx->user_ip6[3] = a->w[3];
    }
    ctx->user_port = port;
}

/* Report an attempt on a socket call (task context). */
static __always_inline void call_event(struct bpf_sock_addr *ctx, struct nl_policy *p, u64 key,
                                       const struct nl_addr *a, u32 port, u8 hook, u8 reason,
                                       int v6, u16 rule)
{
    struct nl_event e = {};

    e.time_ns = bpf_ktime_get_boot_ns();
    e.cgroup = key;
    e.sock_cgroup = bpf_get_current_cgroup_id();
    e.reason = reason;
    e.hook = hook;
    e.family = v6 ? 10 : 2;
    e.protocol = ctx->protocol;
    e.dport = bpf_ntohs((u16)port);
    e.rule = rule;
    if (!v6)
        __builtin_memcpy(e.daddr, &a->w[3], 4);
    else
        __builtin_memcpy(e.daddr, a, 16);
    report(&e, p, p->netns, 0);
}

/* One of the session's resolvers of A's family (IPv4-mapped or not),
 * chosen by the socket so load spreads and a socket keeps its server. */
static __always_inline int dns_pick(const struct nl_policy *p, const struct nl_addr *a,
                                    u64 cookie, struct nl_addr *out)
{
    int v4 = is_mapped(a);
    u32 n = 0, pick;

#pragma unroll
    for (int i = 0; i < NL_MAX_DNS; i++)
        if (i < p->dns_n && is_mapped(&p->dns[i]) == v4)
            n++;
    if (!n)
        return 0;
    pick = cookie % n;
#pragma unroll
    for (int i = 0; i < NL_MAX_DNS; i++) {
        if (i < p->dns_n && is_mapped(&p->dns[i]) == v4) {
            if (pick == 0) {
                *out = p->dns[i];
                return 1;
            }
            pick--;
        }
    }
    return 0;
}

/* Not an LRU map: one workload's churn must never evict another session's
 * entries. Each entry lives as long as its socket (nl_sock_release), and
 * a session holds at most NL_SESSION_REDIRECTS of them at once. */
BPF_F_TABLE("hash", u64, struct nl_redirect, redirect, NL_MAX_REDIRECTS, BPF_F_NO_PREALLOC);
BPF_HASH(redirect_n, u64, u64, NL_MAX_ENTRIES);     /* session -> its live entries */
/* sockets the programs sent to the relay, for the relay's ingress program */
BPF_SK_STORAGE(relayed, struct nl_relayed);

/* One entry fewer for session CGROUP (never below zero, whatever races). */
static __always_inline void uncount(u64 cgroup)
{
    u64 *n = redirect_n.lookup(&cgroup);

    if (n && __sync_fetch_and_add(n, -1) == 0)
        __sync_fetch_and_add(n, 1);
}

/* Record R for the socket COOKIE; 0 when the session is at its limit (or
 * the map full): the call is then refused. A new entry is counted once
 * however many threads file it at once (the one whose insert wins). */
static __always_inline int remember(u64 cookie, struct nl_redirect *r)
{
    struct nl_redirect *old = redirect.lookup(&cookie);
    u64 zero = 0, before = 0, *n;

    if (old) {
        if (old->cgroup == r->cgroup) {
            *old = *r;      /* the same socket again: no new entry */
            return 1;
        }
        before = old->cgroup;   /* a socket another session sent elsewhere */
    }
    n = redirect_n.lookup(&r->cgroup);
    if (!n) {
        redirect_n.insert(&r->cgroup, &zero);
        n = redirect_n.lookup(&r->cgroup);
        if (!n)
            return 0;
    }
    if (__sync_fetch_and_add(n, 1) >= NL_SESSION_REDIRECTS) {
        __sync_fetch_and_add(n, -1);
        return 0;
    }
    if (before) {
        if (redirect.update(&cookie, r) != 0) {
            __sync_fetch_and_add(n, -1);
            return 0;
        }
        uncount(before);
        return 1;
    }
    if (redirect.insert(&cookie, r) != 0) {
        __sync_fetch_and_add(n, -1);   /* filed meanwhile (or the map is full) */
        return redirect.update(&cookie, r) == 0 && redirect.lookup(&cookie) != 0;
    }
    return 1;
}

/* A socket of a controlled cgroup closes: its entry goes, and its
 * session's count with it. */
int nl_sock_release(struct bpf_sock *sk)
{
    u64 cookie = bpf_get_socket_cookie(sk);
    struct nl_redirect *r = redirect.lookup(&cookie);
    u64 cgroup;

    if (!r)
        return 1;
    cgroup = r->cgroup;
    if (redirect.delete(&cookie) == 0)
        uncount(cgroup);
    return 1;
}

/* Refused: the session holds NL_SESSION_REDIRECTS redirected sockets. */
static __always_inline int over_limit(struct bpf_sock_addr *ctx, struct nl_policy *p, u64 key,
                                      const struct nl_addr *a, u32 port, u8 hook, int v6)
{
    count(p, key, V_REFUSED_LIMIT, 0);
    call_event(ctx, p, key, a, port, hook, NL_R_LIMIT, v6, 0);
    return 0;
}

/* SK goes to the relay's PORT (network order): what the relay's ingress
 * program asks of the sockets it hears from. */
static __always_inline void mark_relayed(struct bpf_sock *sk, u32 port)
{
    struct nl_relayed *v;

    if (!sk)
        return;
    v = relayed.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (v)
        v->port = port;
}

/* Proxy mode: TCP, and DNS (port 53, UDP or TCP, to any address), go to
 * the relay on loopback; the rest of what would leave the machine is
 * refused (EPERM, at once). Loopback and --allow rules go on. */
static __always_inline int to_relay(struct bpf_sock_addr *ctx, struct nl_policy *p, u64 key,
                                    const struct nl_addr *a, u32 port, u8 hook, int v6,
                                    u8 proto, u16 hport)
{
    int dns = port == bpf_htons(DNS_PORT);
    int tcp = ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
    struct nl_redirect r = {};
    u64 cookie;

    if (!dns && (is_loopback(a) || (p->allow_n && allowed(p, a, proto, hport))))
        return 1;
    if (!p->relay_port || !p->dns_port ||
        !(tcp || (dns && ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP))) {
        count(p, key, V_REFUSED_PROXY, 0);
        call_event(ctx, p, key, a, port, hook, NL_R_PROXY, v6, 0);
        return 0;
    }
    if (!v6 || is_mapped(a))
        mapped4(&r.server, bpf_htonl(0x7f000001));  /* 127.0.0.1 */
    else
        r.server.w[3] = bpf_htonl(1);               /* ::1 */
    r.orig = *a;
    r.orig_port = port;
    r.server_port = tcp ? p->relay_port : p->dns_port;
    r.cgroup = key;
    r.proxy = tcp;
    cookie = bpf_get_socket_cookie(ctx);
    if (!remember(cookie, &r))
        return over_limit(ctx, p, key, a, port, hook, v6);
    mark_relayed(ctx->sk, r.server_port);
    set_ctx_addr(ctx, v6, &r.server, r.server_port);
    count(p, key, V_PROXIED, 0);
    return 1;
}

/* Whether A is one of this machine's addresses in the socket's network
 * namespace (the daemon keeps them in `locals`): the local routing table
 * sends it by loopback, whatever the kill switch says. */
static __always_inline int local_dest(struct bpf_sock_addr *ctx, const struct nl_addr *a)
{
    struct nl_local_key k = {};

    k.netns = bpf_get_netns_cookie(ctx);
    k.addr = *a;
    return locals.lookup(&k) != 0;
}

/* errno of a call the kill switch refuses: what routing says while the
 * interface's table holds only its unreachable route (uapi/asm-generic) */
#define NL_EHOSTUNREACH 113

/* Where connect() and sendmsg() of a controlled cgroup may go.
 *
 * - Loopback goes on, except DNS (port 53): a local stub resolver would
 *   forward the query by the default route. It is sent to one of the
 *   session's resolvers instead (replies are made to look as if they came
 *   from where the app asked), or refused when it has none of that family.
 * - First, what a --deny rule holds is refused (EPERM), as the app
 *   asked for it (in proxy mode too: before it goes to the relay).
 * - --allow rules go on (routing sends them to the main table).
 * - In no-network mode, everything else is refused (EPERM, at once).
 * - While the kill switch is on, everything else but this machine's own
 *   addresses is refused, whatever device the socket is bound to and
 *   whatever its mark: the call fails at once, before any packet exists
 *   (routing would refuse most of them too, but unseen), and is counted
 *   here, where each call is seen once. The caller gets routing's errno
 *   where the kernel lets a program choose (bpf_set_retval, Linux 5.18:
 *   NL_SET_RETVAL), EPERM elsewhere. Packets of sockets connected before
 *   the switch came on are nl_egress's to drop (and count).
 * Only a call that goes on files a redirect: a refused one holds no entry.
 * All refusals leave by one exit: one event on the stack, not one each. */
static __always_inline int sock_addr(struct bpf_sock_addr *ctx, u8 hook, int v6)
{
    u64 key;
    struct nl_policy *p = lookup_task(&key);
    struct bpf_sock *sk = ctx->sk;
    struct nl_addr a = {};
    struct nl_redirect o = {};
    u32 port = ctx->user_port;
    u64 cookie = 0;
    int dns = 0, d = 0;
    enum nl_verdict v;
    u8 reason;
    /* as the rules see the call: a raw socket has no port (and with
     * IPPROTO_RAW, its own IP header hides the protocol) */
    u8 proto = ctx->protocol > 255 ? NL_P_UNKNOWN : ctx->protocol;
    u16 hport = (ctx->type == SOCK_STREAM || ctx->type == SOCK_DGRAM) ?
                bpf_ntohs((u16)port) : 0;

    if (!p || !sk)
        return 1;
    ctx_addr(ctx, v6, &a);
    if (p->deny_n)
        d = denied(p, &a, proto, hport);
    if (d) {
        v = V_REFUSED_DENY;
        reason = NL_R_DENY;
        goto refuse;
    }
    if (p->flags & NL_FLAG_PROXY) {
        if (!to_relay(ctx, p, key, &a, port, hook, v6, proto, hport))
            return 0;
        flow_owner(sk, key);
        return 1;
    }
    if (is_loopback(&a)) {
        if (port != bpf_htons(DNS_PORT)) {
            flow_owner(sk, key);
            return 1;
        }
        cookie = bpf_get_socket_cookie(ctx);
        if (!dns_pick(p, &a, cookie, &o.server)) {
            v = V_REFUSED_DNS;
            reason = NL_R_DNS;
            goto refuse;
        }
        dns = 1;
        o.orig = a;     /* what the app asked for */
        a = o.server;
    }
    if (!(p->allow_n && allowed(p, &a, proto, hport))) {
        if (p->flags & NL_FLAG_BLOCK) {
            v = V_REFUSED_BLOCK;
            reason = NL_R_BLOCK;
            goto refuse;
        }
        if ((p->flags & NL_FLAG_KILL) && !local_dest(ctx, &a)) {
            v = hook == NL_H_CONNECT ? V_REFUSED_KILL_CONNECT : V_REFUSED_KILL_SENDMSG;
            reason = NL_R_KILL;
            goto refuse;
        }
    }
    if (dns) {
        o.orig_port = port;
        o.server_port = port;
        o.cgroup = key;
        if (!remember(cookie, &o)) {
            a = o.orig;
            v = V_REFUSED_LIMIT;
            reason = NL_R_LIMIT;
            goto refuse;
        }
        set_ctx_addr(ctx, v6, &o.server, port);
        count(p, key, V_DNS, 0);
    }
    flow_owner(sk, key);
    return 1;
refuse:
    count(p, key, v, 0);
    call_event(ctx, p, key, &a, port, hook, reason, v6, d ? d - 1 : 0);
#ifdef NL_SET_RETVAL
    if (reason == NL_R_KILL)
        bpf_set_retval(-NL_EHOSTUNREACH);
#endif
    return 0;
}

/* recvmsg() and getpeername() of a socket sent elsewhere (its DNS to a
 * session's resolver, or to the relay): show the address the app asked for. */
static __always_inline int restore(struct bpf_sock_addr *ctx, int v6)
{
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct nl_redirect *o = redirect.lookup(&cookie);
    struct nl_addr a = {};

    if (!o)
        return 1;
    ctx_addr(ctx, v6, &a);
    if (ctx->user_port == o->server_port && same(&a, &o->server))
        set_ctx_addr(ctx, v6, &o->orig, o->orig_port);
    return 1;
}

/* setsockopt(2) on a session's socket: the options that let it carry a
 * source address that is not this machine's are refused (EPERM) when
 * turned on; see source_ok for why. The program runs for the
 * sockets made in a controlled cgroup, whoever calls. */
int nl_setsockopt(struct bpf_sockopt *ctx)
{
    int level = ctx->level, name = ctx->optname;
    u8 *v = ctx->optval, *end = ctx->optval_end;
    u32 on = 1;     /* unreadable: taken as on (fail closed) */
    struct nl_policy *p;
    u64 key;

    if (!((level == NL_SOL_IP && (name == NL_IP_FREEBIND || name == NL_IP_TRANSPARENT)) ||
          (level == NL_SOL_IPV6 && (name == NL_IPV6_FREEBIND ||
                                    name == NL_IPV6_TRANSPARENT))))
        return 1;
    /* The kernel takes an int, or a single byte when optlen is 1. Longer:
     * refused whatever it says, as the program then sees only a copy of the
     * buffer's first page, which the caller may change before the kernel
     * reads it again. */
    if (ctx->optlen > 4)
        on = 1;
    else if (ctx->optlen == 4 && v + 4 <= end)
        on = *(u32 *)v;
    else if (ctx->optlen >= 1 && v + 1 <= end)
        on = *v;
    if (!on)
        return 1;   /* turning it off is harmless */
    p = lookup_task(&key);
    if (p) {
        struct nl_event e = {};

        count(p, key, V_REFUSED_SOURCE, 0);
        e.time_ns = bpf_ktime_get_boot_ns();
        e.cgroup = key;
        e.sock_cgroup = bpf_get_current_cgroup_id();
        e.reason = NL_R_SOURCE;
        e.hook = NL_H_SETSOCKOPT;
        e.family = level == NL_SOL_IP ? 2 : 10;
        report(&e, p, p->netns, 0);
    }
    return 0;
}

/* one program per hook: the kernel checks context fields per attach type */
int nl_connect4(struct bpf_sock_addr *ctx) { return sock_addr(ctx, NL_H_CONNECT, 0); }
int nl_connect6(struct bpf_sock_addr *ctx) { return sock_addr(ctx, NL_H_CONNECT, 1); }
int nl_sendmsg4(struct bpf_sock_addr *ctx) { return sock_addr(ctx, NL_H_SENDMSG, 0); }
int nl_sendmsg6(struct bpf_sock_addr *ctx) { return sock_addr(ctx, NL_H_SENDMSG, 1); }
int nl_recvmsg4(struct bpf_sock_addr *ctx) { return restore(ctx, 0); }
int nl_recvmsg6(struct bpf_sock_addr *ctx) { return restore(ctx, 1); }
int nl_getpeername4(struct bpf_sock_addr *ctx) { return restore(ctx, 0); }
int nl_getpeername6(struct bpf_sock_addr *ctx) { return restore(ctx, 1); }

/* The relay's own ingress (attached to the cgroup its sockets were made
 * in, never to a session's): a TCP connection attempt or a UDP datagram is
 * taken only from a socket the programs sent to that port of the relay.
 * Any other local program gets nothing, not even a place in a queue (a
 * flood of strangers would otherwise crowd out the sessions' DNS). The
 * sender is looked up as the socket that a reply would reach. */
int nl_relay_in(struct __sk_buff *skb)
{
    struct bpf_sock_tuple t = {};
    struct bpf_sock *sk, *full;
    struct nl_relayed *v;
    u8 ip[40] = {};
    u16 ports[2] = {};
    u32 l4, size;
    u8 proto, flags = 0;
    int ok = 0;

    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        if (bpf_skb_load_bytes(skb, 0, ip, 20) != 0)
            return 0;
        proto = ip[9];
        l4 = (ip[0] & 0xf) * 4;
        if (l4 < 20 || l4 > 60 || bpf_skb_load_bytes(skb, l4, ports, 4) != 0)
            return 0;
        __builtin_memcpy(&t.ipv4.daddr, &ip[12], 4);     /* the sender's end */
        __builtin_memcpy(&t.ipv4.saddr, &ip[16], 4);
        t.ipv4.dport = ports[0];
        t.ipv4.sport = ports[1];
        size = sizeof(t.ipv4);
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        if (bpf_skb_load_bytes(skb, 0, ip, 40) != 0)
            return 0;
        proto = ip[6];      /* extension headers: not taken */
        l4 = 40;
        if (bpf_skb_load_bytes(skb, l4, ports, 4) != 0)
            return 0;
        __builtin_memcpy(t.ipv6.daddr, &ip[8], 16);
        __builtin_memcpy(t.ipv6.saddr, &ip[24], 16);
        t.ipv6.dport = ports[0];
        t.ipv6.sport = ports[1];
        size = sizeof(t.ipv6);
    } else {
        return 0;
    }
    if (proto == IPPROTO_TCP) {
        if (bpf_skb_load_bytes(skb, l4 + 13, &flags, 1) != 0)
            return 0;
        if ((flags & 0x12) != 0x02)
            return 1;       /* not a connection attempt: the connection was taken */
        sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
    } else if (proto == IPPROTO_UDP) {
        sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
    } else {
        return 0;
    }
    if (!sk)
        return 0;
    full = bpf_sk_fullsock(sk);
    if (full) {
        v = relayed.sk_storage_get(full, 0, 0);
        ok = v && v->port == ports[1];
    }
    bpf_sk_release(sk);
    return ok;
}
