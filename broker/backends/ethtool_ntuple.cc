#include "broker/backends/ethtool_ntuple.h"

#include <arpa/inet.h>
#include <linux/ethtool.h>
#include <linux/if_ether.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

namespace vfbroker::ethtool {
namespace {

// One SIOCETHTOOL request on `interface` with `data` as ifr_data; the errno on failure.
int Ioctl(const std::string& interface, void* data) {
  if (interface.empty() || interface.size() >= IFNAMSIZ) return ENODEV;
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, interface.data(), interface.size());
  ifr.ifr_data = static_cast<char*>(data);
  const int rc = ::ioctl(fd, SIOCETHTOOL, &ifr);
  const int err = rc < 0 ? errno : 0;
  ::close(fd);
  return err;
}

absl::Status Refused(const std::string& interface, const char* what, int err) {
  absl::StatusCode code = absl::ErrnoToStatusCode(err);
  if (err == EOPNOTSUPP || err == EINVAL) code = absl::StatusCode::kUnimplemented;
  if (err == ENOSPC) code = absl::StatusCode::kResourceExhausted;
  return absl::Status(code, absl::StrCat(interface, ": ethtool ", what, ": ", strerror(err)));
}

}  // namespace

uint64_t VfRingCookie(uint32_t vf) {
  // VF field 1-based (0 names the PF), queue 0 of that VF.
  return (static_cast<uint64_t>(vf) + 1) << ETHTOOL_RX_FLOW_SPEC_RING_VF_OFF;
}

absl::StatusOr<NtupleTable> Probe(const std::string& interface) {
  // The rx-ntuple-filter feature (NETIF_F_NTUPLE, reported as ETH_FLAG_NTUPLE): drivers answer
  // the rule-count query even without it (igb on the 82576 does, with a table of 0).
  ethtool_value flags{};
  flags.cmd = ETHTOOL_GFLAGS;
  if (const int err = Ioctl(interface, &flags); err != 0) {
    return Refused(interface, "flags (ETHTOOL_GFLAGS)", err);
  }
  if ((flags.data & ETH_FLAG_NTUPLE) == 0) {
    return absl::UnimplementedError(absl::StrCat(
        interface, ": the driver has no ntuple filtering, or it is off (rx-ntuple-filter)"));
  }
  ethtool_rxnfc nfc{};
  nfc.cmd = ETHTOOL_GRXCLSRLCNT;
  if (const int err = Ioctl(interface, &nfc); err != 0) {
    return Refused(interface, "rule count (ETHTOOL_GRXCLSRLCNT: the driver has no ntuple table)",
                   err);
  }
  NtupleTable table;
  table.special_locations = (nfc.data & RX_CLS_LOC_SPECIAL) != 0;
  table.size = static_cast<uint32_t>(nfc.data & ~static_cast<uint64_t>(RX_CLS_LOC_SPECIAL));
  table.rules = nfc.rule_cnt;
  return table;
}

absl::StatusOr<std::vector<InstalledRule>> List(const std::string& interface) {
  absl::StatusOr<NtupleTable> table = Probe(interface);
  if (!table.ok()) return table.status();
  std::vector<InstalledRule> out;
  if (table->rules == 0) return out;
  // ethtool_rxnfc ends in a flexible array of rule locations.
  std::vector<uint8_t> buf(sizeof(ethtool_rxnfc) + sizeof(uint32_t) * table->rules);
  auto* all = reinterpret_cast<ethtool_rxnfc*>(buf.data());
  all->cmd = ETHTOOL_GRXCLSRLALL;
  all->rule_cnt = table->rules;
  if (const int err = Ioctl(interface, all); err != 0) {
    return Refused(interface, "rule list (ETHTOOL_GRXCLSRLALL)", err);
  }
  const uint32_t count = std::min(all->rule_cnt, table->rules);  // the driver's count, bounded
  for (uint32_t i = 0; i < count; ++i) {
    ethtool_rxnfc one{};
    one.cmd = ETHTOOL_GRXCLSRULE;
    one.fs.location = all->rule_locs[i];
    if (const int err = Ioctl(interface, &one); err != 0) {
      return Refused(interface, "rule (ETHTOOL_GRXCLSRULE)", err);
    }
    InstalledRule rule;
    rule.location = all->rule_locs[i];
    const uint64_t vf = ethtool_get_flow_spec_ring_vf(one.fs.ring_cookie);
    if (one.fs.ring_cookie != RX_CLS_FLOW_DISC && vf != 0) rule.vf = static_cast<int>(vf - 1);
    out.push_back(rule);
  }
  return out;
}

