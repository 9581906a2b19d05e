#!/usr/bin/env bash
# Builds the guest's initramfs (a gzip'd newc cpio) for tests/vm:
#   - busybox-static as /bin/busybox (the applets are linked by /init at boot),
#   - the guest kernel's modules the harness needs, plus their dependencies, in load order
#     (dependencies first, from the modules.dep that scripts/setup-vm.sh generated), listed in /modlist,
#   - tests/vm/init.sh as /init, vm_lib.sh as /lib/vm_lib.sh, the SCENARIO script as /scenario,
#   - tests/vm/nvme_vadmin (compiled here with gcc -static) as /bin/nvme_vadmin,
#   - any extra binaries given as arguments, into /bin: static ones as they are; dynamic ones with the
#     shared libraries `ldd` reports and the ELF interpreter, at the same paths as on the host
#     (libraries from outside /lib and /usr/lib, e.g. a cc_test's Bazel-built ones, also in /usr/lib),
#   - the files and directories listed in $VM_EXTRA_PATHS (absolute host paths, separated by
#     spaces), copied as they are (symlinks followed) to the same paths in the guest, e.g.
#     VM_EXTRA_PATHS="/usr/libexec/valgrind/callgrind-amd64-linux /usr/libexec/valgrind/default.supp"
#     (no libraries are added for them: pass an executable as a BINARY for that),
#   - the guest kernel modules named in $VM_EXTRA_MODULES (names as in modules.dep, separated by
#     spaces, e.g. VM_EXTRA_MODULES="8021q macvlan veth sch_ingress cls_bpf"), after MODULES and
#     resolved with their dependencies exactly like them, into the same /modlist (a module built
#     into the kernel, listed in modules.builtin, is skipped).
# usage: [VM_EXTRA_PATHS="PATH..."] [VM_EXTRA_MODULES="MODULE..."] build_initramfs.sh OUTPUT.cpio.gz SCENARIO [BINARY...]
# The guest kernel comes from $VFBROKER_VM_CACHE (default: <repo>/.cache/vm), filled by scripts/setup-vm.sh.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VFBROKER_VM_CACHE:-$REPO/.cache/vm}
(($# >= 2)) || { echo "usage: $0 OUTPUT.cpio.gz SCENARIO [BINARY...]" >&2; exit 2; }
OUT=$1; SCENARIO=$2; shift 2
[[ -f $SCENARIO ]] || { echo "build_initramfs: no scenario $SCENARIO" >&2; exit 1; }
read -r -d "" -a EXTRA_PATHS <<< "${VM_EXTRA_PATHS:-}" || true  # any whitespace separates
for p in ${EXTRA_PATHS[@]+"${EXTRA_PATHS[@]}"}; do
  [[ $p == /* && -e $p ]] || { echo "build_initramfs: VM_EXTRA_PATHS: $p is not an existing absolute path" >&2; exit 1; }
done

MODULES=(vfio vfio_iommu_type1 vfio-pci nvme igb igbvf)
read -r -d "" -a EXTRA_MODULES <<< "${VM_EXTRA_MODULES:-}" || true  # any whitespace separates
MODULES+=(${EXTRA_MODULES[@]+"${EXTRA_MODULES[@]}"})

# VM_KERNEL=6.12 selects $CACHE/kernel-6.12 (scripts/setup-vm.sh fetches both); default $CACHE/kernel (6.1).
KDIR=$CACHE/kernel${VM_KERNEL:+-$VM_KERNEL}
KV=$(ls "$KDIR/lib/modules" 2>/dev/null | head -1)
MD=$KDIR/lib/modules/$KV
[[ -n $KV && -f $MD/modules.dep ]] || { echo "build_initramfs: no guest kernel in $KDIR; run scripts/setup-vm.sh" >&2; exit 1; }
[[ -x /bin/busybox ]] && /bin/busybox --list | grep -x insmod >/dev/null ||
  { echo "build_initramfs: need busybox-static (/bin/busybox)" >&2; exit 1; }

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/vfbroker-initramfs.XXXXXX")
chmod 0755 "$ROOT"  # mktemp makes it 0700, which would become the guest's / and lock out its tenants
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,lib/modules/"$KV"}
cp /bin/busybox "$ROOT/bin/busybox"
install -m 0755 "$HERE/init.sh" "$ROOT/init"
install -m 0644 "$HERE/vm_lib.sh" "$ROOT/lib/vm_lib.sh"
install -m 0755 "$SCENARIO" "$ROOT/scenario"
gcc -static -O2 -Wall -Wextra -Werror -o "$ROOT/bin/nvme_vadmin" "$HERE/nvme_vadmin.c"

# Modules in dependency order.
declare -A seen=()
order=()
add_module() {
  local path=$1 dep
  [[ -n ${seen[$path]:-} ]] && return
  seen[$path]=1
  for dep in $(grep -m1 "^$path:" "$MD/modules.dep" | cut -d: -f2); do add_module "$dep"; done
  order+=("$path")
}
for m in "${MODULES[@]}"; do
  path=$(grep -m1 -E "/$m\.ko(\.xz|\.zst)?:" "$MD/modules.dep" | cut -d: -f1 || true)
  # Built into this kernel (e.g. virtio_pci in Debian's 6.12, a module in 6.1): nothing to load.
  if [[ -z $path ]] && grep -q -E "/$m\.ko$" "$MD/modules.builtin" 2>/dev/null; then continue; fi
  [[ -n $path ]] || { echo "build_initramfs: module $m not in $MD/modules.dep" >&2; exit 1; }
  add_module "$path"
done
: > "$ROOT/modlist"
for path in "${order[@]}"; do
  dest=$ROOT/lib/modules/$KV/${path%.xz}; dest=${dest%.zst}
  mkdir -p "$(dirname "$dest")"
  case $path in  # busybox insmod wants plain .ko
    *.xz) xz -dc "$MD/$path" > "$dest" ;;
    *.zst) zstd -qdc "$MD/$path" > "$dest" ;;
    *) cp "$MD/$path" "$dest" ;;
  esac
  echo "${dest#$ROOT/lib/modules/$KV/}" >> "$ROOT/modlist"
done

# Extra binaries.
for bin in "$@"; do
  [[ -f $bin && -x $bin ]] || { echo "build_initramfs: $bin is not an executable file" >&2; exit 1; }
  cp -L "$bin" "$ROOT/bin/"
  if ldd "$bin" >/dev/null 2>&1; then
    for lib in $(ldd "$bin" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}'); do
      mkdir -p "$ROOT$(dirname "$lib")"
      [[ -e $ROOT$lib ]] || cp -L "$lib" "$ROOT$lib"
      # Found outside the loader's system directories (a cc_test's Bazel-built libraries, through
      # a RUNPATH relative to where the binary was): also into /usr/lib, which the guest's loader
      # searches.
      case $lib in
        /lib/* | /lib64/* | /usr/lib/* | /usr/lib64/*) ;;
        *) mkdir -p "$ROOT/usr/lib"; [[ -e $ROOT/usr/lib/$(basename "$lib") ]] || cp -L "$lib" "$ROOT/usr/lib/" ;;
      esac
    done
  fi
done

# Extra files and directories, at their host paths.
for p in ${EXTRA_PATHS[@]+"${EXTRA_PATHS[@]}"}; do
  mkdir -p "$ROOT$(dirname "$p")"
  cp -rL "$p" "$ROOT$(dirname "$p")/"
done

mkdir -p "$(dirname "$OUT")"
(cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 > "$OUT"
echo "build_initramfs: $OUT ($(du -k "$OUT" | cut -f1) KiB, kernel $KV, ${#order[@]} modules, scenario $(basename "$SCENARIO"), $# extra binaries, ${#EXTRA_PATHS[@]} extra paths)"
