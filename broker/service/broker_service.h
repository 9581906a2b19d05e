// BrokerService: the vfbroker.v1.Broker gRPC service. Deliberately thin: it takes the session
// token from the call's metadata, hands the request to BrokerCore, and maps absl::Status to
// grpc::Status. Thread-safe (the core is).
#ifndef VFBROKER_BROKER_SERVICE_BROKER_SERVICE_H_
#define VFBROKER_BROKER_SERVICE_BROKER_SERVICE_H_

#include <atomic>

#include "broker/core/broker_core.h"
#include "common/session_metadata.h"
#include "proto/vfbroker/v1/broker.grpc.pb.h"

namespace vfbroker {


class BrokerService final : public v1::Broker::Service {
 public:
  explicit BrokerService(BrokerCore* core) : core_(core) {}

  // Ends every WatchEvents stream (they poll this between events).
  void Shutdown() { shutting_down_.store(true); }

  grpc::Status ListPools(grpc::ServerContext* context, const v1::ListPoolsRequest* request,
                         v1::ListPoolsResponse* response) override;
  grpc::Status AllocateExtent(grpc::ServerContext* context,
                              const v1::AllocateExtentRequest* request,
                              v1::AllocateExtentResponse* response) override;
  grpc::Status AllocateNic(grpc::ServerContext* context, const v1::AllocateNicRequest* request,
                           v1::AllocateNicResponse* response) override;
  grpc::Status AddFlowFilter(grpc::ServerContext* context,
                             const v1::AddFlowFilterRequest* request,
                             v1::AddFlowFilterResponse* response) override;
  grpc::Status RemoveFlowFilter(grpc::ServerContext* context,
                                const v1::RemoveFlowFilterRequest* request,
                                v1::RemoveFlowFilterResponse* response) override;
  grpc::Status Release(grpc::ServerContext* context, const v1::ReleaseRequest* request,
                       v1::ReleaseResponse* response) override;
  grpc::Status ListLeases(grpc::ServerContext* context, const v1::ListLeasesRequest* request,
                          v1::ListLeasesResponse* response) override;
  grpc::Status WatchEvents(grpc::ServerContext* context, const v1::WatchEventsRequest* request,
                           grpc::ServerWriter<v1::Event>* writer) override;
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::GetStatsResponse* response) override;

 private:
  grpc::Status Finish(grpc::ServerContext* context, const absl::Status& status);

  BrokerCore* const core_;
  std::atomic<bool> shutting_down_{false};
};

}  // namespace vfbroker

#endif  // VFBROKER_BROKER_SERVICE_BROKER_SERVICE_H_
