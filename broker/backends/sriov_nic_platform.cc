// The real SriovNicPlatform: rtnetlink over libmnl (IFLA_VFINFO_LIST on the PF), VFIO ioctls.
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <time.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "broker/backends/rtnetlink.h"
#include "broker/backends/sriov_nic.h"
#include "broker/backends/vfio_handout.h"

namespace vfbroker {
namespace {

struct SocketCloser {
  void operator()(mnl_socket* s) const { mnl_socket_close(s); }
};
using Socket = std::unique_ptr<mnl_socket, SocketCloser>;

absl::Status NetlinkError(const std::string& what, int err) {
  return absl::Status(absl::ErrnoToStatusCode(err), absl::StrCat(what, ": ", strerror(err)));
}

absl::Status Transact(const std::string& what, nlmsghdr* nlh, mnl_cb_t cb, void* data) {
  Socket s(mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC));
  if (!s) return NetlinkError("netlink socket", errno);
  if (mnl_socket_bind(s.get(), 0, MNL_SOCKET_AUTOPID) < 0) return NetlinkError("bind", errno);
  static uint32_t counter = 0;
  const uint32_t seq = static_cast<uint32_t>(time(nullptr)) + __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
  nlh->nlmsg_seq = seq;
  const uint32_t port = mnl_socket_get_portid(s.get());
  if (mnl_socket_sendto(s.get(), nlh, nlh->nlmsg_len) < 0) return NetlinkError(what, errno);
  // A PF with many VFs answers with a large message.
  std::vector<char> buf(1 << 16);
  while (true) {
    const ssize_t n = mnl_socket_recvfrom(s.get(), buf.data(), buf.size());
    if (n < 0) return NetlinkError(what, errno);
    const int rc = mnl_cb_run(buf.data(), static_cast<size_t>(n), seq, port, cb, data);
    if (rc < 0) return NetlinkError(what, errno);
    if (rc == MNL_CB_STOP) return absl::OkStatus();
  }
}

// libmnl's for_each macros assign void* (C only); the same walk, typed.
template <typename F>
void ForEachAttr(const void* start, size_t len, F f) {
  const char* p = static_cast<const char*>(start);
  const char* end = p + len;
  for (const nlattr* a = reinterpret_cast<const nlattr*>(p);
       mnl_attr_ok(a, static_cast<int>(end - reinterpret_cast<const char*>(a)));
       a = mnl_attr_next(a)) {
    f(a);
  }
}

int ParseVfInfo(const nlattr* info, VfInfo* out) {
  ForEachAttr(mnl_attr_get_payload(info), mnl_attr_get_payload_len(info), [&](const nlattr* attr) {
    const uint16_t type = mnl_attr_get_type(attr);
    const size_t len = mnl_attr_get_payload_len(attr);
    const void* p = mnl_attr_get_payload(attr);
    switch (type) {
      case IFLA_VF_MAC:
        if (len >= sizeof(ifla_vf_mac)) {
          const auto* m = static_cast<const ifla_vf_mac*>(p);
          out->vf = m->vf;
          std::memcpy(out->mac.data(), m->mac, 6);
        }
        break;
      case IFLA_VF_VLAN:
        if (len >= sizeof(ifla_vf_vlan)) out->vlan = static_cast<const ifla_vf_vlan*>(p)->vlan;
        break;
      case IFLA_VF_RATE:
        if (len >= sizeof(ifla_vf_rate)) {
          out->max_tx_rate = static_cast<const ifla_vf_rate*>(p)->max_tx_rate;
        }
        break;
      case IFLA_VF_SPOOFCHK:
        if (len >= sizeof(ifla_vf_spoofchk)) {
          const uint32_t v = static_cast<const ifla_vf_spoofchk*>(p)->setting;
          out->spoofchk = v == static_cast<uint32_t>(-1) ? -1 : static_cast<int>(v);
        }
        break;
      case IFLA_VF_TRUST:
        if (len >= sizeof(ifla_vf_trust)) {
          const uint32_t v = static_cast<const ifla_vf_trust*>(p)->setting;
          out->trust = v == static_cast<uint32_t>(-1) ? -1 : static_cast<int>(v);
        }
        break;
      case IFLA_VF_LINK_STATE:
        if (len >= sizeof(ifla_vf_link_state)) {
          out->link_state = static_cast<int>(static_cast<const ifla_vf_link_state*>(p)->link_state);
        }
        break;
      default:
        break;
    }
  });
  return MNL_CB_OK;
}

int OnLink(const nlmsghdr* nlh, void* data) {
  auto* out = static_cast<std::vector<VfInfo>*>(data);
  const char* payload = static_cast<const char*>(mnl_nlmsg_get_payload(nlh));
  const size_t offset = MNL_ALIGN(sizeof(ifinfomsg));
  if (mnl_nlmsg_get_payload_len(nlh) < offset) return MNL_CB_OK;
  ForEachAttr(payload + offset, mnl_nlmsg_get_payload_len(nlh) - offset, [&](const nlattr* attr) {
    if (mnl_attr_get_type(attr) != IFLA_VFINFO_LIST) return;
    ForEachAttr(mnl_attr_get_payload(attr), mnl_attr_get_payload_len(attr),
                [&](const nlattr* info) {
                  if (mnl_attr_get_type(info) != IFLA_VF_INFO) return;
                  VfInfo vf;
                  ParseVfInfo(info, &vf);
                  out->push_back(vf);
                });
  });
  return MNL_CB_OK;
}

class RealSriovNicPlatform : public SriovNicPlatform {
 public:
  absl::Status SetVf(int pf_ifindex, uint32_t vf, const VfSetting& setting) override {
    std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
    nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
    nlh->nlmsg_type = RTM_SETLINK;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
    ifm->ifi_family = AF_UNSPEC;
    ifm->ifi_index = pf_ifindex;
    nlattr* list = mnl_attr_nest_start(nlh, IFLA_VFINFO_LIST);
    nlattr* info = mnl_attr_nest_start(nlh, IFLA_VF_INFO);
    switch (setting.kind) {
      case VfSetting::kMac: {
        ifla_vf_mac m = {};
        m.vf = vf;
        std::memcpy(m.mac, setting.mac.data(), 6);
        mnl_attr_put(nlh, IFLA_VF_MAC, sizeof(m), &m);
        break;
      }
      case VfSetting::kVlan: {
        ifla_vf_vlan v = {};
        v.vf = vf;
        v.vlan = setting.value;
        mnl_attr_put(nlh, IFLA_VF_VLAN, sizeof(v), &v);
        break;
      }
      case VfSetting::kSpoofchk: {
        ifla_vf_spoofchk v = {};
        v.vf = vf;
        v.setting = setting.value;
        mnl_attr_put(nlh, IFLA_VF_SPOOFCHK, sizeof(v), &v);
        break;
      }
      case VfSetting::kTrust: {
        ifla_vf_trust v = {};
        v.vf = vf;
        v.setting = setting.value;
        mnl_attr_put(nlh, IFLA_VF_TRUST, sizeof(v), &v);
        break;
      }
      case VfSetting::kRate: {
        ifla_vf_rate v = {};
        v.vf = vf;
        v.min_tx_rate = 0;
        v.max_tx_rate = setting.value;
        mnl_attr_put(nlh, IFLA_VF_RATE, sizeof(v), &v);
        break;
      }
      case VfSetting::kLinkState: {
        ifla_vf_link_state v = {};
        v.vf = vf;
        v.link_state = setting.value;
        mnl_attr_put(nlh, IFLA_VF_LINK_STATE, sizeof(v), &v);
        break;
      }
    }
    mnl_attr_nest_end(nlh, info);
    mnl_attr_nest_end(nlh, list);
    return Transact("RTM_SETLINK (VF)", nlh, nullptr, nullptr);
  }

