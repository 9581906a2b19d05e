// EventHub: fans broker events (grants, releases, reclaims, scrubs) out to watchers.
//
// Each watcher has a bounded queue; a watcher that falls behind loses its oldest events and
// gets one KIND_OVERFLOW event in their place, so a slow or stalled tenant can never make the
// broker buffer without bound or block a publisher. Thread-safe.
#ifndef VFBROKER_BROKER_CORE_EVENT_HUB_H_
#define VFBROKER_BROKER_CORE_EVENT_HUB_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/vfbroker/v1/broker.pb.h"

namespace vfbroker {

class EventSubscription {
 public:
  // Waits up to `timeout` for the next event; nullopt on timeout or once the hub has closed.
  std::optional<v1::Event> Next(absl::Duration timeout);
  bool closed() const;

 private:
  friend class EventHub;
  EventSubscription(std::optional<uint32_t> only_uid, size_t capacity)
      : only_uid_(only_uid), capacity_(capacity) {}
  void Push(const v1::Event& event);
  void Close();

  const std::optional<uint32_t> only_uid_;  // nullopt: sees every event (operators)
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::deque<v1::Event> queue_ ABSL_GUARDED_BY(mu_);
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

class EventHub {
 public:
  explicit EventHub(size_t per_watcher_capacity = 1024) : capacity_(per_watcher_capacity) {}
  ~EventHub() { CloseAll(); }

  // A watcher that sees events of `only_uid`'s leases, or every event when nullopt.
  std::shared_ptr<EventSubscription> Subscribe(std::optional<uint32_t> only_uid);
  void Publish(const v1::Event& event);
  // Wakes and ends every watcher (broker shutdown).
  void CloseAll();
  size_t watchers() const;

 private:
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::vector<std::weak_ptr<EventSubscription>> subscribers_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_CORE_EVENT_HUB_H_
