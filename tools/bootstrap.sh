#!/usr/bin/env bash
# Installs what hypercontainer needs on a fresh Debian or Ubuntu host, idempotently: system packages (apt-get),
# then a virtual environment with the package. `--test` adds what the tests, benchmarks and fuzzers use (the clients
# runv is tested with, a registry, clang; the test extras): make demo installs only what a pod needs, so a first run
# does not wait for podman, docker and a compiler toolchain it does not use.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
[ "${1:-}" = "--test" ] && TEST=1

# Every binary and shared library src/ uses. Not listed, as Debian's essential set has them: util-linux (nsenter,
# setpriv, unshare), libc-bin (ldd), coreutils, tar, grep, dpkg (dpkg-deb); apt itself runs this script.
PACKAGES=(qemu-system-x86 musl-tools busybox-static make gcc zstd ca-certificates
          libseccomp2                                    # QEMU's and virtiofsd's seccomp filter (ctypes: libseccomp.so.2)
          mount e2fsprogs                                # mount, umount, losetup; mkfs.ext4 for pod disks (debugfs: tests)
          iproute2 nftables                              # pod networking: links (netlink) and NAT
          flex bison bc lz4 libelf-dev libssl-dev xz-utils binutils  # the guest kernel from linux-source (strip)
          containernetworking-plugins iptables)          # the CRI's sandboxes: CNI (bridge, host-local, portmap)
# What tests, benchmarks, `make critest` and `make fuzz` use besides.
TEST_PACKAGES=(procps                                    # pgrep, pkill
          podman containerd docker.io runc               # the clients runv is tested with (and runc to compare)
          docker-registry skopeo  # a real registry and its client for tests, benchmarks and `make critest`
          dpkg-dev bzip2  # `make critest`: dpkg-source unpacks busybox's source package (critest wants ipcs, pgrep)
          clang libclang-rt-dev)  # the agent's fuzzers (libFuzzer) and its unit tests under ASan and UBSan
[ $TEST = 1 ] && PACKAGES+=("${TEST_PACKAGES[@]}")
# Where virtiofsd is its own package (Debian 13, Ubuntu), take it too.
OPTIONAL=(virtiofsd)

need=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ] || ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
  echo ">> apt-get install ${need[*]:-(refreshing lists)}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  for p in "${OPTIONAL[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1 && ! dpkg-query -W "$p" >/dev/null 2>&1; then need+=("$p"); fi
  done
  [ ${#need[@]} -gt 0 ] && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "hypercontainer needs Python 3.11 or newer; $PY is $("$PY" --version)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv"
  "$PY" -m venv .venv 2>/dev/null || {
    apt-get install -y -qq python3-venv >/dev/null
    "$PY" -m venv .venv
  }
fi
hash=$(sha256sum pyproject.toml | cut -c1-16)
stamp=.venv/.installed-$hash          # the package and its dependencies
test_stamp=.venv/.installed-test-$hash  # and its test extras
if [ $TEST = 1 ] && [ ! -f "$test_stamp" ]; then
  echo ">> installing hypercontainer and its test extras into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp" "$test_stamp"
elif [ ! -f "$stamp" ]; then
  echo ">> installing hypercontainer into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# Byte-compile the package: hyperctl's and runv's start-up time counts in every command, and PYTHONDONTWRITEBYTECODE
# (set on some hosts) would otherwise make every run compile from source.
.venv/bin/python -m compileall -q src >/dev/null
