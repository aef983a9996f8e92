#!/bin/bash
# shoes-vz stand-in runner tree: config.sh of the GitHub Actions runner 2.336.0, rewritten
# for shoes-vz from what upstream's Misc/layoutroot/config.sh does:
# - as uid 0 without RUNNER_ALLOW_RUNASROOT it refuses with "Must not run with sudo", exit 1;
# - it runs from its own directory (symlinks to it followed);
# - `source ./env.sh` snapshots PATH into .path and selected variables into .env;
# - then `./bin/Runner.Listener configure "$@"` (or `./bin/Runner.Listener remove …`).
# Not reproduced: the ldd/ldconfig checks for .NET's native libraries (the stand-in has none).

if [ "$(id -u)" -eq 0 ] && [ -z "$RUNNER_ALLOW_RUNASROOT" ]; then
    echo "Must not run with sudo"
    exit 1
fi

self="${BASH_SOURCE[0]}"
while [ -h "$self" ]; do
    here="$(cd -P "$(dirname "$self")" && pwd)"
    self="$(readlink "$self")"
    [[ $self != /* ]] && self="$here/$self"
done
cd "$(cd -P "$(dirname "$self")" && pwd)" || exit 1

source ./env.sh

shopt -s nocasematch
if [[ "$1" == "remove" ]]; then
    ./bin/Runner.Listener "$@"
else
    ./bin/Runner.Listener configure "$@"
fi
