"""`ckptkit trigflow` on tiny Sana checkpoints: the remapped model loads in diffusers and computes the
source flow model's velocity exactly inside the TrigFlow wrapper; with a dense-time source diffusers'
SanaSprintPipeline gives our sampler's latents; the time-scale mismatch it has with an original Sana is
shown; layouts agree; TrigFlow-form inputs are left alone; PixArt and non-flow checkpoints are refused."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from diffusers import SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler

from ckptkit import pipeline
from ckptkit.engine import expr
from ckptkit.convert.layouts import get_layout
from ckptkit.convert.components import load_component
from ckptkit.convert.models import diffusers_shapes
from ckptkit.convert.trigflow import TrigFlowOptions, plan_trigflow
from ckptkit.errors import CkptError
from ckptkit.families import get_family
from ckptkit.families.detect import detect
from ckptkit.formats.base import Checkpoint, TensorInfo
from ckptkit.convert.configs import metadata_value
from ckptkit.fixtures.factory import FIXTURES, original_state, write_bundle, write_diffusers
from ckptkit.formats import open_checkpoint
from safetensors.torch import load_file as load_safetensors
from ckptkit.formats.safetensors import save_safetensors
from ckptkit.trigflow import sampler
from ckptkit.trigflow.adapters import velocity
from ckptkit.trigflow.wrapper import TrigFlow
from tests.conftest import manifest_shapes
from tests.trigflow.models import caption, noise

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
SHAPE = (1, 32, 8, 8)


class Work:
    def __init__(self, root: Path):
        self.root = root
        self.bundle = write_bundle("sana", root / "sana.safetensors")
        self.sprint = write_bundle("sana_sprint", root / "sana_sprint.safetensors")
        self.out = pipeline.trigflow(self.bundle, root / "tf1000").out_dir  # time scale assumed 1000
        self.dense = pipeline.trigflow(self.bundle, root / "tf1", TrigFlowOptions(time_scale=1)).out_dir

    def source_model(self):
        """The flow model as the source file holds it (fp16 weights, computed in float32)."""
        with open_checkpoint(self.bundle) as ckpt:
            return load_component(ckpt, get_family("sana").diffusion_model).eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return Work(tmp_path_factory.mktemp("trigflow"))


def loaded(folder):
    model = SanaTransformer2DModel.from_pretrained(folder, subfolder="transformer", torch_dtype=torch.float32,
                                                   local_files_only=True)
    return model.eval()


def test_output_is_a_sana_sprint_form(work):
    model = loaded(work.out)
    cfg = model.config
    assert (cfg.guidance_embeds, cfg.guidance_embeds_scale, cfg.qk_norm) == (True, 0.1, None)
    assert cfg.timestep_scale == 1000.0
    sched = SCMScheduler.from_pretrained(work.out, subfolder="scheduler")
    assert (sched.config.prediction_type, sched.config.sigma_data) == ("trigflow", 0.5)
    state = model.state_dict()
    assert not state["time_embed.guidance_embedder.linear_2.weight"].any()
    assert not state["time_embed.guidance_embedder.linear_2.bias"].any()
    assert state["time_embed.guidance_embedder.linear_1.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    index = json.loads((Path(work.out) / "model_index.json").read_text())
    assert index["_class_name"] == "SanaSprintPipeline" and index["vae"] == [None, None]


def test_manifest_records_the_transform(work):
    m = json.loads((Path(work.out) / "ckptkit.json").read_text())
    tf = m["trigflow"]
    digest = hashlib.sha256(work.bundle.read_bytes()).hexdigest()
    assert tf["source_sha256"] == {str(work.bundle): digest}
    assert (tf["sigma_data"], tf["time_scale"], tf["guidance_embeds_scale"]) == (0.5, 1000.0, 0.1)
    assert tf["time_scale_source"].startswith("assumed")
    assert sorted(tf["added"]) == sorted(f"time_embed.guidance_embedder.linear_{i}.{p}" for i in (1, 2)
                                         for p in ("weight", "bias"))
    assert "SanaSprintPipeline feeds t" in tf["sana_sprint_pipeline"]
    assert (m["kind"], m["family"], m["variant"]) == ("trigflow", "sana", "sana-sprint")
    dense = json.loads((Path(work.dense) / "ckptkit.json").read_text())["trigflow"]
    assert dense["time_scale"] == 1.0 and dense["sana_sprint_pipeline"].startswith("compatible")


def test_remapped_velocity_is_the_flow_velocity(work):
    src, out = work.source_model(), loaded(work.out)
    cond = caption(src, torch.float32)
    v_src = velocity(src, cond)  # flow Sana: embeds 1000 t
    v_out = velocity(out, {**cond, "guidance": torch.tensor([0.45])})  # timestep_scale 1000 from config
    v_out_g = velocity(out, {**cond, "guidance": torch.tensor([0.0])})
    x = noise(SHAPE, torch.float32)
    with torch.no_grad():
        for t in (1.0, 0.7, 0.25, 0.01):
            tt = torch.tensor([t])
            assert torch.equal(v_out(x, tt), v_src(x, tt))
            assert torch.equal(v_out_g(x, tt), v_src(x, tt))  # the guidance input changes nothing


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_on_remapped_model_reproduces_source(work, steps):
    src, out = work.source_model(), loaded(work.out)
    cond = caption(src, torch.float32)
    schedule = sampler.make_schedule(steps)
    a = sampler.sample(TrigFlow(velocity(src, cond)), SHAPE, schedule, seed=4)
    b = sampler.sample(TrigFlow(velocity(out, {**cond, "guidance": torch.tensor([0.45])})), SHAPE, schedule, seed=4)
    assert torch.allclose(a, b, rtol=0, atol=1e-6), (a - b).abs().max()


def _sprint_pipeline(folder, steps: int, cond: dict, seed: int) -> torch.Tensor:
    """diffusers' own SanaSprintPipeline, run as its __call__ runs with precomputed prompt embeddings: it
    needs no tokenizer, text encoder or VAE then (encode_prompt passes prompt_embeds through, vae_scale_factor
    defaults to 32, output_type="latent" returns `denoised / sigma_data`, pipeline_sana_sprint.py 0.42.1
    lines 722-837); intermediate_timesteps=None allows any step count (linspace(1.57080, 0, steps + 1))."""
    pipe = SanaSprintPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=loaded(folder),
                              scheduler=SCMScheduler.from_pretrained(folder, subfolder="scheduler"))
    pipe.set_progress_bar_config(disable=True)
    side = SHAPE[-1] * pipe.vae_scale_factor
    return pipe(prompt_embeds=cond["encoder_hidden_states"], prompt_attention_mask=cond["encoder_attention_mask"],
                num_inference_steps=steps, intermediate_timesteps=None, height=side, width=side,
                use_resolution_binning=False, output_type="latent", guidance_scale=4.5,
                generator=torch.Generator().manual_seed(seed)).images


def _our_sampler(folder, steps: int, cond: dict, seed: int, time_scale=None) -> torch.Tensor:
    model = loaded(folder)
    schedule = [float(s) for s in torch.linspace(sampler.REFERENCE_S_MAX, 0, steps + 1).float()]  # SCMScheduler's
    cond = {**cond, "guidance": torch.full((1,), 4.5) * model.config.guidance_embeds_scale}
    return sampler.sample(TrigFlow(velocity(model, cond, time_scale)), SHAPE, sampler.make_schedule(steps, schedule),
                          seed=seed)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sana_sprint_pipeline_matches_our_sampler_on_dense_time(work, steps):
    cond = caption(work.source_model(), torch.float32)
    ours, theirs = _our_sampler(work.dense, steps, cond, 9), _sprint_pipeline(work.dense, steps, cond, 9)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6), (ours - theirs).abs().max()


def test_sana_sprint_pipeline_misreads_an_original_time_scale(work, record_property):
    """The discrepancy the remap warns about: SanaSprintPipeline feeds t and ignores config.timestep_scale,
    so on a remapped original Sana (embeds 1000 t) it runs the model at the wrong time. Fed 1000 t, our
    sampler gives the pipeline's computation shape exactly (time scale 1 reproduces the pipeline)."""
    cond = caption(work.source_model(), torch.float32)
    theirs = _sprint_pipeline(work.out, 2, cond, 9)
    assert torch.allclose(_our_sampler(work.out, 2, cond, 9, time_scale=1.0), theirs, rtol=0, atol=1e-6)
    ours = _our_sampler(work.out, 2, cond, 9)
    gap = (ours - theirs).abs().max().item()
    record_property("SanaSprintPipeline vs ckptkit on a 1000 t model, max |latent diff|", gap)
    assert gap > 1e-2


