/* Maps of the egress guard (egress_guard.bpf.c), shared with its loader
 * (vfdrivers/net/tc_egress_guard.h).
 *
 * AF_XDP transmit does not check what a tenant writes: in copy mode the kernel builds an skb
 * from the TX descriptor and hands it straight to the device, past the device's own qdisc and
 * tc hooks. What it does keep is the socket's SO_MARK (skb->mark), which only CAP_NET_ADMIN
 * can set: the broker marks each tenant's socket, and this tc egress program on the device
 * the frames finally leave by (a macvlan's lower device) checks every marked frame against
 * the lease that mark names: source MAC, VLAN, IPv4 source address, ARP sender. Unmarked
 * traffic (the host's own) is not touched. */
#ifndef VFBROKER_VFDRIVERS_NET_XDP_EGRESS_MAPS_H_
#define VFBROKER_VFDRIVERS_NET_XDP_EGRESS_MAPS_H_

#include <linux/types.h>

/* Marks in [VFB_MARK_BASE, VFB_MARK_BASE + VFB_MAX_MARKS) are tenants'; a marked frame
 * without a lease entry is dropped. */
#define VFB_MARK_BASE 0x7f560000u
#define VFB_MAX_MARKS 65536u
#define VFB_EGRESS_UNTAGGED 0xFFFF

#define VFB_EGRESS_ALLOW_OTHER 1u /* EtherTypes other than IPv4 and ARP (e.g. IPv6) */

struct vfb_egress_lease {
  __u8 mac[6];   /* the only source MAC */
  __u16 vlan;    /* the only VID, or VFB_EGRESS_UNTAGGED: no tag at all */
  __u32 src_ip;  /* network order; 0: any IPv4 source */
  __u32 flags;   /* VFB_EGRESS_ALLOW_* */
};

enum vfb_egress_stat {
  VFB_EGRESS_PASSED_HOST = 0, /* unmarked */
  VFB_EGRESS_PASSED_TENANT,
  VFB_EGRESS_DROP_NO_LEASE,
  VFB_EGRESS_DROP_MAC,
  VFB_EGRESS_DROP_VLAN,
  VFB_EGRESS_DROP_IP,
  VFB_EGRESS_DROP_ARP,
  VFB_EGRESS_DROP_ETHERTYPE,
  VFB_EGRESS_DROP_MALFORMED,
  VFB_EGRESS_STAT_COUNT,
};

#endif /* VFBROKER_VFDRIVERS_NET_XDP_EGRESS_MAPS_H_ */
