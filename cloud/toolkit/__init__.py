"""Model toolkit: the model, the task suite, training, distillation, export, calibration, packs."""
