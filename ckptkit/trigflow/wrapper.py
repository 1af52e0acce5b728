"""Flow matching -> TrigFlow without training (SANA-Sprint, arXiv 2503.09641, Prop. 3.1; domain notes §5).

Conventions, the same as diffusers' flow pipelines and NVlabs' `SanaMSCM`:
  flow      x_t = (1 - t) x0 + t z,  t in [0, 1]; the network predicts v = z - x0
  TrigFlow  x_s = cos(s) x0 + sin(s) z,  s in [0, pi/2]; x0 and z have std sigma_d (latents are multiplied
            by sigma_d going in and divided by it coming out); sigma_d F(x_s / sigma_d, s) = cos(s) z - sin(s) x0

Times in this module are *flow times* t in [0, 1] and *TrigFlow angles* s. Which number a network embeds for
a flow time t (1000 t for SD3 and flow Sana, t for FLUX and a dense-time Sprint teacher) is not decided
here: that is the adapter's job (adapters.py), so that this math is the same for every model.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_fm, t of shape [B]) -> v = z - x0
TrigFlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_s / sigma_d, s of shape [B]) -> F

SIGMA_DATA = 0.5


def flow_time(s):
    """t = sin s / (sin s + cos s): the flow time whose x_t is the TrigFlow x_s up to a scale. At s = 1.57080
    (the reference code's "pi/2", 3.7e-6 past it) cos s < 0 and t = 1.0000037, slightly beyond the flow range."""
    if isinstance(s, torch.Tensor):
        return torch.sin(s) / (torch.sin(s) + torch.cos(s))
    return math.sin(s) / (math.sin(s) + math.cos(s))


def trigflow_angle(t: float) -> float:
    """The inverse of `flow_time` on [0, 1]: s = atan2(t, 1 - t)."""
    return math.atan2(t, 1.0 - t)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ...] to broadcast against `like`."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


class TrigFlow:
    """F(x_s / sigma_d, s) of a flow-matching velocity model:

        t    = sin s / (sin s + cos s)
        x_fm = (x_s / sigma_d) * sqrt(t^2 + (1 - t)^2)
        F    = ((1 - 2t) x_fm + (1 - 2t + 2t^2) v(x_fm, t)) / sqrt(t^2 + (1 - t)^2)

    Computed in the dtype of the input (the velocity's output is cast to it), in the same order of
    operations as diffusers' SanaSprintPipeline (pipeline_sana_sprint.py, lines 790-813 in 0.42.1).
    """

    def __init__(self, velocity: Velocity, sigma_data: float = SIGMA_DATA):
        self.velocity = velocity
        self.sigma_data = sigma_data

    def __call__(self, x_scaled: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(s, dtype=x_scaled.dtype, device=x_scaled.device).expand(x_scaled.shape[0])
        t = flow_time(s)
        tb = _per_sample(t, x_scaled)
        norm = torch.sqrt(tb ** 2 + (1 - tb) ** 2)
        x_fm = x_scaled * norm
        v = self.velocity(x_fm, t).to(x_scaled.dtype)
        return ((1 - 2 * tb) * x_fm + (1 - 2 * tb + 2 * tb ** 2) * v) / norm


def x0_from_trigflow(x: torch.Tensor, s, F: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """The sCM data prediction x0 = cos(s) x_s - sin(s) sigma_d F (x_s in sigma_d-scaled units)."""
    s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
    if s.ndim:
        s = _per_sample(s, x)
    return torch.cos(s) * x - torch.sin(s) * (sigma_data * F)


def x0_from_flow(x_t: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
    """The flow data prediction x0 = x_t - t v (one Euler step from t to 0)."""
    t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
    if t.ndim:
        t = _per_sample(t, x_t)
    return x_t - t * v
