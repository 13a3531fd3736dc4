"""The edge daemon: ONNX proxy runner, router, cloud client, MQTT agent (no torch)."""
