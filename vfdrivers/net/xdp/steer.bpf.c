// The broker's XDP steering program: classifies each frame by 5-tuple, destination
// (address, port, protocol) or destination MAC, each with its VLAN, and redirects it to the
// AF_XDP socket of the tenant that owns the rule (see steer_maps.h for the order and maps).
// The broker updates the maps as leases and flow filters come and go; tenants never see them.
//
// Every header access is bounds-checked against data_end (the verifier insists); a frame too
// short for the headers it announces is counted malformed and gets the unmatched action.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "steer_maps.h"

struct {
  __uint(type, BPF_MAP_TYPE_XSKMAP);
  __uint(max_entries, VFB_MAX_SLOTS);
  __type(key, __u32);
  __type(value, __u32);
} xsks SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, VFB_MAX_RULES);
  __uint(map_flags, BPF_F_NO_PREALLOC);  /* memory as rules come, not 262144 up front */
  __type(key, struct vfb_mac_key);
  __type(value, struct vfb_target);
} macs SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, VFB_MAX_RULES);
  __uint(map_flags, BPF_F_NO_PREALLOC);  /* memory as rules come, not 262144 up front */
  __type(key, struct vfb_flow_key);
  __type(value, struct vfb_target);
} flows SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct vfb_config);
} config SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, VFB_STAT_COUNT);
  __type(key, __u32);
  __type(value, __u64);
} stats SEC(".maps");

struct vlan_hdr {
  __be16 tci;
  __be16 encapsulated_proto;
};

static __always_inline void count(__u32 which) {
  __u64 *v = bpf_map_lookup_elem(&stats, &which);
  if (v) __sync_fetch_and_add(v, 1);
}

static __always_inline int unmatched(void) {
  __u32 zero = 0;
  struct vfb_config *c = bpf_map_lookup_elem(&config, &zero);
  count(VFB_STAT_UNMATCHED);
  return (c && c->unmatched_action == XDP_DROP) ? XDP_DROP : XDP_PASS;
}

static __always_inline int steer(struct xdp_md *ctx, struct vfb_target *t, __u32 stat) {
  if (t->queue != ctx->rx_queue_index) {
    // An XSK only takes frames from the queue it is bound to; never hand this frame to the
    // kernel either, it belongs to a tenant.
    count(VFB_STAT_WRONG_QUEUE);
    return XDP_DROP;
  }
  count(stat);
  // A slot without a socket (a lease being torn down) drops rather than leaking the frame.
  return bpf_redirect_map(&xsks, t->slot, XDP_DROP);
}

SEC("xdp")
int vfb_steer(struct xdp_md *ctx) {
  void *data = (void *)(long)ctx->data;
  void *end = (void *)(long)ctx->data_end;
  struct ethhdr *eth = data;
  if ((void *)(eth + 1) > end) {
    count(VFB_STAT_MALFORMED);
    return unmatched();
  }
  __be16 proto = eth->h_proto;
  __u16 vlan = VFB_UNTAGGED;
  void *l3 = eth + 1;
  __u32 l3_offset = sizeof(*eth);  // kept as a number: see the port read below
  if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
    struct vlan_hdr *vh = l3;
    if ((void *)(vh + 1) > end) {
      count(VFB_STAT_MALFORMED);
      return unmatched();
    }
    vlan = bpf_ntohs(vh->tci) & 0x0FFF;
    proto = vh->encapsulated_proto;
    l3 = vh + 1;
    l3_offset += sizeof(*vh);
  }

  if (proto == bpf_htons(ETH_P_IP)) {
    struct iphdr *ip = l3;
    if ((void *)(ip + 1) > end) {
      count(VFB_STAT_MALFORMED);
      return unmatched();
    }
    __u32 ihl = ip->ihl * 4;
    // Ports only in the first fragment of an unfragmented datagram; fragments fall back to MAC.
    if (ihl >= sizeof(*ip) && (ip->frag_off & bpf_htons(0x3FFF)) == 0 &&
        (ip->protocol == IPPROTO_UDP || ip->protocol == IPPROTO_TCP)) {
      // The ports sit after a variable-length IPv4 header. Adding a variable to a packet
      // pointer needs CAP_PERFMON (the verifier's Spectre v1 rule); reading at a variable
      // offset with bpf_xdp_load_bytes (5.18+) needs only CAP_BPF + CAP_NET_ADMIN.
      __be16 ports[2];
      if (bpf_xdp_load_bytes(ctx, l3_offset + ihl, ports, sizeof(ports)) != 0) {
        count(VFB_STAT_MALFORMED);
        return unmatched();
      }
      struct vfb_flow_key k = {};
      k.src_ip = ip->saddr;
      k.dst_ip = ip->daddr;
      k.src_port = ports[0];
      k.dst_port = ports[1];
      k.vlan = vlan;
      k.proto = ip->protocol;
      k.ifindex = ctx->ingress_ifindex;
      struct vfb_target *t = bpf_map_lookup_elem(&flows, &k);
      if (t) return steer(ctx, t, VFB_STAT_FLOW);
      k.src_ip = 0;
      k.src_port = 0;
      t = bpf_map_lookup_elem(&flows, &k);
      if (t) return steer(ctx, t, VFB_STAT_FLOW_WILDCARD);
    }
  }

  struct vfb_mac_key mk = {};
  __builtin_memcpy(mk.mac, eth->h_dest, 6);
  mk.vlan = vlan;
  mk.ifindex = ctx->ingress_ifindex;
  struct vfb_target *t = bpf_map_lookup_elem(&macs, &mk);
  if (t) return steer(ctx, t, VFB_STAT_MAC);
  return unmatched();
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
