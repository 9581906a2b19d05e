// libFuzzer target: an AfXdpPort (test mode: rings and UMEM in plain memory) driven by a
// hostile kernel and a careless application, both scripted by the input. The kernel writes
// arbitrary RX and completion descriptors and ring indices; the application returns buffers
// twice, sends foreign ones, lies about lengths. Checked after every step: every buffer the
// port hands out lies inside the UMEM and in its own chunk, and no chunk is lost or doubled
// (free + fill + tx + held by the application == frame count).
#include <linux/if_xdp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <vector>

#include "vfdrivers/net/af_xdp_port.h"

using namespace vfdrivers::net;

namespace {

struct Input {
  const uint8_t* p;
  size_t n;
  bool empty() const { return n == 0; }
  uint8_t U8() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  uint32_t U32() { return U8() | (U8() << 8) | (uint32_t{U8()} << 16) | (uint32_t{U8()} << 24); }
  uint64_t U64() { return U32() | (uint64_t{U32()} << 32); }
};

struct Ring {
  uint32_t producer = 0, consumer = 0, flags = 0;
  std::vector<uint8_t> descs;
  uint32_t size;
  Ring(uint32_t s, size_t entry) : descs(s * entry), size(s) {}
  AfXdpPort::TestRing View() { return {&producer, &consumer, &flags, descs.data()}; }
  uint64_t* Addr(uint32_t i) { return reinterpret_cast<uint64_t*>(descs.data()) + (i & (size - 1)); }
  xdp_desc* Desc(uint32_t i) { return reinterpret_cast<xdp_desc*>(descs.data()) + (i & (size - 1)); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  AfXdpLayout l;
  l.frame_size = 2048;
  l.frame_count = 32;
  l.fill_size = 8;
  l.completion_size = 8;
  l.rx_size = 8;
  l.tx_size = 8;
  Ring fill(8, 8), comp(8, 8), rx(8, sizeof(xdp_desc)), tx(8, sizeof(xdp_desc));
  std::vector<uint8_t> umem(l.umem_bytes());
  auto port_or = AfXdpPort::CreateForTesting(
      {fill.View(), comp.View(), rx.View(), tx.View(), umem.data()}, l);
  if (!port_or.ok()) abort();
  AfXdpPort& port = **port_or;
  std::vector<PacketBuffer> held;       // buffers the application holds
  std::vector<uint64_t> kernel_chunks;  // addresses the fake kernel took from fill / TX
  const uint8_t* lo = umem.data();
  const uint8_t* hi = lo + umem.size();

  auto check_buffer = [&](const PacketBuffer& b) {
    if (b.pool != &port || b.index >= l.frame_count) abort();
    if (b.data < lo || b.data + b.capacity > hi || b.length > b.capacity) abort();
    const uint8_t* chunk = lo + size_t{b.index} * l.frame_size;
    if (b.data < chunk || b.data + b.capacity != chunk + l.frame_size) abort();
    if (b.device_address != static_cast<uint64_t>(b.data - lo)) abort();
  };
  auto check_conserved = [&] {
    std::set<uint32_t> distinct;
    for (const PacketBuffer& b : held) distinct.insert(b.index);
    if (distinct.size() != held.size()) abort();  // the port handed one chunk out twice
    if (port.free_frames() + port.fill_frames() + port.tx_frames() + held.size() != l.frame_count) {
      abort();
    }
  };

  while (!in.empty()) {
    if (kernel_chunks.size() > 256) kernel_chunks.erase(kernel_chunks.begin(), kernel_chunks.begin() + 128);
    uint8_t op = in.U8() % 10;
    switch (op) {
      case 0: {  // kernel takes fill entries
        for (int k = in.U8() % 4; k > 0 && fill.consumer != fill.producer; --k) {
          kernel_chunks.push_back(*fill.Addr(fill.consumer++));
        }
        break;
      }
      case 1: {  // kernel posts an RX descriptor: an address it holds (plus junk) or any
        uint64_t addr = in.U64();
        if ((addr & 1) && !kernel_chunks.empty()) {
          addr = kernel_chunks[(addr >> 1) % kernel_chunks.size()] + (in.U8() << 4);
        }
        uint32_t len = in.U8() & 1 ? in.U32() : in.U8() * 8;
        *rx.Desc(rx.producer++) = xdp_desc{addr, len, in.U8() & 1u};
        break;
      }
      case 2: {  // kernel completes an address
        uint64_t addr = in.U64();
        if ((addr & 1) && !kernel_chunks.empty()) addr = kernel_chunks[(addr >> 1) % kernel_chunks.size()];
        *comp.Addr(comp.producer++) = addr;
        break;
      }
      case 3: {  // kernel consumes TX descriptors
        for (uint32_t k = 0; k < tx.size && tx.consumer != tx.producer; ++k) {
          kernel_chunks.push_back(tx.Desc(tx.consumer++)->addr);
        }
        break;
      }
      case 4: {  // kernel scribbles on an index or a flag
        uint32_t v = in.U32();
        switch (in.U8() % 5) {
          case 0: rx.producer = v; break;
          case 1: comp.producer = v; break;
          case 2: fill.consumer = v; break;
          case 3: tx.consumer = v; break;
          case 4: tx.flags = fill.flags = v; break;
        }
        break;
      }
      case 5: {  // application receives
        PacketBuffer bufs[8];
        size_t n = port.RxBurst(absl::MakeSpan(bufs, 1 + in.U8() % 8));
        for (size_t i = 0; i < n; ++i) {
          check_buffer(bufs[i]);
          held.push_back(bufs[i]);
        }
        break;
      }
      case 6: {  // application allocates
        PacketBuffer bufs[8];
        size_t n = port.AllocBurst(absl::MakeSpan(bufs, 1 + in.U8() % 8));
        for (size_t i = 0; i < n; ++i) {
          check_buffer(bufs[i]);
          held.push_back(bufs[i]);
        }
        break;
      }
      case 7: {  // application sends some of what it holds, perhaps mangled
        if (held.empty()) break;
        size_t start = in.U8() % held.size();
        size_t count = std::min<size_t>(1 + in.U8() % 4, held.size() - start);
        std::vector<PacketBuffer> burst(held.begin() + start, held.begin() + start + count);
        uint8_t mangle = in.U8();
        if (mangle & 1) burst[0].length = in.U32();
        if (mangle & 2) burst[0].data += static_cast<int8_t>(in.U8());
        if (mangle & 4) burst[0].index ^= in.U8();
        if (!(mangle & 7)) for (auto& b : burst) b.length = 1 + in.U8();
        size_t k = port.TxBurst(burst);
        held.erase(held.begin() + start, held.begin() + start + k);
        break;
      }
      case 8: {  // application frees one, or a stale copy of one
        if (held.empty()) break;
        size_t i = in.U8() % held.size();
        PacketBuffer b = held[i];
        if (port.FreeBurst(absl::MakeConstSpan(&b, 1)) == 1) held.erase(held.begin() + i);
        if (in.U8() & 1) port.FreeBurst(absl::MakeConstSpan(&b, 1));  // twice
        break;
      }
      case 9:
        port.Service();
        break;
    }
    check_conserved();
  }
  return 0;
}
