#define _GNU_SOURCE
#include "CNetwork.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/inet_diag.h>
#include <linux/sock_diag.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/bridge.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/route.h>
#include <nftables/libnftables.h>

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int nl_fail(char *err, size_t errlen, const char *what, const char *name, int code) {
    return fail(err, errlen, "%s %s: %s", what, name, nl_geterror(code));
}

static struct nl_sock *route_socket(char *err, size_t errlen) {
    struct nl_sock *sk = nl_socket_alloc();
    if (!sk) {
        fail(err, errlen, "netlink: out of memory");
        return NULL;
    }
    int r = nl_connect(sk, NETLINK_ROUTE);
    if (r < 0) {
        nl_socket_free(sk);
        nl_fail(err, errlen, "netlink", "connect", r);
        return NULL;
    }
    return sk;
}

/// Runs `make` in the network namespace of `pid` and returns what it made:
/// a socket keeps the namespace it was made in, so only this thread visits
/// it, for that call only.
static void *made_in_netns(pid_t pid, void *(*make)(void *), void *arg, char *err, size_t errlen) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/net", (int)pid);
    int target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0) {
        fail(err, errlen, "open %s: %s", path, strerror(errno));
        return NULL;
    }
    int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0) {
        fail(err, errlen, "open /proc/thread-self/ns/net: %s", strerror(errno));
        close(target);
        return NULL;
    }
    void *made = NULL;
    if (setns(target, CLONE_NEWNET) != 0) {
        fail(err, errlen, "setns %s: %s", path, strerror(errno));
    } else {
        made = make(arg);
        if (setns(home, CLONE_NEWNET) != 0) abort();  // never run on in the container's network
    }
    close(target);
    close(home);
    return made;
}

struct errbuf {
    char *err;
    size_t errlen;
};

static void *make_route_socket(void *arg) {
    struct errbuf *e = arg;
    return route_socket(e->err, e->errlen);
}

static struct nl_sock *route_socket_in(pid_t pid, char *err, size_t errlen) {
    struct errbuf e = {err, errlen};
    return made_in_netns(pid, make_route_socket, &e, err, errlen);
}

static int link_up(struct nl_sock *sk, struct rtnl_link *link, char *err, size_t errlen) {
    struct rtnl_link *change = rtnl_link_alloc();
    if (!change) return fail(err, errlen, "netlink: out of memory");
    rtnl_link_set_flags(change, IFF_UP);
    int r = rtnl_link_change(sk, link, change, 0);
    rtnl_link_put(change);
    return r < 0 ? nl_fail(err, errlen, "bringing up", rtnl_link_get_name(link), r) : 0;
}

static struct nl_addr *ipv4(uint32_t address, int prefix) {
    uint32_t be = htonl(address);
    struct nl_addr *a = nl_addr_build(AF_INET, &be, sizeof be);
    if (a && prefix >= 0) nl_addr_set_prefixlen(a, prefix);
    return a;
}

/// Adds address/prefix to the link; an address it already has is fine.
static int add_address(struct nl_sock *sk, int ifindex, const char *name, uint32_t address, int prefix,
                       char *err, size_t errlen) {
    struct rtnl_addr *a = rtnl_addr_alloc();
    struct nl_addr *local = ipv4(address, prefix);
    if (!a || !local) {
        if (a) rtnl_addr_put(a);
        if (local) nl_addr_put(local);
        return fail(err, errlen, "netlink: out of memory");
    }
    rtnl_addr_set_ifindex(a, ifindex);
    rtnl_addr_set_family(a, AF_INET);
    int r = rtnl_addr_set_local(a, local);
    if (r == 0) r = rtnl_addr_add(sk, a, 0);
    nl_addr_put(local);
    rtnl_addr_put(a);
    if (r < 0 && r != -NLE_EXIST) return nl_fail(err, errlen, "adding an address to", name, r);
    return 0;
}

