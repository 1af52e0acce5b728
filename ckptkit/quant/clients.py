"""The programs that load our GGUF files, as data: one profile per client, each rule read from the
client's own loader (the source named in `read_from`). The quantize planner asks the profile which
architectures the client takes, which text encoders it reads from GGUF, whether SD1/SDXL convs are
stored as 256-wide rows, which prefix names need, and whether a config must travel beside the file.

  comfy      ComfyUI-GGUF (UnetLoaderGGUF / CLIPLoaderGGUF): the default
  diffusers  diffusers' `from_single_file(..., quantization_config=GGUFQuantizationConfig(...))`
  sdcpp      stable-diffusion.cpp, component files (`--diffusion-model`, `--clip_l`, ...) or its
             one-file bundle (`-o FILE.gguf`), with its convert's type rules and weighted search
"""

from __future__ import annotations

from dataclasses import dataclass

from ckptkit.errors import CkptError


@dataclass(frozen=True)
class Client:
    name: str
    title: str
    read_from: str  # where these rules come from
    # general.architecture values its loader takes for a diffusion model; None: metadata ignored
    diffusion_archs: frozenset[str] | None
    # layout kinds of text encoders it loads from GGUF; a quantized request for another is not
    # written as GGUF (comfy: kept safetensors, as the client's README says; diffusers: refused)
    gguf_text_encoders: frozenset[str]
    text_encoder_fallback: str  # "safetensors" | "refuse"
    conv_reshape: bool  # SD1/SDXL conv kernels stored as (n/256, 256) rows + comfy.gguf.orig_shape
    names: str  # the diffusion model's tensor names: "original" (ComfyUI's) or "diffusers" (the class's own)
    config_beside: bool  # write <component>/config.json beside the GGUF (from_single_file config=)
    usage: str = ""  # how the files are loaded, for the notes
    type_rules: str = "ckptkit"  # whose per-tensor rules: ours (policy.decide) or "sdcpp" (policy.decide_sdcpp)
    importance: str | None = None  # default --imatrix: "ones" where the client's own converter passes ones
    # "torch": every dim as the source has it; "ggml": outer dims of 1 dropped as ggml's writer does
    # (ggml_n_dims), the full shape kept in comfy.gguf.orig_shape (which this client ignores)
    unit_dims: str = "torch"
    one_file_families: frozenset[str] = frozenset()  # families it loads only from its one-file bundle
    component_files_families: frozenset[str] = frozenset()  # families it loads only from component files
    bundle: bool = False  # loads one GGUF holding every component under the family's bundle prefixes
    # general.architecture values its text-encoder loader takes; None: any (the layout kind decides)
    text_archs: frozenset[str] | None = None

    def takes(self, arch: str | None) -> bool:
        return self.diffusion_archs is None or arch in self.diffusion_archs

    def loads_text_encoder(self, layout: str, arch: str | None) -> bool:
        """Does its loader read a text encoder of this layout kind, written with `arch`, from GGUF?"""
        return layout in self.gguf_text_encoders and (self.text_archs is None or arch in self.text_archs)


COMFY = Client(
    "comfy", "ComfyUI-GGUF",
    "city96/ComfyUI-GGUF loader.py: IMG_ARCH_LIST, TXT_ARCH_LIST, get_orig_shape; README: CLIP as safetensors",
    diffusion_archs=frozenset({"flux", "sd1", "sdxl", "sd3", "aura", "hidream", "cosmos", "ltxv", "hyvid", "wan",
                               "lumina2", "qwen_image"}),
    # t5 / t5encoder in llama.cpp names (T5_SD_MAP); LLMs in llama.cpp names (LLAMA_SD_MAP); no CLIP arch
    gguf_text_encoders=frozenset({"hf_t5", "hf_llm"}),
    text_encoder_fallback="safetensors",
    # TXT_ARCH_LIST of loader.py on main (795e451): no gemma2 (only the unmerged gemma_tenc branch), no mistral3
    text_archs=frozenset({"t5", "t5encoder", "llama", "qwen2vl", "qwen3", "qwen3vl"}),
    conv_reshape=True, names="original", config_beside=False,
    usage="ComfyUI: Unet Loader (GGUF) / CLIPLoader (GGUF) on {file}")

