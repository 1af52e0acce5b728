"""Quantization: per-component policy, GGUF codecs (ggml/), planners."""
