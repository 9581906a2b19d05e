#!/usr/bin/env bash
# Installs everything vfbroker needs to build, test and run its demo, from Debian's archive only.
# Idempotent: when every package is already there it does nothing (and touches no network).
# Ends with scripts/setup-vm.sh: QEMU 10 and the guest kernel the VFIO tests (tests/vm) boot.
set -euo pipefail

PACKAGES=(
  # build: Bazel 4 (offline) and the C++ libraries the project card names
  bazel-bootstrap bazel-rules-java g++ pkg-config
  libgrpc++-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libabsl-dev libspdlog-dev libgtest-dev libgmock-dev libbenchmark-dev
  liburing-dev libsystemd-dev zlib1g-dev
  # run and test: loop devices, systemd unit linting, benchmark peers
  util-linux systemd fio python3 iproute2
  # AF_XDP driver (vfdrivers/net): libbpf/libxdp, and clang to build XDP programs (-target bpf)
  libbpf-dev libxdp-dev clang
  # broker xdp_nic backend: rtnetlink (macvlan and VLAN devices)
  libmnl-dev
)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "setup: done"
fi

exec "$(dirname "${BASH_SOURCE[0]}")/setup-vm.sh"
