// BPF objects compiled from this directory and embedded by bpf_object() (bpf_object.bzl):
// ELF bytes to hand to XdpProgram::Attach (libbpf bpf_object__open_mem).
#ifndef VFBROKER_VFDRIVERS_NET_XDP_XDP_OBJECTS_H_
#define VFBROKER_VFDRIVERS_NET_XDP_XDP_OBJECTS_H_

#include <cstddef>

namespace vfdrivers::net::xdp {

// xsk_redirect.bpf.c: program "xsk_redirect", XSKMAP "xsks" (queue -> socket).
extern const unsigned char kXskRedirectBpf[];
extern const size_t kXskRedirectBpfSize;

// steer.bpf.c: program "vfb_steer", maps "xsks", "macs", "flows", "config", "stats"
// (steer_maps.h).
extern const unsigned char kSteerBpf[];
extern const size_t kSteerBpfSize;

// egress_guard.bpf.c: tc program "vfb_egress_guard", maps "leases", "egress_stats"
// (egress_maps.h).
extern const unsigned char kEgressGuardBpf[];
extern const size_t kEgressGuardBpfSize;

}  // namespace vfdrivers::net::xdp

#endif  // VFBROKER_VFDRIVERS_NET_XDP_XDP_OBJECTS_H_
