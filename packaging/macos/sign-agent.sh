#!/usr/bin/env bash
# Signs shoes-vz binaries with the com.apple.security.virtualization entitlement, without which
# Virtualization.framework refuses to create VMs or load restore images. macOS only.
#
# Usage: packaging/macos/sign-agent.sh [BINARY...]
#   default: target/release/shoes-vz-agent and target/release/shoes-vz (the CLI's
#   `template create --ipsw` needs the entitlement too).
# CODESIGN_IDENTITY: a signing identity; default "-" (ad hoc, fine for the machine that signs).
# Re-sign after every build: a rebuilt binary has no signature.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ "$(uname -s)" != "Darwin" ]]; then
    echo "sign-agent.sh: codesign and Virtualization.framework exist only on macOS" >&2
    exit 2
fi

entitlements="packaging/macos/shoes-vz-agent.entitlements"
identity="${CODESIGN_IDENTITY:--}"
if [[ $# -eq 0 ]]; then
    set -- target/release/shoes-vz-agent target/release/shoes-vz
fi

for binary in "$@"; do
    if [[ ! -f "$binary" ]]; then
        echo "sign-agent.sh: $binary does not exist; build it first (cargo build --release)" >&2
        exit 1
    fi
    options=()
    if [[ "$identity" != "-" ]]; then
        # A real identity is for distribution: notarization needs the hardened runtime.
        options=(--options runtime --timestamp)
    fi
    # `${options[@]+…}`: macOS's bash 3.2 treats an empty array as unset under `set -u`.
    codesign --force --sign "$identity" ${options[@]+"${options[@]}"} \
        --entitlements "$entitlements" "$binary"
    codesign --verify --strict "$binary"
    if ! codesign --display --entitlements - "$binary" 2>&1 |
        grep -q "com.apple.security.virtualization"; then
        echo "sign-agent.sh: $binary was signed but does not carry the virtualization entitlement" >&2
        exit 1
    fi
    echo "signed $binary ($identity) with com.apple.security.virtualization"
done
