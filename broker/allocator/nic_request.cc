#include "broker/allocator/nic_request.h"

#include <arpa/inet.h>

#include <cstdio>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vfbroker {
namespace {

constexpr size_t kMaxAddressText = 64;

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string Quoted(absl::string_view text) {
  if (text.size() > kMaxAddressText) return absl::StrCat("\"", text.substr(0, 32), "...\"");
  return absl::StrCat("\"", absl::CEscape(text), "\"");
}

// An IPv4 literal, optionally "/32". UNIMPLEMENTED for IPv6 or a shorter prefix.
absl::StatusOr<uint32_t> ParseIpv4(absl::string_view field, absl::string_view text) {
  if (text.size() > kMaxAddressText) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": too long"));
  }
  std::string address(text);
  std::string prefix;
  if (size_t slash = address.find('/'); slash != std::string::npos) {
    prefix = address.substr(slash + 1);
    address.resize(slash);
  }
  in_addr v4{};
  in6_addr v6{};
  if (inet_pton(AF_INET, address.c_str(), &v4) != 1) {
    if (inet_pton(AF_INET6, address.c_str(), &v6) == 1) {
      return absl::UnimplementedError(
          absl::StrCat(field, ": IPv6 filters are not supported by xdp_nic yet, got ",
                       Quoted(text)));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": not an IPv4 or IPv6 address: ", Quoted(text)));
  }
  if (!prefix.empty() || text.back() == '/') {
    int length = -1;
    char extra;
    if (prefix.size() > 2 || std::sscanf(prefix.c_str(), "%d%c", &length, &extra) != 1 ||
        length < 0 || length > 32 || prefix[0] < '0' || prefix[0] > '9') {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": bad prefix length in ", Quoted(text)));
    }
    if (length != 32) {
      return absl::UnimplementedError(absl::StrCat(
          field, ": xdp_nic matches exact addresses only (/32), got ", Quoted(text)));
    }
  }
  return ntohl(v4.s_addr);
}

}  // namespace

absl::StatusOr<MacBytes> ParseUnicastMac(absl::string_view text) {
  MacBytes mac{};
  // Exactly "xx:xx:xx:xx:xx:xx" (or '-'): 17 characters.
  bool well_formed = text.size() == 17;
  for (size_t i = 0; well_formed && i < 6; ++i) {
    const int hi = HexDigit(text[3 * i]);
    const int lo = HexDigit(text[3 * i + 1]);
    if (hi < 0 || lo < 0) well_formed = false;
    if (i < 5 && text[3 * i + 2] != ':' && text[3 * i + 2] != '-') well_formed = false;
    if (i < 5 && text[3 * i + 2] != text[2]) well_formed = false;  // one separator throughout
    if (well_formed) mac[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  if (!well_formed) {
    return absl::InvalidArgumentError(
        absl::StrCat("mac: must be six hex octets like 02:00:00:00:00:01, got ", Quoted(text)));
  }
  if (mac[0] & 0x01) {
    return absl::InvalidArgumentError(
        absl::StrCat("mac: ", FormatMac(mac), " is a multicast/broadcast address (I/G bit set); "
                     "a lease needs a unicast address"));
  }
  if (mac == MacBytes{}) return absl::InvalidArgumentError("mac: the all-zero address is not usable");
  return mac;
}

std::string FormatMac(const MacBytes& mac) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4],
                         mac[5]);
}

MacBytes LocalUnicastMac(uint64_t random_bits) {
  MacBytes mac;
  for (int i = 0; i < 6; ++i) mac[i] = static_cast<uint8_t>(random_bits >> (8 * i));
  mac[0] = static_cast<uint8_t>((mac[0] & 0xfc) | 0x02);  // U/L = 1 (local), I/G = 0 (unicast)
  return mac;  // never all zero: the U/L bit is set
}

absl::Status ValidateVlan(uint32_t vlan) {
  if (vlan > kMaxVlanId) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vlan: must be 0 (untagged) or 1..4094 (4095 is reserved by IEEE 802.1Q), got ", vlan));
  }
  return absl::OkStatus();
}

