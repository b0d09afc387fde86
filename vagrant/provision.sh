#!/usr/bin/env bash
# Provisions the dev VM: a Rust toolchain (stable + nightly) for root, then checks that the
# running kernel really has BPF LSM active (a loaded LSM program enforces nothing otherwise).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends build-essential curl ca-certificates git pkg-config
if ! command -v /root/.cargo/bin/rustup >/dev/null; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
/root/.cargo/bin/rustup toolchain install nightly --profile minimal --component rust-src
mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security
lsms=$(cat /sys/kernel/security/lsm)
echo "active LSMs: $lsms"
case ",$lsms," in
  *,bpf,*) echo "BPF LSM is active: the deny tier can be tested here" ;;
  *) echo "BPF LSM is NOT active: add lsm=...,bpf to the kernel command line" >&2; exit 1 ;;
esac
echo "next: vagrant ssh, sudo -i, cd /agentcage, cargo xtask test"
