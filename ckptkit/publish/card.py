"""The model card (README.md) of a component set: Hugging Face YAML front matter, the files, the
quantization policy in words, the verify table and the one-step image, and usage snippets that
match the files' actual layout and client profile. Pure rendering: publish.py gathers the data.
"""

from __future__ import annotations

import json

from ckptkit.units import human_bytes

BACKEND_TAGS = {"gguf": "gguf", "comfy": "comfyui", "bnb": "bitsandbytes", "quanto": "optimum-quanto"}


def backend_of(comp: dict) -> str:
    """gguf | comfy | bnb | quanto | none (stored as it was) for one manifest component."""
    policy = comp.get("policy") or {}
    if comp["file"].endswith(".gguf"):
        return "gguf"
    fmt = policy.get("format", "")
    for name in ("comfy", "bnb", "quanto"):
        if fmt.startswith(name) or policy.get("backend") == name:
            return name
    return "none"


def _front_matter(fields: dict) -> str:
    lines = ["---"]
    for key, value in fields.items():
        if value is None or value == []:
            continue
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(v)}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    lines.append("---")
    return "\n".join(lines)


def _types(comp: dict) -> str:
    dtypes = comp.get("dtypes") or {}
    return ", ".join(f"{t} x{n}" for t, n in sorted(dtypes.items(), key=lambda kv: -kv[1]))


def policy_in_words(manifest: dict) -> list[str]:
    """One sentence per component: what was asked, what was made, what stayed high precision and why."""
    out = []
    for name, comp in manifest["components"].items():
        policy = comp.get("policy") or {}
        requested = policy.get("requested")
        role = (comp.get("role") or "component").replace("_", " ")
        if not requested or requested == "keep":
            why = f" Asked `{policy['asked']}`, not done: {policy['not_done']}." if policy.get("asked") else ""
            out.append(f"- **{name}** ({role}): kept as stored ({_types(comp)}).{why}")
            continue
        kept = policy.get("kept_high_precision") or {}
        fall = policy.get("fallbacks") or {}
        words = [f"- **{name}** ({role}): asked `{requested}`; {policy.get('quantized_tensors', 0)} tensors quantized "
                 f"({_types(comp)})."]
        if kept:
            words.append(" Kept in high precision: " + "; ".join(
                f"{why.removeprefix('high precision: ')} ({n} tensor{'s' if n != 1 else ''})" for why, n in kept.items())
                + ".")
        if fall:
            words.append(" Rows whose width the type cannot take use a fallback: "
                         + ", ".join(f"{k} x{n}" for k, n in fall.items()) + ".")
        out.append("".join(words))
    return out


def verify_table(report: dict) -> list[str]:
    """The checks a reader cares about: a count per check kind, every numeric and 1-step figure."""
    results = report.get("results", [])
    lines = [f"Verdict: **{'PASS' if report.get('passed') else 'FAIL'}** ({len(results)} checks; "
             f"against the unquantized split, `ckptkit verify`)", ""]
    counts: dict[str, list[int]] = {}
    for r in results:
        c = counts.setdefault(r["check"], [0, 0])
        c[0] += r["passed"] is True
        c[1] += r["passed"] is False
    lines.append("| check | passed | failed |")
    lines.append("|---|---:|---:|")
    lines += [f"| {k} | {v[0]} | {v[1]} |" for k, v in counts.items()]
    lines += ["", "| component | measure | value | limit | result |", "|---|---|---:|---:|---|"]
    for r in results:
        if r["check"] not in ("numeric", "onestep") or r["passed"] is None or r["metric"] == "memory_plan":
            continue
        value = f"{r['value']:.4g}" if isinstance(r["value"], float) else str(r["value"])
        limit = f"{r['threshold']:.4g}" if isinstance(r["threshold"], float) else str(r["threshold"])
        lines.append(f"| {r['component'] or '-'} | {r['check']} {r['metric']} | {value} | {limit} | "
                     f"{'PASS' if r['passed'] else 'FAIL'} |")
    return lines


