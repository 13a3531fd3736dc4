"""The cloud side: inference service and the model toolkit (needs torch)."""
