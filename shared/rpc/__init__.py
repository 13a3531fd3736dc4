"""The gRPC wire contract (package `autoglm.v1`), generated from proto/ by scripts/gen_proto.py.

Import the modules from here, e.g. `from shared.rpc import inference_pb2, inference_pb2_grpc`.
The generated code lives in shared/rpc/autoglm/ and is regenerated with `make proto`.
"""

from shared.rpc.autoglm.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    model_store_pb2,
    model_store_pb2_grpc,
)

__all__ = ["inference_pb2", "inference_pb2_grpc", "model_store_pb2", "model_store_pb2_grpc"]
