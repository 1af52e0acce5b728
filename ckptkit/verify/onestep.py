"""The 1-step inference check: a reference and a candidate component set, built into models from
their files (any layout, GGUF dequantized), run through the family's natural one-step sampler
from the same seed, output by output.

    result = run_onestep(reference, candidate, seed=0, device="auto", dtype="float32", resolution=512)
    result.text["clip_l"].outputs["hidden"].cosine
    result.diffusion.outputs["latent"].rel_rms
    result.vae.outputs["image"].psnr
    result.e2e.outputs["image"].ssim
    json.dumps(result.to_json()); result.save_png("onestep.png")

Checks (each `applicable` or not, with the reason):
  * text_encoder (one per encoder the family's recipe uses): fixed token ids from the seed; the
    hidden state the pipeline takes (and the pooled output when it takes one);
  * diffusion_model: one step from the same noise, both with the REFERENCE's conditioning, so
    only the diffusion model differs;
  * vae: both decoders on the reference's one-step latent;
  * e2e: candidate text encoders -> candidate diffusion model -> candidate VAE against the
    all-reference chain; PSNR and SSIM of the images. Components the candidate lacks are taken
    from the reference (listed in the notes).
A family or set without text encoders uses a seeded random conditioning of the shapes its
denoiser takes (Sana's caption embedding); without a VAE the image checks are not applicable.
`result.images` holds each checked stage's output on both sides, the rows of onestep.png.

Models are loaded one at a time (reference, then candidate, per component) and freed after use,
so the peak is one component; the memory plan (memory.py, made before any model is built) says
which components are layer-streamed instead (streamed.py: the peak is one layer). Every phase is
timed with time.perf_counter (after a CUDA synchronize): load (read + layout + build, without
dequantization; for a streamed model only the build), dequantize (time inside GGUF
dequantization), forward (for a streamed model the weights are read inside it). The per-family
conventions are `recipes.RECIPES`.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ckptkit.errors import CkptError, ResourceError
from ckptkit.convert.components import shipped_config
from ckptkit.families.spec import ComponentSpec
from ckptkit.formats.base import Checkpoint
from ckptkit.verify.conditioning import (assemble, encode, generator, missing_encoders, random_conditioning,
                                         token_ids)
from ckptkit.verify.images import (Comparison, OneStepImages, StageImage, compare, decoded_to_image, json_float,
                                   save_onestep_png, video_strip)
from ckptkit.verify.recipes import OneStepRecipe, recipe_for
from ckptkit.verify.samplers import DENOISERS, one_step

DEFAULT_RESOLUTION = 32  # pixels: tiny fixtures (VAE factor 2) get 16x16 latents, well under a second on CPU
MIN_LATENT_SIDE = 4  # a family of 32 px per latent (Sana's DC-AE, LTX's VAE) still gets a 4x4 latent
DEFAULT_TEXT_LENGTH = 32  # T5 tokens / Sana caption length
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64, "fp64": torch.float64}


# ---------------------------------------------------------------- inputs
@dataclass
class ModelSource:
    """Where one component's tensors are: a checkpoint, the prefix and naming they sit under."""

    ckpt: Checkpoint
    prefix: str = ""
    names: str = "original"  # "original" | "diffusers"
    config: dict | None = None  # the diffusers/transformers config (diffusers sources)
    exclude: frozenset[str] = frozenset()  # junk / EMA names under the prefix
    spec: ComponentSpec | None = None  # None: the family spec's component of that name


@dataclass
class ModelSet:
    family: str
    variant: str | None
    sources: dict[str, ModelSource]
    label: str = ""

    def spec(self, name: str) -> ComponentSpec:
        from ckptkit.families import get_family

        src = self.sources[name]
        return src.spec if src.spec is not None else get_family(self.family).component(name)

    @property
    def diffusion_model(self) -> str | None:
        from ckptkit.families import get_family

        name = get_family(self.family).diffusion_model.name
        return name if name in self.sources else None

    @property
    def vae(self) -> str | None:
        return next((n for n in self.sources if self.spec(n).role == "vae"), None)


def _naming(spec: ComponentSpec, ckpt: Checkpoint, prefix: str, names: str) -> str:
    from ckptkit.convert.components import HF_NATIVE

    if names == "original" and spec.role == "text_encoder" and spec.layout not in HF_NATIVE:
        if any(n.startswith(prefix + "text_model.") for n in ckpt.tensors):  # transformers-layout file
            return "diffusers"
    return names


