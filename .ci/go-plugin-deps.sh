#!/usr/bin/env bash
# Installs what the go-plugin compatibility test (crates/plugin/tests/go_plugin_compat.rs) needs:
# Go, protoc with the Go generators, and hashicorp/go-plugin + gRPC from Debian's packages, so the
# test's Go client builds in GOPATH mode with no module proxy. Idempotent.
set -euo pipefail
packages=(
  golang-go
  golang-github-hashicorp-go-plugin-dev
  golang-google-grpc-dev
  golang-goprotobuf-dev
  golang-google-protobuf-dev
  protobuf-compiler
  protoc-gen-go-grpc
  libprotobuf-dev
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "go-plugin client prerequisites ready ($(go version), $(protoc --version))"
