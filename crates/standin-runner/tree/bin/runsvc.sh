#!/bin/bash
# shoes-vz stand-in runner tree: bin/runsvc.sh of the GitHub Actions runner 2.336.0, rewritten
# from what upstream's Misc/layoutbin/runsvc.sh does: take PATH from .path, run node20 with
# bin/RunnerService.js in the background, and turn TERM and INT into SIGINT for it.
# myshoes' setup script overwrites this file (truncating it: its mode and owner stay).

trap 'kill -INT $SERVICE_PID' TERM INT

if [ -f ".path" ]; then
    export PATH=`cat .path`
    echo ".path=${PATH}"
fi

./externals/node20/bin/node ./bin/RunnerService.js &
SERVICE_PID=$!
wait $SERVICE_PID
trap - TERM INT
wait $SERVICE_PID