absl::StatusOr<uint32_t> Insert(const std::string& interface, const NtupleRule& rule) {
  absl::StatusOr<NtupleTable> table = Probe(interface);
  if (!table.ok()) return table.status();
  ethtool_rxnfc nfc{};
  nfc.cmd = ETHTOOL_SRXCLSRLINS;
  ethtool_rx_flow_spec& fs = nfc.fs;
  // Masks: a set bit is a bit that must match (the kernel's convention; the ethtool tool's
  // command line has it the other way round).
  const uint32_t src_mask = rule.src_ip != 0 ? 0xffffffffu : 0;
  const uint32_t dst_mask = rule.dst_ip != 0 ? 0xffffffffu : 0;
  if (rule.protocol == IPPROTO_UDP || rule.protocol == IPPROTO_TCP) {
    fs.flow_type = rule.protocol == IPPROTO_UDP ? UDP_V4_FLOW : TCP_V4_FLOW;
    fs.h_u.udp_ip4_spec.ip4src = htonl(rule.src_ip);
    fs.h_u.udp_ip4_spec.ip4dst = htonl(rule.dst_ip);
    fs.h_u.udp_ip4_spec.psrc = htons(rule.src_port);
    fs.h_u.udp_ip4_spec.pdst = htons(rule.dst_port);
    fs.m_u.udp_ip4_spec.ip4src = src_mask;
    fs.m_u.udp_ip4_spec.ip4dst = dst_mask;
    fs.m_u.udp_ip4_spec.psrc = rule.src_port != 0 ? 0xffff : 0;
    fs.m_u.udp_ip4_spec.pdst = rule.dst_port != 0 ? 0xffff : 0;
  } else if (rule.protocol == 0 && rule.src_port == 0 && rule.dst_port == 0) {
    fs.flow_type = IPV4_USER_FLOW;
    fs.h_u.usr_ip4_spec.ip_ver = ETH_RX_NFC_IP4;
    fs.h_u.usr_ip4_spec.ip4src = htonl(rule.src_ip);
    fs.h_u.usr_ip4_spec.ip4dst = htonl(rule.dst_ip);
    fs.m_u.usr_ip4_spec.ip4src = src_mask;
    fs.m_u.usr_ip4_spec.ip4dst = dst_mask;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("ntuple rule: protocol ", rule.protocol, " with ports is not expressible"));
  }
  // Only the lease's own frames: its MAC, and its VLAN when it has one.
  fs.flow_type |= FLOW_MAC_EXT;
  std::memcpy(fs.h_ext.h_dest, rule.dst_mac.data(), ETH_ALEN);
  std::memset(fs.m_ext.h_dest, 0xff, ETH_ALEN);
  if (rule.vlan != 0) {
    fs.flow_type |= FLOW_EXT;
    fs.h_ext.vlan_tci = htons(static_cast<uint16_t>(rule.vlan & 0x0fff));
    fs.m_ext.vlan_tci = htons(0x0fff);
  }
  fs.ring_cookie = VfRingCookie(rule.vf);
  if (table->special_locations) {
    fs.location = RX_CLS_LOC_ANY;
  } else {
    absl::StatusOr<std::vector<InstalledRule>> rules = List(interface);
    if (!rules.ok()) return rules.status();
    std::set<uint32_t> used;
    for (const InstalledRule& r : *rules) used.insert(r.location);
    // Some drivers do not say how big their table is (size 0): they refuse a bad location.
    const uint32_t size = table->size != 0 ? table->size : UINT32_MAX;
    uint32_t free = 0;
    while (free < size && used.count(free) != 0) ++free;
    if (free >= size) {
      return absl::ResourceExhaustedError(
          absl::StrCat(interface, ": ntuple table full (", table->size, " rules)"));
    }
    fs.location = free;
  }
  if (const int err = Ioctl(interface, &nfc); err != 0) {
    return Refused(interface,
                   absl::StrCat("insert (ETHTOOL_SRXCLSRLINS) of a rule steering to VF ", rule.vf)
                       .c_str(),
                   err);
  }
  return nfc.fs.location;  // the kernel writes back the location it used
}

absl::Status Delete(const std::string& interface, uint32_t location) {
  ethtool_rxnfc nfc{};
  nfc.cmd = ETHTOOL_SRXCLSRLDEL;
  nfc.fs.location = location;
  if (const int err = Ioctl(interface, &nfc); err != 0) {
    return Refused(interface, absl::StrCat("delete (ETHTOOL_SRXCLSRLDEL) of rule ", location).c_str(),
                   err);
  }
  return absl::OkStatus();
}

}  // namespace vfbroker::ethtool
