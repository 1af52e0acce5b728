"""tokenizer.ggml.* metadata for an arch-"llama" LLM text encoder's GGUF (Mistral-Small-3.x for
FLUX.2 dev, Llama-3.1 for HiDream), as llama.cpp's convert_hf_to_gguf.py writes it.

Why: for a (131072, 5120) embedding, ComfyUI-GGUF's arch-llama loader rebuilds Mistral's tekken
tokenizer from the file's metadata (city96/ComfyUI-GGUF@795e451 loader.py
gguf_tekken_tokenizer_loader: it reads `tokenizer.ggml.model` == "gpt2", `tokenizer.ggml.tokens` and
`tokenizer.ggml.token_type`; type 3 is a special token, every other token is byte-level text it maps
back to bytes through transformers' bytes_to_unicode) and raises without it. The weights do not hold
the tokenizer: it is read from where users have it (`--tokenizer PATH`, or beside the source: the
source's folder, its `tokenizer/`, or a diffusers folder's `tokenizer/` next to `text_encoder/`).

Two forms, as llama.cpp's LlamaModel.set_vocab takes them (tokenizer.json first):
  tokenizer.json  an HF fast byte-level BPE tokenizer: `_set_vocab_gpt2`, i.e. `get_vocab_base` (one
                  token per id; added tokens CONTROL when special or looking special, USER_DEFINED
                  otherwise; NORMAL the rest; `[PAD{i}]` UNUSED for ids without a token), the
                  pre-tokenizer's name, then gguf-py's SpecialVocab (merges, bos/eos/... ids,
                  add_bos/add_eos, chat template). The tokens are read with the `tokenizers` library
                  (what transformers' fast tokenizer wraps).
  tekken.json     mistral-common's format (the mistralai repos): `_set_vocab_mistral` with gguf-py's
                  MistralVocab. That class needs the mistral-common package, which ckptkit does not
                  depend on, so the file (plain JSON) is read here in the same way: the special
                  tokens CONTROL, then the vocabulary's byte tokens NORMAL, scores 0, pre "tekken",
                  merges rebuilt from the ranks (MistralVocab.extract_vocab_merges_from_model),
                  bos/eos/unk/pad ids, add_bos true, add_eos false, `llama.vocab_size`.
The keys and value types are gguf-py's own: the values are handed to a GGUFWriter's add_* methods
(SpecialVocab.add_to_gguf included) and taken back from it.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.errors import CkptError

FILES = ("tokenizer.json", "tekken.json")  # llama.cpp's order: tekken.json only without a tokenizer.json

# tokenizer.ggml.pre by the pre-tokenizer's split regex, as it stands in tokenizer.json (llama.cpp names
# it by a hash of the encoding of a test text, which only the full vocabulary gives; the regex is
# what the name stands for: llama-vocab.cpp's LLAMA_VOCAB_PRE_TYPE_TEKKEN quotes this "original regex
# from tokenizer.json", and LLAMA3's is Llama-3's tokenizer.json regex)
TEKKEN_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_BY_REGEX = {TEKKEN_REGEX: "tekken", LLAMA3_REGEX: "llama-bpe"}


@dataclass
class GGUFTokenizer:
    source: Path
    form: str  # "tokenizer.json" | "tekken.json"
    kv: dict = field(repr=False)  # tokenizer.ggml.* (and what else llama.cpp writes with them)

    @property
    def tokens(self) -> list[str]:
        return self.kv["tokenizer.ggml.tokens"]

    def summary(self) -> dict:
        """What --dry-run / --json / the manifest say about it (not the token list itself)."""
        kv = self.kv
        ids = {k.removeprefix("tokenizer.ggml."): v for k, v in kv.items() if k.endswith("_token_id")}
        return {"source": str(self.source), "form": self.form, "model": kv["tokenizer.ggml.model"],
                "pre": kv.get("tokenizer.ggml.pre"), "tokens": len(self.tokens),
                "special_tokens": sum(1 for t in kv["tokenizer.ggml.token_type"] if t == 3),
                "merges": len(kv.get("tokenizer.ggml.merges", ())), **ids}

    def describe(self) -> str:
        s = self.summary()
        return (f"tokenizer.ggml.* from {s['source']} ({s['tokens']} tokens, {s['special_tokens']} special, "
                f"{s['merges']} merges, pre {s['pre'] or 'none'})")

    def check_rows(self, component: str, rows: int) -> None:
        """One line, never a file whose token ids do not index its embedding."""
        n = len(self.tokens)
        if n != rows:
            raise CkptError(f"{component}: tokenizer {self.source} has {n} tokens but the text encoder's embedding "
                            f"has {rows} rows: not this model's tokenizer (give its own with --tokenizer PATH)")


def locate(explicit: str | os.PathLike | None, source: str | os.PathLike | None,
           files: tuple[str, ...] = FILES) -> Path | None:
    """The tokenizer file (the first of `files`, in that order, a folder holds): `explicit` (a file, or
    a folder holding one, directly or in tokenizer/), else one beside `source` (its folder, that
    folder's tokenizer/, a diffusers folder's tokenizer/ next to text_encoder/, tokenizer_N/ next to
    text_encoder_N/); None where there is none. t5_tokenizer.py looks for its files the same way."""
    if explicit is not None:
        p = Path(explicit)
        if p.is_file():
            return p
        if not p.is_dir():
            raise CkptError(f"--tokenizer {p}: no such file or directory")
        found = _in_folders((p, p / "tokenizer"), files)
        if found is None:
            raise CkptError(f"--tokenizer {p}: no {' or '.join(files)} in it (nor in its tokenizer/)")
        return found
    if source is None:
        return None
    s = Path(source)
    d = s if s.is_dir() else s.parent
    sibling = "tokenizer" + (d.name[len("text_encoder"):] if d.name.startswith("text_encoder") else "")
    return _in_folders((d, d / "tokenizer", d.parent / sibling), files)


def _in_folders(folders, files: tuple[str, ...]) -> Path | None:
    for folder in folders:
        for name in files:
            if (folder / name).is_file():
                return folder / name
    return None


def load(path: str | os.PathLike, arch: str = "llama") -> GGUFTokenizer:
    """A tokenizer.json (HF fast BPE) or tekken.json as the KV llama.cpp writes for it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CkptError(f"{path}: not a readable tokenizer JSON ({type(exc).__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        return GGUFTokenizer(path, "tokenizer.json", _hf_kv(path, data, arch))
    if isinstance(data, dict) and isinstance(data.get("vocab"), list) and isinstance(data.get("config"), dict):
        return GGUFTokenizer(path, "tekken.json", _tekken_kv(path, data, arch))
    raise CkptError(f"{path}: neither an HF tokenizer.json (no 'model') nor a mistral-common tekken.json "
                    "(no 'config' and 'vocab')")


def _collected(arch: str, fill) -> dict:
    """The KV gguf-py's GGUFWriter holds after `fill(writer)`: llama.cpp's own keys and calls."""
    import gguf

    w = gguf.GGUFWriter(None, arch)
    fill(w)
    return {k: v.value for k, v in w.kv_data[0].items() if k != gguf.Keys.General.ARCHITECTURE}


# --- tokenizer.json: convert_hf_to_gguf.py _set_vocab_gpt2 -------------------------------------------

def _looks_special(token: str) -> bool:
    """convert_hf_to_gguf.py does_token_look_special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _split_regexes(node) -> list[str]:
    if isinstance(node, dict):
        found = []
        if node.get("type") == "Split" and isinstance(node.get("pattern"), dict) and "Regex" in node["pattern"]:
            found.append(node["pattern"]["Regex"])
        for v in node.values():
            found += _split_regexes(v)
        return found
    if isinstance(node, list):
        return [r for v in node for r in _split_regexes(v)]
    return []


def _hf_kv(path: Path, data: dict, arch: str) -> dict:
    import gguf
    from tokenizers import Tokenizer

    model = data["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = f"{model.get('type')} tokenizer" + (" with byte fallback" if model.get("byte_fallback") else "")
        raise CkptError(f"{path}: a {kind}, not byte-level BPE (what llama.cpp writes as model 'gpt2' and "
                        "ComfyUI-GGUF rebuilds)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library's own errors have no common base
        raise CkptError(f"{path}: the tokenizers library cannot read it ({str(exc).splitlines()[0][:120]})") from None
    vocab = tok.get_vocab(with_added_tokens=True)
    added = tok.get_added_tokens_decoder()  # id -> AddedToken (content, special, normalized)
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(max(reverse) + 1 if reverse else 0):  # get_vocab_base
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if i in added:
            if not added[i].normalized:  # "llama.cpp assumes CONTROL and USER_DEFINED tokens are pre-normalized"
                token = tok.decode(tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)
            if added[i].special or _looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")  # pre-normalize user-defined spaces
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    pre = next((PRE_BY_REGEX[r] for r in _split_regexes(data.get("pre_tokenizer")) if r in PRE_BY_REGEX), None)
    config = {}
    config_file = path.parent / "tokenizer_config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            config = {}
    special = _special_vocab(path, len(tokens))

    def fill(w):
        if isinstance(config, dict) and (space := config.get("add_prefix_space")) is not None:
            w.add_add_space_prefix(bool(space))  # LlamaModel.set_vocab, from tokenizer_config.json
        w.add_tokenizer_model("gpt2")
        if pre is not None:
            w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types([int(t) for t in types])
        special.add_to_gguf(w, quiet=True)

    return _collected(arch, fill)


def _special_vocab(path: Path, n_vocab: int):
    """gguf-py's SpecialVocab for the folder the file is in (it reads tokenizer.json,
    tokenizer_config.json and config.json there); a file of another name is read as tokenizer.json."""
    import gguf

    if path.name == "tokenizer.json":
        return gguf.SpecialVocab(path.parent, load_merges=True, n_vocab=n_vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").symlink_to(path.resolve())
        return gguf.SpecialVocab(tmp, load_merges=True, n_vocab=n_vocab)


# --- tekken.json: convert_hf_to_gguf.py _set_vocab_mistral with gguf-py's MistralVocab ---------------

def _tekken_kv(path: Path, data: dict, arch: str) -> dict:
    import gguf
    from gguf.vocab import bytes_to_unicode

    config = data["config"]
    try:
        size, n_special = int(config["default_vocab_size"]), int(config["default_num_special_tokens"])
        specials = data["special_tokens"]
        ranks = [base64.b64decode(v["token_bytes"]) for v in data["vocab"][:size - n_special]]
        named = {int(s["rank"]): str(s["token_str"]) for s in specials}
    except (KeyError, TypeError, ValueError) as exc:
        raise CkptError(f"{path}: a tekken.json without {exc} (an older one without special_tokens? give its "
                        "tokenizer.json)") from None
    if len(ranks) != size - n_special or any(len(b) != 1 or b[0] != i for i, b in enumerate(ranks[:256])):
        raise CkptError(f"{path}: its vocabulary is not {size - n_special} byte tokens, the first 256 the single bytes")
    byte_encoder = bytes_to_unicode()

    def text(b: bytes) -> str:  # MistralVocab.token_bytes_to_string
        return "".join(byte_encoder[c] for c in b)

    # Tekkenizer: the listed special tokens, then "<SPECIAL_{id}>" up to default_num_special_tokens
    tokens = [named.get(i, f"<SPECIAL_{i}>") for i in range(n_special)] + [text(b) for b in ranks]
    types = [gguf.TokenType.CONTROL] * n_special + [gguf.TokenType.NORMAL] * len(ranks)
    ids = {t: i for i, t in enumerate(tokens[:n_special])}
    missing = [t for t in ("<s>", "</s>", "<unk>") if t not in ids]
    if missing:
        raise CkptError(f"{path}: no {', '.join(missing)} among its special tokens")
    merges = _tekken_merges(ranks, text)

    def fill(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("tekken")
        w.add_token_merges(merges)
        w.add_bos_token_id(ids["<s>"])
        w.add_eos_token_id(ids["</s>"])
        w.add_unk_token_id(ids["<unk>"])
        w.add_pad_token_id(ids.get("<pad>", ids["</s>"]))  # MistralVocab.pad_id: eos where there is none
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * len(tokens))
        w.add_token_types([int(t) for t in types])
        w.add_vocab_size(len(tokens))
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)

    return _collected(arch, fill)


def _tekken_merges(ranks: list[bytes], text) -> list[str]:
    """MistralVocab.extract_vocab_merges_from_model: for each token past the 256 bytes, every split
    into two tokens of the vocabulary, by the ranks of the parts; all in the order of the token."""
    rank = {b: i for i, b in enumerate(ranks)}
    pairs = []
    for i in range(256, len(ranks)):
        merged = ranks[i]
        local = [(merged[:j], merged[j:]) for j in range(1, len(merged)) if merged[:j] in rank and merged[j:] in rank]
        if not local:
            raise CkptError(f"tekken.json: no merge gives its token of rank {i} ({merged!r})")
        pairs += sorted(local, key=lambda p: (rank[p[0]], rank[p[1]]))
    return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in text(part)) for part in pair)
            for pair in pairs]
