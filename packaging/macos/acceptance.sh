#!/usr/bin/env bash
# The Mac acceptance run (docs/macos.md "Mac acceptance"): run it on an Apple-silicon Mac, as the
# normal user that owns the VMs (never with sudo), from the repository root, after building and
# signing (packaging/macos/sign-agent.sh). It prints everything to the terminal and to one log
# file; paste that file back.
#
#   TEMPLATE=macos-26 packaging/macos/acceptance.sh
#
# Steps: host facts; `shoes-vz doctor`; one cold runner through the plugin (the dev cluster,
# myshoes' go-plugin protocol, the timing table); `template warm-vz` for the template's two
# slots; one warm runner the same way. A failing step is recorded and the run goes on, so the
# log shows every step.
set -u
cd "$(dirname "$0")/../.."

TEMPLATE="${TEMPLATE:-}"
TEMPLATES_DIR="${SHOESVZ_TEMPLATES_DIR:-/opt/myshoes/vz/templates}"
BIN="${BIN:-target/release}"
LOG="${LOG:-acceptance-$(date -u +%Y%m%dT%H%M%SZ).log}"
export SHOESVZ_TEMPLATES_DIR="$TEMPLATES_DIR"

exec > >(tee "$LOG") 2>&1
failed=0
step() {
    local name="$1"
    shift
    echo
    echo "=== $name: $*"
    local started=$SECONDS
    if "$@"; then
        echo "=== $name: ok ($((SECONDS - started)) s)"
    else
        echo "=== $name: FAILED with status $? ($((SECONDS - started)) s)"
        failed=$((failed + 1))
    fi
}

echo "=== shoes-vz Mac acceptance, $(date -u)"
step host sw_vers
step host-arch uname -m
step commit git log -1 --format='%H %s'
step whoami id -un
step signature codesign -d --entitlements - "$BIN/shoes-vz"
step lease-time defaults read /Library/Preferences/SystemConfiguration/com.apple.InternetSharing.default.plist bootpd
step doctor "$BIN/shoes-vz" doctor --backend vz --templates-dir "$TEMPLATES_DIR"

if [[ -z "$TEMPLATE" ]]; then
    echo "=== TEMPLATE is not set: skipping the runners (set TEMPLATE=<vz template name>)"
    failed=$((failed + 1))
else
    step cold-runner "$BIN/shoes-vz" dev --backend vz --templates-dir "$TEMPLATES_DIR" \
        --warm false --demo 1 --exit-after-demo
    step warm-slots "$BIN/shoes-vz" template warm-vz "$TEMPLATE" --templates-dir "$TEMPLATES_DIR" \
        --vcpus 4 --memory-mib 8192
    step warm-runner "$BIN/shoes-vz" dev --backend vz --templates-dir "$TEMPLATES_DIR" \
        --warm true --demo 1 --exit-after-demo
    step leases cat /var/db/dhcpd_leases
    step vm-processes bash -c 'pgrep -fl com.apple.Virtualization.VirtualMachine || echo "no VM process left"'
fi

echo
echo "=== done: $failed step(s) failed; paste $LOG back"
exit $((failed > 0))
