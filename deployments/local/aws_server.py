"""The local AWS: moto's HTTP server in its own process, bound to 127.0.0.1 on a free port.

Prints one JSON line {"port": N} when ready, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading

from moto.server import ThreadedMotoServer

from deployments.local import (
    auth_fidelity,
    cloudtrail_fidelity,
    cloudwatch_fidelity,
    ec2_fidelity,
    faults,
    firehose_fidelity,
    kms_fidelity,
    secrets_fidelity,
    sqs_speed,
    state_fidelity,
    trust_fidelity,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    firehose_fidelity.apply()
    auth_fidelity.apply()
    kms_fidelity.apply()
    sqs_speed.apply()
    secrets_fidelity.apply()
    state_fidelity.apply()
    ec2_fidelity.apply()
    cloudtrail_fidelity.apply()
    trust_fidelity.apply()
    stop_metrics = cloudwatch_fidelity.apply()
    faults.apply()  # a test fault injector, not a fidelity patch: off until a test or benchmark asks for a fault
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(json.dumps({"port": server.get_host_and_port()[1]}), flush=True)
    stop.wait()
    stop_metrics.set()
    server.stop()


if __name__ == "__main__":
    main()