int crsnap_net_bridge_ensure(const char *name, uint32_t gateway, int prefix, char *err, size_t errlen) {
    struct nl_sock *sk = route_socket(err, errlen);
    if (!sk) return -1;
    struct rtnl_link *link = NULL;
    int ret = -1;
    int r = rtnl_link_get_kernel(sk, 0, name, &link);
    if (r == -NLE_OBJ_NOTFOUND || r == -NLE_NODEV) {
        r = rtnl_link_bridge_add(sk, name);
        if (r < 0 && r != -NLE_EXIST) {
            nl_fail(err, errlen, "creating bridge", name, r);
            goto out;
        }
        r = rtnl_link_get_kernel(sk, 0, name, &link);
    }
    if (r < 0) {
        nl_fail(err, errlen, "reading link", name, r);
        goto out;
    }
    const char *type = rtnl_link_get_type(link);
    if (!type || strcmp(type, "bridge") != 0) {
        fail(err, errlen, "link %s exists and is not a bridge (%s)", name, type ? type : "no type");
        goto out;
    }
    if (add_address(sk, rtnl_link_get_ifindex(link), name, gateway, prefix, err, errlen) != 0) goto out;
    if (link_up(sk, link, err, errlen) != 0) goto out;
    ret = 0;
out:
    if (link) rtnl_link_put(link);
    nl_socket_free(sk);
    return ret;
}

int crsnap_net_bridge_ports(const char *name, int *ports, char *err, size_t errlen) {
    *ports = -1;
    struct nl_sock *sk = route_socket(err, errlen);
    if (!sk) return -1;
    struct rtnl_link *br = NULL;
    struct nl_cache *cache = NULL;
    int ret = 0;
    int r = rtnl_link_get_kernel(sk, 0, name, &br);
    if (r == -NLE_OBJ_NOTFOUND || r == -NLE_NODEV) goto out;
    if (r < 0) {
        ret = nl_fail(err, errlen, "reading link", name, r);
        goto out;
    }
    if ((r = rtnl_link_alloc_cache(sk, AF_UNSPEC, &cache)) < 0) {
        ret = nl_fail(err, errlen, "listing", "links", r);
        goto out;
    }
    int index = rtnl_link_get_ifindex(br), n = 0;
    for (struct nl_object *o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
        if (rtnl_link_get_master((struct rtnl_link *)o) == index) n++;
    }
    *ports = n;
out:
    if (cache) nl_cache_free(cache);
    if (br) rtnl_link_put(br);
    nl_socket_free(sk);
    return ret;
}

int crsnap_net_link_delete(const char *name, char *err, size_t errlen) {
    struct nl_sock *sk = route_socket(err, errlen);
    if (!sk) return -1;
    struct rtnl_link *link = rtnl_link_alloc();
    if (!link) {
        nl_socket_free(sk);
        return fail(err, errlen, "netlink: out of memory");
    }
    rtnl_link_set_name(link, name);
    int r = rtnl_link_delete(sk, link);
    rtnl_link_put(link);
    nl_socket_free(sk);
    if (r < 0 && r != -NLE_OBJ_NOTFOUND && r != -NLE_NODEV) return nl_fail(err, errlen, "deleting link", name, r);
    return 0;
}

/// Inside the container: `inner` up, its address, the default route.
static int configure_inner(struct nl_sock *sk, const char *inner, uint32_t address, int prefix, uint32_t gateway,
                           char *err, size_t errlen) {
    struct rtnl_link *link = NULL;
    int r = rtnl_link_get_kernel(sk, 0, inner, &link);
    if (r < 0) return nl_fail(err, errlen, "reading link", inner, r);
    int ifindex = rtnl_link_get_ifindex(link);
    r = link_up(sk, link, err, errlen);
    rtnl_link_put(link);
    if (r != 0) return -1;
    if (add_address(sk, ifindex, inner, address, prefix, err, errlen) != 0) return -1;

    struct rtnl_route *route = rtnl_route_alloc();
    struct rtnl_nexthop *hop = rtnl_route_nh_alloc();
    struct nl_addr *any = ipv4(0, 0), *via = ipv4(gateway, -1);
    if (!route || !hop || !any || !via) {
        if (route) rtnl_route_put(route);
        if (hop) rtnl_route_nh_free(hop);
        if (any) nl_addr_put(any);
        if (via) nl_addr_put(via);
        return fail(err, errlen, "netlink: out of memory");
    }
    rtnl_route_set_family(route, AF_INET);
    rtnl_route_set_table(route, RT_TABLE_MAIN);
    rtnl_route_set_scope(route, RT_SCOPE_UNIVERSE);
    rtnl_route_set_protocol(route, RTPROT_STATIC);
    rtnl_route_set_dst(route, any);
    rtnl_route_nh_set_ifindex(hop, ifindex);
    rtnl_route_nh_set_gateway(hop, via);
    rtnl_route_add_nexthop(route, hop);  // the route owns the hop now
    r = rtnl_route_add(sk, route, NLM_F_CREATE);
    nl_addr_put(any);
    nl_addr_put(via);
    rtnl_route_put(route);
    if (r < 0 && r != -NLE_EXIST) return nl_fail(err, errlen, "adding the default route on", inner, r);
    return 0;
}

