"""The `ckptkit` command: parses options, calls one library function, renders the result.

User errors (CkptError) become one line on stderr and exit code 2; no tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import sys

import click

from ckptkit import __version__
from ckptkit.cli_options import DType, Size
from ckptkit.errors import CkptError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup (staging folders, partial files) runs."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _error_line(text: object) -> str:
    """One line, whatever the message holds (names read from files may contain line breaks)."""
    from ckptkit.formats.files import printable

    return f"ckptkit: error: {printable(text)}"


class Group(click.Group):
    def invoke(self, ctx):
        import logging
        import os
        import signal
        import warnings

        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(signal.SIGTERM, _on_sigterm)
        if not os.environ.get("PYTHONWARNINGS"):  # libraries' warnings must not precede or bury our one line
            warnings.simplefilter("ignore")
            # bitsandbytes' CPU backend (imported by transformers/diffusers when installed) logs a warning
            # on import about an optional kernel it cannot fetch: not ours to print
            logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad option or argument: one line too
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(_error_line(f"{exc.format_message()}{hint}"), err=True)
            ctx.exit(2)
        except CkptError as exc:
            click.echo(_error_line(exc), err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:  # disk full, permission denied, ...: the environment, not a bug
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(_error_line(f"{where}{exc.strerror or exc}"), err=True)
            ctx.exit(2)
        except RecursionError:  # a structure nested beyond what any reader checks (a bug, but never a traceback)
            click.echo(_error_line("input nested too deeply to process"), err=True)
            ctx.exit(2)
        except MemoryError:
            click.echo(_error_line("out of memory"), err=True)
            ctx.exit(2)
        except Terminated:
            click.echo("ckptkit: terminated", err=True)
            ctx.exit(143)
        except KeyboardInterrupt:
            click.echo("ckptkit: interrupted", err=True)
            ctx.exit(130)


def _progress(total: int, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not enabled, leave=False,
                file=sys.stderr)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckptkit")
def cli():
    """Inspect, split, convert, quantize and verify diffusion-model checkpoints."""


def family_option(func):
    """--family NAME: read the input as this family, whatever detection says (families/detect.py)."""
    from ckptkit.families import BY_NAME

    return click.option("--family", "family", default=None, metavar="NAME",
                        help=f"Read the input as this family instead of detecting it ({', '.join(BY_NAME)}).")(func)


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--scan", is_flag=True, help="Stream every tensor and count NaN/Inf values.")
@family_option
def inspect_cmd(path: str, as_json: bool, scan: bool, family: str | None):
    """Family, components, dtypes, junk and problems of a checkpoint (any format)."""
    from ckptkit.formats import open_checkpoint
    from ckptkit.inspect import inspect_checkpoint
    from ckptkit.render import inspect_report

    bar = None
    if scan:
        with open_checkpoint(path) as ckpt:
            total = ckpt.total_bytes
        bar = _progress(total, "scan", sys.stderr.isatty())
    report = inspect_checkpoint(path, scan=scan, progress=bar.update if bar else None, family=family)
    if bar:
        bar.close()
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else inspect_report(report))


def _bar_factory(enabled: bool):
    """Progress bars with bytes/s on stderr, only on a terminal (quiet in CI logs and --json)."""
    def make(total: int, label: str):
        bar = _progress(total, label, enabled)
        return bar.update
    return make if enabled else None


def _render_run(result, as_json: bool) -> None:
    from ckptkit.units import human_bytes

    if as_json:
        data = {"plan": result.plan.to_json()} if not result.written else {
            "out": result.out_dir, "files": [w.__dict__ for w in result.written], "manifest": result.manifest}
        click.echo(json.dumps(data, indent=2))
        return
    if not result.written:
        click.echo(result.plan.describe())
        return
    from ckptkit.formats.files import printable

    for note in getattr(result, "notes", []):
        click.echo(f"ckptkit: {printable(note)}", err=True)
    for w in result.written:
        click.echo(f"wrote {w.path}  {w.tensors} tensors, {human_bytes(w.bytes)}  sha256 {w.sha256[:16]}")
    dropped = len(result.plan.dropped)
    if dropped:
        click.echo(f"dropped {dropped} tensors (listed in the manifest)" if result.manifest else f"dropped {dropped} tensors")
    for note in result.plan.notes:
        if note.startswith("warning:"):
            click.echo(f"ckptkit: {printable(note)}", err=True)
        else:
            click.echo(f"note: {printable(note)}")
    if result.manifest and result.manifest.get("store"):
        store = result.manifest["store"]
        click.echo(f"store: {store['reused']} component(s) already stored, {human_bytes(store['bytes_saved'])} saved")


RUN_OPTIONS = [
    click.option("--dry-run", is_flag=True, help="Print the plan (with --json: emit it) and write nothing."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    click.option("--force", is_flag=True, help="Write into a non-empty directory / replace an existing file."),
    click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
                 help="Threads for layout ops and casts."),
]


def run_options(fn):
    for option in reversed(RUN_OPTIONS):
        fn = option(fn)
    return fn


def _components(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def config_option(func):
    """--config FILE|DIR: what the weights cannot tell (head counts, activations, latent scaling)."""
    return click.option("--config", "config", type=click.Path(path_type=str), default=None,
                        help="A config.json, or a folder of <component>/config.json (a diffusers folder): the "
                             "values the weights cannot decide (head counts, activations, latent scale).")(func)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=str), help="Output directory.")
@click.option("--layout", type=click.Choice(["comfy", "original", "diffusers"]), default="comfy", show_default=True)
@click.option("--components", help="Comma-separated components to extract (default: all).")
@click.option("--dtype", type=DType("keep", "fp16", "bf16", "fp32"), default="keep", show_default=True)
@click.option("--allow-overflow", is_flag=True, help="Allow an fp32->fp16 cast that overflows to inf.")
@click.option("--extract-ema", is_flag=True, help="Write the EMA weights as the diffusion model.")
@click.option("--fix-position-ids", is_flag=True, help="Rewrite float/broken CLIP position_ids as arange int64.")
@click.option("--tokenizer-from", type=click.Path(exists=True, path_type=str),
              help="A diffusers folder to copy tokenizer files from (--layout diffusers).")
@click.option("--store", type=click.Path(path_type=str), help="Content-addressed store: identical components are stored once.")
@click.option("--prefix", "prefixes", multiple=True, metavar="NAME=PREFIX",
              help="Split an unknown file by explicit prefixes (with --layout original).")
@config_option
@family_option
@run_options
def split(bundle, out_dir, layout, components, dtype, allow_overflow, extract_ema, fix_position_ids,
          tokenizer_from, store, prefixes, config, family, dry_run, as_json, force, workers):
    """Split a bundled checkpoint into one file per component, plus ckptkit.json."""
    from ckptkit import pipeline
    from ckptkit.convert.split import SplitOptions

    opts = SplitOptions(layout=layout, components=_components(components), dtype=dtype, extract_ema=extract_ema,
                        fix_position_ids=fix_position_ids, prefixes=_prefixes(prefixes))
    result = pipeline.split(bundle, out_dir, opts, force=force, dry_run=dry_run, workers=workers,
                            progress=_bar_factory(sys.stderr.isatty() and not as_json),
                            allow_overflow=allow_overflow, tokenizer_from=tokenizer_from, store=store, config=config,
                            family=family)
    _render_run(result, as_json)


def _arch(value: str | None) -> str | None:
    """general.architecture: a short plain name (letters, digits, . _ -), as gguf-py writes them."""
    import re

    if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise CkptError(f"--arch {value!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return value


def _prefixes(values) -> dict[str, str]:
    out = {}
    from ckptkit.outputs import plain_name

    for value in values:
        name, sep, prefix = value.partition("=")
        if not sep or not name:
            raise CkptError(f"--prefix takes NAME=PREFIX, got {value!r}")
        out[plain_name(name, "--prefix: component name")] = prefix
    return out


@cli.command()
@click.argument("folder", type=click.Path(path_type=str))
@click.option("-o", "--out", "output", required=True, type=click.Path(path_type=str),
              help="The bundle to write: .safetensors, or .gguf (with --client sdcpp).")
@click.option("--client", type=click.Choice(["comfy", "diffusers", "sdcpp"]), default=None,
              help="Who loads a .gguf bundle: sdcpp (stable-diffusion.cpp's one-file form; quantized tensors "
                   "keep their bytes). ComfyUI-GGUF and diffusers load one component per GGUF.")
@family_option
@run_options
def merge(folder, output, client, family, dry_run, as_json, force, workers):
    """Merge a component set (any layout) back into one bundled original-layout file."""
    from ckptkit import pipeline

    result = pipeline.merge(folder, output, force=force, dry_run=dry_run, workers=workers,
                            progress=_bar_factory(sys.stderr.isatty() and not as_json), family=family,
                            client=client)
    _render_run(result, as_json)


@cli.command()
@click.argument("source", type=click.Path(path_type=str))
@click.option("-o", "--out", "dest", required=True, type=click.Path(path_type=str))
@click.option("--layout", type=click.Choice(["original", "diffusers"]), required=True)
@click.option("--dtype", type=DType("keep", "fp16", "bf16", "fp32"), default="keep", show_default=True)
@click.option("--allow-overflow", is_flag=True)
@config_option
@family_option
@run_options
def convert(source, dest, layout, dtype, allow_overflow, config, family, dry_run, as_json, force, workers):
    """Convert one component file <-> a diffusers component folder, a bundle -> a diffusers
    folder, or a diffusers pipeline folder -> a bundle."""
    from ckptkit import pipeline

    result = pipeline.convert(source, dest, layout, dtype=dtype, force=force, dry_run=dry_run, workers=workers,
                              progress=_bar_factory(sys.stderr.isatty() and not as_json), allow_overflow=allow_overflow,
                              config=config, family=family)
    _render_run(result, as_json)


@cli.command()
@click.argument("source", type=click.Path(path_type=str))
@click.option("-o", "--out", required=True, type=click.Path(path_type=str),
              help="A directory (component set), or a .gguf/.safetensors file for a single component "
                   "(a .gguf of every component with --client sdcpp).")
@click.option("--to", "target", type=click.Choice(["gguf", "comfy", "bnb", "quanto"]), default="gguf",
              show_default=True,
              help="gguf: GGUF files; comfy: ComfyUI's mixed-precision safetensors; bnb: bitsandbytes; quanto: "
                   "optimum-quanto (the last three quantize Linear weights, as their loaders read them).")
@click.option("--type", "type_name", help="Type for the diffusion model: q8_0, q6_k, q5_k_m, q4_k_m, q4_0, ... "
                                          "(--to comfy: fp8_e4m3, fp8_e5m2, int8; --to bnb: nf4, fp4, nf4_dq, "
                                          "fp4_dq, int8; --to quanto: qint8, qfloat8)")
@click.option("--component", "component_types", multiple=True, metavar="NAME=TYPE",
              help="Type for one component, e.g. t5xxl=q5_k_m, clip_l=q8_0, vae=f16 (repeatable).")
@click.option("--layout", "layout", type=click.Choice(["comfy", "diffusers"]), default=None,
              help="--to bnb|quanto: diffusers writes component folders with config.json and its "
                   "quantization_config (from_pretrained loads them); default comfy (component files).")
@click.option("--rule", "rules", multiple=True, metavar="REGEX=TYPE",
              help="Per-tensor override on final names; first match wins (repeatable, or sd.cpp's "
                   "--tensor-type-rules form 'REGEX=TYPE,REGEX=TYPE').")
@click.option("--policy", "policy_file", type=click.Path(exists=True, path_type=str), help="A TOML policy file.")
@click.option("--force-vae", is_flag=True, help="Allow an fp32/bf16 VAE to be stored as fp16.")
@click.option("--no-scan", is_flag=True, help="Skip the pre-pass that keeps non-finite tensors unquantized.")
@click.option("--arch", help="general.architecture of the GGUF files (default: the family's; 'unknown' for a "
                             "model no family spec knows, which ComfyUI-GGUF will not load).")
@click.option("--client", type=click.Choice(["comfy", "diffusers", "sdcpp"]), default=None,
              help="Who loads the GGUF files: comfy (ComfyUI-GGUF, the default), diffusers (from_single_file) "
                   "or sdcpp (stable-diffusion.cpp: component files, or its one-file bundle with -o FILE.gguf).")
@click.option("--imatrix", metavar="ones|FILE[,FILE]", default=None,
              help="Importance weights for ggml's weighted search: 'ones' (what stable-diffusion.cpp's convert "
                   "does) or imatrix files written by sd.cpp --imat-out (summed).")
@click.option("--tokenizer", type=click.Path(path_type=str), default=None,
              help="The LLM text encoder's tokenizer (tokenizer.json or tekken.json), or a UMT5's (spiece.model, "
                   "or a Unigram tokenizer.json), or a folder holding one, written into its GGUF as llama.cpp "
                   "does; ComfyUI-GGUF needs it for Mistral-Small (FLUX.2 dev) and UMT5-XXL (Wan). Default: one "
                   "beside the source (its folder, tokenizer/, a diffusers folder's tokenizer/).")
@config_option
@family_option
@run_options
def quantize(source, out, target, type_name, component_types, layout, rules, policy_file, force_vae, no_scan, arch,
             client, imatrix, tokenizer, config, family, dry_run, as_json, force, workers):
    """Quantize each component with its own policy (GGUF, K-quants included)."""
    from ckptkit import pipeline
    from ckptkit.quant.policy import Policy, load_policy_file

    policy = Policy(diffusion_model=type_name, components=_pairs(component_types, "--component", "NAME=TYPE"),
                    rules=list(_pairs(_rule_items(rules), "--rule", "REGEX=TYPE", split_last=True).items()),
                    force_vae=force_vae,
                    arch=_arch(arch), client=client, imatrix=imatrix, backend=target, layout=layout,
                    tokenizer=tokenizer)
    if layout is not None and target == "gguf":
        raise click.UsageError("--layout is for --to comfy|bnb|quanto (GGUF files keep their clients' names: --client)")
    if policy_file:
        policy = load_policy_file(policy_file, policy)
    result = pipeline.quantize(source, out, policy, force=force, dry_run=dry_run, workers=workers,
                               progress=_bar_factory(sys.stderr.isatty() and not as_json), scan=not no_scan,
                               config=config, family=family)
    if dry_run and not as_json:
        click.echo(result.plan.describe())
        click.echo(render_type_plan(result.plan))
        click.echo(render_policy(result.plan))
        return
    _render_run(result, as_json)
    if not as_json:
        click.echo(render_policy(result.plan))


def _rule_items(values) -> list[str]:
    """--rule values; one in stable-diffusion.cpp's --tensor-type-rules form ('^vae\\.=f16,model\\.=q8_0':
    comma-separated REGEX=TYPE, first match wins) is split as sd.cpp splits it."""
    items = []
    for value in values:
        parts = value.split(",")
        items += parts if len(parts) > 1 and all("=" in p for p in parts) else [value]
    return items


def _pairs(values, option: str, form: str, split_last: bool = False) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.rpartition("=") if split_last else value.partition("=")
        if not sep or not key or not val:
            raise CkptError(f"{option} takes {form}, got {value!r}")
        out[key] = val
    return out


def render_policy(plan) -> str:
    from ckptkit.units import human_bytes
    from ckptkit.render import table

    rows = []
    for name, info in plan.info.get("components", {}).items():
        pol = info.get("policy", {})
        types = ", ".join(f"{t} {v['tensors']} ({human_bytes(v['bytes'])})" for t, v in
                          sorted(pol.get("types", {}).items(), key=lambda kv: -kv[1]["bytes"]))
        kept = "; ".join(f"{n} x {r}" for r, n in pol.get("kept_high_precision", {}).items())
        fallbacks = ", ".join(f"{n} x {f}" for f, n in pol.get("fallbacks", {}).items())
        rows.append([name, pol.get("requested", "-"), pol.get("format", "-"), types, kept or "-", fallbacks or "-"])
    return table(rows, ["component", "requested", "format", "types (tensors, bytes)", "kept high precision (why)",
                        "fallbacks (row length)"])


def render_type_plan(plan) -> str:
    """Every tensor of every output: final name, stored shape, type and why (--dry-run)."""
    from ckptkit.units import human_bytes

    lines = []
    for out in plan.outputs:
        lines.append(f"{out.path}  [{out.component}, {out.format}]")
        width = max((len(t.name) for t in out.tensors), default=0)
        for t in out.tensors:
            from ckptkit.formats.files import printable

            shape = "x".join(map(str, t.shape)) or "scalar"
            lines.append(f"  {printable(t.name):<{width}}  {shape:>16}  {t.dtype:<5} {human_bytes(t.nbytes):>9}"
                         f"{'  ' + t.note if t.note else ''}")
    return "\n".join(lines)


@cli.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--against", type=click.Path(path_type=str),
              help="The unquantized reference (bundle or component set) for the numeric and 1-step checks.")
@click.option("--json", "as_json", is_flag=True, help="Every figure, machine-readable.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=str),
              help="Write report.json, report.md and onestep.png here.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", "compute_dtype", type=DType("fp32", "fp16", "bf16"), default="fp32",
              show_default=True, help="Compute dtype of the 1-step check.")
@click.option("--resolution", type=click.IntRange(8, 4096), help="Image size of the 1-step check.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-scan", is_flag=True, help="Skip the NaN/Inf scan.")
@click.option("--no-onestep", is_flag=True, help="Skip the 1-step inference check.")
@click.option("--min-cosine", type=float, help="Override every type's minimum cosine.")
@click.option("--min-psnr", type=float, help="Override every type's minimum end-to-end PSNR (dB).")
@click.option("--min-ssim", type=float, help="Override every type's minimum end-to-end SSIM.")
@click.option("--max-rel-rms", type=float, help="Override every type's maximum per-tensor relative RMS error.")
@click.option("--thresholds", "thresholds_file", type=click.Path(exists=True, path_type=str),
              help="A TOML file of thresholds by type.")
@click.option("--expect-manifest", metavar="SHA256|FILE",
              help="Pin the set's ckptkit.json: its sha256, or a copy published separately (must be identical).")
@click.option("--memory-limit", type=Size(), metavar="SIZE",
              help="Memory this verify may use in all (e.g. 8GB); default: what the system has available.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (they go to stderr, and only on a terminal).")
@config_option
@family_option
def verify(path, against, as_json, report_dir, device, compute_dtype, resolution, seed, no_scan, no_onestep,
           min_cosine, min_psnr, min_ssim, max_rel_rms, thresholds_file, expect_manifest, memory_limit, quiet,
           config, family):
    """Check a file or component set: integrity, layout, quantization coverage, and (with
    --against) per-tensor error and a 1-step inference check. The memory plan of the 1-step check
    comes first. Exit 0 pass, 1 a check failed, 2 unreadable input or refused (too little memory),
    130 interrupted (the table and --report of what ran are still written)."""
    from ckptkit.verify import VerifyOptions, run_verify
    from ckptkit.verify.report import render, write_report_dir
    from ckptkit.verify.thresholds import load_overrides

    bars = sys.stderr.isatty() and not quiet and not as_json
    opts = VerifyOptions(against=against, scan=not no_scan, onestep=not no_onestep, device=device,
                         dtype=compute_dtype, resolution=resolution, seed=seed, config=config, family=family,
                         expect_manifest=expect_manifest, memory_limit=memory_limit,
                         progress=_counter_factory() if bars else None,
                         overrides=load_overrides(thresholds_file, min_cosine, min_psnr, min_ssim, max_rel_rms))
    if report_dir:
        from ckptkit.outputs import check_output

        check_output(report_dir, [p for p in (path, against) if p], "dir")
    report = run_verify(path, opts)
    if report_dir:
        write_report_dir(report, report_dir)
    click.echo(json.dumps(report.to_json(), indent=2, default=str) if as_json else render(report))
    if report.status == "refused" and report.exit_code == 2:
        click.echo(_error_line(report.message), err=True)
    elif report.status == "interrupted":
        click.echo(f"ckptkit: {report.message}", err=True)
    elif report.exit_code:
        click.echo(f"ckptkit: verify: {verify_summary(report)}", err=True)
    sys.exit(report.exit_code)


def _counter_factory():
    """progress(total, label, unit) -> update(n): one bar per phase on stderr, closed when full."""
    from tqdm import tqdm

    def make(total: int, label: str, unit: str = "B"):
        bar = tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=label, leave=False, file=sys.stderr)

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= bar.total:
                bar.close()
        return update
    return make


def verify_summary(report) -> str:
    """The verdict in one line for logs (stderr): how many checks failed and the first of them."""
    from ckptkit.formats.files import printable

    failed = [r for r in report.results if r.passed is False]
    first = failed[0] if failed else None
    what = (f"; first: {first.check} {first.component or '-'} {first.metric}"
            + (f" ({first.detail[:120]})" if first.detail else "")) if first else ""
    return printable(f"FAIL: {len(failed)} of {len(report.results)} checks failed{what}")


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="The demo's folder (default: ./ckptkit-demo; kept, so its reports, images and cards can be opened).")
@click.option("--family", default="sdxl", show_default=True, help="Which synthetic fixture to build.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def demo(out_dir: str | None, family: str, as_json: bool):
    """Build a small synthetic bundle, make two variants of it with a recipe (Q8_0; Q4_K_M with the
    text encoders asked Q8_0), verify each with the 1-step check and write their model cards."""
    from ckptkit.demo import run_demo

    result = run_demo(out_dir, family, echo=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(result, indent=2))


def _register_trigflow() -> None:
    from ckptkit.trigflow.commands import register

    register(cli, run_options, _render_run, _bar_factory)


_register_trigflow()


def _register_build() -> None:
    from ckptkit.build.commands import register

    register(cli, _bar_factory)


_register_build()


def main() -> None:
    cli(prog_name="ckptkit")


if __name__ == "__main__":
    main()
