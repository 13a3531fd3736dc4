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

# Full names of the services (``autoglm.v1.Inference``...), for health, reflection, service configs.
INFERENCE_SERVICE: str = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
MODEL_STORE_SERVICE: str = model_store_pb2.DESCRIPTOR.services_by_name["ModelStore"].full_name

__all__ = [
    "INFERENCE_SERVICE",
    "MODEL_STORE_SERVICE",
    "inference_pb2",
    "inference_pb2_grpc",
    "model_store_pb2",
    "model_store_pb2_grpc",
]