def _from_detection(ckpt: Checkpoint, det, family: str | None, variant: str | None, label: str) -> ModelSet:
    from ckptkit.families import get_family

    family = det.family or family
    if family is None:
        raise CkptError(f"{label or ckpt.path}: family unknown; give the family for a standalone component")
    spec = get_family(family)
    exclude = frozenset(det.junk) | frozenset(det.ema) | frozenset(det.unclaimed)
    sources = {}
    for name, prefix in det.components.items():
        comp = None
        if det.standalone:
            from ckptkit.convert.components import component_spec

            comp = component_spec(det)
        elif not any(c.name == name for c in spec.components):
            continue
        comp_spec = comp or spec.component(name)
        config = shipped_config(ckpt, det.names, prefix)
        sources[name] = ModelSource(ckpt, prefix, _naming(comp_spec, ckpt, prefix, det.names), config, exclude, comp)
    return ModelSet(family, det.variant or variant, sources, label or str(ckpt.path))


def model_set(obj, family: str | None = None, variant: str | None = None, label: str = "") -> ModelSet:
    """A ModelSet from any of: a ModelSet; a Checkpoint (detected here); (Checkpoint, Detection);
    a verify ComponentSet (`.components` of objects with ckpt/prefix/names/config/exclude/spec);
    a dict component -> ModelSource | (Checkpoint, prefix, names, config) | such an object
    (`family`/`variant` say whose components they are)."""
    from ckptkit.families.detect import Detection, detect

    if isinstance(obj, ModelSet):
        return obj
    if isinstance(obj, Checkpoint):
        return _from_detection(obj, detect(obj), family, variant, label)
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], Detection):
        return _from_detection(obj[0], obj[1], family, variant, label)
    if hasattr(obj, "components") and isinstance(obj.components, dict):
        family = getattr(obj, "family", None) or family
        variant = getattr(obj, "variant", None) or variant
        label = label or str(getattr(obj, "path", ""))
        obj = obj.components
    if not isinstance(obj, dict):
        raise TypeError(f"not a component set: {type(obj).__name__}")
    if family is None:
        raise CkptError("family unknown: give the family of these components")
    sources = {}
    for name, item in obj.items():
        if isinstance(item, ModelSource):
            sources[name] = item
        elif isinstance(item, tuple):
            sources[name] = ModelSource(*item)
        elif getattr(item, "ckpt", None) is not None:
            sources[name] = ModelSource(item.ckpt, item.prefix, item.names, item.config,
                                        frozenset(getattr(item, "exclude", ())), getattr(item, "spec", None))
        # unreadable components (ckpt None) are left out: the integrity check reports them
    return ModelSet(family, variant, sources, label)


# ---------------------------------------------------------------- results
@dataclass
class StageCheck:
    stage: str  # "text_encoder" | "diffusion_model" | "vae" | "e2e"
    component: str
    applicable: bool
    reason: str = ""  # why not applicable
    outputs: dict[str, Comparison] = field(default_factory=dict)  # "hidden" / "pooled" / "latent" / "image"
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"stage": self.stage, "component": self.component, "applicable": self.applicable,
                **({"reason": self.reason} if self.reason else {}),
                "outputs": {k: v.to_json() for k, v in self.outputs.items()}, "notes": list(self.notes)}


def _na(stage: str, component: str, reason: str) -> StageCheck:
    return StageCheck(stage, component, False, f"not applicable: {reason}")


@dataclass
class OneStepResult:
    family: str
    variant: str | None
    candidate_variant: str | None
    sampler: str
    candidate_sampler: str
    device: str
    dtype: str
    seed: int
    image_size: list[int]  # (H, W) of the decoded images (nominal when there is no VAE)
    latent_shape: list[int]
    text: dict[str, StageCheck]
    diffusion: StageCheck
    vae: StageCheck
    e2e: StageCheck
    timings: dict
    recipe: dict
    notes: list[str] = field(default_factory=list)
    images: OneStepImages | None = None  # the rows of onestep.png (None: no stage ran); only its kind is serialised

    def checks(self) -> list[StageCheck]:
        return [*self.text.values(), self.diffusion, self.vae, self.e2e]

    def to_json(self) -> dict:
        """Every figure, strict-JSON safe (inf/nan as strings)."""
        return {"family": self.family, "variant": self.variant, "candidate_variant": self.candidate_variant,
                "sampler": self.sampler, "candidate_sampler": self.candidate_sampler, "device": self.device,
                "dtype": self.dtype, "seed": self.seed, "image_size": self.image_size,
                "latent_shape": self.latent_shape, "text": {k: v.to_json() for k, v in self.text.items()},
                "diffusion": self.diffusion.to_json(), "vae": self.vae.to_json(), "e2e": self.e2e.to_json(),
                "timings": _json_tree(self.timings), "recipe": self.recipe, "notes": list(self.notes),
                "images": None if self.images is None else self.images.kind}

    def save_png(self, path: str | Path) -> Path | None:
        return None if self.images is None else save_onestep_png(self.images, path)


