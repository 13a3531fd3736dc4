"""Code both sides need: settings, wire contract, tokenizer, model-pack format."""
