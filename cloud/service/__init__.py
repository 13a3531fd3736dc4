"""The cloud's gRPC service: Inference and ModelStore, with auth, health, reflection, metrics.

Start it with ``autoglm cloud serve`` (cloud/cli.py), which calls :func:`serve`.
"""
