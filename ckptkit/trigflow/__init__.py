"""TrigFlow (SANA-Sprint / sCM) at run time: wrap any flow-matching velocity model as a TrigFlow model
and sample it in 1..N steps.

  wrapper.py   the flow -> TrigFlow transform (domain notes §5) and the x0 predictions
  adapters.py  each network's call convention (time scale, latent layout, conditioning kwargs)
  sampler.py   sCM schedules and the seeded sampler
  text.py      caption conditioning (text encoders, or a seeded random embedding)
  loader.py    a model set from a diffusers folder, a component set or a single file
  image.py     latents -> PNG (VAE, or a latent visualisation)
  run.py       `ckptkit sample`;  commands.py: the `trigflow` and `sample` CLI commands
The checkpoint remap (flow Sana -> Sana-Sprint form) is a planner: convert/trigflow.py.

The names below are imported on first use, so that the CLI (which imports commands.py) starts without torch.
"""

from importlib import import_module

_EXPORTS = {
    "ADAPTERS": "adapters", "adapter_for": "adapters", "velocity": "adapters",
    "PAPER_SCHEDULES": "sampler", "linear_schedule": "sampler", "make_schedule": "sampler", "sample": "sampler",
    "SIGMA_DATA": "wrapper", "TrigFlow": "wrapper", "flow_time": "wrapper", "trigflow_angle": "wrapper",
    "x0_from_flow": "wrapper", "x0_from_trigflow": "wrapper",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
