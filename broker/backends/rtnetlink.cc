#include "broker/backends/rtnetlink.h"

#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <net/if.h>  // IFF_UP, IFNAMSIZ
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"

namespace vfbroker::rtnl {
namespace {

struct SocketCloser {
  void operator()(mnl_socket* s) const { mnl_socket_close(s); }
};
using Socket = std::unique_ptr<mnl_socket, SocketCloser>;

absl::Status ErrnoStatus(const std::string& what, int err) {
  if (err == EEXIST || err == EADDRINUSE) {
    return absl::AlreadyExistsError(absl::StrCat(what, ": ", strerror(err)));
  }
  if (err == ENODEV) return absl::NotFoundError(absl::StrCat(what, ": ", strerror(err)));
  return absl::Status(absl::ErrnoToStatusCode(err), absl::StrCat(what, ": ", strerror(err)));
}

absl::StatusOr<Socket> Open() {
  Socket s(mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC));
  if (!s) return ErrnoStatus("netlink socket", errno);
  if (mnl_socket_bind(s.get(), 0, MNL_SOCKET_AUTOPID) < 0) return ErrnoStatus("netlink bind", errno);
  return s;
}

// Sends `nlh` (with NLM_F_ACK set by the caller for requests) and runs `cb` on every answer
// until the kernel's ACK/DONE; the kernel's error comes back as a status.
absl::Status Transact(const std::string& what, nlmsghdr* nlh, mnl_cb_t cb, void* data) {
  absl::StatusOr<Socket> s = Open();
  if (!s.ok()) return s.status();
  const uint32_t seq = static_cast<uint32_t>(time(nullptr));
  nlh->nlmsg_seq = seq;
  const uint32_t port = mnl_socket_get_portid(s->get());
  if (mnl_socket_sendto(s->get(), nlh, nlh->nlmsg_len) < 0) return ErrnoStatus(what, errno);
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE * 4);
  while (true) {
    ssize_t n = mnl_socket_recvfrom(s->get(), buf.data(), buf.size());
    if (n < 0) return ErrnoStatus(what, errno);
    int rc = mnl_cb_run(buf.data(), static_cast<size_t>(n), seq, port, cb, data);
    if (rc < 0) return ErrnoStatus(what, errno);
    if (rc == MNL_CB_STOP) return absl::OkStatus();
  }
}

nlmsghdr* NewLinkRequest(char* buf, uint16_t type, uint16_t flags) {
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = type;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  return nlh;
}

int ParseLinkInfoData(const nlattr* attr, void* data) {
  auto* link = static_cast<Link*>(data);
  const int type = mnl_attr_get_type(attr);
  if (link->kind == "macvlan" && type == IFLA_MACVLAN_MODE &&
      mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) {
    link->macvlan_mode = mnl_attr_get_u32(attr);
  }
  if (link->kind == "vlan" && type == IFLA_VLAN_ID && mnl_attr_validate(attr, MNL_TYPE_U16) >= 0) {
    link->vlan_id = mnl_attr_get_u16(attr);
  }
  return MNL_CB_OK;
}

int ParseLinkInfo(const nlattr* attr, void* data) {
  auto* link = static_cast<Link*>(data);
  if (mnl_attr_get_type(attr) == IFLA_INFO_KIND && mnl_attr_validate(attr, MNL_TYPE_STRING) >= 0) {
    link->kind = mnl_attr_get_str(attr);
  }
  return MNL_CB_OK;
}

int ParseLinkInfoSecond(const nlattr* attr, void* data) {
  if (mnl_attr_get_type(attr) == IFLA_INFO_DATA && mnl_attr_validate(attr, MNL_TYPE_NESTED) >= 0) {
    mnl_attr_parse_nested(attr, ParseLinkInfoData, data);
  }
  return MNL_CB_OK;
}

int ParseLinkAttr(const nlattr* attr, void* data) {
  auto* link = static_cast<Link*>(data);
  switch (mnl_attr_get_type(attr)) {
    case IFLA_IFNAME:
      if (mnl_attr_validate(attr, MNL_TYPE_STRING) >= 0) link->name = mnl_attr_get_str(attr);
      break;
    case IFLA_LINK:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) {
        link->parent = static_cast<int>(mnl_attr_get_u32(attr));
      }
      break;
    case IFLA_ADDRESS:
      if (mnl_attr_get_payload_len(attr) == 6) {
        std::memcpy(link->mac.data(), mnl_attr_get_payload(attr), 6);
      }
      break;
    case IFLA_LINKINFO:
      if (mnl_attr_validate(attr, MNL_TYPE_NESTED) >= 0) {
        // Kind first: the data's layout depends on it.
        mnl_attr_parse_nested(attr, ParseLinkInfo, data);
        mnl_attr_parse_nested(attr, ParseLinkInfoSecond, data);
      }
      break;
  }
  return MNL_CB_OK;
}

int CollectLink(const nlmsghdr* nlh, void* data) {
  auto* links = static_cast<std::vector<Link>*>(data);
  if (nlh->nlmsg_type != RTM_NEWLINK) return MNL_CB_OK;
  const auto* ifm = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(nlh));
  Link link;
  link.ifindex = ifm->ifi_index;
  mnl_attr_parse(nlh, sizeof(*ifm), ParseLinkAttr, &link);
  links->push_back(std::move(link));
  return MNL_CB_OK;
}