  absl::StatusOr<std::vector<VfInfo>> GetVfs(int pf_ifindex) override {
    std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
    nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
    nlh->nlmsg_type = RTM_GETLINK;
    // With NLM_F_ACK the answer is followed by an ACK, which ends the exchange.
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
    ifm->ifi_family = AF_UNSPEC;
    ifm->ifi_index = pf_ifindex;
    // VF info without each VF's statistics (they make the answer large and are not used).
    mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_VF | RTEXT_FILTER_SKIP_STATS);
    std::vector<VfInfo> vfs;
    if (absl::Status s = Transact("RTM_GETLINK (VFs)", nlh, OnLink, &vfs); !s.ok()) return s;
    return vfs;
  }

  absl::Status SetLinkUp(int ifindex) override { return rtnl::SetUp(ifindex); }

  absl::StatusOr<std::optional<VfioHandles>> OpenVfio(const std::string& vfio_dir,
                                                      const std::string& group,
                                                      const std::string& pci_address) override {
    return OpenVfioHandles(vfio_dir, group, pci_address);
  }

  absl::Status ResetDevice(const VfioHandles& handles) override {
    return ResetVfioDevice(handles);
  }

  absl::StatusOr<ethtool::NtupleTable> ProbeNtuple(const std::string& pf) override {
    return ethtool::Probe(pf);
  }
  absl::StatusOr<uint32_t> InsertNtupleRule(const std::string& pf,
                                            const ethtool::NtupleRule& rule) override {
    return ethtool::Insert(pf, rule);
  }
  absl::Status DeleteNtupleRule(const std::string& pf, uint32_t location) override {
    return ethtool::Delete(pf, location);
  }
  absl::StatusOr<std::vector<ethtool::InstalledRule>> ListNtupleRules(
      const std::string& pf) override {
    return ethtool::List(pf);
  }
};

}  // namespace

std::unique_ptr<SriovNicPlatform> MakeRealSriovNicPlatform() {
  return std::make_unique<RealSriovNicPlatform>();
}

}  // namespace vfbroker
