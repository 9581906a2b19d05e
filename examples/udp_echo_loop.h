// The UDP echo server's data path (Arrakis's first benchmark) over any net::Port: receive a
// burst, turn every IPv4/UDP frame around in place (Ethernet, IPv4 and UDP source and
// destination swapped), transmit the same buffers back. Zero-copy: the frame never leaves
// the buffer it arrived in. Busy-polling by default; the caller may sleep in `on_idle`.
//
// Works on the port it is given and nothing else, so the AF_XDP port today and the VF drivers
// later run the same loop; where the port's descriptors came from (broker lease or
// self-provisioned socket) is the caller's business (udp_echo.cc).
//
// Checksums: swapping two fields of a one's-complement sum does not change the sum (RFC 1071
// section 2: the sum is commutative), so both the IPv4 header checksum and the UDP checksum
// (whose pseudo-header holds both addresses, RFC 768) stay valid after the swap. The reply's
// TTL is reset, and the IPv4 checksum updated incrementally for it (RFC 1624, eqn. 3). A frame
// whose UDP checksum the sender never completed (a local sender over veth with TX checksum
// offload leaves only the pseudo-header sum in the field) can be fixed with
// ChecksumMode::kRecompute, which recomputes the UDP checksum in full (RFC 768 / RFC 1071).
#ifndef VFBROKER_EXAMPLES_UDP_ECHO_LOOP_H_
#define VFBROKER_EXAMPLES_UDP_ECHO_LOOP_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>

#include "vfdrivers/net/port.h"

namespace vfbroker::examples {

enum class ChecksumMode {
  kKeep,       // swap only (sums stay valid) + incremental IPv4 update for the TTL
  kRecompute,  // also recompute the UDP checksum over pseudo-header, header and payload
};

struct EchoOptions {
  size_t burst = 32;             // frames per RxBurst (at most kMaxBurst)
  uint16_t udp_port = 0;         // echo only datagrams to this port (0: any)
  bool verify = false;           // drop frames whose IPv4 / UDP checksums do not verify
  ChecksumMode checksum = ChecksumMode::kKeep;
  uint8_t reply_ttl = 64;
  int tx_retries = 64;           // Service() + TxBurst retries before dropping the rest
};

struct EchoStats {
  uint64_t received = 0;   // frames RxBurst returned
  uint64_t echoed = 0;     // frames TxBurst accepted
  uint64_t ignored = 0;    // not IPv4/UDP for us (ARP, IPv6, other port, multicast, bad)
  uint64_t tx_dropped = 0; // ring stayed full: given back unsent
  uint64_t idle_polls = 0; // RxBurst calls that returned nothing
};

inline constexpr size_t kMaxBurst = 256;

enum class EchoVerdict { kEcho, kIgnore };

// Turns one frame around in place. Every offset is checked against `length` before it is
// read (the frame is hostile). kIgnore: leave it (not IPv4/UDP, fragment, multicast or
// broadcast destination, wrong port, or, with verify, a bad checksum).
EchoVerdict EchoFrameInPlace(uint8_t* frame, size_t length, const EchoOptions& options);

// Runs until `stop` becomes true: RxBurst, EchoFrameInPlace each, TxBurst the echoes,
// FreeBurst the rest. Calls on_idle (if set) after a burst that returned nothing.
EchoStats RunUdpEcho(vfdrivers::net::Port& port, const EchoOptions& options,
                     const std::atomic<bool>& stop,
                     const std::function<void()>& on_idle = nullptr);

}  // namespace vfbroker::examples

#endif  // VFBROKER_EXAMPLES_UDP_ECHO_LOOP_H_
