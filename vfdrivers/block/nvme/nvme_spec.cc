#include "vfdrivers/block/nvme/nvme_spec.h"

#include <cerrno>

#include "absl/strings/str_format.h"

namespace vfdrivers::block::nvme {

absl::Status NvmeStatusToStatus(uint32_t device_status, const char* what) {
  if (device_status == 0) return absl::OkStatus();
  const std::string msg =
      absl::StrFormat("%s: NVMe status SCT 0x%x SC 0x%02x", what, (device_status >> 8) & 0xFF,
                      device_status & 0xFF);
  if (device_status == kStatusUnknownCid) {
    return absl::DataLossError(absl::StrFormat("%s: completion with unknown command id", what));
  }
  if (device_status == kStatusBadSqHead) {
    return absl::DataLossError(absl::StrFormat("%s: completion with SQ head out of range", what));
  }
  const uint32_t sct = (device_status >> 8) & 0xFF, sc = device_status & 0xFF;
  switch (sct) {
    case kSctGeneric:
      switch (sc) {
        case kScInvalidOpcode: return absl::UnimplementedError(msg);
        case kScInvalidField: return absl::InvalidArgumentError(msg);
        case kScInvalidNamespace: return absl::NotFoundError(msg);
        case kScDataTransferError: return absl::DataLossError(msg);
        case kScInternal: return absl::InternalError(msg);
        case kScLbaOutOfRange: return absl::OutOfRangeError(msg);
        default: return absl::UnknownError(msg);
      }
    case kSctCommandSpecific: return absl::FailedPreconditionError(msg);
    case kSctMedia: return absl::DataLossError(msg);
    case 3: return absl::UnavailableError(msg);  // path related
    default: return absl::UnknownError(msg);
  }
}

int32_t NvmeStatusToErrno(uint32_t device_status) {
  if (device_status == 0) return 0;
  const uint32_t sct = (device_status >> 8) & 0xFF, sc = device_status & 0xFF;
  if (device_status < 0x10000 && sct == kSctGeneric) {
    if (sc == kScInvalidOpcode) return -EOPNOTSUPP;
    if (sc == kScInvalidField || sc == kScLbaOutOfRange || sc == kScInvalidNamespace) {
      return -EINVAL;
    }
  }
  return -EIO;
}

}  // namespace vfdrivers::block::nvme