def _json_tree(value):
    if isinstance(value, dict):
        return {k: _json_tree(v) for k, v in value.items()}
    return json_float(value)


def _compare(ref: torch.Tensor, cand: torch.Tensor, image: bool = False, frames: int = 0) -> Comparison:
    if tuple(ref.shape) != tuple(cand.shape):
        return Comparison(float("inf"), 0.0, float("inf"), list(cand.shape),
                          *((0.0, 0.0) if image else ()))
    return compare(ref, cand, image, frames)


# ---------------------------------------------------------------- the engine
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CkptError(f"--device {device}: no CUDA device here (use auto or cpu)")
    if device != "cpu" and not device.startswith("cuda"):
        raise CkptError(f"--device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise CkptError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}") from None


class _TimedCheckpoint:
    """A Checkpoint seen through a stopwatch: time spent reading plain tensors vs dequantizing."""

    def __init__(self, ckpt: Checkpoint):
        from ckptkit.formats.dtypes import DTYPES as PLAIN

        self._ckpt, self._plain = ckpt, PLAIN
        self.tensors, self.config = ckpt.tensors, ckpt.config
        self.dequantize = 0.0

    def load(self, name: str) -> torch.Tensor:
        t0 = time.perf_counter()
        t = self._ckpt.load(name)
        if self.tensors[name].dtype not in self._plain:
            self.dequantize += time.perf_counter() - t0
        return t

    def __getattr__(self, key):
        return getattr(self._ckpt, key)


def _own_storage(model) -> None:
    """Copy tensors that still view the file's mmap into fresh (aligned) memory: CPU kernels pick
    their paths by alignment, and a tensor's offset in a file must not change the result."""
    with torch.no_grad():
        for module in model.modules():
            for key, t in list(module._parameters.items()) + list(module._buffers.items()):
                if t is not None and t.device.type == "cpu" and t.data_ptr() % 64:
                    t.data = t.data.clone()


