"""The sCM sampler: 1..N TrigFlow steps, seeded and deterministic.

    x  = sigma_d z                                     (z ~ N(0, I), the first draw of the generator)
    per step s -> s_next:
      x0 = cos(s) x - sin(s) sigma_d F(x / sigma_d, s)
      x  = cos(s_next) x0 + sin(s_next) sigma_d n      (n ~ N(0, I), the next draw; none when s_next = 0)
    result: x0 / sigma_d (in the unit scale of the VAE latents)

All random numbers come from one CPU generator seeded with `seed`, drawn in float32 and then moved to the
device and dtype: the same seed gives the same noise on every device, and the same draws, in the same
order, as diffusers' SanaSprintPipeline (prepare_latents, then SCMScheduler.step).
Schedules: the paper's for 1, 2 and 4 steps, a linear one for any number of steps, or a custom list; unlike
diffusers' SCMScheduler (issue #11136) no step count is refused.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ckptkit.errors import CkptError
from ckptkit.trigflow.wrapper import SIGMA_DATA, TrigFlowFn, x0_from_trigflow

S_MAX = math.pi / 2
REFERENCE_S_MAX = 1.57080  # NVlabs' and diffusers' default "pi/2", 3.7e-6 past it (see wrapper.flow_time)
# SANA-Sprint paper schedules (angles s, ending at 0)
PAPER_SCHEDULES: dict[int, tuple[float, ...]] = {
    1: (S_MAX, 0.0),
    2: (math.atan(400), 1.3, 0.0),
    4: (math.atan(400), 1.3, 1.1, 0.6, 0.0),
}
SCHEDULES = ("auto", "paper", "linear")


def linear_schedule(steps: int, s_max: float = S_MAX) -> tuple[float, ...]:
    return tuple(s_max * (1 - i / steps) for i in range(steps + 1))


def make_schedule(steps: int, kind: str | Sequence[float] = "auto", s_max: float = S_MAX) -> tuple[float, ...]:
    """`kind`: "paper" (1, 2 or 4 steps), "linear", "auto" (paper where it exists, else linear) or a list of
    steps + 1 angles, decreasing, from at most pi/2 (1.57080 accepted) down to 0."""
    if steps < 1:
        raise CkptError(f"--steps must be at least 1, got {steps}")
    if isinstance(kind, str):
        if kind not in SCHEDULES:
            raise CkptError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)} or a list of angles")
        if kind == "paper" and steps not in PAPER_SCHEDULES:
            raise CkptError(f"the paper gives schedules for {sorted(PAPER_SCHEDULES)} steps, not {steps}; "
                            "use --schedule linear or a list of angles")
        if kind != "linear" and steps in PAPER_SCHEDULES:
            return PAPER_SCHEDULES[steps]
        return linear_schedule(steps, s_max)
    return check_schedule(steps, [float(s) for s in kind])


def check_schedule(steps: int, angles: list[float]) -> tuple[float, ...]:
    if len(angles) != steps + 1:
        raise CkptError(f"a schedule for {steps} steps has {steps + 1} angles, got {len(angles)}")
    if angles[-1] != 0.0:
        raise CkptError(f"a schedule ends at 0, got {angles[-1]}")
    if angles[0] > REFERENCE_S_MAX or any(b >= a for a, b in zip(angles, angles[1:])):
        raise CkptError(f"schedule {angles}: angles must decrease from at most pi/2 ({REFERENCE_S_MAX}) to 0")
    return tuple(angles)


def sample(F: TrigFlowFn, shape: Sequence[int], schedule: Sequence[float], *, seed: int = 0,
           sigma_data: float = SIGMA_DATA, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
           noise: torch.Tensor | None = None) -> torch.Tensor:
    """Run the sCM sampler; `noise` (unit scale) replaces the first draw when given."""
    gen = torch.Generator().manual_seed(seed)

    def draw() -> torch.Tensor:
        return torch.randn(tuple(shape), generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

    z = draw() if noise is None else noise.to(device=device, dtype=dtype)
    x = z * sigma_data
    x0 = x
    for s, s_next in zip(schedule[:-1], schedule[1:]):
        s_t = torch.tensor(s, dtype=dtype, device=device)
        with torch.no_grad():
            out = F(x / sigma_data, s_t.expand(x.shape[0]))
        x0 = x0_from_trigflow(x, s_t, out, sigma_data)
        if s_next == 0.0:
            x = x0
            continue
        n = draw() * sigma_data
        s_n = torch.tensor(s_next, dtype=dtype, device=device)
        x = torch.cos(s_n) * x0 + torch.sin(s_n) * n
    return x0 / sigma_data
