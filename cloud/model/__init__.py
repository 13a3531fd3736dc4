"""The model code serving runs: the decoder (``gpt``) and its safetensors weights (``weights``).

The engine, the ONNX exporter and training import it; it imports nothing of the toolkit.
"""
