#include "broker/service/broker_service.h"

#include <string>

#include "common/grpc_status.h"

namespace vfbroker {
namespace {

std::string SessionToken(const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kSessionMetadataKey);
  if (it == metadata.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

}  // namespace

grpc::Status BrokerService::Finish(grpc::ServerContext* context, const absl::Status& status) {
  if (!status.ok()) {
    core_->CountDenied();
    // Tells the client this answer is the broker's own, not a transport failure: it must not
    // be retried as if the broker were unreachable.
    context->AddTrailingMetadata(kAnsweredByBrokerKey, "1");
  }
  return ToGrpcStatus(status);
}

grpc::Status BrokerService::ListPools(grpc::ServerContext* context,
                                      const v1::ListPoolsRequest* /*request*/,
                                      v1::ListPoolsResponse* response) {
  absl::StatusOr<std::vector<v1::Pool>> pools = core_->ListPools(SessionToken(*context));
  if (!pools.ok()) return Finish(context, pools.status());
  for (v1::Pool& pool : *pools) *response->add_pools() = std::move(pool);
  return grpc::Status::OK;
}

grpc::Status BrokerService::AllocateExtent(grpc::ServerContext* context,
                                           const v1::AllocateExtentRequest* request,
                                           v1::AllocateExtentResponse* response) {
  absl::StatusOr<v1::Lease> lease = core_->AllocateExtent(SessionToken(*context), *request);
  if (!lease.ok()) return Finish(context, lease.status());
  *response->mutable_lease() = *std::move(lease);
  return grpc::Status::OK;
}

grpc::Status BrokerService::AllocateNic(grpc::ServerContext* context,
                                        const v1::AllocateNicRequest* request,
                                        v1::AllocateNicResponse* response) {
  absl::StatusOr<v1::Lease> lease = core_->AllocateNic(SessionToken(*context), *request);
  if (!lease.ok()) return Finish(context, lease.status());
  *response->mutable_lease() = *std::move(lease);
  return grpc::Status::OK;
}

grpc::Status BrokerService::AddFlowFilter(grpc::ServerContext* context,
                                          const v1::AddFlowFilterRequest* request,
                                          v1::AddFlowFilterResponse* response) {
  absl::StatusOr<v1::FlowFilter> filter =
      core_->AddFlowFilter(SessionToken(*context), request->lease_id(), request->filter());
  if (!filter.ok()) return Finish(context, filter.status());
  *response->mutable_filter() = *std::move(filter);
  return grpc::Status::OK;
}

grpc::Status BrokerService::RemoveFlowFilter(grpc::ServerContext* context,
                                             const v1::RemoveFlowFilterRequest* request,
                                             v1::RemoveFlowFilterResponse* /*response*/) {
  return Finish(context, core_->RemoveFlowFilter(SessionToken(*context), request->lease_id(),
                                                 request->filter_id()));
}

grpc::Status BrokerService::Release(grpc::ServerContext* context,
                                    const v1::ReleaseRequest* request,
                                    v1::ReleaseResponse* /*response*/) {
  return Finish(context, core_->Release(SessionToken(*context), request->lease_id()));
}

grpc::Status BrokerService::ListLeases(grpc::ServerContext* context,
                                       const v1::ListLeasesRequest* /*request*/,
                                       v1::ListLeasesResponse* response) {
  absl::StatusOr<std::vector<v1::Lease>> leases = core_->ListLeases(SessionToken(*context));
  if (!leases.ok()) return Finish(context, leases.status());
  for (v1::Lease& lease : *leases) *response->add_leases() = std::move(lease);
  return grpc::Status::OK;
}

grpc::Status BrokerService::WatchEvents(grpc::ServerContext* context,
                                        const v1::WatchEventsRequest* /*request*/,
                                        grpc::ServerWriter<v1::Event>* writer) {
  absl::StatusOr<std::shared_ptr<EventSubscription>> subscription =
      core_->Watch(SessionToken(*context));
  if (!subscription.ok()) return Finish(context, subscription.status());
  // Sends the initial metadata now, so a watcher knows it is subscribed before any event.
  writer->SendInitialMetadata();
  while (!context->IsCancelled() && !shutting_down_.load() && !(*subscription)->closed()) {
    std::optional<v1::Event> event = (*subscription)->Next(absl::Milliseconds(200));
    if (event.has_value() && !writer->Write(*event)) break;
  }
  return grpc::Status::OK;
}

grpc::Status BrokerService::GetStats(grpc::ServerContext* context,
                                     const v1::GetStatsRequest* /*request*/,
                                     v1::GetStatsResponse* response) {
  absl::StatusOr<v1::GetStatsResponse> stats = core_->GetStats(SessionToken(*context));
  if (!stats.ok()) return Finish(context, stats.status());
  *response = *std::move(stats);
  return grpc::Status::OK;
}

}  // namespace vfbroker
