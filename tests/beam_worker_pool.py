"""A Beam EXTERNAL worker pool bound to 127.0.0.1 (tests only): `python -m tests.beam_worker_pool PORT_FILE`.

Beam's own `python -m apache_beam.runners.worker.worker_pool_main --service_port=N` binds every interface
('[::]'), which is what a cluster wants; the tests may listen on loopback only, so this starts the same
servicer (one SDK worker process per request, as the stock pool does) on 127.0.0.1 and an ephemeral port,
and writes the port to PORT_FILE once it is listening.
"""

from __future__ import annotations

import os
import sys
import threading

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
from apache_beam.utils import thread_pool_executor


def main(port_file: str) -> None:
    server = grpc.server(thread_pool_executor.shared_unbounded_instance())
    port = server.add_insecure_port("127.0.0.1:0")
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
        BeamFnExternalWorkerPoolServicer(use_process=True), server)
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)   # the test reads the file only once it is whole
    threading.Event().wait()                     # until the test terminates this process


if __name__ == "__main__":
    main(sys.argv[1])
