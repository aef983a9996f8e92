#!/usr/bin/env bash
# Operations checks (packaging/, README "Dashboard and alerts" and "Service units"), as root on a
# fresh Debian machine:
#   1. the alert rules: `promtool check rules` and their unit test, `promtool test rules`;
#   2. the systemd units: `systemd-analyze verify` (no output allowed) and
#      `systemd-analyze security --offline` (exposure at most 2.0), and the agent's sysusers file;
#   3. a real shoes-vz-server (the built binary, the example server.toml, a token from the
#      environment, SQLite in a temp dir, kernel-chosen ports): /metrics in both formats under
#      their own Content-Type, and `promtool check metrics` reporting exactly the two documented
#      lines (the seed's gauges shoesvz_agents_total and shoesvz_runners_total) and nothing else;
#   4. a real Prometheus scraping it with the alert rules loaded: counters typed as counters,
#      every rule evaluated without error, every dashboard query and variable answered;
#   5. both units run for real under systemd, in a container (.ci/units-live.sh).
#
# promtool and prometheus come from Debian's `prometheus` package, unpacked into
# /opt/shoes-vz/prometheus rather than installed: installing it would start a Prometheus server
# on this machine (and pull a web UI's JavaScript packages). Idempotent.
#
# The units name /usr/local/bin/shoes-vz-{server,agent}, which CI does not install into: verify
# needs ExecStart's binary to exist, so it checks a temporary copy of each unit whose binary
# paths, and nothing else, point at the binaries built here. CI has no systemd as PID 1: step 5
# boots one in a container, where the binaries are bound at /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

tools=/opt/shoes-vz/prometheus
promtool="$tools/usr/bin/promtool"
prometheus="$tools/usr/bin/prometheus"
startup_timeout=60

fail() {
  echo "ops-checks: FAILED: $*" >&2
  exit 1
}

echo "== ops: tools"
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ] || ! "$promtool" --version >/dev/null 2>&1; then
  apt-get update -qq
fi
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! "$promtool" --version >/dev/null 2>&1 || ! "$prometheus" --version >/dev/null 2>&1; then
  download="$(mktemp -d)"
  (cd "$download" && apt-get download -qq -o APT::Sandbox::User=root prometheus)
  rm -rf "$tools"
  mkdir -p "$tools"
  dpkg-deb -x "$download"/prometheus_*.deb "$tools"
  rm -rf "$download"
fi
"$promtool" --version | sed -n 1p
systemd-analyze --version | sed -n 1p

echo "== ops: alert rules"
"$promtool" check rules packaging/prometheus/shoes-vz-alerts.yml
(cd packaging/prometheus && "$promtool" test rules shoes-vz-alerts.test.yml)

echo "== ops: build the binaries the units and the live check run"
cargo build -q -p shoes-vz-server --bin shoes-vz-server -p shoes-vz-agent --bin shoes-vz-agent
target_dir="$(cargo metadata -q --format-version 1 --no-deps |
  /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
bin_dir="$target_dir/debug"

work="$(mktemp -d)"
server_pid=""
prometheus_pid=""
cleanup() {
  for pid in "$prometheus_pid" "$server_pid"; do
    if [ -n "$pid" ]; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== ops: systemd units"
for name in shoes-vz-server shoes-vz-agent; do
  unit="packaging/linux/$name.service"
  grep -q "^ExecStart=/usr/local/bin/$name " "$unit" || fail "$unit: ExecStart is not /usr/local/bin/$name"
  mkdir -p "$work/units"
  sed "s#/usr/local/bin/$name\\b#$bin_dir/$name#g" "$unit" >"$work/units/$name.service"
  output="$(systemd-analyze verify "$work/units/$name.service" 2>&1)" ||
    fail "systemd-analyze verify $unit: $output"
  [ -z "$output" ] || fail "systemd-analyze verify $unit warns: $output"
  systemd-analyze security --offline=true --threshold=20 --no-pager "$work/units/$name.service" |
    tail -n 1
done
mkdir -p "$work/sysroot/etc"
output="$(systemd-sysusers --root="$work/sysroot" "$PWD/packaging/linux/shoes-vz-agent.sysusers" 2>&1)" ||
  fail "systemd-sysusers: $output"
grep -q '^shoes-vz-agent:' "$work/sysroot/etc/passwd" || fail "sysusers made no shoes-vz-agent user"
grep -Eq '^kvm:[^:]*:[0-9]+:(.*,)?shoes-vz-agent(,|$)' "$work/sysroot/etc/group" ||
  fail "sysusers did not put shoes-vz-agent in group kvm"
echo "units verified; sysusers makes shoes-vz-agent (group kvm)"

echo "== ops: a live server's /metrics"
token="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
SHOESVZ_TOKEN="$token" "$bin_dir/shoes-vz-server" \
  --config packaging/linux/server.toml \
  --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --database-url "sqlite://$work/state.db?mode=rwc" \
  --log-format json >"$work/server.log" 2>&1 &
server_pid=$!
metrics_addr=""
deadline=$((SECONDS + startup_timeout))
while [ -z "$metrics_addr" ]; do
  kill -0 "$server_pid" 2>/dev/null || fail "shoes-vz-server exited: $(cat "$work/server.log")"
  [ "$SECONDS" -lt "$deadline" ] || fail "shoes-vz-server not listening after ${startup_timeout}s"
  metrics_addr="$(grep -Eo '"metrics_addr":"Some\([0-9.]+:[0-9]+\)' "$work/server.log" |
    grep -Eo '[0-9.]+:[0-9]+' || true)"
  [ -n "$metrics_addr" ] || sleep 0.2
