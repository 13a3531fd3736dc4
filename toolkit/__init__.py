"""Model toolkit: task suite, training, distillation, ONNX export, calibration, evaluation and
the pack build (needs torch)."""
