// tc egress (direct action) program: tenants' frames may leave only with their lease's source
// MAC, VLAN and IPv4 / ARP sender address. See egress_maps.h.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "egress_maps.h"

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, VFB_MAX_MARKS);
  __type(key, __u32);
  __type(value, struct vfb_egress_lease);
} leases SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, VFB_EGRESS_STAT_COUNT);
  __type(key, __u32);
  __type(value, __u64);
} egress_stats SEC(".maps");

struct vlan_hdr {
  __be16 tci;
  __be16 encapsulated_proto;
};

// RFC 826 ARP for Ethernet/IPv4 (linux/if_arp.h drags in libc headers).
#define VFB_ARPHRD_ETHER 1
struct arp_hdr {
  __be16 ar_hrd;
  __be16 ar_pro;
  __u8 ar_hln;
  __u8 ar_pln;
  __be16 ar_op;
};
struct arp_ipv4 {
  __u8 sha[6];
  __u8 spa[4];
  __u8 tha[6];
  __u8 tpa[4];
};

static __always_inline int verdict(__u32 stat, int action) {
  __u64 *v = bpf_map_lookup_elem(&egress_stats, &stat);
  if (v) __sync_fetch_and_add(v, 1);
  return action;
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b) {
  return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
         a[5] == b[5];
}

SEC("tc")
int vfb_egress_guard(struct __sk_buff *skb) {
  __u32 mark = skb->mark;
  if (mark < VFB_MARK_BASE || mark - VFB_MARK_BASE >= VFB_MAX_MARKS) {
    return verdict(VFB_EGRESS_PASSED_HOST, TC_ACT_OK);
  }
  struct vfb_egress_lease *l = bpf_map_lookup_elem(&leases, &mark);
  if (!l) return verdict(VFB_EGRESS_DROP_NO_LEASE, TC_ACT_SHOT);

  // Headers we read must be in the linear part.
  bpf_skb_pull_data(skb, sizeof(struct ethhdr) + sizeof(struct vlan_hdr) +
                             sizeof(struct arp_hdr) + sizeof(struct arp_ipv4));
  void *data = (void *)(long)skb->data;
  void *end = (void *)(long)skb->data_end;
  struct ethhdr *eth = data;
  if ((void *)(eth + 1) > end) return verdict(VFB_EGRESS_DROP_MALFORMED, TC_ACT_SHOT);
  if (!mac_equal(eth->h_source, l->mac)) return verdict(VFB_EGRESS_DROP_MAC, TC_ACT_SHOT);

  __be16 proto = eth->h_proto;
  void *l3 = eth + 1;
  __u16 vlan = VFB_EGRESS_UNTAGGED;
  if (skb->vlan_present) {
    vlan = skb->vlan_tci & 0x0FFF;
  }
  if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
    struct vlan_hdr *vh = l3;
    if ((void *)(vh + 1) > end) return verdict(VFB_EGRESS_DROP_MALFORMED, TC_ACT_SHOT);
    if (vlan != VFB_EGRESS_UNTAGGED) return verdict(VFB_EGRESS_DROP_VLAN, TC_ACT_SHOT);
    vlan = bpf_ntohs(vh->tci) & 0x0FFF;
    proto = vh->encapsulated_proto;
    l3 = vh + 1;
    if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
      return verdict(VFB_EGRESS_DROP_VLAN, TC_ACT_SHOT);  // no stacked tags
    }
  }
  if (vlan != l->vlan) return verdict(VFB_EGRESS_DROP_VLAN, TC_ACT_SHOT);

  if (proto == bpf_htons(ETH_P_IP)) {
    struct iphdr *ip = l3;
    if ((void *)(ip + 1) > end) return verdict(VFB_EGRESS_DROP_MALFORMED, TC_ACT_SHOT);
    if (l->src_ip != 0 && ip->saddr != l->src_ip) {
      return verdict(VFB_EGRESS_DROP_IP, TC_ACT_SHOT);
    }
    return verdict(VFB_EGRESS_PASSED_TENANT, TC_ACT_OK);
  }
  if (proto == bpf_htons(ETH_P_ARP)) {
    struct arp_hdr *arp = l3;
    struct arp_ipv4 *body = (void *)(arp + 1);
    if ((void *)(body + 1) > end) return verdict(VFB_EGRESS_DROP_MALFORMED, TC_ACT_SHOT);
    if (arp->ar_hrd != bpf_htons(VFB_ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
        arp->ar_hln != 6 || arp->ar_pln != 4 || !mac_equal(body->sha, l->mac)) {
      return verdict(VFB_EGRESS_DROP_ARP, TC_ACT_SHOT);
    }
    __u32 spa;
    __builtin_memcpy(&spa, body->spa, 4);
    if (l->src_ip != 0 && spa != l->src_ip) return verdict(VFB_EGRESS_DROP_ARP, TC_ACT_SHOT);
    return verdict(VFB_EGRESS_PASSED_TENANT, TC_ACT_OK);
  }
  if (l->flags & VFB_EGRESS_ALLOW_OTHER) return verdict(VFB_EGRESS_PASSED_TENANT, TC_ACT_OK);
  return verdict(VFB_EGRESS_DROP_ETHERTYPE, TC_ACT_SHOT);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
