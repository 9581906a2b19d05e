/* Maps of the broker's XDP steering program (steer.bpf.c), shared by the program (C, BPF
 * target) and its loader (vfdrivers/net/xdp_steering.h, C++). The broker alone holds these
 * maps; a tenant never gets their descriptors.
 *
 * A frame is steered to a target (an AF_XDP socket slot in the XSKMAP "xsks" plus the queue it
 * must have arrived on), looked up in this order:
 *   1. "flows": exact IPv4 5-tuple + VLAN;
 *   2. "flows" with the source wildcarded (src_ip = 0, src_port = 0): a listening tenant;
 *   3. "macs": destination MAC + VLAN.
 * Anything else gets the configured unmatched action (XDP_PASS to the kernel or XDP_DROP).
 * Addresses and ports are in network byte order; VLAN is the VID (0..4095) or VFB_UNTAGGED.
 *
 * Every key carries the device the frame arrived on (xdp_md.ingress_ifindex, set by the
 * kernel): one loaded program can serve many devices (the broker attaches one program to every
 * lease's macvlan: attaching a program the kernel's XDP dispatcher already knows costs ~50 us,
 * a new one a dispatcher update and an RCU grace period under the RTNL lock, 6-17 ms), and a
 * rule for one device never matches a frame that arrived on another. */
#ifndef VFBROKER_VFDRIVERS_NET_XDP_STEER_MAPS_H_
#define VFBROKER_VFDRIVERS_NET_XDP_STEER_MAPS_H_

#include <linux/types.h>

#define VFB_UNTAGGED 0xFFFF
#define VFB_MAX_SLOTS 4096    /* an xdp_nic pool's slots */
#define VFB_MAX_RULES 262144  /* 4096 slots x 64 filters; hash maps not preallocated */

struct vfb_mac_key {
  __u8 mac[6];
  __u16 vlan;
  __u32 ifindex; /* the device the frame arrived on */
};

struct vfb_flow_key {
  __u32 src_ip;
  __u32 dst_ip;
  __u16 src_port;
  __u16 dst_port;
  __u16 vlan;
  __u8 proto; /* IPPROTO_UDP or IPPROTO_TCP */
  __u8 pad;   /* must be 0 */
  __u32 ifindex; /* the device the frame arrived on */
};

struct vfb_target {
  __u32 slot;  /* key in "xsks" */
  __u32 queue; /* rx_queue_index the frame must arrive on (the socket's queue) */
};

struct vfb_config {
  __u32 unmatched_action; /* XDP_PASS or XDP_DROP */
};

enum vfb_stat {
  VFB_STAT_FLOW = 0,        /* steered by an exact 5-tuple */
  VFB_STAT_FLOW_WILDCARD,   /* steered by destination (address, port, protocol) */
  VFB_STAT_MAC,             /* steered by destination MAC + VLAN */
  VFB_STAT_UNMATCHED,       /* no rule: unmatched_action */
  VFB_STAT_WRONG_QUEUE,     /* a rule matched but the frame came in on another queue */
  VFB_STAT_MALFORMED,       /* shorter than its headers say */
  VFB_STAT_COUNT,
};

#endif /* VFBROKER_VFDRIVERS_NET_XDP_STEER_MAPS_H_ */
