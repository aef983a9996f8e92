#!/usr/bin/env bash
# The systemd units of packaging/linux/, run for real under systemd: a Debian 12 container booted
# with systemd-nspawn (CI has no systemd as PID 1) gets the units and the sysusers file as they
# are, the binaries built here at /usr/local/bin, the example server.toml as it is, and the
# example agent.toml with only server_url pointed at the server in the same container. Then:
#   - both services start and stay up under their hardening; the server runs as a transient user
#     with no capabilities, the agent as shoes-vz-agent (made by the sysusers file at boot);
#   - the agent connects, and a runner goes through its life as myshoes drives it: AddInstance
#     (QEMU boots the test guest, TCG: the container has no /dev/kvm), running, DeleteInstance;
#   - `systemctl stop shoes-vz-agent` with a live runner: the agent powers its QEMU off itself
#     (KillMode=mixed) and nothing is left.
# Called by .ci/ops-checks.sh; standalone: `bash .ci/units-live.sh` as root. Idempotent.
#
# Differences from a real host, each on the strict side: nspawn adds its own seccomp filter (it
# refuses mlock, so russh warns that it cannot lock key buffers) and drops some capabilities;
# /dev/kvm is absent. The container's network is private (only its loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

boot_timeout=120
packages=systemd,systemd-sysv,dbus,python3,ca-certificates,qemu-system-x86
# The container's root, made once with debootstrap and never written: each boot runs on a
# throwaway overlay (--volatile=overlay).
root="/var/cache/shoes-vz/nspawn-bookworm-$(echo "$packages" | sha256sum | cut -c1-12)"
grpc_venv=/opt/shoes-vz/grpc-venv
grpc_pins=(grpcio==1.85.3 grpcio-tools==1.85.1)

fail() {
  echo "units-live: FAILED: $*" >&2
  exit 1
}

echo "== units live: tools"
missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v debootstrap >/dev/null || missing+=(debootstrap)
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -f "$root/.complete" ]; then
  rm -rf "$root"
  mkdir -p "$(dirname "$root")"
  debootstrap --variant=minbase --include="$packages" bookworm "$root" >"$root.log" 2>&1 ||
    fail "debootstrap (log: $root.log)"
  touch "$root/.complete"
fi
if ! "$grpc_venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  rm -rf "$grpc_venv"
  /usr/bin/python3 -m venv "$grpc_venv"
  "$grpc_venv/bin/pip" install --quiet --disable-pip-version-check "${grpc_pins[@]}"
fi
# QEMU and the image tools for the test guest build (and apt's lists, which it downloads with).
bash .ci/qemu-deps.sh >/dev/null
reflink="$(bash .ci/reflink-fs.sh)"

echo "== units live: binaries and the test guest template"
cargo build -q -p shoes-vz-server --bin shoes-vz-server -p shoes-vz-agent --bin shoes-vz-agent \
  -p shoes-vz-cli --bin shoes-vz -p shoes-vz-runner-agent --bin shoes-vz-runner-agent
target_dir="$(cargo metadata -q --format-version 1 --no-deps |
  /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
bin_dir="$target_dir/debug"

