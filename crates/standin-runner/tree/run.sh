#!/bin/bash
# shoes-vz stand-in runner tree: run.sh of the GitHub Actions runner 2.336.0, rewritten from
# what upstream's Misc/layoutroot/run.sh does: copy run-helper.sh.template to run-helper.sh and
# run it (it runs `bin/Runner.Listener run`) again and again while it returns 2 (restart);
# anything else ends the loop with 0, except 7 when
# ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE=1. Not reproduced: RUNNER_MANUALLY_TRAP_SIG
# and RUNNER_UPDATE_CA_CERTS.

self="${BASH_SOURCE[0]}"
while [ -h "$self" ]; do
    here="$(cd -P "$(dirname "$self")" && pwd)"
    self="$(readlink "$self")"
    [[ $self != /* ]] && self="$here/$self"
done
root="$(cd -P "$(dirname "$self")" && pwd)"

while :; do
    cp -f "$root"/run-helper.sh.template "$root"/run-helper.sh
    "$root"/run-helper.sh $*
    code=$?
    if [[ $code -eq 2 ]]; then
        echo "Restarting runner..."
    elif [[ "$ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE" == "1" && $code -eq 7 ]]; then
        echo "Exiting runner..."
        exit "$code"
    else
        echo "Exiting runner..."
        exit 0
    fi
done