DIFFUSERS = Client(
    "diffusers", "diffusers",
    "huggingface/diffusers models/model_loading_utils.py load_gguf_checkpoint (no metadata read, so no "
    "orig_shape), loaders/single_file_model.py _should_convert_state_dict_to_diffusers (a file in the "
    "class's own names is loaded as it is), quantizers/gguf (only nn.Linear weights dequantized)",
    diffusion_archs=None,
    gguf_text_encoders=frozenset(),  # from_single_file loads diffusion models; text encoders stay plain
    text_encoder_fallback="refuse",
    # the class's own names: diffusers' original-layout converters assume released sizes (FLUX's
    # single-block split hard-codes inner_dim 3072) and want LDM UNets under model.diffusion_model.
    conv_reshape=False, names="diffusers", config_beside=True,
    usage="{cls}.from_single_file('{file}', config='{dir}', quantization_config=GGUFQuantizationConfig(compute_dtype=...))")

SDCPP = Client(
    "sdcpp", "stable-diffusion.cpp",
    "leejet/stable-diffusion.cpp src/model_loader.cpp (tensor shapes read from ne: no orig_shape; "
    "get_sd_version), src/name_conversion.cpp (HF CLIP and llama.cpp T5 names), stable-diffusion.cpp "
    "(--diffusion-model / --clip_l / --clip_g / --t5xxl / --vae files); no Sana",
    # the families it runs, by our general.architecture (it reads no metadata itself)
    # Wan: src/model/diffusion/wan.hpp (docs/wan.md: --diffusion-model, --t5xxl umt5-xxl, --vae); its 5-D
    # patch embedding folded as its readers fold it (policy.decide_sdcpp). Not HunyuanVideo 1.0 nor
    # LTX-Video 0.9 (it runs HunyuanVideo 1.5 and LTX-2 only)
    diffusion_archs=frozenset({"sd1", "sdxl", "sd3", "flux", "wan"}),
    gguf_text_encoders=frozenset({"hf_clip", "open_clip", "hf_t5"}),
    text_encoder_fallback="refuse",
    conv_reshape=False,  # a reshaped conv is "wrong shape in model metadata" to its loader
    names="original", config_beside=False,
    # its convert's own type rules, and ggml's weighted search with all-ones weights (convert_tensor
    # always passes an imatrix): files byte-equal, tensor by tensor, to `sd -M convert`'s
    type_rules="sdcpp", importance="ones",
    # `sd -m FILE`: one file of every component under the single-file checkpoint's prefixes
    # (model.diffusion_model., first_stage_model. / vae., cond_stage_model. / conditioner.embedders.N.,
    # text_encoders.*), which its name conversion maps and its version detection needs (an SDXL UNet
    # without its second text encoder is no SDXL to it): what `sd -M convert` writes from a bundle
    bundle=True, unit_dims="ggml",
    # get_sd_version tells SD1/SD2 by the CLIP token embedding and SDXL by a second text encoder, both
    # under bundle names (cond_stage_model. / conditioner.embedders.1): with component files
    # (--diffusion-model, --clip_l) it fails ("get sd version from file failed")
    one_file_families=frozenset({"sd1", "sd2", "sdxl", "sdxl_refiner"}),
    # Wan's docs/wan.md loads --diffusion-model / --t5xxl / --vae; its bundle names for the UMT5 encoder
    # (text_encoders.t5xxl.transformer.) are not ComfyUI's (text_encoders.umt5xxl.transformer.), and
    # no one-file Wan run is documented: component files only
    component_files_families=frozenset({"wan"}),
    usage="sd --diffusion-model {file} (text encoders with --clip_l / --clip_g / --t5xxl, the VAE with --vae); "
          "a bundle: sd -m {file}")

CLIENTS = {c.name: c for c in (COMFY, DIFFUSERS, SDCPP)}
DEFAULT = COMFY


def get_client(name: str | None) -> Client:
    if name is None:
        return DEFAULT
    if name not in CLIENTS:
        raise CkptError(f"--client {name!r}: known clients are {', '.join(CLIENTS)}")
    return CLIENTS[name]


def for_diffusion_model(asked: str | None, arch: str | None, family: str | None, notes: list[str]) -> Client:
    """The client a diffusion model is written for. A client named with --client that cannot load
    this architecture is an error naming its limit; by default (comfy) a family ComfyUI-GGUF cannot
    load is written for diffusers instead, and the notes say so: never a file no client loads."""
    client = get_client(asked)
    if client.takes(arch) or arch in (None, "unknown"):
        return client
    limit = (f"{client.title} loads no {family or arch} GGUF (its loader takes general.architecture "
             f"{', '.join(sorted(client.diffusion_archs))})")
    others = [c.name for c in CLIENTS.values() if c is not client and c.takes(arch)]
    if asked is not None:
        raise CkptError(f"--client {client.name}: {limit}" + (f"; use --client {others[0]}" if others else ""))
    fallback = CLIENTS[others[0]]
    notes.append(f"{limit}: written for {fallback.title} instead (--client {fallback.name})")
    return fallback
