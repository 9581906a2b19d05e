// BPF objects compiled from broker/backends/bpf and embedded by
// //vfdrivers/net/xdp:bpf_object.bzl (header = "bpf_objects.h", namespace = "vfbroker::bpf"):
// ELF bytes for libbpf's bpf_object__open_mem.
#ifndef VFBROKER_BROKER_BACKENDS_BPF_BPF_OBJECTS_H_
#define VFBROKER_BROKER_BACKENDS_BPF_BPF_OBJECTS_H_

#include <cstddef>

namespace vfbroker::bpf {

// lease_vlan_guard.bpf.c: tc program "vfb_lease_vlan_guard", maps "lease_vlans", "lvg_stats".
extern const unsigned char kLeaseVlanGuardBpf[];
extern const size_t kLeaseVlanGuardBpfSize;

}  // namespace vfbroker::bpf

#endif  // VFBROKER_BROKER_BACKENDS_BPF_BPF_OBJECTS_H_
