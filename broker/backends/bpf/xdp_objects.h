// BPF objects compiled from broker/backends/bpf by //vfdrivers/net/xdp:bpf_object.bzl (which
// names this header and the namespace).
#ifndef VFBROKER_BROKER_BACKENDS_BPF_XDP_OBJECTS_H_
#define VFBROKER_BROKER_BACKENDS_BPF_XDP_OBJECTS_H_

#include <cstddef>

namespace vfdrivers::net::xdp {

// lease_vlan_guard.bpf.c: tc program "vfb_lease_vlan_guard", maps "lease_vlans", "lvg_stats".
extern const unsigned char kLeaseVlanGuardBpf[];
extern const size_t kLeaseVlanGuardBpfSize;

}  // namespace vfdrivers::net::xdp

#endif  // VFBROKER_BROKER_BACKENDS_BPF_XDP_OBJECTS_H_
