"""The tokenizer a UMT5 text encoder's GGUF carries (ckptkit/quant/t5_tokenizer.py): tokenizer.ggml.*
as llama.cpp's convert_hf_to_gguf.py writes them for T5 (T5EncoderModel.set_vocab), read back by
ComfyUI-GGUF's own gguf_tokenizer_loader, which rebuilds UMT5-XXL's sentencepiece model from them (Wan).

That loader runs only for a (256384, 4096) embedding (2 GB in fp16), so these tests write a tiny
UMT5EncoderModel with a tiny sentencepiece Unigram model trained here by the `sentencepiece` library,
laid out as a diffusers Wan folder (text_encoder/ and tokenizer/ with spiece.model, tokenizer.json and
tokenizer_config.json side by side), and call the loader function itself with that shape. The model is
trained with byte_fallback: the loader sets byte_fallback on the model it rebuilds, and sentencepiece
refuses such a model without 256 byte pieces, so the vocabulary is 256 bytes + 3 specials + ~60
pieces; the embedding has 64 rows more than the pieces, as UMT5-XXL's 256384 rows are more than its
tokenizer's pieces. Its normalization rules are a few (fullwidth letters to ASCII) rather than UMT5's
NFKC: the same precompiled_charsmap KV, 1 KB instead of 240 KB, which gguf-py's GGUFReader (the
loader's) takes seconds to parse. The safetensors fallback is tested by treating the tiny
embedding's shape as UMT5-XXL's.
ComfyUI-GGUF's files come as in test_comfyui_gguf.py (skipped, saying so, where they are absent)."""

from __future__ import annotations

import json
import shutil

import gguf
import pytest
import torch
from safetensors.torch import save_file

from ckptkit.quant import t5_names
from tests.cli import ok, refused, run
from tests.quant.test_comfyui_gguf import comfy_gguf  # noqa: F401 (the fixture)

spm = pytest.importorskip("sentencepiece", reason="sentencepiece (the test extra) is not installed")

TEXT = ["A cat sits on the mat. The quick brown fox jumps over the lazy dog!",
        "Wan generates videos from text prompts: a photo of an astronaut riding a horse on the moon.",
        "Ünïcödé text, naïve café: 日本語 テキスト; 123 45"]
SAMPLES = ["A photo of an astronaut riding a horse on the moon, 123  spaces   here",
           "Zebras quietly juggle € and ✓ (bytes)", " leading and trailing  "]
PAD = 64  # embedding rows past the pieces


def _train(folder) -> int:
    """spiece.model with UMT5's special ids (pad 0, eos 1, unk 2, no bos), and the tokenizer.json /
    tokenizer_config.json transformers' T5Tokenizer makes of it, as a diffusers Wan tokenizer/ holds."""
    import transformers as T

    folder.mkdir(parents=True, exist_ok=True)
    rules = folder.parent / "rules.tsv"  # fullwidth Latin letters -> ASCII: a 1 KB precompiled_charsmap
    rules.write_text("".join(f"{0xFF21 + i:X}\t{0x41 + i:X}\n{0xFF41 + i:X}\t{0x61 + i:X}\n" for i in range(26)))
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT * 30), model_prefix=str(folder / "spiece"),
                                   vocab_size=320, model_type="unigram", byte_fallback=True, hard_vocab_limit=False,
                                   normalization_rule_tsv=str(rules), pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    (folder / "spiece.vocab").unlink()
    T.T5Tokenizer.from_pretrained(str(folder), extra_ids=0).save_pretrained(str(folder))
    return spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).vocab_size()