class _Run:
    plan = None  # memory.MemoryPlan: which models are layer-streamed
    progress = None  # progress(1) after each model built

    def __init__(self, ref: ModelSet, cand: ModelSet, seed: int, device: torch.device, dtype: torch.dtype,
                 resolution: int, text_length: int, tokens: dict | None):
        from ckptkit.families import get_family

        self.ref, self.cand = ref, cand
        self.seed, self.device, self.dtype = seed, device, dtype
        self.resolution, self.text_length, self.tokens = resolution, text_length, dict(tokens or {})
        self.rec = {"reference": recipe_for(ref.family, ref.variant),
                    "candidate": recipe_for(cand.family, cand.variant)}
        fam = get_family(ref.family)
        self.scheduler = {side: _scheduler(fam, s.variant) for side, s in (("reference", ref), ("candidate", cand))}
        self.timings: dict = {side: {"load": {}, "dequantize": {}, "forward": {}}
                              for side in ("reference", "candidate")}
        self.notes: list[str] = []
        self.rows: list[StageImage] = []  # onestep.png, in stage order
        self.frames = 0  # video: decoded frames per clip (images are strips of them)

    # -- timing
    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def load(self, side: str, name: str, dtype: torch.dtype | None = None):
        from ckptkit.convert.components import load_component

        mset = self.ref if side == "reference" else self.cand
        src = mset.sources[name]
        proxy = _TimedCheckpoint(src.ckpt)
        t0 = time.perf_counter()
        config = src.config
        if src.names == "diffusers" and config is None:  # a transformers-layout file without config.json
            from ckptkit.convert.components import local_shapes, source_config

            config = source_config(mset.spec(name), local_shapes(src.ckpt, src.prefix, set(src.exclude)), src.names,
                                   None, src.ckpt)
        if self.plan is not None and self.plan.streamed(side, name):  # weights read per layer as it runs
            from ckptkit.verify.memory import bounded_heap
            from ckptkit.verify.streamed import streamed_component

            bounded_heap()
            model = streamed_component(proxy, mset.spec(name), src.prefix, src.names, config, src.exclude,
                                       dtype or self.dtype, self.device)
        else:
            model = load_component(proxy, mset.spec(name), src.prefix, src.names, config, src.exclude,
                                   dtype or self.dtype)
            if self.device.type == "cpu":
                _own_storage(model)
            model = model.to(self.device)
        self._sync()
        total = time.perf_counter() - t0
        if self.progress is not None:
            self.progress(1)
        self.timings[side]["load"][name] = round(total - proxy.dequantize, 6)
        self.timings[side]["dequantize"][name] = round(proxy.dequantize, 6)
        return model

    def forward(self, side: str, key: str, fn):
        self._sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn()
        self._sync()
        self.timings[side]["forward"][key] = round(time.perf_counter() - t0, 6)
        return out

    def release(self) -> None:
        """After the caller dropped its model: give its memory back before the next load (the GPU
        cache; on the CPU, the freed heap pages: see memory.trim)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        else:
            from ckptkit.verify.memory import trim

            trim()

    def to(self, cond: dict) -> dict:
        return {k: v.to(self.device, self.dtype) for k, v in cond.items()}

    def add_row(self, stage: str, component: str, kind: str, ref: torch.Tensor, cand: torch.Tensor,
                cmp: Comparison) -> None:
        """Add a row to onestep.png with the figures of `cmp` (none where the shapes differ)."""
        if ref.ndim == 5:  # video latents (B, C, F, h, w): the frames side by side, as the decoded clip
            ref, cand = video_strip(ref), video_strip(cand)
        if tuple(ref.shape) == tuple(cand.shape):
            metrics = {"cosine": cmp.cosine, "rel_rms": cmp.rel_rms,
                       **({"psnr": cmp.psnr, "ssim": cmp.ssim} if cmp.psnr is not None else {})}
            self.rows.append(StageImage(stage, component, kind, ref.detach().cpu(), cand.detach().cpu(), metrics))

    # -- stages
    def text_stage(self):
        """Text encoder outputs per side, and one check per encoder of the recipe."""
        recipe = self.rec["reference"]
        outs = {"reference": {}, "candidate": {}}
        checks: dict[str, StageCheck] = {}
        for use in recipe.text:
            name = use.component
            ids = None
            for side, mset in (("reference", self.ref), ("candidate", self.cand)):
                if name not in mset.sources:
                    continue
                model = self.load(side, name)
                vocab = model.config.vocab_size
                if ids is None:
                    ids = self.tokens.get(name)
                    if ids is None:
                        length = None if use.tokens == "clip" else self.text_length
                        ids = token_ids(use.tokens, vocab, self.seed, length, name)
                    ids = ids.reshape(1, -1).long()
                if int(ids.max()) >= vocab:
                    checks[name] = _na("text_encoder", name, f"{side} vocabulary ({vocab}) is smaller than the "
                                       f"reference's token ids")
                    del model
                    self.release()
                    continue
                outs[side][name] = self.forward(side, f"text_encoder.{name}",
                                                lambda: encode(model, use, ids.to(self.device)))
                del model
                self.release()
            if name in checks:
                continue
            have = [s for s in ("reference", "candidate") if name in outs[s]]
            if len(have) < 2:
                absent = "reference" if "reference" not in have else "candidate"
                checks[name] = _na("text_encoder", name, f"not in the {absent}")
                continue
            r, c = outs["reference"][name], outs["candidate"][name]
            checks[name] = StageCheck("text_encoder", name, True,
                                      outputs={k: _compare(r[k], c[k]) for k in r if k in c})
            key = next((k for k in ("hidden", "pooled") if k in checks[name].outputs), None)
            if key:  # a pooled (1, P) output is shown as one token
                self.add_row("text_encoder", name, "hidden", r[key].reshape(1, -1, r[key].shape[-1]),
                             c[key].reshape(1, -1, c[key].shape[-1]), checks[name].outputs[key])
        return outs, checks

    def geometry(self, dm_cfg: dict | None, vae_cfg: dict | None, recipe: OneStepRecipe):
        """(latent channels, latent side, image side)."""
        factor = vae_factor(vae_cfg) if vae_cfg else recipe.latent_factor
        side = max(1, self.resolution // factor)
        if dm_cfg is not None:
            call = DENOISERS[recipe.denoiser]
            channels, mult, top = call.latent_channels(dm_cfg), call.multiple(dm_cfg), call.max_side(dm_cfg)
        else:
            channels, mult, top = vae_cfg.get("latent_channels") or vae_cfg["z_dim"], 1, None
        side = max(side, MIN_LATENT_SIDE)  # a 32x VAE (LTX) at the default 32 px would leave 1 x 1
        side = max(mult, side - side % mult)
        if top and side > top:
            self.notes.append(f"latent side {side} capped at {top} (the model's largest position embedding)")
            side = top - top % mult
        return channels, side, side * factor

    def run(self) -> OneStepResult:
        t_start = time.perf_counter()
        ref, cand = self.ref, self.cand
        recipe = self.rec["reference"]
        outs, text_checks = self.text_stage()
        for name in cand.sources:
            if name not in ref.sources:
                self.notes.append(f"{name}: in the candidate only; not checked")

        # conditioning: the reference's, and the candidate chain's (candidate encoders, else the reference's)
        ref_missing = missing_encoders(recipe, outs["reference"])
        cand_outs = {**outs["reference"], **outs["candidate"]}
        borrowed = [u.component for u in recipe.text if u.component in outs["reference"]
                    and u.component not in outs["candidate"]]

        dm = ref.diffusion_model
        vae_src = ref if ref.vae else (cand if cand.vae else None)
        vae_cfg = _component_config(vae_src, vae_src.vae) if vae_src else None
        dm_model = self.load("reference", dm) if dm else None
        dm_cfg = dict(dm_model.config) if dm_model is not None else None
        if dm_cfg is None and vae_cfg is None:
            raise CkptError("the 1-step check needs a diffusion model or a VAE in the reference")
        channels, lat, img = self.geometry(dm_cfg, vae_cfg, recipe)
        self.image_side = img
        self.latent_shape = [1, channels, *([recipe.frames] if recipe.frames else []), lat, lat]

        z = torch.randn(self.latent_shape, generator=generator(self.seed, "noise"))
        x0 = {}
        diffusion = None
        ref_cond = cand_cond = None
        if dm_model is not None:
            call = DENOISERS[recipe.denoiser]
            width = dm_cfg.get("joint_attention_dim")
            if ref_missing or not recipe.text:
                why = ("the family has no bundled text encoder" if not recipe.text else
                       f"the reference has no {', '.join(ref_missing)}")
                self.notes.append(f"conditioning: seeded random embeddings ({why})")
                ref_cond = random_conditioning(call.cond_shapes(dm_cfg, recipe, self.text_length), recipe, self.seed,
                                               img, img)
                cand_cond = ref_cond
            else:
                ref_cond = assemble(recipe, outs["reference"], width, self.text_length, img, img)
                cand_cond = assemble(recipe, cand_outs, width, self.text_length, img, img)
            extra = call.extra_cond(dm_cfg)  # inputs no text encoder gives
            if extra:
                self.notes.append(f"conditioning: seeded random {', '.join(extra)} (no encoder of the set gives them)")
                stand_ins = {k: torch.randn((1, *s), generator=generator(self.seed, f"random:{k}"))
                             for k, s in extra.items()}
                same = cand_cond is ref_cond
                ref_cond = {**ref_cond, **stand_ins}
                cand_cond = ref_cond if same else {**cand_cond, **stand_ins}
            if borrowed and not ref_missing:
                self.notes.append(f"e2e: the candidate has no {', '.join(borrowed)}; the reference's is used")
            zd = z.to(self.device, self.dtype)
            x0["reference"] = self.forward("reference", "diffusion_model",
                                           lambda: one_step(recipe, dm_model, zd, self.to(ref_cond),
                                                            self.scheduler["reference"])).cpu()
            same_cond = cand_cond is ref_cond or all(torch.equal(ref_cond[k], cand_cond[k]) for k in ref_cond)
            if dm not in cand.sources:
                x0["e2e"] = x0["reference"] if same_cond else self.forward(
                    "reference", "diffusion_model.e2e",
                    lambda: one_step(recipe, dm_model, zd, self.to(cand_cond), self.scheduler["reference"])).cpu()
                self.notes.append("e2e: the candidate has no diffusion model; the reference's is used")
            del dm_model
            self.release()
            if dm in cand.sources:
                crec = self.rec["candidate"]
                model = self.load("candidate", dm)
                x0["candidate"] = self.forward("candidate", "diffusion_model",
                                               lambda: one_step(crec, model, zd, self.to(ref_cond),
                                                                self.scheduler["candidate"])).cpu()
                x0["e2e"] = x0["candidate"] if same_cond else self.forward(
                    "candidate", "diffusion_model.e2e",
                    lambda: one_step(crec, model, zd, self.to(cand_cond), self.scheduler["candidate"])).cpu()
                del model
                self.release()
                diffusion = StageCheck("diffusion_model", dm, True, outputs={"latent": _compare(x0["reference"],
                                                                                                x0["candidate"])})
                self.add_row("diffusion_model", dm, "latent", x0["reference"], x0["candidate"],
                             diffusion.outputs["latent"])
                if self.rec["candidate"].sampler != recipe.sampler:
                    diffusion.notes.append(f"samplers: reference {recipe.sampler}, candidate "
                                           f"{self.rec['candidate'].sampler} (the same step at the start time)")
            else:
                diffusion = _na("diffusion_model", dm, "not in the candidate")
        else:
            name = next((c.name for c in _family_components(ref.family) if c.role == "diffusion_model"),
                        "diffusion_model")
            diffusion = _na("diffusion_model", name, "not in the reference" if name in cand.sources
                            else "not in either set")
            x0["reference"] = torch.randn(self.latent_shape, generator=generator(self.seed, "latent"))
            self.notes.append("vae: decoding a seeded random latent (no diffusion model in the reference)")

        vae, e2e = self.vae_stage(x0, recipe, diffusion)
        self.timings["total"] = round(time.perf_counter() - t_start, 6)
        title = (f"{ref.family}{'/' + ref.variant if ref.variant else ''}, {self.device.type} "
                 f"{str(self.dtype).removeprefix('torch.')}, seed {self.seed}")
        images = OneStepImages(self.rows, title=title) if self.rows else None
        return OneStepResult(
            family=ref.family, variant=ref.variant, candidate_variant=cand.variant, sampler=recipe.sampler,
            candidate_sampler=self.rec["candidate"].sampler, device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."), seed=self.seed, image_size=[img, img],
            latent_shape=self.latent_shape, text=text_checks, diffusion=diffusion, vae=vae, e2e=e2e,
            timings=self.timings, recipe=recipe.to_json(), notes=self.notes, images=images)

    def vae_stage(self, x0: dict, recipe: OneStepRecipe, diffusion: StageCheck):
        ref, cand = self.ref, self.cand
        rv, cv = ref.vae, cand.vae
        decoded: dict[str, torch.Tensor] = {}
        vae_dtype = torch.float32 if self.dtype == torch.float16 else self.dtype  # SDXL's VAE overflows in fp16
        if self.dtype != vae_dtype and (rv or cv):
            self.notes.append("vae: decoded in float32 with float16 compute (the SDXL VAE overflows in float16)")

        def decode(model, latent):
            sf = float(getattr(model.config, "scaling_factor", None) or 1.0)
            shift = float(getattr(model.config, "shift_factor", None) or 0.0)
            z = (vae_latent(model, latent) / sf + shift).to(self.device, vae_dtype)
            out = decode_frames(model, z, recipe.decode_timestep, self.seed)
            if out.ndim == 5:  # a video: its frames side by side, compared frame by frame
                self.frames = out.shape[2]
            return decoded_to_image(out)

        if rv and not cv and "e2e" in x0:
            self.notes.append("e2e: the candidate has no VAE; the reference's is used")
        if rv:
            model = self.load("reference", rv, vae_dtype)
            decoded["reference"] = self.forward("reference", "vae", lambda: decode(model, x0["reference"]))
            if not cv and "e2e" in x0:
                decoded["e2e"] = self.forward("reference", "vae.e2e", lambda: decode(model, x0["e2e"]))
            del model
            self.release()
        if cv and rv:
            model = self.load("candidate", cv, vae_dtype)
            decoded["candidate"] = self.forward("candidate", "vae", lambda: decode(model, x0["reference"]))
            if "e2e" in x0:
                decoded["e2e"] = self.forward("candidate", "vae.e2e", lambda: decode(model, x0["e2e"]))
            del model
            self.release()

        vae_name = rv or cv or "vae"
        if rv and cv:
            vae = StageCheck("vae", vae_name, True,
                             outputs={"image": _compare(decoded["reference"], decoded["candidate"], image=True,
                                                        frames=self.frames)})
            self.add_row("vae", vae_name, "image", decoded["reference"], decoded["candidate"], vae.outputs["image"])
        elif not recipe.has_vae:
            vae = _na("vae", vae_name, f"{self.ref.family} has no VAE component (its VAE is not read here)")
        else:
            vae = _na("vae", vae_name, "not in the " + ("reference" if not rv else "candidate")
                      if (rv or cv) else "not in either set")

        if "e2e" in x0 and "reference" in decoded and "e2e" in decoded:
            e2e = StageCheck("e2e", "e2e", True, outputs={
                "latent": _compare(x0["reference"], x0["e2e"]),
                "image": _compare(decoded["reference"], decoded["e2e"], image=True, frames=self.frames)})
            self.add_row("e2e", "e2e", "image", decoded["reference"], decoded["e2e"], e2e.outputs["image"])
        else:
            if not recipe.has_vae:
                why = f"{self.ref.family} has no VAE component; the diffusion model check covers it"
            elif "e2e" not in x0:
                why = "no diffusion model to run"
            else:
                why = "no VAE in the reference"
            e2e = _na("e2e", "e2e", why)
            if "e2e" in x0:
                e2e.outputs["latent"] = _compare(x0["reference"], x0["e2e"])
        return vae, e2e


def vae_latent(model, latent: torch.Tensor) -> torch.Tensor:
    """The diffusion model's latent as the VAE's decoder takes it. A VAE with batch-norm latent
    statistics (`bn` running stats and a `patch_size`: FLUX.2's AutoencoderKLFlux2) had its latents
    normalised per channel of the patchified latent: de-normalise there, as Flux2Pipeline does
    (x * sqrt(running_var + batch_norm_eps) + running_mean on the 2x2 patches, then unpatchify)."""
    bn = getattr(model, "bn", None)
    patch = getattr(model.config, "patch_size", None)
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) or bn.running_mean is None or not patch:
        return latent
    ph, pw = patch if isinstance(patch, (list, tuple)) else (patch, patch)
    b, c, h, w = latent.shape
    mean = bn.running_mean.detach().to(latent.device, torch.float32).view(1, -1, 1, 1)
    std = torch.sqrt(bn.running_var.detach().to(latent.device, torch.float32) + bn.eps).view(1, -1, 1, 1)
    # (b, c, h/ph, ph, w/pw, pw) -> channel c * ph * pw + i * pw + j, as Flux2Pipeline._patchify_latents
    x = latent.float().reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4)
    x = x.reshape(b, c * ph * pw, h // ph, w // pw) * std + mean
    x = x.reshape(b, c, ph, pw, h // ph, w // pw).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
    return x.to(latent.dtype)


def vae_factor(cfg: dict) -> int:
    """Pixels per latent pixel, from the structure the config builds (not a ratio it merely states for
    a pipeline, as the Wan VAE's scale_factor_spatial): LTX's patch x one halving per level that scales
    in space, HunyuanVideo's spatial_compression_ratio (which places its downsamplers), else one
    halving per level but the last (AutoencoderKL's block_out_channels, AutoencoderDC's
    encoder_block_out_channels, the Wan / Qwen-Image VAE's dim_mult) times a patchify step (Wan 2.2: 2,
    so 16)."""
    if "spatio_temporal_scaling" in cfg:  # AutoencoderKLLTXVideo: 0.9.5's "temporal" levels keep the size
        kinds = cfg.get("downsample_type") or ["conv"] * len(cfg["spatio_temporal_scaling"])
        return cfg["patch_size"] * 2 ** sum(bool(s) and k != "temporal"
                                            for s, k in zip(cfg["spatio_temporal_scaling"], kinds))
    if cfg.get("spatial_compression_ratio"):  # AutoencoderKLHunyuanVideo
        return int(cfg["spatial_compression_ratio"])
    if "dim_mult" in cfg:  # AutoencoderKLWan / AutoencoderKLQwenImage (FLUX.2's patch_size is a latent one)
        return 2 ** (len(cfg["dim_mult"]) - 1) * int(cfg.get("patch_size") or 1)
    levels = cfg.get("block_out_channels") or cfg["encoder_block_out_channels"]
    return 2 ** (len(levels) - 1)


def decode_frames(model, z: torch.Tensor, decode_timestep: float = 0.0, seed: int = 0) -> torch.Tensor:
    """`model.decode(z).sample` for an image latent (B, C, H, W). A VAE whose class works on video
    latents (a 3-D conv decoder: Wan / Qwen-Image's causal VAE) gets a one-frame axis, (B, C, 1, H, W),
    and its image back as that frame; one with per-channel `latents_mean` / `latents_std` in its config
    decodes `z * std + mean`, as QwenImagePipeline de-normalises before decoding, and one holding them
    as buffers (AutoencoderKLLTXVideo) likewise, as LTXPipeline._denormalize_latents (z * std / scaling +
    mean; the caller divided by the scale). A timestep-conditioned decoder (config timestep_conditioning:
    LTX-Video 0.9.1+) gets `decode_timestep` for every clip, LTXPipeline's `timestep` (whose noise mix
    `(1 - s) z + s noise`, s = decode_timestep by default, is the identity at its default 0); the noise
    such a decoder injects is drawn from torch's generator seeded with `seed`, so two models decode alike."""
    mean, std = getattr(model.config, "latents_mean", None), getattr(model.config, "latents_std", None)
    buffers = getattr(model, "_buffers", {})
    if mean is None and std is None and buffers.get("latents_mean") is not None and buffers.get("latents_std") is not None:
        mean, std = buffers["latents_mean"].float().tolist(), buffers["latents_std"].float().tolist()
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (z.ndim - 2)
        z = z * torch.tensor(std, dtype=z.dtype, device=z.device).view(shape) \
            + torch.tensor(mean, dtype=z.dtype, device=z.device).view(shape)
    video = isinstance(getattr(getattr(model, "decoder", None), "conv_in", None), torch.nn.Conv3d)
    if video and z.ndim == 4:
        return model.decode(z[:, :, None]).sample[:, :, 0]
    if getattr(model.config, "timestep_conditioning", False):
        temb = torch.full((z.shape[0],), float(decode_timestep), dtype=z.dtype, device=z.device)
        with torch.random.fork_rng(devices=[z.device] if z.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return model.decode(z, temb).sample
    return model.decode(z).sample


def _family_components(family: str):
    from ckptkit.families import get_family

    return get_family(family).components


def _scheduler(family_spec, variant: str | None) -> dict:
    v = next((v for v in family_spec.variants if v.name == variant), None)
    return dict(v.scheduler if v is not None and v.scheduler else family_spec.scheduler)


def _component_config(mset: ModelSet, name: str) -> dict:
    """A component's config without loading its weights (shapes only)."""
    from ckptkit.convert.components import local_shapes, source_config

    src, spec = mset.sources[name], mset.spec(name)
    return source_config(spec, local_shapes(src.ckpt, src.prefix, set(src.exclude)), src.names, src.config, src.ckpt)


def run_onestep(reference, candidate, *, seed: int = 0, device: str = "auto", dtype="float32",
                resolution: int | None = None, text_length: int = DEFAULT_TEXT_LENGTH,
                token_ids: dict[str, torch.Tensor] | None = None, family: str | None = None,
                variant: str | None = None, plan=None, memory_limit: int | None = None,
                stream_above: int | None = None, progress=None) -> OneStepResult:
    """Run the 1-step check of `candidate` against `reference` (see the module doc).

    reference / candidate: anything `model_set` takes. family / variant: for sets that do not say
    (the candidate defaults to the reference's). resolution: image side in pixels (default 32;
    the latent side is resolution / the VAE's factor, rounded to what the denoiser needs).
    text_length: T5 / caption tokens. token_ids: component -> ids to use instead of the seeded
    ones (e.g. a real prompt tokenized by the caller). plan: a memory.MemoryPlan made by the caller
    (else planned here, with memory_limit and stream_above; see memory.py); a plan that does not
    fit raises ResourceError before any model is loaded."""
    ref = model_set(reference, family, variant, "reference")
    cand = model_set(candidate, ref.family, None, "candidate")
    if cand.variant is None and cand.family == ref.family:
        cand.variant = ref.variant
    if cand.family != ref.family:
        raise CkptError(f"the candidate is {cand.family}, the reference {ref.family}: the 1-step check compares "
                        "the same family")
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if plan is None:
        from ckptkit.verify.memory import plan_memory

        plan = plan_memory(ref, cand, device, dtype, memory_limit, stream_above)
    if not plan.fits:
        raise ResourceError(plan.refusal())
    run = _Run(ref, cand, seed, device, dtype, resolution or DEFAULT_RESOLUTION, text_length, token_ids)
    run.plan, run.progress = plan, progress
    return run.run()