absl::Status ValidateNicShape(const v1::AllocateNicRequest& request) {
  if (!request.mac().empty()) {
    if (absl::StatusOr<MacBytes> mac = ParseUnicastMac(request.mac()); !mac.ok()) {
      return mac.status();
    }
  }
  if (absl::Status vlan = ValidateVlan(request.vlan()); !vlan.ok()) return vlan;
  if (request.queues() > 1) {
    return absl::UnimplementedError(absl::StrCat(
        "queues: xdp_nic gives each lease one queue (one AF_XDP socket on a device of its own); "
        "got ", request.queues()));
  }
  if (request.max_tx_rate_mbps() != 0) {
    return absl::UnimplementedError("max_tx_rate_mbps: xdp_nic does not police transmit rates "
                                    "yet; leave it 0");
  }
  if (static_cast<size_t>(request.filters_size()) > kMaxFiltersPerLease) {
    return absl::InvalidArgumentError(absl::StrCat("filters: at most ", kMaxFiltersPerLease,
                                                   " per lease, got ", request.filters_size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<journal::NicFilter> NormalizeFilter(const v1::FlowFilter& filter) {
  journal::NicFilter out;
  switch (filter.protocol()) {
    case v1::FlowFilter::PROTOCOL_UDP:
    case v1::FlowFilter::PROTOCOL_TCP:
      out.set_protocol(static_cast<uint32_t>(filter.protocol()));
      break;
    case v1::FlowFilter::PROTOCOL_ANY:
      return absl::UnimplementedError(
          "filter.protocol: xdp_nic steers UDP or TCP flows; name one (PROTOCOL_ANY unsupported)");
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("filter.protocol: unknown protocol ", static_cast<int>(filter.protocol())));
  }
  if (filter.src_port() > 65535 || filter.dst_port() > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("filter: ports are 1..65535, got src_port ",
                                                   filter.src_port(), ", dst_port ",
                                                   filter.dst_port()));
  }
  if (filter.dst_ip().empty() || filter.dst_port() == 0) {
    return absl::UnimplementedError(
        "filter: xdp_nic needs a destination address and port (dst_ip and dst_port)");
  }
  absl::StatusOr<uint32_t> dst = ParseIpv4("filter.dst_ip", filter.dst_ip());
  if (!dst.ok()) return dst.status();
  out.set_dst_ip(*dst);
  out.set_dst_port(filter.dst_port());
  if (filter.src_ip().empty() != (filter.src_port() == 0)) {
    return absl::UnimplementedError(
        "filter: xdp_nic matches a source as address and port together, or any source; set "
        "both src_ip and src_port, or neither");
  }
  if (!filter.src_ip().empty()) {
    absl::StatusOr<uint32_t> src = ParseIpv4("filter.src_ip", filter.src_ip());
    if (!src.ok()) return src.status();
    if (*src == 0) {
      return absl::InvalidArgumentError("filter.src_ip: 0.0.0.0 is not a source address");
    }
    out.set_src_ip(*src);
    out.set_src_port(filter.src_port());
  }
  return out;
}

bool FiltersOverlap(const journal::NicFilter& a, const journal::NicFilter& b) {
  if (a.protocol() != b.protocol() || a.dst_ip() != b.dst_ip() ||
      a.dst_port() != b.dst_port()) {
    return false;
  }
  const bool a_any = a.src_ip() == 0, b_any = b.src_ip() == 0;
  return a_any || b_any || (a.src_ip() == b.src_ip() && a.src_port() == b.src_port());
}

absl::Status CheckFilterFits(const std::vector<journal::NicFilter>& existing,
                             const journal::NicFilter& candidate) {
  if (existing.size() >= kMaxFiltersPerLease) {
    return absl::InvalidArgumentError(
        absl::StrCat("filter: a lease has at most ", kMaxFiltersPerLease, " filters"));
  }
  for (const journal::NicFilter& other : existing) {
    if (FiltersOverlap(other, candidate)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "filter: overlaps filter ", other.id().empty() ? "in the same request" : other.id(),
          " of this lease (", other.protocol() == 17 ? "udp" : "tcp", " to ",
          Ipv4String(other.dst_ip()), ":", other.dst_port(), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<journal::NicFilter>> NormalizeFilters(
    const google::protobuf::RepeatedPtrField<v1::FlowFilter>& filters) {
  std::vector<journal::NicFilter> out;
  for (int i = 0; i < filters.size(); ++i) {
    absl::StatusOr<journal::NicFilter> filter = NormalizeFilter(filters[i]);
    if (!filter.ok()) {
      return absl::Status(filter.status().code(),
                          absl::StrCat("filters[", i, "]: ", filter.status().message()));
    }
    if (absl::Status fits = CheckFilterFits(out, *filter); !fits.ok()) {
      return absl::Status(fits.code(), absl::StrCat("filters[", i, "]: ", fits.message()));
    }
    out.push_back(*std::move(filter));
  }
  return out;
}

std::string Ipv4String(uint32_t host_order) {
  return absl::StrFormat("%d.%d.%d.%d", host_order >> 24, (host_order >> 16) & 0xff,
                         (host_order >> 8) & 0xff, host_order & 0xff);
}

v1::FlowFilter ToApiFilter(const journal::NicFilter& filter) {
  v1::FlowFilter out;
  out.set_id(filter.id());
  out.set_protocol(static_cast<v1::FlowFilter::Protocol>(filter.protocol()));
  out.set_dst_ip(Ipv4String(filter.dst_ip()));
  out.set_dst_port(filter.dst_port());
  if (filter.src_ip() != 0) {
    out.set_src_ip(Ipv4String(filter.src_ip()));
    out.set_src_port(filter.src_port());
  }
  return out;
}

}  // namespace vfbroker
