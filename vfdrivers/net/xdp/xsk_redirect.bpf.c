// XDP program: every frame that arrives on queue q goes to the AF_XDP socket registered at
// xsks[q]; frames on a queue without a socket go on to the kernel stack (XDP_PASS).
//
// Used by the host tests (one device per tenant: a veth end or a macvlan whose queue belongs
// to one socket). The broker's real program also steers by destination MAC / VLAN / 5-tuple.
// Built with clang -target bpf; BTF-defined map (libbpf >= 1.0 loads only those).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
  __uint(type, BPF_MAP_TYPE_XSKMAP);
  __uint(max_entries, 64);
  __type(key, __u32);
  __type(value, __u32);
} xsks SEC(".maps");

SEC("xdp")
int xsk_redirect(struct xdp_md *ctx) {
  // The low bits of the flags are the action when the map has no entry (kernel >= 5.3,
  // bpf_redirect_map in include/uapi/linux/bpf.h).
  return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
