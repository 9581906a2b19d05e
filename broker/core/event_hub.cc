#include "broker/core/event_hub.h"

#include <algorithm>

namespace vfbroker {

std::optional<v1::Event> EventSubscription::Next(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return closed_ || overflowed_ || !queue_.empty();
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (overflowed_) {
    overflowed_ = false;
    v1::Event overflow;
    overflow.set_kind(v1::Event::KIND_OVERFLOW);
    overflow.set_unix_ms(absl::ToUnixMillis(absl::Now()));
    overflow.set_detail("this watcher fell behind; older events were dropped");
    return overflow;
  }
  if (queue_.empty()) return std::nullopt;
  v1::Event event = std::move(queue_.front());
  queue_.pop_front();
  return event;
}

bool EventSubscription::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

void EventSubscription::Push(const v1::Event& event) {
  if (only_uid_.has_value() && event.owner_uid() != *only_uid_) return;
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  if (queue_.size() >= capacity_) {
    queue_.pop_front();
    overflowed_ = true;
  }
  queue_.push_back(event);
}

void EventSubscription::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

std::shared_ptr<EventSubscription> EventHub::Subscribe(std::optional<uint32_t> only_uid) {
  std::shared_ptr<EventSubscription> subscription(new EventSubscription(only_uid, capacity_));
  absl::MutexLock lock(&mu_);
  if (closed_) {
    subscription->Close();
  } else {
    subscribers_.push_back(subscription);
  }
  return subscription;
}

void EventHub::Publish(const v1::Event& event) {
  absl::MutexLock lock(&mu_);
  subscribers_.erase(std::remove_if(subscribers_.begin(), subscribers_.end(),
                                    [&](const std::weak_ptr<EventSubscription>& weak) {
                                      std::shared_ptr<EventSubscription> live = weak.lock();
                                      if (!live) return true;
                                      live->Push(event);
                                      return false;
                                    }),
                     subscribers_.end());
}

void EventHub::CloseAll() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  for (const std::weak_ptr<EventSubscription>& weak : subscribers_) {
    if (std::shared_ptr<EventSubscription> live = weak.lock()) live->Close();
  }
  subscribers_.clear();
}

size_t EventHub::watchers() const {
  absl::MutexLock lock(&mu_);
  return subscribers_.size();
}

}  // namespace vfbroker
