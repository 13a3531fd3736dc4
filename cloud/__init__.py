"""The cloud side: the full model, the batching engine, the gRPC service, the operator CLI.

Needs torch, except ``cloud.ctl`` (the operator CLI runs anywhere).
"""