// RTM_NEWLINK for a macvlan `name` on `parent` with `mac`; in the namespace `netns_fd` with
// ifindex `ifindex` when netns_fd >= 0 (else in the sender's, the kernel picking the ifindex).
absl::Status NewMacvlan(const std::string& name, int parent, const std::array<uint8_t, 6>& mac,
                        uint32_t mode, int netns_fd, int ifindex) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = NewLinkRequest(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  if (netns_fd >= 0) {
    // rtnl_newlink: a nonzero ifi_index on creation is the new device's ifindex (EBUSY if taken
    // in the target namespace); IFLA_LINK is looked up in the sender's namespace, the device is
    // registered in IFLA_NET_NS_FD's.
    static_cast<ifinfomsg*>(mnl_nlmsg_get_payload(nlh))->ifi_index = ifindex;
  }
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  mnl_attr_put_u32(nlh, IFLA_LINK, static_cast<uint32_t>(parent));
  if (netns_fd >= 0) mnl_attr_put_u32(nlh, IFLA_NET_NS_FD, static_cast<uint32_t>(netns_fd));
  mnl_attr_put(nlh, IFLA_ADDRESS, mac.size(), mac.data());
  nlattr* info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "macvlan");
  nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
  mnl_attr_put_u32(nlh, IFLA_MACVLAN_MODE, mode);
  mnl_attr_nest_end(nlh, data);
  mnl_attr_nest_end(nlh, info);
  const char* where = netns_fd >= 0 ? " in a lease namespace" : "";
  return Transact(absl::StrCat("create macvlan ", name, where), nlh, nullptr, nullptr);
}

}  // namespace

absl::Status CreateMacvlan(const std::string& name, int parent, const std::array<uint8_t, 6>& mac,
                           uint32_t mode) {
  return NewMacvlan(name, parent, mac, mode, /*netns_fd=*/-1, /*ifindex=*/0);
}

absl::Status CreateMacvlanInNetns(const std::string& name, int parent,
                                  const std::array<uint8_t, 6>& mac, uint32_t mode, int netns_fd,
                                  int ifindex) {
  if (netns_fd < 0) return absl::InvalidArgumentError("create macvlan: no target namespace");
  return NewMacvlan(name, parent, mac, mode, netns_fd, ifindex);
}

absl::Status CreateVlan(const std::string& name, int parent, uint16_t vid) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = NewLinkRequest(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  mnl_attr_put_u32(nlh, IFLA_LINK, static_cast<uint32_t>(parent));
  nlattr* info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
  mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "vlan");
  nlattr* data = mnl_attr_nest_start(nlh, IFLA_INFO_DATA);
  mnl_attr_put_u16(nlh, IFLA_VLAN_ID, vid);
  mnl_attr_nest_end(nlh, data);
  mnl_attr_nest_end(nlh, info);
  return Transact(absl::StrCat("create VLAN device ", name), nlh, nullptr, nullptr);
}

absl::Status SetUp(int ifindex) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = NewLinkRequest(buf, RTM_NEWLINK, 0);
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_get_payload(nlh));
  ifm->ifi_index = ifindex;
  ifm->ifi_flags = IFF_UP;
  ifm->ifi_change = IFF_UP;
  return Transact(absl::StrCat("set ifindex ", ifindex, " up"), nlh, nullptr, nullptr);
}

absl::Status DisableIpv6AddressGeneration(int ifindex) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = NewLinkRequest(buf, RTM_NEWLINK, 0);
  static_cast<ifinfomsg*>(mnl_nlmsg_get_payload(nlh))->ifi_index = ifindex;
  nlattr* spec = mnl_attr_nest_start(nlh, IFLA_AF_SPEC);
  nlattr* inet6 = mnl_attr_nest_start(nlh, AF_INET6);
  mnl_attr_put_u8(nlh, IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE);
  mnl_attr_nest_end(nlh, inet6);
  mnl_attr_nest_end(nlh, spec);
  absl::Status s = Transact(absl::StrCat("IPv6 address generation off on ifindex ", ifindex), nlh,
                            nullptr, nullptr);
  if (absl::IsUnimplemented(s) || absl::IsFailedPrecondition(s)) return absl::OkStatus();
  return s;
}

absl::Status Delete(int ifindex) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = NewLinkRequest(buf, RTM_DELLINK, 0);
  static_cast<ifinfomsg*>(mnl_nlmsg_get_payload(nlh))->ifi_index = ifindex;
  return Transact(absl::StrCat("delete ifindex ", ifindex), nlh, nullptr, nullptr);
}

absl::StatusOr<std::vector<Link>> ListLinks() {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = RTM_GETLINK;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  ifm->ifi_family = AF_UNSPEC;
  std::vector<Link> links;
  if (absl::Status s = Transact("list links", nlh, CollectLink, &links); !s.ok()) return s;
  return links;
}

absl::StatusOr<Link> GetLink(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return absl::InvalidArgumentError(absl::StrCat("bad interface name \"", name, "\""));
  }
  char buf[MNL_SOCKET_BUFFER_SIZE];
  // With NLM_F_ACK the answer is followed by an ACK, which ends the exchange.
  nlmsghdr* nlh = NewLinkRequest(buf, RTM_GETLINK, 0);
  mnl_attr_put_strz(nlh, IFLA_IFNAME, name.c_str());
  std::vector<Link> links;
  if (absl::Status s = Transact(absl::StrCat("get link ", name), nlh, CollectLink, &links);
      !s.ok()) {
    return s;
  }
  if (links.empty()) return absl::NotFoundError(absl::StrCat("no interface ", name));
  return links.front();
}

}  // namespace vfbroker::rtnl
