#ifndef CRSNAP_CNETWORK_H
#define CRSNAP_CNETWORK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// Links, addresses and routes over rtnetlink (libnl-route-3), and nftables
// batches (libnftables), for containers with a network of their own.
// Addresses are IPv4 in host byte order. Each call returns 0, or -1 with a
// message in err.

/// Makes the bridge `name` if it is missing, gives it `gateway/prefix` if it
/// lacks that address, and brings it up. Refuses a link of that name that is
/// not a bridge.
int crsnap_net_bridge_ensure(const char *name, uint32_t gateway, int prefix, char *err, size_t errlen);

/// How many links have the bridge `name` as their master (*ports), or -1
/// when there is no such link.
int crsnap_net_bridge_ports(const char *name, int *ports, char *err, size_t errlen);

/// Deletes the link `name` (a veth takes its peer along); 0 when there is none.
int crsnap_net_link_delete(const char *name, char *err, size_t errlen);

/// A veth pair: `host_if` here, enslaved to `bridge` and up; `inner` in the
/// network namespace of `pid`, up, with `address/prefix` and a default route
/// via `gateway`.
int crsnap_net_veth_attach(pid_t pid, const char *host_if, const char *bridge, const char *inner, uint32_t address,
                           int prefix, uint32_t gateway, char *err, size_t errlen);

/// In the network namespace of `pid`: aborts (sock_diag SOCK_DESTROY) every
/// TCP connection whose other end is not a socket of that namespace too,
/// leaving those between its own sockets. *closed gets how many.
int crsnap_net_close_outside_tcp(pid_t pid, int *closed, char *err, size_t errlen);

/// Runs an nftables command batch (one transaction). With `json`, listings
/// come out as JSON. The output (possibly empty) goes to *out, malloc'ed.
int crsnap_nft_run(const char *commands, int json, char **out, char *err, size_t errlen);

#endif
