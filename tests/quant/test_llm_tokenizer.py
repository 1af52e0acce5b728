"""The tokenizer an arch-llama LLM text encoder's GGUF carries (ckptkit/quant/llm_tokenizer.py):
tokenizer.ggml.* as llama.cpp's convert_hf_to_gguf.py writes them, read back by ComfyUI-GGUF's own
gguf_tekken_tokenizer_loader, which rebuilds Mistral-Small's tekken tokenizer from them (FLUX.2 dev).

That loader runs only for a (131072, 5120) embedding (1.3 GB in fp16), so these tests write a tiny
Mistral (MistralForCausalLM, 32/8 heads of width 4 as arch llama needs) with a tiny byte-level BPE
tokenizer trained by the `tokenizers` library with tekken's pre-tokenizer regex, and call the loader
function itself with that shape. The safetensors fallback is tested by treating the tiny embedding's
shape as the tekken one. ComfyUI-GGUF's files come as in test_comfyui_gguf.py (skipped, saying so,
where they are absent)."""

from __future__ import annotations

import base64
import json

import gguf
import pytest
import torch
from safetensors.torch import save_file

from ckptkit.quant import llm_names
from ckptkit.quant.llm_tokenizer import TEKKEN_REGEX
from tests.cli import ok, refused, run
from tests.quant.test_comfyui_gguf import comfy_gguf  # noqa: F401 (the fixture)

SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<pad>"]
TEXT = ["A cat sits on the mat. The quick brown fox jumps over the lazy dog! 123 45 [INST]",
        "Ünïcödé text, naïve café: 日本語 テキスト; We've a'lL 3.14"]


def _train(folder, vocab_size: int = 320):
    """A Mistral-style HF tokenizer.json: the special tokens first (ids 0..5, added and special),
    then byte-level BPE; tokenizer_config.json names bos/eos/unk as Mistral's does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(TEKKEN_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT * 20, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}))
    return tok


def _model_file(path, vocab: int):
    import transformers as T

    torch.manual_seed(0)
    model = T.MistralForCausalLM(T.MistralConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                                                 num_attention_heads=32, num_key_value_heads=8, head_dim=4,
                                                 vocab_size=vocab))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def flux2(tmp_path_factory):
    """A diffusers FLUX.2-like folder: text_encoder/ and tokenizer/ side by side."""
    root = tmp_path_factory.mktemp("flux2")
    tok = _train(root / "tokenizer")
    te = _model_file(root / "text_encoder" / "model.safetensors", tok.get_vocab_size())
    return root, te, tok


def _kv(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: (f.contents(), [t.name for t in f.types]) for k, f in reader.fields.items()
            if k.startswith("tokenizer.")}


def _expected(folder) -> dict:
    """convert_hf_to_gguf.py get_vocab_base + SpecialVocab, by transformers' fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens = [reverse[i] for i in range(len(reverse))]
    types = [3 if i in added and added[i].special else 1 for i in range(len(reverse))]
    merges = [" ".join(m) for m in json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges}


