#!/usr/bin/env bash
# Type-checks crates/vz (shoes-vz-vz) with its Virtualization.framework FFI on a non-Apple host,
# and the code built on it: the agent's vz backend and the CLI's `template create --ipsw`
# (feature `vz-typecheck` of shoes-vz-agent and shoes-vz-cli).
#
# objc2-virtualization 0.3.2 carries an unconditional `#[link(name = "Virtualization",
# kind = "framework")]`, which rustc rejects off Apple (E0455). This script unpacks the crate
# from cargo's registry cache into target/vz-patched/ (never committed), rewrites that one line
# to `#[cfg_attr(target_vendor = "apple", link(...))]` (so on macOS the framework still links),
# and runs `cargo check` and `cargo clippy -D warnings` with the copy patched in through
# `--config` only: no [patch] entry is committed, so nothing else depends on the folder.
#
# Only checking: nothing is linked or run (there is no libobjc/Foundation/Virtualization here).
# `check`/`clippy --all-targets` stop at metadata, so test targets are type-checked, not linked.
set -euo pipefail
cd "$(dirname "$0")/.."

crate=objc2-virtualization
version=0.3.2
out="target/vz-patched"
dir="$out/$crate-$version"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"

find_crate_file() {
    compgen -G "$cargo_home/registry/cache/*/$crate-$version.crate" | head -n 1 || true
}

archive="$(find_crate_file)"
if [[ -z "$archive" ]]; then
    echo "== vz-typecheck: $crate $version not in cargo's cache; cargo fetch"
    cargo fetch --quiet
    archive="$(find_crate_file)"
fi
if [[ -z "$archive" ]]; then
    echo "vz-typecheck: cannot find $crate-$version.crate under $cargo_home/registry/cache after cargo fetch" >&2
    exit 1
fi

# Always rebuild the copy from the pristine archive, so a half-done earlier run cannot linger.
rm -rf "$dir"
mkdir -p "$out"
tar -xzf "$archive" -C "$out"
mod_rs="$dir/src/generated/mod.rs"
original='#[link(name = "Virtualization", kind = "framework")]'
patched='#[cfg_attr(target_vendor = "apple", link(name = "Virtualization", kind = "framework"))]'
count="$(grep -cxF "$original" "$mod_rs" || true)"
if [[ "$count" != "1" ]]; then
    echo "vz-typecheck: expected exactly one line '$original' in $mod_rs, found $count;" >&2
    echo "the crate changed: update .ci/vz-typecheck.sh (and the pinned version in Cargo.toml)" >&2
    exit 1
fi
# Whole-line string comparison (no regex): the line must match byte for byte.
awk -v original="$original" -v patched="$patched" \
    '$0 == original { print patched; next } { print }' "$mod_rs" >"$mod_rs.new"
mv "$mod_rs.new" "$mod_rs"
if ! grep -qxF "$patched" "$mod_rs"; then
    echo "vz-typecheck: rewriting the link attribute in $mod_rs failed" >&2
    exit 1
fi

patch_arg="patch.crates-io.$crate.path=\"$(pwd)/$dir\""
# A path patch drops objc2-virtualization's registry source and checksum from Cargo.lock.
# However this script ends, let cargo re-resolve without the patch: that puts exactly that entry
# back and leaves anything else (e.g. a dependency someone added meanwhile) untouched.
restore_lock() {
    cargo metadata --format-version 1 --offline >/dev/null 2>&1 ||
        cargo metadata --format-version 1 >/dev/null
}
trap restore_lock EXIT

echo "== vz-typecheck: cargo check -p shoes-vz-vz --features typecheck --all-targets"
cargo check --config "$patch_arg" -p shoes-vz-vz --features typecheck --all-targets
echo "== vz-typecheck: cargo clippy -p shoes-vz-vz --features typecheck --all-targets -- -D warnings"
cargo clippy --config "$patch_arg" -p shoes-vz-vz --features typecheck --all-targets -- -D warnings
users=(-p shoes-vz-agent -p shoes-vz-cli --features shoes-vz-agent/vz-typecheck,shoes-vz-cli/vz-typecheck)
echo "== vz-typecheck: cargo check ${users[*]} --all-targets"
cargo check --config "$patch_arg" "${users[@]}" --all-targets
echo "== vz-typecheck: cargo clippy ${users[*]} --all-targets -- -D warnings"
cargo clippy --config "$patch_arg" "${users[@]}" --all-targets -- -D warnings
echo "== vz-typecheck: ok (type-checked only; a Mac verifies the rest, see docs/macos.md)"
