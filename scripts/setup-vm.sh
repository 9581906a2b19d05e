#!/usr/bin/env bash
# Sets up the QEMU guest harness (tests/vm) from Debian's archive only:
#   - QEMU 10 (qemu-system-x86) from bookworm-backports (bookworm's 7.2 has no igb model),
#   - busybox-static, cpio, kmod (depmod) for the initramfs,
#   - two Debian guest kernels, downloaded with `apt-get download` and unpacked with `dpkg -x` (never
#     installed on the host): bookworm's linux-image-6.1.0-*-amd64 into .cache/vm/kernel/ (the
#     default: what Debian 12 runs), and the newest linux-image-6.12.*+deb12-amd64-unsigned into
#     .cache/vm/kernel-6.12/ (tests selecting VM_KERNEL=6.12: xdp_nic needs Linux 6.4+).
# Idempotent: when everything is already there it does nothing and touches no network.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${VFBROKER_VM_CACHE:-$REPO/.cache/vm}
BACKPORTS_SOURCES=/etc/apt/sources.list.d/vfbroker-bookworm-backports.sources

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
qemu_major() {
  command -v qemu-system-x86_64 >/dev/null || { echo 0; return; }
  qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1
}
kernel_ready() {  # [DIR]
  local dir=${1:-$CACHE/kernel}
  compgen -G "$dir/lib/modules/*/modules.dep" >/dev/null && compgen -G "$dir/boot/vmlinuz-*" >/dev/null
}

need_qemu=0; (( $(qemu_major) >= 10 )) || need_qemu=1
missing=()
for p in busybox-static cpio kmod; do have_pkg "$p" || missing+=("$p"); done
if (( need_qemu == 0 )) && ((${#missing[@]} == 0)) && kernel_ready && kernel_ready "$CACHE/kernel-6.12"; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "setup-vm: need root to install QEMU 10 / ${missing[*]:-} and fetch the guest kernel" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive

# bookworm-backports with the same URI and keyring as the main Debian entry.
if (( need_qemu )) && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=""; keyring=""
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    # deb822: the stanza whose Suites has plain "bookworm".
    read -r uri keyring < <(awk -v RS= '/Suites:[^\n]*bookworm( |\n|$)/ && !/bookworm-security/ {
        u = ""; k = ""; n = split($0, l, "\n")
        for (i = 1; i <= n; i++) {
          if (l[i] ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", l[i]); split(l[i], a, " "); u = a[1] }
          if (l[i] ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", l[i]); k = l[i] }
        }
        if (u != "") { print u, k; exit } }' /etc/apt/sources.list.d/debian.sources)
  fi
  if [[ -z $uri && -f /etc/apt/sources.list ]]; then
    line=$(grep -E '^deb .* bookworm( |$)' /etc/apt/sources.list | head -1 || true)
    keyring=$(sed -n 's/.*signed-by=\([^] ]*\).*/\1/p' <<<"$line")
    uri=$(sed -E 's/^deb +(\[[^]]*\] +)?([^ ]+).*/\2/' <<<"$line")
  fi
  [[ -n $uri ]] || { echo "setup-vm: no main Debian bookworm entry found in apt sources" >&2; exit 1; }
  [[ -n $keyring ]] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  echo "setup-vm: adding bookworm-backports ($uri, $keyring) as $BACKPORTS_SOURCES"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
    "$uri" "$keyring" > "$BACKPORTS_SOURCES"
fi

apt-get update -qq
if ((${#missing[@]})); then
  echo "setup-vm: installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if (( need_qemu )); then
  echo "setup-vm: installing qemu-system-x86 from bookworm-backports"
  apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
  (( $(qemu_major) >= 10 )) || { echo "setup-vm: QEMU is $(qemu_major).x, need 10" >&2; exit 1; }
fi

fetch_kernel() {  # PACKAGE DIR
  local pkg=$1 dir=$2 kv
  echo "setup-vm: fetching guest kernel $pkg into $dir (not installed on the host)"
  rm -rf "$dir" "$CACHE/deb"; mkdir -p "$CACHE/deb"
  if id _apt >/dev/null 2>&1; then chown _apt "$CACHE/deb"; fi  # apt downloads as _apt
  (cd "$CACHE/deb" && apt-get download -qq "$pkg")
  dpkg -x "$CACHE"/deb/"$pkg"_*.deb "$dir"
  kv=$(basename "$(ls -d "$dir"/lib/modules/*)")
  depmod -b "$dir" "$kv"
  rm -rf "$CACHE/deb"
  kernel_ready "$dir" || { echo "setup-vm: guest kernel unpack failed ($dir)" >&2; exit 1; }
}
if ! kernel_ready; then
  # Newest linux-image-6.1.0-N-amd64 (unsigned) that the archive offers.
  pkg=$(apt-cache pkgnames linux-image-6.1.0- | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' |
        sort -t- -k4,4n | tail -1)
  [[ -n $pkg ]] || { echo "setup-vm: no linux-image-6.1.0-*-amd64 in the archive" >&2; exit 1; }
  fetch_kernel "$pkg" "$CACHE/kernel"
fi
if ! kernel_ready "$CACHE/kernel-6.12"; then
  # Newest linux-image-6.12.N+deb12-amd64-unsigned (bookworm's security/backport line of 6.12).
  pkg=$(apt-cache pkgnames linux-image-6.12. | grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' |
        sort -V | tail -1)
  [[ -n $pkg ]] || { echo "setup-vm: no linux-image-6.12.*+deb12-amd64-unsigned in the archive" >&2; exit 1; }
  fetch_kernel "$pkg" "$CACHE/kernel-6.12"
fi
echo "setup-vm: done (QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), guest kernels $(ls "$CACHE/kernel/lib/modules") and $(ls "$CACHE/kernel-6.12/lib/modules"))"
