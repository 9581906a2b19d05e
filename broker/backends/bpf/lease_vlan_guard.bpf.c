// tc ingress (direct action) program on an xdp_nic pool's interface: a frame addressed to a
// lease's MAC passes only if it carries that lease's VLAN (or none, for an untagged lease).
//
// Why: the kernel moves a received frame's 802.1Q tag out of the data (skb_vlan_untag, in
// __netif_receive_skb_core) before the macvlan sees it, and generic XDP on the macvlan cannot
// see the tag, so without this an untagged lease would receive other VLANs' frames to its MAC
// with the tag removed. tc ingress runs on the lower device after the untag and before its
// rx_handler (macvlan, VLAN devices), with the tag in skb->vlan_tci. Frames to other MACs are
// not touched.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "lease_vlan_maps.h"

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, VFB_LVG_MAX_LEASES);
  __type(key, struct vfb_lvg_key);
  __type(value, __u32);
} lease_vlans SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, VFB_LVG_STAT_COUNT);
  __type(key, __u32);
  __type(value, __u64);
} lvg_stats SEC(".maps");

static __always_inline int verdict(__u32 stat, int action) {
  __u64 *v = bpf_map_lookup_elem(&lvg_stats, &stat);
  if (v) __sync_fetch_and_add(v, 1);
  return action;
}

SEC("tc")
int vfb_lease_vlan_guard(struct __sk_buff *skb) {
  void *data = (void *)(long)skb->data;
  void *data_end = (void *)(long)skb->data_end;
  struct ethhdr *eth = data;
  if ((void *)(eth + 1) > data_end) return TC_ACT_OK;  // not ours to judge
  struct vfb_lvg_key key = {};
  __builtin_memcpy(key.mac, eth->h_dest, 6);
  __u32 *want = bpf_map_lookup_elem(&lease_vlans, &key);
  if (!want) return TC_ACT_OK;
  __u32 vid = VFB_LVG_UNTAGGED;
  if (skb->vlan_present) {
    vid = skb->vlan_tci & 0x0FFF;
    // A second tag still in the data: no lease is double-tagged.
    if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD)) {
      return verdict(VFB_LVG_DROP_STACKED, TC_ACT_SHOT);
    }
  } else if (eth->h_proto == bpf_htons(ETH_P_8021Q) || eth->h_proto == bpf_htons(ETH_P_8021AD)) {
    // Still in the data (the kernel did not untag it): judge it the same way.
    __u16 *tci = (void *)(eth + 1);
    if ((void *)(tci + 1) > data_end) return verdict(VFB_LVG_DROP_STACKED, TC_ACT_SHOT);
    vid = bpf_ntohs(*tci) & 0x0FFF;
  }
  // VID 0 is a priority tag (802.1p), not a VLAN: 802.1Q counts such a frame as untagged, and
  // so does the kernel (no VLAN device takes VID 0; the frame goes on to the interface's
  // macvlans with the tag cleared).
  if (vid == 0) vid = VFB_LVG_UNTAGGED;
  if (vid != *want) return verdict(VFB_LVG_DROP_VLAN, TC_ACT_SHOT);
  return verdict(VFB_LVG_PASSED, TC_ACT_OK);
}

char _license[] SEC("license") = "GPL";
