// Conversions between absl::Status (the project's error type) and grpc::Status (the wire's).
// Canonical codes share their numbering, so the mapping is one-to-one. Thread-safe.
#ifndef VFBROKER_COMMON_GRPC_STATUS_H_
#define VFBROKER_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace vfbroker {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

}  // namespace vfbroker

#endif  // VFBROKER_COMMON_GRPC_STATUS_H_
