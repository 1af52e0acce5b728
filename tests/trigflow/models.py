"""Tiny flow models and their conditioning for the TrigFlow tests."""

import torch

from ckptkit.fixtures.factory import component_model

LATENTS = {"sana": (1, 32, 8, 8), "flux_schnell": (1, 16, 8, 8)}


def tiny(fixture: str, dtype=torch.float64):
    return component_model(fixture, "diffusion_model").to(dtype).eval()


def caption(model, dtype=torch.float64, seed: int = 7, tokens: int = 12) -> dict:
    """Random conditioning shaped from the model's config (fixture widths may change)."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    if "caption_channels" in cfg:  # Sana
        return {"encoder_hidden_states": torch.randn(1, tokens, cfg.caption_channels, generator=gen).to(dtype),
                "encoder_attention_mask": torch.ones(1, tokens)}
    return {"encoder_hidden_states": torch.randn(1, tokens, cfg.joint_attention_dim, generator=gen).to(dtype),
            "pooled_projections": torch.randn(1, cfg.pooled_projection_dim, generator=gen).to(dtype)}


def noise(shape, dtype=torch.float64, seed: int = 3) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
