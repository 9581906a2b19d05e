// The gRPC metadata keys of the broker's wire contract, shared by vfbrokerd and libvfclient so
// the two sides cannot drift apart. See proto/vfbroker/v1/broker.proto.
#ifndef VFBROKER_COMMON_SESSION_METADATA_H_
#define VFBROKER_COMMON_SESSION_METADATA_H_

namespace vfbroker {

// Request metadata carrying the session token from the session socket's SessionHello.
inline constexpr char kSessionMetadataKey[] = "vfbroker-session";
// Trailing metadata the broker sets on every error it returns itself, so a client can tell a
// refusal (never retried) from a transport failure (retried across a broker restart).
inline constexpr char kAnsweredByBrokerKey[] = "vfbroker-answered";

}  // namespace vfbroker

#endif  // VFBROKER_COMMON_SESSION_METADATA_H_