def test_tokenizer_kv_as_llama_cpp_writes_it(flux2, tmp_path):
    root, te, _ = flux2
    result = ok(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0"))  # found in ../tokenizer
    assert f"tokenizer.ggml.* from {root / 'tokenizer' / 'tokenizer.json'}" in result.output
    kv, want = _kv(tmp_path / "te.gguf"), _expected(root / "tokenizer")
    assert kv["tokenizer.ggml.model"] == ("gpt2", ["STRING"]) and kv["tokenizer.ggml.pre"] == ("tekken", ["STRING"])
    assert kv["tokenizer.ggml.tokens"] == (want["tokens"], ["ARRAY", "STRING"])
    assert kv["tokenizer.ggml.token_type"] == (want["types"], ["ARRAY", "INT32"])
    assert kv["tokenizer.ggml.merges"] == (want["merges"], ["ARRAY", "STRING"])
    assert want["types"][:6] == [3] * 6 and set(want["types"][6:]) == {1}
    assert {k: v[0] for k, v in kv.items() if k.endswith("_id")} == {
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}
    assert kv["tokenizer.ggml.bos_token_id"][1] == ["UINT32"]
    assert kv["tokenizer.ggml.add_bos_token"] == (True, ["BOOL"]) and kv["tokenizer.ggml.add_eos_token"][0] is False
    # the same with --tokenizer naming the folder, and --dry-run / --json say it
    plan = json.loads(ok(run("quantize", te, "-o", tmp_path / "x.gguf", "--type", "q8_0", "--tokenizer",
                             root / "tokenizer", "--dry-run", "--json")).output)["plan"]
    summary = plan["info"]["components"]["llama"]["tokenizer"]
    assert summary["tokens"] == len(want["tokens"]) and summary["pre"] == "tekken" and summary["special_tokens"] == 6
    assert any("tokenizer.ggml.* from" in n for n in plan["notes"])
    assert "tokenizer.ggml.* from" in ok(run("quantize", te, "-o", tmp_path / "x.gguf", "--type", "q8_0",
                                             "--dry-run")).output


def _byte_decoder():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {v: k for k, v in bytes_to_unicode().items()}


def test_comfyui_gguf_rebuilds_the_tekken_tokenizer(comfy_gguf, flux2, tmp_path):  # noqa: F811
    loader, _ = comfy_gguf
    root, te, tok = flux2
    ok(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0"))
    assert "model.embed_tokens.weight" in loader.gguf_clip_loader(str(tmp_path / "te.gguf"))  # it loads
    # its tekken rebuild, as gguf_clip_loader calls it for a (131072, 5120) embedding
    data = json.loads(bytes(loader.gguf_tekken_tokenizer_loader(str(tmp_path / "te.gguf"), (131072, 5120)).tolist()))
    assert data["special_tokens"] == [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(SPECIALS)]
    decoder = _byte_decoder()
    vocab = tok.get_vocab()
    want = [bytes(decoder[c] for c in t) for t, i in sorted(vocab.items(), key=lambda x: x[1]) if i >= len(SPECIALS)]
    got = [base64.b64decode(v["token_bytes"]) for v in data["vocab"]]
    assert got == want and [v["rank"] for v in data["vocab"]] == list(range(len(want)))
    # a tekken vocabulary's ranks are its merges: the source's merge k makes the token of rank 256 + k
    ranks = {b: i for i, b in enumerate(got)}
    merges = json.loads(tok.to_str())["model"]["merges"]
    assert merges and [ranks[bytes(decoder[c] for c in a + b)] for a, b in merges] == [
        256 + k for k in range(len(merges))]


def _tekken_json(path, tok, n_special: int = 8) -> list[bytes]:
    """A mistral-common tekken.json of the same vocabulary: the 256 bytes first (ranks 0..255), then
    the merged tokens in order; 6 listed special tokens of 8 (the rest <SPECIAL_i>)."""
    decoder = _byte_decoder()
    merged = [bytes(decoder[c] for c in t) for t, i in sorted(tok.get_vocab().items(), key=lambda x: x[1])
              if i >= len(SPECIALS) + 256]
    ranks = [bytes([b]) for b in range(256)] + merged
    path.write_text(json.dumps({
        "config": {"pattern": TEKKEN_REGEX, "num_vocab_tokens": len(ranks),
                   "default_vocab_size": n_special + len(ranks), "default_num_special_tokens": n_special,
                   "version": "v7"},
        "vocab": [{"rank": i, "token_bytes": base64.b64encode(b).decode(), "token_str": b.decode("utf-8", "replace")}
                  for i, b in enumerate(ranks)],
        "special_tokens": [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(SPECIALS)]}))
    return ranks


def _tekken_gguf(tmp_path, tok):
    ranks = _tekken_json(tmp_path / "tekken.json", tok)
    te = _model_file(tmp_path / "mistral" / "te.safetensors", 8 + len(ranks))
    ok(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer", tmp_path / "tekken.json"))
    return tmp_path / "te.gguf", ranks


def test_tekken_json_source(flux2, tmp_path):
    """convert_hf_to_gguf.py _set_vocab_mistral, MistralVocab's tekken tokens and merges."""
    from gguf.vocab import bytes_to_unicode

    _, _, tok = flux2
    path, ranks = _tekken_gguf(tmp_path, tok)
    kv = {k: v[0] for k, v in _kv(path).items()}
    enc = bytes_to_unicode()
    assert kv["tokenizer.ggml.tokens"] == SPECIALS + ["<SPECIAL_6>", "<SPECIAL_7>"] + [
        "".join(enc[b] for b in r) for r in ranks]
    assert kv["tokenizer.ggml.token_type"] == [3] * 8 + [1] * len(ranks)
    assert kv["tokenizer.ggml.scores"] == [0.0] * (8 + len(ranks)) and kv["tokenizer.ggml.pre"] == "tekken"
    hf_merges = {" ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]}
    assert hf_merges <= set(kv["tokenizer.ggml.merges"])  # every merge of each token, as MistralVocab lists them
    assert (kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"], kv["tokenizer.ggml.unknown_token_id"],
            kv["tokenizer.ggml.padding_token_id"]) == (1, 2, 0, 5)
    assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.ggml.add_eos_token"] is False


def test_comfyui_gguf_gives_tekken_json_back(comfy_gguf, flux2, tmp_path):  # noqa: F811
    loader, _ = comfy_gguf
    path, ranks = _tekken_gguf(tmp_path, flux2[2])
    data = json.loads(bytes(loader.gguf_tekken_tokenizer_loader(str(path), (131072, 5120)).tolist()))
    assert [base64.b64decode(v["token_bytes"]) for v in data["vocab"]] == ranks  # rank for rank
    assert [s["token_str"] for s in data["special_tokens"]] == SPECIALS + ["<SPECIAL_6>", "<SPECIAL_7>"]


def test_vocab_mismatch_refused(flux2, tmp_path):
    root, _, _ = flux2
    te = _model_file(tmp_path / "te.safetensors", 300)
    line = refused(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer", root / "tokenizer"))
    assert "has 320 tokens but the text encoder's embedding has 300 rows" in line and "--tokenizer PATH" in line
    assert not (tmp_path / "te.gguf").exists()
    line = refused(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer", tmp_path / "none"))
    assert "--tokenizer" in line and "no such file" in line
    from tokenizers import Tokenizer, models  # a SentencePiece-style (not byte-level BPE) one is no tekken

    Tokenizer(models.Unigram([("<unk>", 0.0)] * 300)).save(str(tmp_path / "unigram.json"))
    line = refused(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer",
                       tmp_path / "unigram.json"))
    assert "a Unigram tokenizer, not byte-level BPE" in line and not (tmp_path / "te.gguf").exists()


def test_tekken_shape_without_tokenizer_kept_with_a_way_out(flux2, tmp_path, monkeypatch):
    """The tiny embedding treated as Mistral-Small's: without a tokenizer it stays safetensors (or a
    .gguf output is refused), and the reason names --tokenizer; with one it is a GGUF."""
    root, _, tok = flux2
    n = tok.get_vocab_size()
    monkeypatch.setattr(llm_names, "COMFY_TEKKEN_SHAPES", frozenset({(n, 128)}))
    te = _model_file(tmp_path / "loose" / "te.safetensors", n)
    result = ok(run("quantize", te, "-o", tmp_path / "out", "--type", "q8_0"))
    assert "rebuilds the tekken tokenizer" in result.output and "--tokenizer PATH" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ckptkit.json", "llama.safetensors"]
    policy = json.loads((tmp_path / "out" / "ckptkit.json").read_text())["components"]["llama"]["policy"]
    assert policy["asked"] == "q8_0" and "--tokenizer PATH" in policy["not_done"]
    line = refused(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0"))
    assert "--tokenizer PATH" in line and not (tmp_path / "te.gguf").exists()
    ok(run("quantize", te, "-o", tmp_path / "te.gguf", "--type", "q8_0", "--tokenizer",
           root / "tokenizer" / "tokenizer.json"))
    assert len(gguf.GGUFReader(tmp_path / "te.gguf").get_field("tokenizer.ggml.tokens").data) == n