int crsnap_net_veth_attach(pid_t pid, const char *host_if, const char *bridge, const char *inner, uint32_t address,
                           int prefix, uint32_t gateway, char *err, size_t errlen) {
    struct nl_sock *sk = route_socket(err, errlen);
    if (!sk) return -1;
    struct nl_sock *inside = NULL;
    struct rtnl_link *host = NULL, *br = NULL;
    int ret = -1;
    int r = rtnl_link_veth_add(sk, host_if, inner, pid);
    if (r < 0) {
        nl_fail(err, errlen, "creating veth pair", host_if, r);
        goto out;
    }
    if ((r = rtnl_link_get_kernel(sk, 0, bridge, &br)) < 0) {
        nl_fail(err, errlen, "reading link", bridge, r);
        goto out;
    }
    if ((r = rtnl_link_get_kernel(sk, 0, host_if, &host)) < 0) {
        nl_fail(err, errlen, "reading link", host_if, r);
        goto out;
    }
    if ((r = rtnl_link_enslave_ifindex(sk, rtnl_link_get_ifindex(br), rtnl_link_get_ifindex(host))) < 0) {
        nl_fail(err, errlen, "adding to the bridge", host_if, r);
        goto out;
    }
    if (link_up(sk, host, err, errlen) != 0) goto out;
    inside = route_socket_in(pid, err, errlen);
    if (!inside) goto out;
    if (configure_inner(inside, inner, address, prefix, gateway, err, errlen) != 0) goto out;
    ret = 0;
out:
    if (ret != 0) {
        // Deleting our end takes the container's along.
        char ignored[8];
        if (!host || rtnl_link_delete(sk, host) < 0) (void)crsnap_net_link_delete(host_if, ignored, sizeof ignored);
    }
    if (host) rtnl_link_put(host);
    if (br) rtnl_link_put(br);
    if (inside) nl_socket_free(inside);
    nl_socket_free(sk);
    return ret;
}

// MARK: TCP connections to peers outside a namespace

struct tcp_end {
    struct inet_diag_sockid id;
    uint8_t family;
    uint32_t src[4], dst[4];  // IPv4 as v4-mapped IPv6, so both families compare
};

static void mapped(uint8_t family, const __be32 in[4], uint32_t out[4]) {
    if (family == AF_INET) {
        out[0] = 0;
        out[1] = 0;
        out[2] = htonl(0xffff);
        out[3] = in[0];
    } else {
        memcpy(out, in, 16);
    }
}

static void *make_diag_socket(void *arg) {
    (void)arg;
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    return fd < 0 ? NULL : (void *)(intptr_t)(fd + 1);
}

// Every state a connection has but listening, closed and time-wait (not a
// full socket: nothing to abort).
#define CONNECTED_STATES ((1u << TCP_ESTABLISHED) | (1u << TCP_SYN_SENT) | (1u << TCP_SYN_RECV) | \
                          (1u << TCP_FIN_WAIT1) | (1u << TCP_FIN_WAIT2) | (1u << TCP_CLOSE_WAIT) | \
                          (1u << TCP_LAST_ACK) | (1u << TCP_CLOSING))

/// Sends one inet_diag request for TCP sockets (`id`: one socket, else all).
static int diag_send(int fd, uint16_t type, uint16_t flags, uint8_t family, uint32_t states,
                     const struct inet_diag_sockid *id) {
    struct {
        struct nlmsghdr h;
        struct inet_diag_req_v2 r;
    } req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = type;
    req.h.nlmsg_flags = NLM_F_REQUEST | flags;
    req.r.sdiag_family = family;
    req.r.sdiag_protocol = IPPROTO_TCP;
    req.r.idiag_states = states;
    if (id) req.r.id = *id;
    return send(fd, &req, sizeof req, 0) == (ssize_t)sizeof req ? 0 : -1;
}