def test_original_layout_agrees_with_diffusers_layout(work, tmp_path):
    out = pipeline.trigflow(work.bundle, tmp_path / "o", TrigFlowOptions(layout="original", with_logvar=True))
    assert all(t.op in ("copy", "init") for t in out.plan.outputs[0].tensors)
    orig = load_safetensors(tmp_path / "o" / "diffusion_model.safetensors")
    source = load_safetensors(work.bundle)
    assert {"cfg_embedder.mlp.0.weight", "cfg_embedder.mlp.2.bias", "logvar_linear.weight",
            "logvar_linear.bias"} <= set(orig)
    assert all(torch.equal(orig[n], t) for n, t in source.items())  # every source tensor copied bit-exactly
    diff = load_safetensors(Path(work.out) / "transformer" / "diffusion_pytorch_model.safetensors")
    back = get_layout("sana").to_diffusers(orig, {})
    assert back.keys() == diff.keys() and all(torch.equal(back[n], diff[n]) for n in diff)


def test_diffusers_source_gives_the_same_output(work, tmp_path):
    folder = write_diffusers("sana", tmp_path / "src")
    out = pipeline.trigflow(folder, tmp_path / "o").out_dir
    a = load_safetensors(Path(out) / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_safetensors(Path(work.out) / "transformer" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    record = json.loads((Path(out) / "ckptkit.json").read_text())["trigflow"]
    assert record["time_scale_source"].startswith("from config")


def test_qk_norm_kept_only_where_the_source_has_it(tmp_path):
    state = original_state("sana_sprint", "diffusion_model")
    flow15 = {n: t for n, t in state.items() if not n.startswith("cfg_embedder.")}  # a SANA 1.5-like flow model
    config = dict(FIXTURES["sana_sprint"].config("diffusion_model"), guidance_embeds=False)  # no cfg_embedder now
    save_safetensors(tmp_path / "sana15.safetensors", flow15, metadata_value({"diffusion_model": config}))
    out = pipeline.trigflow(tmp_path / "sana15.safetensors", tmp_path / "o").out_dir
    assert loaded(out).config.qk_norm == "rms_norm_across_heads"
    assert "transformer_blocks.0.attn1.norm_q.weight" in loaded(out).state_dict()


@pytest.mark.parametrize("which", ["fixture", "ours_diffusers", "ours_original"])
def test_trigflow_form_is_left_as_it_is(work, tmp_path, which):
    if which == "fixture":
        src = work.sprint
    elif which == "ours_diffusers":
        src = work.out
    else:
        pipeline.trigflow(work.bundle, tmp_path / "o", TrigFlowOptions(layout="original"))
        src = tmp_path / "o" / "diffusion_model.safetensors"
    result = pipeline.trigflow(src, tmp_path / "again")
    assert result.plan.info["already_trigflow"] and not result.plan.outputs and not result.written
    assert "already in TrigFlow form" in result.plan.notes[0]
    assert not (tmp_path / "again").exists()


def test_refuses_pixart_and_non_flow(tmp_path):
    pixart = {"blocks.0.mlp.fc1.weight": torch.zeros(8, 4), "blocks.0.cross_attn.kv_linear.weight": torch.zeros(8, 4),
              "x_embedder.proj.weight": torch.zeros(4, 4, 2, 2)}
    save_safetensors(tmp_path / "pixart.safetensors", pixart)
    save_safetensors(tmp_path / "unet.safetensors", original_state("sdxl", "diffusion_model"))
    for name, text in (("pixart", "PixArt"), ("unet", "not a flow-matching model")):
        with pytest.raises(CkptError, match=text):
            pipeline.trigflow(tmp_path / f"{name}.safetensors", tmp_path / "o")
    with pytest.raises(CkptError, match="--layout original"):
        pipeline.trigflow(tmp_path / "pixart.safetensors", tmp_path / "o", TrigFlowOptions(with_logvar=True))
    assert not (tmp_path / "o").exists()


class ShapesOnly(Checkpoint):
    """Names and shapes of a released-size checkpoint, no data: plans are made on the meta device."""

    def __init__(self, name: str, shapes: dict):
        super().__init__(paths=[Path(name)], format="meta")
        self.tensors = {n: TensorInfo(n, tuple(s), "BF16", 0) for n, s in shapes.items()}


def released_shapes(size: str, qk_norm: bool) -> dict:
    """Original-layout shapes of the released 0.6B / 1.6B Sana (1.6B from the manifest of the real file)."""
    if size == "1.6B" and not qk_norm:
        return manifest_shapes("sana_1600m", "transformer")
    base = get_family("sana").diffusion_model.config
    width, layers, cross_heads = {"0.6B": (1152, 28, 16), "1.6B": (2240, 20, 20)}[size]
    cfg = dict(base, num_attention_heads=width // 32, num_layers=layers, num_cross_attention_heads=cross_heads,
               cross_attention_head_dim=width // cross_heads, cross_attention_dim=width,
               qk_norm="rms_norm_across_heads" if qk_norm else None)
    dshapes = diffusers_shapes("SanaTransformer2DModel", cfg)
    return expr.shapes(get_layout("sana").to_original(dshapes, cfg), dshapes)


@pytest.mark.parametrize("size, qk_norm, name, scale", [
    ("0.6B", False, "Sana_600M_1024px_MultiLing.pth", 1000.0),
    ("1.6B", False, "Sana_1600M_1024px.pth", 1000.0),
    ("1.6B", True, "Sana1-5_1600M_1024px.pth", 1000.0),
    ("1.6B", True, "SANA_Sprint_1.6B_1024px_teacher.pth", 1.0),
])
def test_released_sizes_from_shapes(size, qk_norm, name, scale):
    ckpt = ShapesOnly(name, released_shapes(size, qk_norm))
    plan = plan_trigflow(ckpt, detect(ckpt), TrigFlowOptions())
    cfg = json.loads(plan.sidecars["transformer/config.json"])
    width = {"0.6B": 1152, "1.6B": 2240}[size]
    assert cfg["num_attention_heads"] * cfg["attention_head_dim"] == width
    assert cfg["num_layers"] == {"0.6B": 28, "1.6B": 20}[size]
    assert cfg["qk_norm"] == ("rms_norm_across_heads" if qk_norm else None)
    assert (cfg["guidance_embeds"], cfg["timestep_scale"]) == (True, scale)
    ops = {t.name: t for t in plan.outputs[0].tensors}
    assert ops["time_embed.guidance_embedder.linear_1.weight"].shape == (width, 256)
    assert ops["time_embed.guidance_embedder.linear_2.weight"].shape == (width, width)
    assert sum(t.op == "init" for t in ops.values()) == 4 and ops["caption_norm.weight"].op == "copy"
    assert bool(plan.info["warnings"]) == (scale != 1.0)


def test_nvlabs_pth_source(work, tmp_path):
    """An NVlabs .pth ships no config: the tiny model's head widths are not a released Sana's, so
    they must be given (--config), and then it converts as the safetensors bundle does."""
    torch.save({"state_dict": load_safetensors(work.bundle), "epoch": 1}, tmp_path / "Sana_600M.pth")
    with pytest.raises(CkptError, match=r"attention_head_dim is not determined by the weights.*--config"):
        pipeline.trigflow(tmp_path / "Sana_600M.pth", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    (tmp_path / "config.json").write_text(json.dumps(FIXTURES["sana"].config("diffusion_model")))
    out = pipeline.trigflow(tmp_path / "Sana_600M.pth", tmp_path / "o", config=tmp_path / "config.json").out_dir
    a = load_safetensors(Path(out) / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_safetensors(Path(work.out) / "transformer" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