done
echo "server up, /metrics on $metrics_addr"

# GET URL [ACCEPT]: the body on stdout, the Content-Type on stderr's last line.
fetch() {
  /usr/bin/python3 - "$@" <<'EOF'
import sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Accept", sys.argv[2])
with urllib.request.urlopen(request, timeout=10) as response:
    sys.stdout.write(response.read().decode())
    sys.stderr.write(response.headers["Content-Type"] + "\n")
EOF
}
fetch "http://$metrics_addr/metrics" >"$work/metrics.txt" 2>"$work/metrics.type" ||
  fail "GET /metrics: $(cat "$work/metrics.type")"
[ "$(cat "$work/metrics.type")" = "text/plain; version=0.0.4; charset=utf-8" ] ||
  fail "/metrics without Accept came as $(cat "$work/metrics.type")"
! grep -q '^# EOF' "$work/metrics.txt" || fail "the 0.0.4 text format carries OpenMetrics' # EOF"
# Prometheus' own Accept header.
fetch "http://$metrics_addr/metrics" \
  'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1' \
  >"$work/openmetrics.txt" 2>"$work/openmetrics.type" ||
  fail "GET /metrics (OpenMetrics): $(cat "$work/openmetrics.type")"
[ "$(cat "$work/openmetrics.type")" = "application/openmetrics-text; version=1.0.0; charset=utf-8" ] ||
  fail "/metrics for Prometheus came as $(cat "$work/openmetrics.type")"
[ "$(tail -n 1 "$work/openmetrics.txt")" = "# EOF" ] || fail "OpenMetrics body does not end with # EOF"

# The only lint lines allowed: the seed's two gauges named *_total, kept for existing
# dashboards (README, Metrics; crates/server/src/metrics.rs).
expected_lint='shoesvz_agents_total non-counter metrics should not have "_total" suffix
shoesvz_runners_total non-counter metrics should not have "_total" suffix'
lint="$("$promtool" check metrics <"$work/metrics.txt" 2>&1 | sort -u || true)"
if [ "$lint" != "$expected_lint" ]; then
  echo "promtool check metrics reported:" >&2
  echo "$lint" >&2
  fail "promtool check metrics: only the two documented lines are allowed"
fi
echo "promtool check metrics: only the two documented lines:"
while IFS= read -r line; do echo "  $line"; done <<<"$lint"

echo "== ops: a real Prometheus scrapes it, with the alert rules and the dashboard's queries"
prometheus_port="$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/packaging/prometheus/shoes-vz-alerts.yml
scrape_configs:
  - job_name: shoes-vz
    static_configs:
      - targets: ['$metrics_addr']
EOF
"$promtool" check config "$work/prometheus.yml" >/dev/null
"$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prometheus_port" >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
/usr/bin/python3 .ci/ops-checks-prometheus.py "http://127.0.0.1:$prometheus_port" \
  packaging/grafana/shoes-vz.json "$startup_timeout" ||
  fail "Prometheus checks (its log: $(tail -n 5 "$work/prometheus.log"))"
kill "$prometheus_pid" "$server_pid"
wait "$prometheus_pid" "$server_pid" 2>/dev/null || true
prometheus_pid=""
server_pid=""

bash .ci/units-live.sh
echo "ops checks passed"