static int diag_dump(int fd, uint8_t family, struct tcp_end **ends, size_t *n, size_t *cap, char *err, size_t errlen) {
    if (diag_send(fd, SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, family, CONNECTED_STATES, NULL) != 0)
        return fail(err, errlen, "sock_diag: %s", strerror(errno));
    char buf[32768] __attribute__((aligned(8)));
    for (;;) {
        ssize_t len = recv(fd, buf, sizeof buf, 0);
        if (len < 0) {
            if (errno == EINTR) continue;
            return fail(err, errlen, "sock_diag: %s", strerror(errno));
        }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)len); h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_type == NLMSG_DONE) return 0;
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *e = NLMSG_DATA(h);
                return fail(err, errlen, "sock_diag: %s", strerror(-e->error));
            }
            struct inet_diag_msg *m = NLMSG_DATA(h);
            if (*n == *cap) {
                size_t c = *cap ? *cap * 2 : 64;
                struct tcp_end *grown = realloc(*ends, c * sizeof **ends);
                if (!grown) return fail(err, errlen, "out of memory");
                *ends = grown;
                *cap = c;
            }
            struct tcp_end *t = &(*ends)[(*n)++];
            t->id = m->id;
            t->family = m->idiag_family;
            mapped(t->family, m->id.idiag_src, t->src);
            mapped(t->family, m->id.idiag_dst, t->dst);
        }
    }
}

static int diag_destroy(int fd, const struct tcp_end *t, char *err, size_t errlen) {
    if (diag_send(fd, SOCK_DESTROY, NLM_F_ACK, t->family, ~0u, &t->id) != 0)
        return fail(err, errlen, "SOCK_DESTROY: %s", strerror(errno));
    char buf[1024];
    ssize_t len;
    do {
        len = recv(fd, buf, sizeof buf, 0);
    } while (len < 0 && errno == EINTR);
    if (len < 0) return fail(err, errlen, "SOCK_DESTROY: %s", strerror(errno));
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    if (NLMSG_OK(h, (size_t)len) && h->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *e = NLMSG_DATA(h);
        // Gone meanwhile is as good as closed.
        if (e->error != 0 && e->error != -ENOENT) return fail(err, errlen, "SOCK_DESTROY: %s", strerror(-e->error));
    }
    return 0;
}

int crsnap_net_close_outside_tcp(pid_t pid, int *closed, char *err, size_t errlen) {
    *closed = 0;
    void *made = made_in_netns(pid, make_diag_socket, NULL, err, errlen);
    if (!made) return err[0] ? -1 : fail(err, errlen, "sock_diag socket: %s", strerror(errno));
    int fd = (int)(intptr_t)made - 1;
    struct tcp_end *ends = NULL;
    size_t n = 0, cap = 0;
    int ret = diag_dump(fd, AF_INET, &ends, &n, &cap, err, errlen);
    if (ret == 0) ret = diag_dump(fd, AF_INET6, &ends, &n, &cap, err, errlen);
    for (size_t i = 0; ret == 0 && i < n; i++) {
        const struct tcp_end *a = &ends[i];
        int inside = 0;
        for (size_t j = 0; j < n && !inside; j++) {
            const struct tcp_end *b = &ends[j];
            inside = j != i && a->id.idiag_sport == b->id.idiag_dport && a->id.idiag_dport == b->id.idiag_sport &&
                     memcmp(a->src, b->dst, 16) == 0 && memcmp(a->dst, b->src, 16) == 0;
        }
        if (inside) continue;
        ret = diag_destroy(fd, a, err, errlen);
        if (ret == 0) (*closed)++;
    }
    free(ends);
    close(fd);
    return ret;
}

int crsnap_nft_run(const char *commands, int json, char **out, char *err, size_t errlen) {
    *out = NULL;
    struct nft_ctx *ctx = nft_ctx_new(NFT_CTX_DEFAULT);
    if (!ctx) return fail(err, errlen, "nftables: cannot create a context");
    if (json) nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON);
    nft_ctx_buffer_output(ctx);
    nft_ctx_buffer_error(ctx);
    int r = nft_run_cmd_from_buffer(ctx, commands);
    int ret = 0;
    if (r != 0) {
        const char *e = nft_ctx_get_error_buffer(ctx);
        // the first line names the fault; the rest repeats the command with carets
        size_t n = e ? strcspn(e, "\n") : 0;
        ret = fail(err, errlen, "nftables: %.*s", (int)n, n ? e : "the batch failed");
    } else {
        const char *o = nft_ctx_get_output_buffer(ctx);
        *out = strdup(o ? o : "");
    }
    nft_ctx_free(ctx);
    return ret;
}
