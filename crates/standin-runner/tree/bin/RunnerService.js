#!/usr/bin/env node
// shoes-vz stand-in runner tree: bin/RunnerService.js of the GitHub Actions runner 2.336.0,
// written for shoes-vz from what upstream's Misc/layoutbin/RunnerService.js does. It keeps
// bin/Runner.Listener running as a service: exit codes 0, 1 and 5 stop it; 2, 3 and 4
// relaunch it after 5 s (at most 10 in a row); any other code relaunches it after 5 s.
// SIGINT and SIGTERM send SIGINT to the listener and stop relaunching.
//
// The stand-in's externals/node20/bin/node does not interpret JavaScript: it behaves like node
// running myshoes' replacement of this file (myshoes' setup script overwrites it). See the
// shoes-vz-standin-runner crate documentation.
"use strict";

const { spawn } = require("child_process");
const path = require("path");

const listenerPath = path.join(__dirname, "..", "bin", "Runner.Listener");
const stopCodes = new Set([0, 1, 5]);
const retryableCodes = new Set([2, 3, 4]);
const maxRetryableInARow = 10;

let stopping = false;
let listener = null;
let retryableInARow = 0;

function startListener() {
  if (stopping) {
    return;
  }
  const interactive = process.argv[2] === "interactive";
  const args = interactive ? ["run"] : ["run", "--startuptype", "service"];
  console.log(`Starting Runner listener (${args.join(" ")})`);
  listener = spawn(listenerPath, args, { env: process.env });
  console.log(`Started listener process, pid: ${listener.pid}`);
  listener.stdout.on("data", (chunk) => {
    if (chunk.toString("utf8").includes("Listening for Jobs")) {
      retryableInARow = 0;
    }
    process.stdout.write(chunk);
  });
  listener.stderr.on("data", (chunk) => process.stdout.write(chunk));
  listener.on("error", (err) => console.log(`Runner listener failed to start: ${err.message}`));
  listener.on("close", (code) => {
    console.log(`Runner listener exited with code ${code}`);
    if (stopCodes.has(code)) {
      stopping = true;
    } else if (retryableCodes.has(code) && ++retryableInARow >= maxRetryableInARow) {
      console.error(`Stopping after ${maxRetryableInARow} retryable failures in a row`);
      stopping = true;
    }
    if (!stopping) {
      setTimeout(startListener, 5000);
    }
  });
}

function stop() {
  console.log("Stopping the runner listener");
  stopping = true;
  if (listener) {
    listener.kill("SIGINT");
  }
}

process.on("SIGINT", stop);
process.on("SIGTERM", stop);
startListener();
