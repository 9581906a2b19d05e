#include "broker/allocator/nic_request.h"

#include <random>

#include "gtest/gtest.h"

namespace vfbroker {
namespace {

v1::FlowFilter Udp(const std::string& dst_ip, uint32_t dst_port, const std::string& src_ip = "",
                   uint32_t src_port = 0) {
  v1::FlowFilter f;
  f.set_protocol(v1::FlowFilter::PROTOCOL_UDP);
  f.set_dst_ip(dst_ip);
  f.set_dst_port(dst_port);
  f.set_src_ip(src_ip);
  f.set_src_port(src_port);
  return f;
}

TEST(NicRequestTest, MacParsing) {
  auto mac = ParseUnicastMac("02:AB:cd:00:00:01");
  ASSERT_TRUE(mac.ok()) << mac.status();
  EXPECT_EQ(FormatMac(*mac), "02:ab:cd:00:00:01");
  EXPECT_TRUE(ParseUnicastMac("02-00-00-00-00-01").ok());
  for (const char* bad : {"", "garbage", "02:00:00:00:00", "02:00:00:00:00:01:02",
                          "02:00:00:00:00:0g", "02:00-00:00:00:01", "02:00:00:00:00:1",
                          "0200.0000.0001", " 02:00:00:00:00:01", "02:00:00:00:00:01\n",
                          "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "03:00:00:00:00:01",
                          "00:00:00:00:00:00"}) {
    EXPECT_EQ(ParseUnicastMac(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  // Embedded NUL and very long input are refused without reading past them.
  EXPECT_FALSE(ParseUnicastMac(absl::string_view("02:00:00\0:00:00:1", 17)).ok());
  EXPECT_FALSE(ParseUnicastMac(std::string(100000, 'a')).ok());
}

TEST(NicRequestTest, PickedMacsAreLocalUnicast) {
  std::mt19937_64 rng(1);
  for (int i = 0; i < 10000; ++i) {
    MacBytes mac = LocalUnicastMac(rng());
    EXPECT_EQ(mac[0] & 0x03, 0x02);
    EXPECT_TRUE(ParseUnicastMac(FormatMac(mac)).ok());
  }
  EXPECT_TRUE(ParseUnicastMac(FormatMac(LocalUnicastMac(0))).ok());
  EXPECT_TRUE(ParseUnicastMac(FormatMac(LocalUnicastMac(~uint64_t{0}))).ok());
}

TEST(NicRequestTest, Vlan) {
  EXPECT_TRUE(ValidateVlan(0).ok());
  EXPECT_TRUE(ValidateVlan(1).ok());
  EXPECT_TRUE(ValidateVlan(4094).ok());
  for (uint32_t bad : {4095u, 4096u, 65535u, 0xffffffffu}) {
    EXPECT_EQ(ValidateVlan(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(NicRequestTest, Shape) {
  v1::AllocateNicRequest r;
  EXPECT_TRUE(ValidateNicShape(r).ok());
  r.set_queues(1);
  EXPECT_TRUE(ValidateNicShape(r).ok());
  r.set_queues(2);
  EXPECT_EQ(ValidateNicShape(r).code(), absl::StatusCode::kUnimplemented);
  r.set_queues(0);
  r.set_max_tx_rate_mbps(10);
  EXPECT_EQ(ValidateNicShape(r).code(), absl::StatusCode::kUnimplemented);
  r.set_max_tx_rate_mbps(0);
  r.set_vlan(4095);
  EXPECT_EQ(ValidateNicShape(r).code(), absl::StatusCode::kInvalidArgument);
  r.set_vlan(7);
  r.set_mac("ff:ff:ff:ff:ff:ff");
  EXPECT_EQ(ValidateNicShape(r).code(), absl::StatusCode::kInvalidArgument);
  r.set_mac("");
  for (size_t i = 0; i <= kMaxFiltersPerLease; ++i) *r.add_filters() = Udp("10.0.0.1", 1 + i);
  EXPECT_EQ(ValidateNicShape(r).code(), absl::StatusCode::kInvalidArgument);
}

TEST(NicRequestTest, FilterNormalization) {
  auto f = NormalizeFilter(Udp("10.1.2.3", 53, "10.9.9.9", 4000));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->protocol(), 17u);
  EXPECT_EQ(f->dst_ip(), 0x0a010203u);
  EXPECT_EQ(f->src_ip(), 0x0a090909u);
  EXPECT_EQ(f->dst_port(), 53u);
  EXPECT_EQ(f->src_port(), 4000u);
  EXPECT_EQ(ToApiFilter(*f).dst_ip(), "10.1.2.3");
  EXPECT_EQ(ToApiFilter(*f).src_ip(), "10.9.9.9");
  EXPECT_TRUE(NormalizeFilter(Udp("10.1.2.3/32", 53)).ok());

  auto code = [](const v1::FlowFilter& filter) { return NormalizeFilter(filter).status().code(); };
  using C = absl::StatusCode;
  EXPECT_EQ(code(Udp("10.1.2.3", 70000)), C::kInvalidArgument);
  EXPECT_EQ(code(Udp("10.1.2.3", 53, "10.0.0.1", 70000)), C::kInvalidArgument);
  EXPECT_EQ(code(Udp("10.1.2.300", 53)), C::kInvalidArgument);
  EXPECT_EQ(code(Udp("not-an-ip", 53)), C::kInvalidArgument);
  EXPECT_EQ(code(Udp("10.1.2.3/33", 53)), C::kInvalidArgument);
  EXPECT_EQ(code(Udp("10.1.2.3/", 53)), C::kInvalidArgument);
  EXPECT_EQ(code(Udp("10.1.2.3/x", 53)), C::kInvalidArgument);
  EXPECT_EQ(code(Udp(std::string(1000, '1'), 53)), C::kInvalidArgument);
  EXPECT_EQ(code(Udp("10.1.2.3", 53, "0.0.0.0", 9)), C::kInvalidArgument);
  EXPECT_EQ(code(Udp("10.1.2.0/24", 53)), C::kUnimplemented);
  EXPECT_EQ(code(Udp("fe80::1", 53)), C::kUnimplemented);
  EXPECT_EQ(code(Udp("", 53)), C::kUnimplemented);
  EXPECT_EQ(code(Udp("10.1.2.3", 0)), C::kUnimplemented);
  EXPECT_EQ(code(Udp("10.1.2.3", 53, "10.0.0.1", 0)), C::kUnimplemented);
  EXPECT_EQ(code(Udp("10.1.2.3", 53, "", 9)), C::kUnimplemented);
  v1::FlowFilter any = Udp("10.1.2.3", 53);
  any.set_protocol(v1::FlowFilter::PROTOCOL_ANY);
  EXPECT_EQ(code(any), C::kUnimplemented);
  any.set_protocol(static_cast<v1::FlowFilter::Protocol>(99));
  EXPECT_EQ(code(any), C::kInvalidArgument);
}

TEST(NicRequestTest, Overlap) {
  auto n = [](const v1::FlowFilter& f) { return *NormalizeFilter(f); };
  journal::NicFilter any_src = n(Udp("10.0.0.1", 53));
  journal::NicFilter exact = n(Udp("10.0.0.1", 53, "10.0.0.9", 1000));
  journal::NicFilter exact2 = n(Udp("10.0.0.1", 53, "10.0.0.9", 1001));
  journal::NicFilter other_port = n(Udp("10.0.0.1", 54));
  v1::FlowFilter tcp = Udp("10.0.0.1", 53);
  tcp.set_protocol(v1::FlowFilter::PROTOCOL_TCP);
  EXPECT_TRUE(FiltersOverlap(any_src, any_src));
  EXPECT_TRUE(FiltersOverlap(any_src, exact));
  EXPECT_TRUE(FiltersOverlap(exact, any_src));
  EXPECT_TRUE(FiltersOverlap(exact, exact));
  EXPECT_FALSE(FiltersOverlap(exact, exact2));
  EXPECT_FALSE(FiltersOverlap(any_src, other_port));
  EXPECT_FALSE(FiltersOverlap(any_src, n(tcp)));

  google::protobuf::RepeatedPtrField<v1::FlowFilter> request;
  *request.Add() = Udp("10.0.0.1", 53);
  *request.Add() = Udp("10.0.0.1", 54);
  EXPECT_TRUE(NormalizeFilters(request).ok());
  *request.Add() = Udp("10.0.0.1", 53, "10.0.0.2", 7);
  auto refused = NormalizeFilters(request);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("filters[2]"), std::string::npos);
}

}  // namespace
}  // namespace vfbroker