work="$(mktemp -d)"
# The agent's StateDirectory: on the reflink filesystem, as the unit requires.
state="$(mktemp -d "$reflink/units-live.XXXXXX")"
nspawn_pid=""
cleanup() {
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill "$nspawn_pid" 2>/dev/null || true # SIGTERM: the container powers off
    for _ in $(seq 1 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" 2>/dev/null || true
  fi
  rm -rf "$work" "$state"
}
trap cleanup EXIT

"$bin_dir/shoes-vz" template build-test-guest --templates-dir "$state/templates" \
  --cache-dir /var/cache/shoes-vz/test-guest-debs >"$work/template.log" 2>&1 ||
  fail "test guest build: $(tail -n 5 "$work/template.log")"

mkdir -p "$work/etc" "$work/proto"
cp packaging/linux/server.toml "$work/etc/server.toml"
sed 's#^server_url = .*#server_url = "http://127.0.0.1:50051"#' packaging/linux/agent.toml >"$work/etc/agent.toml"
[ "$(diff packaging/linux/agent.toml "$work/etc/agent.toml" | grep -c '^[<>]')" = 2 ] ||
  fail "the test agent.toml must differ from the example in server_url only"
token="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
agent_token="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
operator_token="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
(
  umask 077
  printf 'SHOESVZ_TOKEN=%s\nSHOESVZ_AGENT_TOKEN=%s\nSHOESVZ_OPERATOR_TOKEN=%s\n' \
    "$token" "$agent_token" "$operator_token" >"$work/etc/server.env"
  printf 'SHOESVZ_AGENT_TOKEN=%s\n' "$agent_token" >"$work/etc/agent.env"
)
"$grpc_venv/bin/python" -m grpc_tools.protoc -I crates/protocol/proto --python_out="$work/proto" \
  --grpc_python_out="$work/proto" shoes/vz/shoes/v1/shoes.proto shoes/vz/operator/v1/operator.proto

echo "== units live: boot the container"
binds=(
  "--bind-ro=$PWD/packaging/linux/shoes-vz-server.service:/etc/systemd/system/shoes-vz-server.service"
  "--bind-ro=$PWD/packaging/linux/shoes-vz-agent.service:/etc/systemd/system/shoes-vz-agent.service"
  "--bind-ro=$PWD/packaging/linux/shoes-vz-agent.sysusers:/usr/lib/sysusers.d/shoes-vz-agent.conf"
  "--bind-ro=$work/etc:/etc/shoes-vz"
  "--bind-ro=$bin_dir/shoes-vz-server:/usr/local/bin/shoes-vz-server"
  "--bind-ro=$bin_dir/shoes-vz-agent:/usr/local/bin/shoes-vz-agent"
  "--bind=$state:/var/lib/shoes-vz-agent"
)
systemd-nspawn --quiet --directory="$root" --volatile=overlay --boot --register=no --keep-unit \
  --private-network --machine="shoes-vz-units-$$" "${binds[@]}" >"$work/console.log" 2>&1 </dev/null &
nspawn_pid=$!
init_pid=""
deadline=$((SECONDS + boot_timeout))
until [ -n "$init_pid" ]; do
  kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited: $(tail -n 20 "$work/console.log")"
  [ "$SECONDS" -lt "$deadline" ] || fail "the container did not start within ${boot_timeout}s"
  init_pid="$(pgrep -P "$nspawn_pid" -x systemd || true)"
  [ -n "$init_pid" ] || sleep 0.5
done
inside() { nsenter --target "$init_pid" --all "$@"; }
system_state="$(inside timeout "$boot_timeout" systemctl is-system-running --wait || true)"
[ "$system_state" = running ] ||
  fail "container's systemd: $system_state; failed units: $(inside systemctl --failed --no-legend || true)"
echo "container up (systemd $system_state)"

echo "== units live: start both services"
journal() { inside journalctl --no-pager -o cat -u "$1"; }
inside systemctl start shoes-vz-server || fail "shoes-vz-server: $(journal shoes-vz-server | tail -n 20)"
# As the unit's header says: the directory itself is the agent's, the templates stay root's.
inside chown shoes-vz-agent:shoes-vz-agent /var/lib/shoes-vz-agent
inside chmod 0750 /var/lib/shoes-vz-agent
inside systemctl start shoes-vz-agent || fail "shoes-vz-agent: $(journal shoes-vz-agent | tail -n 20)"
template_owners="$(inside sh -c 'stat -c %U /var/lib/shoes-vz-agent/templates/ /var/lib/shoes-vz-agent/templates/*/*' | sort -u)"
[ "$template_owners" = root ] || fail "templates are no longer root's: $template_owners"
deadline=$((SECONDS + 60))
until journal shoes-vz-agent | grep -q '"connected to the server"'; do
  inside systemctl is-active -q shoes-vz-agent || fail "shoes-vz-agent stopped: $(journal shoes-vz-agent | tail -n 20)"
  [ "$SECONDS" -lt "$deadline" ] || fail "the agent did not connect within 60s: $(journal shoes-vz-agent | tail -n 20)"
  sleep 0.5
done
journal shoes-vz-agent | grep -E '^[a-z ]+: (ok|WARN|FAIL)|checks, ' | sed 's/^/  agent --check: /'
status_of() {
  inside sh -c "grep -E '^(Uid|CapEff|NoNewPrivs):' /proc/\$(systemctl show -p MainPID --value $1)/status" |
    tr -s '\t' ' ' | tr '\n' ' '
}
server_status="$(status_of shoes-vz-server)"
agent_status="$(status_of shoes-vz-agent)"
agent_uid="$(inside id -u shoes-vz-agent)"
echo "server: $server_status"
echo "agent:  $agent_status"
# DynamicUser's range is 61184-65519.
if ! [[ "$server_status" =~ Uid:\ (6[1-5][0-9]{3})\  ]] || [ "${BASH_REMATCH[1]}" -lt 61184 ]; then
  fail "the server does not run as a transient (DynamicUser) user"
fi
[[ "$agent_status" == *"Uid: $agent_uid "* ]] || fail "the agent does not run as shoes-vz-agent ($agent_uid)"
for status in "$server_status" "$agent_status"; do
  [[ "$status" == *"CapEff: 0000000000000000"* && "$status" == *"NoNewPrivs: 1"* ]] ||
    fail "a service keeps capabilities or may gain privileges: $status"
done

echo "== units live: a runner's life, as myshoes drives it"
driver() {
  SHOESVZ_TOKEN="$token" SHOESVZ_OPERATOR_TOKEN="$operator_token" nsenter --target "$init_pid" --net \
    "$grpc_venv/bin/python" .ci/units-live-driver.py "$work/proto" "$@"
}
driver lifecycle units-live-1 || fail "runner lifecycle: $(journal shoes-vz-agent | tail -n 20)"
driver add units-live-2 || fail "AddInstance: $(journal shoes-vz-agent | tail -n 20)"
qemu_running() { inside sh -c 'grep -lx "qemu-system-x86" /proc/[0-9]*/comm' >/dev/null 2>&1; }
qemu_running || fail "no QEMU process for the live runner"
inside systemctl stop shoes-vz-agent
journal shoes-vz-agent | grep -q '"QEMU stopped"' || fail "the agent did not stop its QEMU itself"
! qemu_running || fail "QEMU left running after the agent stopped"
echo "agent stopped: it powered its runner's QEMU off itself, nothing left"
if journal shoes-vz-server | grep -q '"level":"ERROR"'; then
  fail "the server logged errors: $(journal shoes-vz-server | grep '"level":"ERROR"')"
fi
inside systemctl stop shoes-vz-server
echo "units live: passed"
