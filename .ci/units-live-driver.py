"""Drives runners through a shoes-vz server as myshoes' plugin would (ShoesService over gRPC),
and watches them as an operator would (OperatorService).

Usage: units-live-driver.py PROTO_STUBS_DIR lifecycle|add RUNNER_NAME
with SHOESVZ_TOKEN (myshoes') and SHOESVZ_OPERATOR_TOKEN in the environment (never in argv). Called by .ci/units-live.sh inside the
test container's network namespace, against the server at 127.0.0.1:50051.

  lifecycle: AddInstance (returns at ssh-ready), the runner reaches `running` (its setup script
             started in the guest), DeleteInstance, and the server lists no live runner after.
  add:       AddInstance only; prints the cloud id (the caller then stops the agent under it).
Every wait has a timeout; exits non-zero with the reason on any failure.
"""

import os
import sys
import time

import grpc

sys.path.insert(0, sys.argv[1])
from shoes.vz.shoes.v1 import shoes_pb2 as pb  # noqa: E402
from shoes.vz.shoes.v1 import shoes_pb2_grpc as rpc  # noqa: E402
from shoes.vz.operator.v1 import operator_pb2 as op_pb  # noqa: E402
from shoes.vz.operator.v1 import operator_pb2_grpc as op_rpc  # noqa: E402

SETUP_SCRIPT = "#!/bin/bash\n# stands in for myshoes' setup script: a job that runs a while\nsleep 600\n"


def wait_for(what, condition, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def main():
    mode, runner_name = sys.argv[2], sys.argv[3]
    metadata = [("authorization", "Bearer " + os.environ["SHOESVZ_TOKEN"])]
    operator_metadata = [("authorization", "Bearer " + os.environ["SHOESVZ_OPERATOR_TOKEN"])]
    channel = grpc.insecure_channel("127.0.0.1:50051")
    stub = rpc.ShoesServiceStub(channel)
    operator = op_rpc.OperatorServiceStub(channel)

    started = time.monotonic()
    added = stub.AddInstance(
        pb.AddInstanceRequest(
            runner_name=runner_name,
            setup_script=SETUP_SCRIPT,
            resource_type=pb.RESOURCE_TYPE_NANO,
            labels=["self-hosted", "test-guest"],
        ),
        metadata=metadata,
        timeout=280,
    )
    print(f"AddInstance {runner_name}: {added.cloud_id} at {added.ip_address}, "
          f"ssh-ready after {time.monotonic() - started:.1f}s")
    if mode == "add":
        return

    def state():
        runner = operator.GetRunner(op_pb.GetRunnerRequest(cloud_id=added.cloud_id),
                                    metadata=operator_metadata, timeout=10)
        return runner.runner.state

    wait_for("the runner to be running", lambda: state() == "running", 120)
    print("runner running (setup script started in the guest)")
    stub.DeleteInstance(pb.DeleteInstanceRequest(cloud_id=added.cloud_id), metadata=metadata, timeout=60)
    print("DeleteInstance OK")

    def none_live():
        listed = operator.ListRunners(op_pb.ListRunnersRequest(), metadata=operator_metadata, timeout=10)
        return not [r for r in listed.runners if r.state != "deleted"]

    wait_for("the runner to be gone", none_live, 120)
    print("no live runner left")


if __name__ == "__main__":
    main()
