#!/usr/bin/env bash
# Installs what the QEMU backend's real-VM tests (crates/guest-image/tests/qemu_guest.rs) and
# the test guest build need: QEMU, apt's package lists (the guest is built from Debian packages
# with `apt-get download`), e2fsprogs for the runner disk, cpio to cross-check the initramfs
# writer, xz for xz-compressed kernels, and the ssh client for the bare-QEMU baseline. Idempotent.
set -euo pipefail
packages=(
  qemu-system-x86
  qemu-utils
  e2fsprogs
  cpio
  xz-utils
  openssh-client
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
# `apt-get download` needs current package lists even when nothing is missing.
apt-get update -qq
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "qemu prerequisites ready ($(qemu-system-x86_64 --version | sed -n 1p))"