def usage(manifest: dict, repo_id: str, meta_base: str | None = None) -> list[str]:
    """Snippets for the clients these files are laid out for."""
    comps = manifest["components"]
    files = {n: c["file"] for n, c in comps.items()}
    dm = next((n for n, c in comps.items() if c.get("role") == "diffusion_model"), None)
    encoders = [n for n, c in comps.items() if c.get("role") == "text_encoder"]
    vae = next((n for n, c in comps.items() if c.get("role") == "vae"), None)
    client = (comps.get(dm) or {}).get("client") if dm else None
    layout = manifest.get("layout")
    backend = backend_of(comps[dm]) if dm else "none"
    out = []
    get = f"huggingface-cli download {repo_id} --local-dir {repo_id.split('/')[-1]}"
    if backend == "gguf" and client in (None, "comfy"):
        out += ["### ComfyUI (ComfyUI-GGUF)", "", "```", get,
                f"# {files[dm]} -> ComfyUI/models/unet/   (load with 'Unet Loader (GGUF)')"]
        for n in encoders:
            loader = "'CLIPLoader (GGUF)'" if files[n].endswith(".gguf") else "the stock CLIP loaders"
            out.append(f"# {files[n]} -> ComfyUI/models/clip/   ({loader})")
        if vae:
            out.append(f"# {files[vae]} -> ComfyUI/models/vae/   ('Load VAE')")
        out += ["```", ""]
    if backend == "gguf" and client == "sdcpp":
        args = [f"--diffusion-model {files[dm]}"] + [f"--{n} {files[n]}" for n in encoders if n in
                                                      ("clip_l", "clip_g", "t5xxl")]
        if vae:
            args.append(f"--vae {files[vae]}")
        out += ["### stable-diffusion.cpp", "", "```", get, "sd " + " ".join(args) + ' -p "a photo of a cat"', "```",
                "", "SD 1.x/2.x/SDXL component files: sd.cpp tells the version from a bundle's names; make one with "
                "`ckptkit merge . -o model.gguf --client sdcpp` and run `sd -m model.gguf`.", ""]
    if backend == "gguf" and client == "diffusers" or (backend == "gguf" and client in (None, "comfy")):
        cls = (comps[dm].get("diffusers_class") or "UNet2DConditionModel") if dm else ""
        out += ["### diffusers", "", "```python", "import torch",
                f"from diffusers import {cls}, GGUFQuantizationConfig", "",
                f"model = {cls}.from_single_file(",
                f"    \"https://huggingface.co/{repo_id}/blob/main/{files[dm]}\",",
                "    quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16),",
                f"    config=\"{meta_base or '<the base model repository>'}\", subfolder=\"" +
                ("unet" if cls.startswith("UNet") else "transformer") + "\",", ")", "```", ""]
    if backend in ("bnb", "quanto") and layout == "diffusers":
        out += ["### diffusers / transformers", "", "```python",
                "# each folder holds config.json with its quantization_config: from_pretrained loads it as written",
                "from diffusers import DiffusionPipeline", "",
                f"pipe = DiffusionPipeline.from_pretrained(\"{repo_id}\")", "```", ""]
    elif backend in ("bnb", "quanto", "comfy"):
        out += ["### ComfyUI", "", "```", get,
                f"# {files[dm]} -> ComfyUI/models/diffusion_models/ ('Load Diffusion Model')" if dm else "", "```", ""]
    return out


def render(manifest: dict, report: dict, meta: dict) -> str:
    """meta: repo_id, license, base_model, title, image (relative path or None), tool."""
    comps = manifest["components"]
    family = manifest.get("family") or "unknown"
    requested = sorted({(c.get("policy") or {}).get("requested") for c in comps.values()} - {None, "keep"})
    backends = sorted({backend_of(c) for c in comps.values()} - {"none"})
    library = "gguf" if "gguf" in backends else ("diffusers" if manifest.get("layout") == "diffusers" else None)
    front = _front_matter({
        "license": meta.get("license") or "other",
        "base_model": meta.get("base_model"),
        "library_name": library,
        "tags": ["ckptkit", family, *[BACKEND_TAGS[b] for b in backends], *requested, "text-to-image"],
    })
    title = meta.get("title") or f"{family} ({', '.join(requested) or 'as stored'})"
    lines = [front, "", f"# {title}", "",
             f"Component set made with {meta.get('tool', 'ckptkit')} from "
             + (f"[{meta['base_model']}](https://huggingface.co/{meta['base_model']})" if meta.get("base_model")
                else "its source checkpoint") + f" (family `{family}`"
             + (f", variant `{manifest['variant']}`" if manifest.get("variant") else "") + ").", ""]
    if not meta.get("license"):
        lines += ["License: not stated by the source; check the base model's license before use.", ""]
    lines += ["## Files", "", "| component | file | types | size | sha256 |", "|---|---|---|---:|---|"]
    for name, c in comps.items():
        lines.append(f"| {name} | `{c['file']}` | {_types(c)} | {human_bytes(c['bytes'])} | `{c['sha256']}` |")
    lines += ["", f"Total {human_bytes(sum(c['bytes'] for c in comps.values()))}; `ckptkit.json` lists every file "
              "with its hash (`ckptkit verify` checks them).", "", "## Quantization", ""]
    lines += policy_in_words(manifest)
    if manifest.get("notes"):
        lines += ["", *[f"- note: {n}" for n in manifest["notes"]]]
    lines += ["", "## Verification", ""] + verify_table(report)
    if meta.get("image"):
        lines += ["", f"![one-step check: reference | candidate | difference | heat map, a row per stage]"
                      f"({meta['image']})"]
    lines += ["", "## Usage", ""] + usage(manifest, meta.get("repo_id") or "USER/REPO", meta.get("base_model"))
    return "\n".join(lines).rstrip() + "\n"
