#!/usr/bin/env bash
# Provides a real reflink (copy-on-write) filesystem for the clone tests and benchmark: a
# loop-mounted XFS image (needs root). Prints the mount point; idempotent.
set -euo pipefail
mnt="${SHOESVZ_REFLINK_MNT:-/mnt/shoes-vz-reflink}"
img="${SHOESVZ_REFLINK_IMG:-/var/tmp/shoes-vz-reflink.xfs}"
if mountpoint -q "$mnt"; then echo "$mnt"; exit 0; fi
if ! command -v mkfs.xfs >/dev/null 2>&1; then
  apt-get update -qq >&2
  apt-get install -y -qq xfsprogs >&2
fi
mkdir -p "$mnt"
if [ ! -f "$img" ]; then
  # Sparse: takes no space until written. 80 GiB so a 64 GiB sparse template fits.
  truncate -s 80G "$img"
  mkfs.xfs -q -m reflink=1 "$img" >&2
fi
mount -o loop "$img" "$mnt"
chmod 1777 "$mnt"
echo "$mnt"
