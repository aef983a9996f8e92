#!/bin/bash
# shoes-vz stand-in runner tree: env.sh of the GitHub Actions runner 2.336.0 (sourced by
# config.sh), rewritten from what upstream's Misc/layoutroot/env.sh does: the configuring
# user's PATH goes to .path, and each listed variable that is set and not yet in .env is
# appended to .env as KEY=VALUE. The listener loads .env when it starts.

snapshot_vars=(LANG JAVA_HOME ANT_HOME M2_HOME ANDROID_HOME ANDROID_SDK_ROOT GRADLE_HOME NVM_BIN NVM_PATH LD_LIBRARY_PATH PERL5LIB)

known_env=""
if [ -f ".env" ]; then
    known_env="$(cat .env)"
else
    touch .env
fi

echo $PATH>.path

for snapshot_var in "${snapshot_vars[@]}"; do
    if [[ "$known_env" == *"${snapshot_var}="* ]]; then
        continue
    fi
    if [ -n "${!snapshot_var}" ]; then
        echo "${snapshot_var}=${!snapshot_var}" >> .env
    fi
done
