/* Maps of the xdp_nic pool's ingress VLAN guard (lease_vlan_guard.bpf.c), shared with its
 * loader (broker/backends/lease_vlan_guard.h). */
#ifndef VFBROKER_BROKER_BACKENDS_BPF_LEASE_VLAN_MAPS_H_
#define VFBROKER_BROKER_BACKENDS_BPF_LEASE_VLAN_MAPS_H_

#include <linux/types.h>

#define VFB_LVG_MAX_LEASES 4096
#define VFB_LVG_UNTAGGED 0xFFFFu

struct vfb_lvg_key {
  __u8 mac[6];   /* a lease's MAC */
  __u16 pad;     /* must be 0 */
};

enum vfb_lvg_stat {
  VFB_LVG_PASSED = 0,    /* to a lease's MAC, with its VLAN */
  VFB_LVG_DROP_VLAN,     /* to a lease's MAC, another VLAN (or tagged for an untagged lease) */
  VFB_LVG_DROP_STACKED,  /* to a lease's MAC, two tags */
  VFB_LVG_STAT_COUNT,
};

#endif /* VFBROKER_BROKER_BACKENDS_BPF_LEASE_VLAN_MAPS_H_ */