def _model_file(path, vocab: int):
    import transformers as T

    torch.manual_seed(0)
    model = T.UMT5EncoderModel(T.UMT5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A diffusers Wan-like folder: text_encoder/ and tokenizer/ side by side."""
    root = tmp_path_factory.mktemp("wan")
    pieces = _train(root / "tokenizer")
    te = _model_file(root / "text_encoder" / "model.safetensors", pieces + PAD)
    return root, te, pieces


def _kv(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: (f.contents(), [t.name for t in f.types]) for k, f in reader.fields.items()
            if k.startswith("tokenizer.")}


def _llama_cpp(folder, rows: int) -> dict:
    """convert_hf_to_gguf.py T5EncoderModel.set_vocab for `folder` with config vocab_size `rows`:
    the values it hands to the GGUFWriter (add_token_list, ... SpecialVocab.add_to_gguf)."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString((folder / "spiece.model").read_bytes())
    tok = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    tokens, scores, types = [f"[PAD{i}]" for i in range(rows)], [-10000.0] * rows, [5] * rows
    for i in range(tok.vocab_size()):
        types[i] = (2 if tok.IsUnknown(i) else 3 if tok.IsControl(i) else 5 if tok.IsUnused(i) else
                    6 if tok.IsByte(i) else 1)
        tokens[i], scores[i] = tok.IdToPiece(i), tok.GetScore(i)
    w = gguf.GGUFWriter(None, "t5encoder")
    gguf.SpecialVocab(folder, n_vocab=rows).add_to_gguf(w)
    special = {k: v.value for k, v in w.kv_data[0].items() if k.startswith("tokenizer.")}
    return {"tokenizer.ggml.model": "t5", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.add_space_prefix": proto.normalizer_spec.add_dummy_prefix,
            "tokenizer.ggml.remove_extra_whitespaces": proto.normalizer_spec.remove_extra_whitespaces,
            "tokenizer.ggml.precompiled_charsmap": list(proto.normalizer_spec.precompiled_charsmap), **special}


TYPES = {"tokenizer.ggml.model": ["STRING"], "tokenizer.ggml.pre": ["STRING"],
         "tokenizer.ggml.tokens": ["ARRAY", "STRING"], "tokenizer.ggml.scores": ["ARRAY", "FLOAT32"],
         "tokenizer.ggml.token_type": ["ARRAY", "INT32"], "tokenizer.ggml.add_space_prefix": ["BOOL"],
         "tokenizer.ggml.remove_extra_whitespaces": ["BOOL"], "tokenizer.ggml.precompiled_charsmap": ["ARRAY", "UINT8"],
         "tokenizer.ggml.eos_token_id": ["UINT32"], "tokenizer.ggml.unknown_token_id": ["UINT32"],
         "tokenizer.ggml.padding_token_id": ["UINT32"], "tokenizer.ggml.add_sep_token": ["BOOL"],
         "tokenizer.ggml.add_eos_token": ["BOOL"]}


def _as_written(kv: dict) -> dict:
    """Values as a GGUF gives them back (FLOAT32 scores)."""
    import numpy as np

    out = dict(kv)
    out["tokenizer.ggml.scores"] = np.asarray(kv["tokenizer.ggml.scores"], np.float32).tolist()
    return out


def test_tokenizer_kv_as_llama_cpp_writes_it(wan, tmp_path):
    root, te, pieces = wan
    rows = pieces + PAD
    result = ok(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0"))  # found in ../tokenizer
    assert f"tokenizer.ggml.* from {root / 'tokenizer' / 'spiece.model'}" in result.output
    assert f"{pieces} pieces + {PAD} [PAD{{i}}] rows" in result.output
    kv = _kv(tmp_path / "te.gguf")
    want = _as_written(_llama_cpp(root / "tokenizer", rows))
    assert {k: v[0] for k, v in kv.items()} == want
    assert {k: v[1] for k, v in kv.items()} == TYPES
    # what that is, said plainly: UMT5's ids, byte pieces, [PAD{i}] rows, the charsmap
    types = want["tokenizer.ggml.token_type"]
    assert types[:3] == [3, 3, 2] and types.count(6) == 256 and types[pieces:] == [5] * PAD
    assert want["tokenizer.ggml.tokens"][-1] == f"[PAD{rows - 1}]" and want["tokenizer.ggml.scores"][-1] == -10000.0
    assert (want["tokenizer.ggml.eos_token_id"], want["tokenizer.ggml.padding_token_id"],
            want["tokenizer.ggml.unknown_token_id"]) == (1, 0, 2)
    # add_eos from tokenizer.json's "$A </s>" post-processor (gguf-py's SpecialVocab); no bos
    assert want["tokenizer.ggml.add_eos_token"] is True and want["tokenizer.ggml.add_sep_token"] is False
    assert "tokenizer.ggml.bos_token_id" not in want and "tokenizer.ggml.add_bos_token" not in want
    assert want["tokenizer.ggml.add_space_prefix"] is True and want["tokenizer.ggml.remove_extra_whitespaces"] is True
    assert len(want["tokenizer.ggml.precompiled_charsmap"]) > 100
    source = spm.SentencePieceProcessor(model_file=str(root / "tokenizer" / "spiece.model"))
    assert source.encode("ｃａｔ") == source.encode("cat")  # the charsmap at work (fullwidth -> ASCII)
    # --tokenizer naming the folder, and --dry-run --json says it
    plan = json.loads(ok(run("quantize", te, "-o", tmp_path / "x.gguf", "--type", "q8_0", "--tokenizer",
                             root, "--dry-run", "--json")).output)["plan"]
    (comp,) = plan["info"]["components"].values()
    assert comp["tokenizer"]["tokens"] == rows and comp["tokenizer"]["model"] == "t5"
    assert comp["tokenizer"]["source"] == str(root / "tokenizer" / "spiece.model")


def test_tokenizer_json_gives_the_same_kv(wan, tmp_path):
    """A Unigram tokenizer.json (transformers' T5Tokenizer of the same model) where no spiece.model is."""
    root, te, _ = wan
    ok(run("quantize", te, "-o", tmp_path / "a.gguf", "--type", "q8_0"))
    result = ok(run("quantize", te, "-o", tmp_path / "b.gguf", "--type", "q8_0", "--tokenizer",
                    root / "tokenizer" / "tokenizer.json"))
    assert f"tokenizer.ggml.* from {root / 'tokenizer' / 'tokenizer.json'}" in result.output
    assert _kv(tmp_path / "b.gguf") == _kv(tmp_path / "a.gguf")


def _get_field_fixed(loader):
    """ComfyUI-GGUF 795e451's get_field converts a scalar KV with int(ndarray of shape (1,)), which
    NumPy 2.4 refuses (city96/ComfyUI-GGUF#384, fixed upstream by #394): with such a NumPy, the same
    conversion of the one element; the rest of the loader as it is."""
    import numpy as np

    try:
        int(np.zeros(1))
        return loader.get_field
    except TypeError:
        original = loader.get_field

    def get_field(reader, name, kind):
        field = reader.get_field(name)
        if kind in (int, float, bool) and field is not None:
            return kind(field.parts[field.data[-1]][0])
        return original(reader, name, kind)

    return get_field


def test_comfyui_gguf_rebuilds_the_sentencepiece_tokenizer(comfy_gguf, wan, tmp_path, monkeypatch):  # noqa: F811
    loader, _ = comfy_gguf
    root, te, pieces = wan
    ok(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0"))
    assert "shared.weight" in loader.gguf_clip_loader(str(tmp_path / "te.gguf"))  # it loads
    monkeypatch.setattr(loader, "get_field", _get_field_fixed(loader))
    # its sentencepiece rebuild, as gguf_clip_loader calls it for a (256384, 4096) embedding
    proto = bytes(loader.gguf_tokenizer_loader(str(tmp_path / "te.gguf"), (256384, 4096)).tolist())
    rebuilt = spm.SentencePieceProcessor(model_proto=proto)
    source = spm.SentencePieceProcessor(model_file=str(root / "tokenizer" / "spiece.model"))
    assert rebuilt.vocab_size() == pieces + PAD
    assert [rebuilt.IdToPiece(i) for i in range(pieces)] == [source.IdToPiece(i) for i in range(pieces)]
    assert (rebuilt.eos_id(), rebuilt.pad_id(), rebuilt.unk_id()) == (1, 0, 2)
    for text in SAMPLES + TEXT[:2]:
        assert rebuilt.encode(text) == source.encode(text), text
    assert any(source.IsByte(i) for i in source.encode(SAMPLES[1]))  # byte fallback taken


def test_umt5_xxl_shape_without_tokenizer_kept_with_a_way_out(wan, tmp_path, monkeypatch):
    """The tiny embedding treated as UMT5-XXL's: without a tokenizer it stays safetensors (or a .gguf
    output is refused), and the reason names --tokenizer; with one it is a GGUF."""
    root, _, pieces = wan
    rows = pieces + PAD
    monkeypatch.setattr(t5_names, "COMFY_SPIECE_SHAPES", frozenset({(rows, 32)}))
    te = _model_file(tmp_path / "loose" / "te.safetensors", rows)
    result = ok(run("quantize", te, "-o", tmp_path / "out", "--type", "q8_0"))
    assert "rebuilds UMT5's sentencepiece tokenizer from tokenizer.ggml.*" in result.output
    assert "--tokenizer PATH" in result.output
    (name,) = json.loads((tmp_path / "out" / "ckptkit.json").read_text())["components"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ckptkit.json", f"{name}.safetensors"]
    policy = json.loads((tmp_path / "out" / "ckptkit.json").read_text())["components"][name]["policy"]
    assert policy["asked"] == "q8_0" and "--tokenizer PATH" in policy["not_done"]
    line = refused(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0"))
    assert "--tokenizer PATH" in line and "UMT5-XXL" in line and not (tmp_path / "te.gguf").exists()
    # a lone tokenizer.json, with no tokenizer_config.json to name eos and pad: still no way for ComfyUI-GGUF
    shutil.copy(root / "tokenizer" / "tokenizer.json", tmp_path / "umt5-tokenizer.json")
    line = refused(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer",
                       tmp_path / "umt5-tokenizer.json"))
    assert "gives no tokenizer.ggml.eos_token_id, tokenizer.ggml.padding_token_id" in line
    # a lone spiece.model (another name, nothing beside it) carries its own ids
    shutil.copy(root / "tokenizer" / "spiece.model", tmp_path / "umt5.model")
    ok(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer", tmp_path / "umt5.model"))
    kv = _kv(tmp_path / "te.gguf")
    assert len(kv["tokenizer.ggml.tokens"][0]) == rows
    assert (kv["tokenizer.ggml.eos_token_id"][0], kv["tokenizer.ggml.padding_token_id"][0]) == (1, 0)


def test_vocab_mismatch_refused(wan, tmp_path):
    root, _, pieces = wan
    small = _model_file(tmp_path / "small.safetensors", pieces - 10)
    line = refused(run("quantize", small, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer", root))
    assert f"has {pieces} pieces but the text encoder's embedding has {pieces - 10} rows" in line
    assert "--tokenizer PATH" in line and not (tmp_path / "te.gguf").exists()
    big = _model_file(tmp_path / "big.safetensors", pieces + 600)
    line = refused(run("quantize", big, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer", root))
    assert f"embedding has {pieces + 600} rows (more than 512 rows to pad)" in line
    from tokenizers import Tokenizer, models  # a BPE tokenizer.json is no T5's

    Tokenizer(models.BPE()).save(str(tmp_path / "bpe.json"))
    line = refused(run("quantize", small, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer",
                       tmp_path / "bpe.json"))
    assert "a BPE tokenizer, not a sentencepiece Unigram one" in line
    (tmp_path / "junk.model").write_bytes(b"\x08\x96\x01not a model")
    line = refused(run("quantize", small, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer",
                       tmp_path / "junk.model"))
    assert "not a sentencepiece model" in line and not (tmp_path / "te.gguf").exists()
    # a small UMT5 with no tokenizer anywhere is a GGUF as before, with no tokenizer KV
    ok(run("quantize", small, "-o", tmp_path / "te.gguf", "--type", "q8_0"))
    assert _kv(tmp_path / "te.gguf") == {}
    # and with another model's tokenizer beside it (not asked for): left out, said in a note
    shutil.copy(root / "tokenizer" / "spiece.model", tmp_path / "spiece.model")
    result = ok(run("quantize", small, "-o", tmp_path / "te2.gguf", "--type", "q8_0"))
    assert "the tokenizer found beside the source is not written into its GGUF" in result.output
    assert f"has {pieces} pieces" in result.output and _kv(tmp_path / "te2.gguf") == {}
