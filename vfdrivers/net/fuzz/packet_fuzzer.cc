// libFuzzer target: ParseUdp on arbitrary bytes. Whatever it accepts must lie inside the input
// and survive a rebuild: BuildUdp from the parsed fields gives a frame that parses to the same
// fields. Build for real fuzzing outside Bazel (see fuzz/BUILD.bazel).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vfdrivers/net/packet.h"

using namespace vfdrivers::net::packet;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An exact-size heap copy, so a read past `size` is caught by ASan.
  std::vector<uint8_t> frame(data, data + size);
  const uint8_t* p = frame.empty() ? nullptr : frame.data();
  UdpView v;
  if (ParseUdp(p, size, &v) != ParseResult::kOk) {
    EthernetView e;
    (void)ParseEthernet(p, size, &e);
    return 0;
  }
  if (v.payload < p || v.payload + v.payload_length > p + size) abort();
  if (v.udp_offset + kUdpHeaderBytes + v.payload_length > size) abort();

  UdpSpec spec;
  spec.dst_mac = v.eth.dst;
  spec.src_mac = v.eth.src;
  spec.has_vlan = v.eth.has_vlan;
  spec.vlan_tci = v.eth.vlan_tci;
  spec.src_ip = v.src_ip;
  spec.dst_ip = v.dst_ip;
  spec.ttl = v.ttl;
  spec.dscp_ecn = v.dscp_ecn;
  spec.ip_id = v.ip_id;
  spec.src_port = v.src_port;
  spec.dst_port = v.dst_port;
  std::vector<uint8_t> out(UdpFrameLength(spec, v.payload_length));
  if (BuildUdp(spec, v.payload, v.payload_length, out.data(), out.size()) != out.size()) abort();
  UdpView w;
  if (ParseUdp(out.data(), out.size(), &w) != ParseResult::kOk) abort();
  if (w.src_ip != v.src_ip || w.dst_ip != v.dst_ip || w.src_port != v.src_port ||
      w.dst_port != v.dst_port || w.payload_length != v.payload_length ||
      w.eth.has_vlan != v.eth.has_vlan || w.eth.vlan_tci != v.eth.vlan_tci ||
      (v.payload_length > 0 && std::memcmp(w.payload, v.payload, v.payload_length) != 0)) {
    abort();
  }
  return 0;
}
