"""ckptkit: inspect, split, convert, quantize and verify diffusion-model checkpoints."""

__version__ = "0.1.0"
