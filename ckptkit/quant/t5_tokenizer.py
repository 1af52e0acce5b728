"""tokenizer.ggml.* metadata for a UMT5 text encoder's GGUF (Wan 2.1 / 2.2's UMT5-XXL, AuraFlow's
Pile-T5-XL), as llama.cpp's convert_hf_to_gguf.py writes it for T5 (T5EncoderModel.set_vocab).

Why: for a (256384, 4096) embedding (UMT5-XXL), ComfyUI-GGUF's T5 loader rebuilds the sentencepiece
model from the file's metadata (city96/ComfyUI-GGUF@795e451 loader.py gguf_tokenizer_loader: it needs
`tokenizer.ggml.model` == "t5", tokens, scores, token_type, add_space_prefix,
remove_extra_whitespaces, eos and padding ids) and raises without it. The weights do not hold the
tokenizer: it is read from where users have it (`--tokenizer PATH`, or beside the source: the
source's folder, its `tokenizer/`, or a diffusers folder's `tokenizer/` (`tokenizer_N/` for
`text_encoder_N/`) next to the component's folder).

Two forms:
  spiece.model / tokenizer.model  a sentencepiece model, read with the sentencepiece library as
                  llama.cpp does (its ModelProto for the normalizer spec, SentencePieceProcessor for
                  the pieces). Unigram (T5, UMT5): model "t5", pre "default", one token per id of
                  the embedding (`[PAD{i}]` UNUSED, score -10000 where the model has no piece: llama.cpp
                  pads to config.json's vocab_size, here the embedding's rows, which it equals: UMT5-XXL's
                  256384 rows are more than its tokenizer's pieces), scores, types (UNKNOWN, CONTROL, UNUSED, BYTE,
                  NORMAL), added_tokens.json USER_DEFINED (score -1000), add_space_prefix,
                  remove_extra_whitespaces, precompiled_charsmap, then gguf-py's SpecialVocab
                  (bos/eos/unk/pad ids, add_bos/add_eos) of the file's folder. BPE (Pile-T5's Llama
                  tokenizer): llama.cpp's `_set_vocab_sentencepiece`, model "llama", with
                  tokenizer_config.json's added_tokens_decoder too.
  tokenizer.json  an HF fast Unigram tokenizer (what transformers' SpmConverter makes of such a model),
                  where no .model file is at hand (llama.cpp itself reads only the .model). The same
                  KV from its parts: the model's vocab (pieces and scores), unk_id UNKNOWN, added
                  special tokens CONTROL, other added tokens USER_DEFINED, `<0xXX>` BYTE under
                  byte_fallback (or where all 256 are there); precompiled_charsmap from its Precompiled
                  normalizer, remove_extra_whitespaces from the Replace(" {2,}") normalizer SpmConverter
                  writes for it (or transformers 5's WhitespaceSplit pre-tokenizer), add_space_prefix
                  from a Metaspace (prepend_scheme not "never") or Prepend("▁").
                  T5Converter puts the `<extra_id_N>` sentinels into the vocab: they come out CONTROL
                  where a spiece.model leaves `[PAD{i}]` rows (neither is ever matched in text).
Where the folder holds none of the HF files SpecialVocab reads (a lone .model file: llama.cpp, which
needs config.json, never meets one), the ids are the model's own (sentencepiece's bos/eos/unk/pad ids)
or, for a tokenizer.json, its unk_id. The keys and value types are gguf-py's own: the values are
handed to a GGUFWriter's add_* methods and taken back from it (llm_tokenizer._collected).
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ckptkit.errors import CkptError
from ckptkit.quant.llm_tokenizer import GGUFTokenizer, _collected

FILES = ("tokenizer.model", "spiece.model", "tokenizer.json")  # llama.cpp: tokenizer.model, else spiece.model
# more padding than this is some other model's tokenizer (T5's, UMT5's and Pile-T5's embeddings round
# their tokenizers' pieces up by a few hundred rows at most)
PAD_LIMIT = 512
PAD_SCORE, ADDED_SCORE = -10000.0, -1000.0  # convert_hf_to_gguf.py's, for [PAD{i}] and added tokens
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


@dataclass
class T5Tokenizer(GGUFTokenizer):
    pieces: int = 0  # the tokenizer's own; the rest of the rows are [PAD{i}]

    def describe(self) -> str:
        s = self.summary()
        padded = len(self.tokens) - self.pieces
        return (f"tokenizer.ggml.* from {s['source']} (sentencepiece, model '{s['model']}': {self.pieces} pieces"
                + (f" + {padded} [PAD{{i}}] rows to the embedding's {len(self.tokens)}, as llama.cpp pads to "
                   "vocab_size" if padded else "") + f", {s['special_tokens']} control)")

    def comfy_missing(self) -> list[str]:
        """What ComfyUI-GGUF's gguf_tokenizer_loader reads and this KV lacks (it raises without them)."""
        kv = self.kv
        missing = [] if kv.get("tokenizer.ggml.model") == "t5" else ["tokenizer.ggml.model 't5' (a Unigram model)"]
        return missing + [f"tokenizer.ggml.{k}" for k in ("eos_token_id", "padding_token_id")
                          if f"tokenizer.ggml.{k}" not in kv]


