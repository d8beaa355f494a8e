/* netleak: mark every socket of a controlled cgroup and drop every packet of
 * it that would leave by anything but its interface or loopback.
 *
 * Compiled by BCC (netleak_hook/kernel/programs.py) with -I for this folder
 * and -D for the sizes, then pinned; later runs only open the pins.
 */
#include <uapi/linux/bpf.h>
#include "netleak.h"

BPF_HASH(policy, u64, struct nl_policy, NL_MAX_ENTRIES);
BPF_PERCPU_HASH(stats, u64, struct nl_stats, NL_MAX_ENTRIES);

enum nl_verdict { V_PASS, V_LOOPBACK, V_KILL, V_DEVICE, V_NOPOLICY, V_NETNS };

static __always_inline void count(u64 cgid, enum nl_verdict v, u32 len)
{
    struct nl_stats zero = {};
    struct nl_stats *s = stats.lookup(&cgid);
    struct nl_count *c;

    if (!s) {
        stats.insert(&cgid, &zero);
        s = stats.lookup(&cgid);
        if (!s)
            return;     /* map full: counting is best effort, the verdict is not */
    }
    /* per-CPU values: plain increments are race free */
    switch (v) {
    case V_PASS:     c = &s->passed; break;
    case V_LOOPBACK: c = &s->loopback; break;
    case V_KILL:     c = &s->drop_kill; break;
    case V_DEVICE:   c = &s->drop_device; break;
    case V_NOPOLICY: c = &s->drop_nopolicy; break;
    default:         s->refused_netns++; return;
    }
    c->packets++;
    c->bytes += len;
}

/* Egress: key on the packet's *socket* cgroup, not the current task's:
 * ACKs and retransmits are sent from softirq context on behalf of the
 * socket. The deepest cgroup with a policy wins, so a nested child cgroup
 * of a controlled one is covered by its ancestor's entry. */
int nl_egress(struct __sk_buff *skb)
{
    u64 self = bpf_skb_cgroup_id(skb);
    u64 key = self;
    struct nl_policy *p = policy.lookup(&key);

    if (!p) {
#pragma unroll
        for (int level = NL_MAX_DEPTH; level >= 1; level--) {
            u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
            if (id == 0 || id == self)
                continue;   /* deeper than the socket's cgroup, or itself */
            key = id;
            p = policy.lookup(&key);
            if (p)
                break;
        }
    }
    if (!p) {
        /* This program only runs for cgroups we attached to (and their
         * descendants): a missing entry means half set up or half torn
         * down. Fail closed. */
        count(self, V_NOPOLICY, skb->len);
        return 0;
    }
    if (skb->ifindex == LOOPBACK_IFINDEX) {
        /* loopback never leaves the machine: local IPC keeps working */
        count(key, V_LOOPBACK, skb->len);
        return 1;
    }
    if (p->flags & NL_FLAG_KILL) {
        count(key, V_KILL, skb->len);
        return 0;
    }
    if (skb->ifindex != p->ifindex) {
        count(key, V_DEVICE, skb->len);
        return 0;
    }
    count(key, V_PASS, skb->len);
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
    u64 key = bpf_get_current_cgroup_id();
    u64 self = key;
    struct nl_policy *p = policy.lookup(&key);

    if (!p) {
#pragma unroll
        for (int level = NL_MAX_DEPTH; level >= 1; level--) {
            u64 id = bpf_get_current_ancestor_cgroup_id(level);
            if (id == 0 || id == self)
                continue;
            key = id;
            p = policy.lookup(&key);
            if (p)
                break;
        }
    }
    if (!p)
        return 1;   /* egress decides (and fails closed) */
    if (p->netns && bpf_get_netns_cookie(sk) != p->netns) {
        count(key, V_NETNS, 0);
        return 0;   /* EPERM to the caller */
    }
    sk->mark = p->mark;
    return 1;
}
