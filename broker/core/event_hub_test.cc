#include "broker/core/event_hub.h"

#include "gtest/gtest.h"

namespace vfbroker {
namespace {

v1::Event EventFor(uint32_t uid, std::string lease) {
  v1::Event event;
  event.set_kind(v1::Event::KIND_GRANTED);
  event.set_owner_uid(uid);
  event.set_lease_id(std::move(lease));
  return event;
}

TEST(EventHubTest, TenantSeesOnlyOwnEventsOperatorSeesAll) {
  EventHub hub;
  auto tenant = hub.Subscribe(1000);
  auto operator_view = hub.Subscribe(std::nullopt);
  hub.Publish(EventFor(1000, "a"));
  hub.Publish(EventFor(1001, "b"));
  EXPECT_EQ(tenant->Next(absl::ZeroDuration())->lease_id(), "a");
  EXPECT_FALSE(tenant->Next(absl::ZeroDuration()).has_value());
  EXPECT_EQ(operator_view->Next(absl::ZeroDuration())->lease_id(), "a");
  EXPECT_EQ(operator_view->Next(absl::ZeroDuration())->lease_id(), "b");
}

TEST(EventHubTest, SlowWatcherGetsOverflowInsteadOfUnboundedQueue) {
  EventHub hub(/*per_watcher_capacity=*/4);
  auto watcher = hub.Subscribe(std::nullopt);
  for (int i = 0; i < 10; ++i) hub.Publish(EventFor(1, std::to_string(i)));
  EXPECT_EQ(watcher->Next(absl::ZeroDuration())->kind(), v1::Event::KIND_OVERFLOW);
  EXPECT_EQ(watcher->Next(absl::ZeroDuration())->lease_id(), "6");
}

TEST(EventHubTest, CloseWakesWatchersAndDroppedWatchersAreForgotten) {
  EventHub hub;
  auto watcher = hub.Subscribe(std::nullopt);
  {
    auto gone = hub.Subscribe(std::nullopt);
  }
  hub.Publish(EventFor(1, "x"));
  EXPECT_EQ(hub.watchers(), 1u);
  hub.CloseAll();
  EXPECT_TRUE(watcher->closed());
  auto late = hub.Subscribe(std::nullopt);
  EXPECT_TRUE(late->closed());
}

}  // namespace
}  // namespace vfbroker