def locate(explicit: str | os.PathLike | None, source: str | os.PathLike | None) -> Path | None:
    """The sentencepiece tokenizer file, found as llm_tokenizer.locate finds an LLM's, among FILES."""
    from ckptkit.quant.llm_tokenizer import locate as locate_file

    return locate_file(explicit, source, FILES)


def load(path: str | os.PathLike, rows: int, component: str, arch: str = "t5encoder") -> T5Tokenizer:
    """A sentencepiece model or Unigram tokenizer.json as the KV llama.cpp writes for a T5 of `rows`
    embedding rows (fewer pieces: padded as llama.cpp pads; more, or far fewer: refused)."""
    path = Path(path)
    try:
        head = path.read_bytes()
    except OSError as exc:
        raise CkptError(f"--tokenizer {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if path.suffix == ".json" or head.lstrip()[:1] == b"{":
        try:
            data = json.loads(head.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CkptError(f"{path}: not a readable tokenizer JSON ({type(exc).__name__})") from None
        if not (isinstance(data, dict) and isinstance(data.get("model"), dict)):
            raise CkptError(f"{path}: not an HF tokenizer.json (no 'model'); give the model's spiece.model")
        return _json_tokenizer(path, data, rows, component, arch)
    return _spm_tokenizer(path, head, rows, component, arch)


def _check_rows(path: Path, component: str, pieces: int, rows: int) -> None:
    """One line, never a file whose token ids do not index its embedding."""
    if pieces > rows or rows - pieces > PAD_LIMIT:
        why = "more pieces than rows" if pieces > rows else f"more than {PAD_LIMIT} rows to pad"
        raise CkptError(f"{component}: tokenizer {path} has {pieces} pieces but the text encoder's embedding has "
                        f"{rows} rows ({why}): not this model's tokenizer (give its own with --tokenizer PATH)")


def _special_vocab(path: Path, n_vocab: int):
    """gguf-py's SpecialVocab of the file's folder (tokenizer.json, tokenizer_config.json, config.json
    there), as llama.cpp reads its model folder; a file of another name stands alone."""
    import gguf

    if path.name in FILES:
        return gguf.SpecialVocab(path.parent, n_vocab=n_vocab)
    with tempfile.TemporaryDirectory() as tmp:
        if path.name.endswith(".json"):
            (Path(tmp) / "tokenizer.json").symlink_to(path.resolve())
        return gguf.SpecialVocab(tmp, n_vocab=n_vocab)


def _pad(tokens: list, scores: list, types: list, rows: int) -> None:
    import gguf

    for i in range(len(tokens), rows):
        tokens.append(f"[PAD{i}]")
        scores.append(PAD_SCORE)
        types.append(int(gguf.TokenType.UNUSED))


# --- spiece.model / tokenizer.model: T5EncoderModel.set_vocab, _create_vocab_sentencepiece ---------------

def _spm_tokenizer(path: Path, data: bytes, rows: int, component: str, arch: str) -> T5Tokenizer:
    import gguf

    try:
        from sentencepiece import SentencePieceProcessor
        from sentencepiece import sentencepiece_model_pb2 as model_pb2
    except (ImportError, TypeError) as exc:  # TypeError: a protobuf too new for the generated module
        raise CkptError(f"{path}: reading a sentencepiece model needs the sentencepiece and protobuf packages "
                        f"(pip install 'ckptkit[sentencepiece]'): {str(exc).splitlines()[0][:120]}") from None
    from google.protobuf.message import DecodeError

    proto = model_pb2.ModelProto()
    proc = SentencePieceProcessor()
    try:
        proto.ParseFromString(data)
        if not proto.pieces:
            raise DecodeError("no pieces")
        proc.LoadFromSerializedProto(data)
    except (DecodeError, RuntimeError, OSError) as exc:
        raise CkptError(f"{path}: not a sentencepiece model ({str(exc).splitlines()[0][:120] or 'unreadable'}): "
                        "give the model's spiece.model / tokenizer.model, or its tokenizer.json") from None
    bpe = proto.trainer_spec.model_type == model_pb2.TrainerSpec.BPE
    if not bpe and proto.trainer_spec.model_type != model_pb2.TrainerSpec.UNIGRAM:
        kind = model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
        raise CkptError(f"{path}: a sentencepiece {kind} model; llama.cpp writes T5 tokenizers from Unigram "
                        "(or BPE) models only")
    n = proc.vocab_size()
    _check_rows(path, component, n, rows)
    tokens, scores, types = [], [], []
    for i in range(n):
        t = gguf.TokenType.NORMAL
        if proc.IsUnknown(i):
            t = gguf.TokenType.UNKNOWN
        elif proc.IsControl(i):
            t = gguf.TokenType.CONTROL
        elif proc.IsUnused(i):
            t = gguf.TokenType.UNUSED
        elif proc.IsByte(i):
            t = gguf.TokenType.BYTE
        tokens.append(proc.IdToPiece(i))
        scores.append(float(proc.GetScore(i)))
        types.append(int(t))
    _pad(tokens, scores, types, rows)
    folder = path.parent if path.name in FILES else None
    _added(folder, tokens, scores, types, config=bpe)
    special = _special_vocab(path, len(tokens))
    if not special.special_token_ids:  # a lone model file: its own ids
        for typ, tid in (("bos", proc.bos_id()), ("eos", proc.eos_id()), ("unk", proc.unk_id()),
                         ("pad", proc.pad_id())):
            if tid >= 0:
                special._set_special_token(typ, tid)
    spec = proto.normalizer_spec

    def fill(w):
        w.add_tokenizer_model("llama" if bpe else "t5")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        if not bpe:
            w.add_add_space_prefix(spec.add_dummy_prefix)
            w.add_remove_extra_whitespaces(spec.remove_extra_whitespaces)
            if spec.precompiled_charsmap:
                w.add_precompiled_charsmap(bytes(spec.precompiled_charsmap))
        special.add_to_gguf(w, quiet=True)

    return T5Tokenizer(path, "sentencepiece BPE" if bpe else "sentencepiece", _collected(arch, fill), pieces=n)


def _added(folder: Path | None, tokens: list, scores: list, types: list, config: bool) -> None:
    """added_tokens.json (both paths) and, for BPE, tokenizer_config.json's added_tokens_decoder, as
    _create_vocab_sentencepiece overrides the rows they name (ids past the rows are ignored)."""
    import gguf

    from ckptkit.quant.llm_tokenizer import _looks_special

    if folder is None:
        return
    entries = []
    try:
        if (folder / "added_tokens.json").is_file():
            added = json.loads((folder / "added_tokens.json").read_text(encoding="utf-8"))
            entries += [(int(i), str(t), None) for t, i in added.items()]
        if config and (folder / "tokenizer_config.json").is_file():
            decoder = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get(
                "added_tokens_decoder", {})
            entries += [(int(i), str(d["content"]), bool(d.get("special"))) for i, d in decoder.items()]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CkptError(f"{folder}: unreadable added_tokens.json / tokenizer_config.json "
                        f"({type(exc).__name__})") from None
    for i, token, special in entries:
        if not 0 <= i < len(tokens):
            continue
        if special is None:  # added_tokens.json
            t = gguf.TokenType.USER_DEFINED
        elif special or _looks_special(token):
            t = gguf.TokenType.CONTROL
        else:
            token, t = token.replace("\u2581", " "), gguf.TokenType.USER_DEFINED  # pre-normalized spaces
        tokens[i], scores[i], types[i] = token, ADDED_SCORE, int(t)


# --- tokenizer.json (HF Unigram) ---------------------------------------------------------------------------

def _nodes(node, kind: str) -> list[dict]:
    """Every normalizer / pre-tokenizer of type `kind` in a (nested) Sequence."""
    if isinstance(node, dict):
        found = [node] if node.get("type") == kind else []
        return found + [n for v in node.values() for n in _nodes(v, kind)]
    if isinstance(node, list):
        return [n for v in node for n in _nodes(v, kind)]
    return []


def _json_tokenizer(path: Path, data: dict, rows: int, component: str, arch: str) -> T5Tokenizer:
    import gguf

    model = data["model"]
    if model.get("type") != "Unigram":
        raise CkptError(f"{path}: a {model.get('type')} tokenizer, not a sentencepiece Unigram one (T5's and "
                        "UMT5's): give the model's own (its spiece.model, or a Unigram tokenizer.json)")
    try:
        vocab = [(str(p), float(s)) for p, s in model["vocab"]]
        unk = model.get("unk_id")
        added = {int(t["id"]): (str(t["content"]), bool(t.get("special"))) for t in data.get("added_tokens") or []}
        normalizer, pre = data.get("normalizer"), data.get("pre_tokenizer")
        charsmap = b"".join(base64.b64decode(n["precompiled_charsmap"]) for n in _nodes(normalizer, "Precompiled")
                            if n.get("precompiled_charsmap"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CkptError(f"{path}: an unreadable Unigram tokenizer.json ({type(exc).__name__}: {exc})") from None
    n = max([len(vocab)] + [i + 1 for i in added])
    _check_rows(path, component, n, rows)
    # sentencepiece's byte pieces: tokenizers records byte_fallback for Unigram only since 0.14 (and
    # transformers 5's T5Tokenizer never does), so all 256 `<0xXX>` pieces say it as well
    byte_pieces = model.get("byte_fallback") or len({p for p, _ in vocab if _BYTE_PIECE.fullmatch(p)}) == 256
    tokens, scores, types = [], [], []
    for i in range(n):
        token, score = vocab[i] if i < len(vocab) else (added[i][0], ADDED_SCORE)
        if i == unk:
            t = gguf.TokenType.UNKNOWN
        elif i in added:
            t = gguf.TokenType.CONTROL if added[i][1] else gguf.TokenType.USER_DEFINED
        elif byte_pieces and _BYTE_PIECE.fullmatch(token):
            t = gguf.TokenType.BYTE
        else:
            t = gguf.TokenType.NORMAL
        tokens.append(token)
        scores.append(score)
        types.append(int(t))
    _pad(tokens, scores, types, rows)
    remove_spaces = (any(r.get("pattern") == {"Regex": " {2,}"} for r in _nodes(normalizer, "Replace"))
                     or bool(_nodes(pre, "WhitespaceSplit")))
    space_prefix = (any(m.get("add_prefix_space", m.get("prepend_scheme", "always") != "never")
                        for m in _nodes(pre, "Metaspace") + _nodes(normalizer, "Metaspace"))
                    or any(p.get("prepend") == "\u2581" for p in _nodes(normalizer, "Prepend")))
    special = _special_vocab(path, len(tokens))
    if not special.special_token_ids and isinstance(unk, int) and unk >= 0:
        special._set_special_token("unk", unk)

    def fill(w):
        w.add_tokenizer_model("t5")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_add_space_prefix(space_prefix)
        w.add_remove_extra_whitespaces(remove_spaces)
        if charsmap:
            w.add_precompiled_charsmap(charsmap)
        special.add_to_gguf(w, quiet=True)

    return T5Tokenizer(path, "tokenizer.json", _collected(arch, fill), pieces=n)
