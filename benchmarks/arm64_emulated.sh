#!/usr/bin/env bash
# Runs voxgate on 64-bit ARM Debian 12 (what Raspberry Pi OS Bookworm 64-bit is built on) on
# an x86 Debian host, under qemu-user emulation: README's `scripts/demo` and `scripts/test`
# as a user of a fresh Pi runs them, and `voxgate eval` on the shared sets, whose output
# benchmarks/compare_eval_runs.py compares with an x86 run. This checks that the install and
# the results carry over to the ARM builds of numpy, onnxruntime, webrtcvad, hama and
# pocketsphinx restricted to a Pi's instruction set. It says nothing of speed: every timing
# under emulation is the emulator's.
#
#   sudo benchmarks/arm64_emulated.sh demo                     # scripts/demo
#   sudo benchmarks/arm64_emulated.sh test                     # scripts/test (README's tests)
#   sudo benchmarks/arm64_emulated.sh eval ../shared/data      # voxgate eval on each set
#
# Root (debootstrap, chroot, mounts). WORK (default /var/tmp/voxgate-arm64) keeps the ARM
# root file system between runs (1.6 GB with a venv; the first run builds it in about 5 minutes)
# and the eval output (WORK/out/SET). QEMU_CPU picks the emulated core: cortex-a72 (Pi 4,
# the default), cortex-a53 (Pi 3 and Zero 2 W), cortex-a76 (Pi 5). The checkout is
# cloned into the ARM root at its HEAD: commit first what is to be checked.
# docs/arm64.md has what it gave.
set -euo pipefail

step="${1:?usage: $0 demo|test|eval DATA_DIR}"
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${WORK:-/var/tmp/voxgate-arm64}"
root="$work/root"
export QEMU_CPU="${QEMU_CPU:-cortex-a72}"

[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || echo "note: this host is $(uname -m), not x86_64" >&2

for pkg in qemu-user-static binfmt-support debootstrap; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support \
      debootstrap >/dev/null
    break
  }
done
# binfmt_misc lets the kernel hand every ARM program (also those pip or the tests start)
# to qemu; in a container it may need mounting first.
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true

if [ ! -x "$root/usr/bin/python3" ]; then
  echo ">> debootstrap arm64 bookworm into $root"
  mkdir -p "$root"
  debootstrap --arch=arm64 --include=python3,python3-venv,git,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { echo "debootstrap failed: see $work/debootstrap.log" >&2; exit 1; }
fi
# The host's CA bundle and resolver: pip inside reaches PyPI as the host does.
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf"

# Under qemu-user /proc/cpuinfo still describes the x86 host. onnxruntime's CPU probe
# (cpuinfo) then finds no ARM core and crashes at import (SIGSEGV); a Pi's own text fixes
# that. The core part follows QEMU_CPU.
case "$QEMU_CPU" in
  cortex-a53) part=0xd03 ;; cortex-a76) part=0xd0b ;; *) part=0xd08 ;;
esac
cpuinfo="$work/cpuinfo"
: >"$cpuinfo"
for ((i = 0; i < $(nproc); i++)); do
  printf 'processor\t: %d\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 3\n\n' \
    "$i" "$part" >>"$cpuinfo"
done

mounted=()
bind() {  # bind SRC DEST [ro]; DEST is made as SRC is (a folder, or a file such as cpuinfo)
  if [ -d "$1" ]; then mkdir -p "$2"; elif [ ! -e "$2" ]; then : >"$2"; fi
  mount --bind "$1" "$2"
  mounted=("$2" "${mounted[@]}")
  [ "${3:-}" = ro ] && mount -o remount,bind,ro "$2"
  return 0
}
cleanup() { for m in "${mounted[@]}"; do umount "$m" || umount -l "$m"; done; }
trap cleanup EXIT
for d in proc sys dev dev/pts dev/shm; do bind "/$d" "$root/$d"; done
bind "$cpuinfo" "$root/proc/cpuinfo"
mkdir -p "$work/out"
bind "$work/out" "$root/out"

rm -rf "$root/root/voxgate"
git clone -q "$here" "$root/root/voxgate"
echo ">> $(git -C "$here" log -1 --format='%h %s' | cut -c1-72) on emulated $QEMU_CPU"

inside() {  # run a shell command in the ARM root, from the clone
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin \
    QEMU_CPU="$QEMU_CPU" PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DEFAULT_TIMEOUT=180 \
    VOXGATE_VENV=/root/venv-"$step" /bin/bash -c "cd /root/voxgate && $1"
}

case "$step" in
  demo) inside "uname -m && scripts/demo" ;;
  test) inside "uname -m && scripts/test -p no:cacheprovider" ;;
  eval)
    data="$(cd "${2:?eval needs the folder of the sets, e.g. ../shared/data}" && pwd)"
    bind "$data" "$root/data" ro
    # The venv and Debian packages the daemon needs: scripts/demo's, without its run.
    inside ". scripts/setup-env.sh && need_debs \"\${BASE_DEBS[@]}\" && need_venv mic"
    for set in "$data"/*/; do
      set="$(basename "$set")"
      [ -f "$data/$set/trials.csv" ] || continue
      echo ">> voxgate eval $set -> $work/out/$set"
      inside "/root/venv-eval/bin/voxgate eval /data/$set --out /out/$set >/dev/null"
    done
    echo "compare: PYTHONPATH=daemon python benchmarks/compare_eval_runs.py X86_RUN $work/out"
    ;;
  *) echo "unknown step '$step': demo, test or eval" >&2; exit 2 ;;
esac
