"""Structure-aware generators and mutators for fuzzing ckptkit's readers, and the harness that runs
one case against the readers' contract.

The contract: for ANY input, each entry point (open_checkpoint, detect, Checkpoint.load,
inspect_checkpoint, verify.sets.open_set, convert.manifest.read_manifest) either succeeds or raises
`CkptError` whose message is one line; never another exception, never a hang (> 5 s), never large
memory, and never a change to the input files.

Kept free of pytest: tests/fuzz/test_fuzz.py drives it with Hypothesis, bench/fuzz.py with a seeded
random.Random. Every generator takes `r`, any object with the random.Random API (Hypothesis's
`st.randoms(use_true_random=False)` in the tests, so its choices shrink). `r` makes the decisions
(which seed input, which mutations, which values); bulk content (tensor bytes, long name lists) comes
from `bulk(r)`, a random.Random seeded by one draw of `r`, so a Hypothesis example stays a few dozen
choices long.

Formats (FORMATS): "safetensors", "gguf", "pickle", "json" (index / ckptkit.json / diffusers side
files in folders), "detect" (real tensor-name layouts from ../shared/manifests with odd shapes and
dtypes). Each `make_*_case(r)` returns a `Case`: the files to write, the path to open and the entry
points to call; `run_case(case, workdir)` writes it, runs it under a 5 s alarm and a data-size limit
and classifies the result as an `Outcome`.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import math
import os
import pickle
import pickletools
import random
import resource
import shutil
import signal
import stat
import struct
import traceback
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT.parent / "shared" / "manifests"

# ------------------------------------------------------------------------------------------------
# random helpers
# ------------------------------------------------------------------------------------------------


def bulk(r) -> random.Random:
    """A plain random.Random for bulk content, seeded by one draw of `r`."""
    return random.Random(r.getrandbits(32))


def chance(r, p: float) -> bool:
    return r.random() < p


def pick(r, weighted: list[tuple[float, object]]):
    """One item of [(weight, item), ...]."""
    total = sum(w for w, _ in weighted)
    x = r.random() * total
    for w, item in weighted:
        x -= w
        if x < 0:
            return item
    return weighted[-1][1]


BOUNDARY = [0, 1, 2, 3, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 2**20, 2**30,
            0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**32, 2**32 + 1, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def boundary(r, width: int, old: int | None = None) -> int:
    """An interesting unsigned value for a `width`-byte field (maybe near the old value)."""
    top = 1 << (8 * width)
    cands = [v for v in BOUNDARY if v < top]
    if old is not None and chance(r, 0.3):
        return (old + r.choice([-1, 1, -8, 8, 16, 32, top // 2, old, -old // 2])) % top
    if chance(r, 0.15):
        return r.getrandbits(8 * width)
    return r.choice(cands)


# ------------------------------------------------------------------------------------------------
# byte level
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A numeric field of a serialized file: where it is, how wide (bytes, little-endian), what."""
    offset: int
    size: int
    name: str


MAX_FILE = 2 << 20


def _put(buf: bytearray, off: int, width: int, value: int, big: bool = False) -> None:
    if off < 0 or off + width > len(buf):
        return
    buf[off:off + width] = (value % (1 << (8 * width))).to_bytes(width, "big" if big else "little")


def mutate_field(r, data: bytes, fields: list[Field], prefix: str = "") -> bytes:
    """Overwrite one recorded field (optionally only those whose name starts with `prefix`) with a
    boundary value."""
    cands = [f for f in fields if f.name.startswith(prefix) and f.offset + f.size <= len(data)]
    if not cands:
        return data
    f = r.choice(cands)
    buf = bytearray(data)
    old = int.from_bytes(buf[f.offset:f.offset + f.size], "little")
    _put(buf, f.offset, f.size, boundary(r, f.size, old))
    return bytes(buf)


def mutate_bytes(r, data: bytes, fields: list[Field] = (), rounds: int | None = None) -> bytes:
    """Plain byte-level mutations: bit flips, boundary-value overwrites of 1/2/4/8-byte fields
    (recorded fields first), truncations, chunk deletion/duplication/insertion."""
    buf = bytearray(data)
    fields = list(fields)
    for _ in range(rounds or r.choice([1, 1, 1, 2, 2, 3, 4, 8])):
        n = len(buf)
        op = pick(r, [(3, "flip"), (2, "byte"), (3, "int"), (3 if fields else 0, "field"), (2, "truncate"),
                      (1, "delete"), (1, "dup"), (1, "insert"), (1, "append"), (1, "copy")])
        pos = r.randint(0, max(0, n - 1))
        if op == "flip" and n:
            buf[pos] ^= 1 << r.randint(0, 7)
        elif op == "byte" and n:
            buf[pos] = r.choice([0, 1, 0x7F, 0x80, 0xFF, r.getrandbits(8)])
        elif op == "int" and n:
            width = r.choice([1, 2, 4, 8])
            _put(buf, min(pos, max(0, n - width)), width, boundary(r, width), big=chance(r, 0.15))
        elif op == "field" and fields:
            buf = bytearray(mutate_field(r, bytes(buf), fields))
        elif op == "truncate":
            if fields and chance(r, 0.4):
                f = r.choice(fields)
                cut = f.offset + r.randint(0, f.size)
            else:
                cut = pos
            del buf[cut:]
            fields = []
        elif op == "delete" and n:
            del buf[pos:pos + r.choice([1, 2, 4, 8, 16, 64, r.randint(1, n)])]
            fields = []
        elif op == "dup" and n:
            chunk = buf[pos:pos + r.choice([1, 4, 8, 16, 64, 256])]
            at = r.randint(0, len(buf))
            buf[at:at] = chunk
            fields = []
        elif op == "insert":
            k = r.choice([1, 2, 4, 8, 32])
            buf[pos:pos] = r.choice([b"\x00" * k, b"\xff" * k, bytes(r.getrandbits(8) for _ in range(k))])
            fields = []
        elif op == "append":
            buf += r.choice([b"\x00" * r.choice([1, 7, 8, 64, 4096]), b"\xff" * 8, b"GGUF", b"PK\x03\x04", b"{}"])
        elif op == "copy" and n > 1:
            src = r.randint(0, n - 1)
            k = min(r.choice([1, 4, 8, 32]), n - src, n - pos)
            buf[pos:pos + k] = buf[src:src + k]
        if len(buf) > MAX_FILE:
            del buf[MAX_FILE:]
    return bytes(buf)


# ------------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------------


class Raw(str):
    """JSON text inserted verbatim (deep nesting, 1e400, NaN tokens, ...)."""


class Dup(list):
    """A JSON object as a list of [key, value] pairs: keys may repeat."""


def dumps(value) -> str:
    """JSON text of `value`, allowing Raw, Dup, NaN/Infinity and non-string keys (as strings)."""
    out: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) in (dict, list) and _plain_container(v):
            out.append(json.dumps(v))
        elif isinstance(v, Raw):
            out.append(v)
        elif isinstance(v, _Tok):
            out.append(v.text)
        elif isinstance(v, str):
            out.append(json.dumps(v))
        elif v is None or isinstance(v, bool):
            out.append(json.dumps(v))
        elif isinstance(v, int):
            out.append(str(v) if abs(v) < 10**1000 else "1" + "0" * 1000)
        elif isinstance(v, float):
            out.append("NaN" if v != v else "Infinity" if v == math.inf else "-Infinity" if v == -math.inf else repr(v))
        elif isinstance(v, (dict, Dup)):
            pairs = list(v.items()) if isinstance(v, dict) else [_pair(p) for p in v]
            seq: list = [_Tok("{")]
            for i, (k, item) in enumerate(pairs):
                if i:
                    seq.append(_Tok(","))
                seq.append(_Tok(json.dumps(k if isinstance(k, str) else str(k)) + ":"))
                seq.append(item)
            seq.append(_Tok("}"))
            stack.extend(reversed(seq))
        elif isinstance(v, (list, tuple)):
            seq = [_Tok("[")]
            for i, item in enumerate(v):
                if i:
                    seq.append(_Tok(","))
                seq.append(item)
            seq.append(_Tok("]"))
            stack.extend(reversed(seq))
        else:
            out.append(json.dumps(str(v)))
    return "".join(out)


_PLAIN = (str, int, bool, type(None))


def _plain_container(v) -> bool:
    """A dict/list of plain scalars only (exact types: not Raw), which json.dumps writes as we would."""
    items = v.values() if type(v) is dict else v
    if type(v) is dict and not all(type(k) is str for k in v):
        return False
    return all(type(x) in _PLAIN and (type(x) is not int or abs(x) < 10**1000) or
               (type(x) is float and math.isfinite(x)) for x in items)


def _pair(p) -> tuple:
    if isinstance(p, (list, tuple)) and len(p) == 2:
        return p[0], p[1]
    if isinstance(p, (list, tuple)):
        return (p[0] if p else ""), (list(p[1:]) if len(p) > 1 else None)
    return "", p


class _Tok:
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


NASTY_STRINGS = ["", "\n", "a\nb", "error: x\nsecond line", "../../x", "../x.safetensors", "/abs",
                 "/abs/x.safetensors", "/dev/zero", "/etc/hostname", "C:\\x", "\\\\srv\\x", "x\x00y", "\ud800",
                 "\u00e9", "\u2028", "..", ".", "~", "sub/", "a/../../b", "x" * 300, "%s%n", "ckptkit.json",
                 "model_index.json", "config.json", "unet", "diffusion_model", "F16", "sdxl", "\x1b[31m"]


def deep_nesting(r) -> Raw:
    n = r.choice([63, 64, 65, 200, 1000, 100000])
    if chance(r, 0.5):
        return Raw("[" * n + "]" * n)
    return Raw('{"a":' * n + "1" + "}" * n)


def nasty_value(r):
    """Any JSON value of any type, biased to what breaks readers."""
    k = r.randint(0, 24)
    if k <= 2:
        return r.choice([[], {}, [[[]]], [1, "a", None], {"": {}}])
    if k <= 6:
        return r.choice([10**30, -10**30, -1, 0, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -2**63 - 1,
                         10**400 if chance(r, 0.1) else 7])
    if k <= 8:
        return r.choice([1.5, -0.0, 0.5, 1e308, float("nan"), float("inf"), float("-inf"), 1.0])
    if k <= 10:
        return r.choice([None, True, False])
    if k <= 16:
        return r.choice(NASTY_STRINGS)
    if k <= 17:
        return "A" * r.choice([1000, 100000])
    if k <= 19:
        return Raw(r.choice(["1e400", "-0", "-1e400", "NaN", "Infinity", "1E-400", "0.0000001"]))
    if k <= 21:
        return deep_nesting(r)
    if k <= 22:
        return [0] * r.choice([1000, 10000])
    if k <= 23:
        return {f"k{i}": i for i in range(r.choice([100, 3000]))}
    return r.choice(["0", "1", "[1]", "true", "null"])


def _nodes(value, limit: int = 4000) -> list[tuple[object, object]]:
    """(container, key) for every value in the tree (None, None for the root), breadth first."""
    nodes: list[tuple[object, object]] = [(None, None)]
    queue = collections.deque([value])
    while queue and len(nodes) < limit:
        v = queue.popleft()
        if isinstance(v, dict):
            for k, item in v.items():
                nodes.append((v, k))
                queue.append(item)
        elif isinstance(v, list) and not isinstance(v, Raw):
            for i, item in enumerate(v):
                nodes.append((v, i))
                queue.append(item)
    return nodes


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, Dup):
        return Dup([_copy(p) for p in value])
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def mutate_json(r, value, rounds: int | None = None):
    """Structural JSON mutations: replace any value by another type, delete / duplicate / rename
    keys, add keys, wrap, deep nesting, long strings. Returns a new tree (may hold Raw / Dup)."""
    value = _copy(value)
    for _ in range(rounds or r.choice([1, 1, 2, 3])):
        nodes = _nodes(value)
        parent, key = nodes[r.randint(0, len(nodes) - 1)]
        current = value if parent is None else parent[key]
        op = pick(r, [(6, "replace"), (2, "delete"), (1, "dup"), (1, "rename"), (1, "add"), (1, "wrap"),
                      (1, "list-op")])
        if parent is None:
            if op in ("replace", "delete", "dup", "rename"):
                value = nasty_value(r)
            elif op == "wrap":
                value = [value] if chance(r, 0.5) else {"x": value}
            continue
        if op == "replace":
            new = nasty_value(r)
            if isinstance(current, int) and not isinstance(current, bool) and chance(r, 0.4):
                new = r.choice([current + 1, current - 1, -current, current * 2**32, 2**63 - current])
            parent[key] = new
        elif op == "delete":
            del parent[key]
        elif op == "dup" and isinstance(parent, dict):
            # turn the parent into a Dup in place: its container keeps the same object identity? No:
            # rebuild it at its own position.
            pairs = Dup([[k, v] for k, v in parent.items()])
            pairs.insert(r.randint(0, len(pairs)), [key, nasty_value(r) if chance(r, 0.5) else _copy(current)])
            _replace_node(value, parent, pairs)
            if parent is value:
                value = pairs
        elif op == "rename" and isinstance(parent, dict):
            new_key = r.choice(NASTY_STRINGS + list(parent.keys()) + ["__metadata__", "_class_name", "weight_map"])
            item = parent.pop(key)
            parent[new_key] = item
        elif op == "add":
            if isinstance(parent, dict):
                parent[r.choice(NASTY_STRINGS + ["extra", "__metadata__", "components", "_class_name"])] = nasty_value(r)
            else:
                parent.insert(r.randint(0, len(parent)), nasty_value(r))
        elif op == "wrap":
            parent[key] = [current] if chance(r, 0.5) else {"x": current}
        elif op == "list-op" and isinstance(current, list):
            which = r.randint(0, 3)
            if which == 0:
                current.clear()
            elif which == 1 and current:
                current.append(_copy(current[0]))
            elif which == 2:
                current.reverse()
            else:
                current.extend(nasty_value(r) for _ in range(r.randint(1, 3)))
        else:
            parent[key] = nasty_value(r)
    return value


def _replace_node(root, old, new) -> None:
    """Put `new` where the container `old` sits inside `root` (by identity)."""
    for parent, key in _nodes(root):
        if parent is not None and parent[key] is old:
            parent[key] = new
            return


def mutate_json_text(r, text: bytes) -> bytes:
    """Text-level JSON damage: truncation, bad UTF-8, BOM, trailing garbage, whole-document swaps."""
    op = r.randint(0, 8)
    if op == 0:
        return text[: r.randint(0, max(0, len(text) - 1))]
    if op == 1:
        pos = r.randint(0, len(text))
        return text[:pos] + r.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00"]) + text[pos:]
    if op == 2:
        return b"\xef\xbb\xbf" + text
    if op == 3:
        return text + r.choice([b" ", b"\x00", b"}", b"garbage", b"\n{}", b" " * 100])
    if op == 4:
        return r.choice([b"null", b"[]", b"1", b'"x"', b"", b"{", b"NaN", b"{}"])
    if op == 5:
        return deep_nesting(r).encode()
    if op == 6:
        return text + text
    if op == 7:
        return text.replace(b'"', b"'", 1)
    return mutate_bytes(r, text)


# ------------------------------------------------------------------------------------------------
# safetensors
# ------------------------------------------------------------------------------------------------

ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
            "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
ST_CODES = list(ST_SIZES)
BAD_DTYPES = ["F13", "f32", "Q4_K", "", "F8_E4M3FNUZ", "C64", "F4", "I128", "BOOL ", "U1", "F32\n", "float32"]
SIMPLE_NAMES = ["a", "b", "weight", "bias", "x.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.conv_in.weight",
                "text_model.embeddings.position_ids", "encoder.block.0.layer.0.SelfAttention.q.weight", "__metadata__",
                "", " ", "\n", "a\nb", "\u00e9", "\ud800", "\x00", "../x", "x" * 200, "t." * 50, "0", "-1"]


def rand_shape(g: random.Random, max_numel: int = 4096) -> list[int]:
    rank = g.choice([0, 1, 1, 2, 2, 2, 3, 4])
    while True:
        shape = [g.choice([0, 1, 1, 2, 3, 4, 5, 8, 16]) for _ in range(rank)]
        if math.prod(shape) <= max_numel:
            return shape


def st_layout(tensors: list[tuple[str, str, list[int]]], g: random.Random | None = None, zeros: bool = True):
    """Header items (name, entry) with offsets in order, and the data area."""
    items: list[list] = []
    data = bytearray()
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * ST_SIZES[dtype]
        items.append([name, {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + nbytes]}])
        data += bytes(nbytes) if zeros or g is None else g.randbytes(nbytes)
    return items, bytes(data)


def st_serialize(items, data: bytes, length: int | None = None, pad: bool = True, metadata=None,
                 text: bytes | None = None) -> tuple[bytes, list[Field]]:
    pairs = Dup(([["__metadata__", metadata]] if metadata is not None else []) + [list(p) for p in items])
    blob = text if text is not None else dumps(pairs).encode("utf-8", "surrogatepass")
    if pad:
        blob += b" " * (-len(blob) % 8)
    out = struct.pack("<Q", (len(blob) if length is None else length) % 2**64) + blob + data
    return out, [Field(0, 8, "header_length")]


def plain_header(items, data: bytes, metadata=None) -> bytes:
    """A valid file from unique names and plain JSON values (json.dumps: fast)."""
    header = {"__metadata__": metadata} if metadata is not None else {}
    header.update((name, entry) for name, entry in items)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


def safetensors_bytes(tensors: list[tuple[str, str, list[int]]], metadata=None, g=None) -> bytes:
    items, data = st_layout(tensors, g, zeros=g is None)
    return plain_header(items, data, metadata)


def _gen_st_tensors(g: random.Random, n: int) -> list[tuple[str, str, list[int]]]:
    names = set()
    out = []
    for _ in range(n):
        name = g.choice(SIMPLE_NAMES[:8]) + (str(g.randint(0, 99)) if g.random() < 0.5 else "")
        if g.random() < 0.15:
            name = g.choice(SIMPLE_NAMES)
        if name in names:
            continue
        names.add(name)
        out.append((name, g.choice(ST_CODES), rand_shape(g)))
    return out


def _mutate_st_entry(r, entry: dict) -> object:
    if not isinstance(entry, dict):
        return mutate_json(r, entry, 1)
    op = r.randint(0, 9)
    e = dict(entry)
    if op == 0:
        e["dtype"] = r.choice(ST_CODES + BAD_DTYPES) if chance(r, 0.8) else nasty_value(r)
    elif op == 1:
        shape = e.get("shape")
        shape = list(shape) if isinstance(shape, (list, tuple)) and shape else [1]
        if shape and chance(r, 0.7):
            shape[r.randint(0, len(shape) - 1)] = r.choice([0, -1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**30, 1.0, True,
                                                            "2", None, [2]])
        else:
            shape = r.choice([[], [1] * 64, [1] * 65, [1] * 1000, [2**32, 2**32], [2**62, 4], [0, 2**63 - 1], [3, 0, 2**40]])
        e["shape"] = shape
    elif op == 2:
        offsets = e.get("data_offsets")
        b, en = offsets[:2] if isinstance(offsets, list) and len(offsets) >= 2 else (0, 0)
        e["data_offsets"] = r.choice([[en, b], [b + 1, en + 1], [b, en + 1], [b, 2**64], [-1, en], [b, en, en], [en],
                                      [b, 2**63], [0, 0], [b + 0.0, en], [str(b), en], [b, -en], [2**64 - 8, 2**64]])
    elif op == 3:
        e[r.choice(["extra", "dtype ", "offsets", "__metadata__"])] = nasty_value(r)
    elif op == 4:
        e.pop(r.choice(["dtype", "shape", "data_offsets"]), None)
    else:
        return mutate_json(r, e, 1)
    return e


def _relayout(items: list[list], data: bytes, g: random.Random) -> tuple[list[list], bytes] | None:
    """Recompute consistent offsets (and resize data) after shape/dtype changes, when possible."""
    total = 0
    for _, e in items:
        if (not isinstance(e, dict) or not isinstance(e.get("dtype"), str) or e.get("dtype") not in ST_SIZES
                or not isinstance(e.get("shape"), list)
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in e["shape"])):
            return None
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e["shape"]):
            return None
        total += math.prod(e["shape"]) * ST_SIZES[e["dtype"]]
        if total > 512 << 10:
            return None
    out, offset = [], 0
    for name, e in items:
        n = math.prod(e["shape"]) * ST_SIZES[e["dtype"]]
        out.append([name, dict(e, data_offsets=[offset, offset + n])])
        offset += n
    return out, g.randbytes(offset) if g.random() < 0.3 else bytes(offset)


def make_safetensors_case(r) -> "Case":
    g = bulk(r)
    tensors = _gen_st_tensors(g, r.choice([0, 1, 1, 2, 3, 4, 6, 10]))
    items, data = st_layout(tensors, g, zeros=chance(r, 0.5))
    metadata = {"format": "pt"} if chance(r, 0.6) else None
    length = None
    text = None
    pad = True
    notes = []
    for _ in range(r.choice([0, 1, 1, 1, 2, 2, 3])):
        op = pick(r, [(5, "entry"), (2, "shape-consistent"), (2, "metadata"), (1, "dup"), (1, "delete"), (1, "reorder"),
                      (2, "name"), (2, "header-json"), (2, "header-text"), (2, "length"), (2, "data"), (1, "nopad")])
        notes.append(op)
        if op == "entry" and items:
            i = r.randint(0, len(items) - 1)
            items[i][1] = _mutate_st_entry(r, items[i][1])
        elif op == "shape-consistent" and items:
            i = r.randint(0, len(items) - 1)
            e = dict(items[i][1]) if isinstance(items[i][1], dict) else {}
            e["dtype"] = r.choice(ST_CODES)
            e["shape"] = r.choice([[], [0], [1] * 64, [0, 2**63 - 1], [2**40, 0], rand_shape(g), [1, 1, 1, 4096], [7, 0, 3]])
            items[i][1] = e
            fixed = _relayout(items, data, g)
            if fixed:
                items, data = fixed
        elif op == "metadata":
            metadata = r.choice([nasty_value(r), {"format": nasty_value(r)}, {"a": "b" * 100000}, {"k": 1}, [], "pt", None,
                                 mutate_json(r, {"format": "pt", "total": "1"})])
        elif op == "dup" and items:
            it = r.choice(items)
            items.insert(r.randint(0, len(items)), [it[0], _copy(it[1])])
        elif op == "delete" and items:
            items.pop(r.randint(0, len(items) - 1))
        elif op == "reorder":
            r.shuffle(items)
        elif op == "name" and items:
            items[r.randint(0, len(items) - 1)][0] = r.choice(SIMPLE_NAMES + NASTY_STRINGS + ["n" * 100000])
        elif op == "header-json":
            header = dict(items) | ({"__metadata__": metadata} if metadata is not None else {})
            tree = mutate_json(r, header) if chance(r, 0.7) else Dup([list(p) for p in items])
            text = dumps(tree).encode("utf-8", "surrogatepass")
        elif op == "header-text":
            base = text if text is not None else st_serialize(items, b"", pad=False, metadata=metadata)[0][8:]
            text = mutate_json_text(r, base)
        elif op == "length":
            length = r.choice([boundary(r, 8), -1, 1, 2, 8 + r.randint(0, 64)])
            if chance(r, 0.5):
                cur = len(st_serialize(items, b"", metadata=metadata, text=text, pad=pad)[0]) - 8
                length = cur + r.choice([-1, 1, -8, 8, len(data), len(data) + 1, -cur])
        elif op == "data":
            data = r.choice([data[:-1], data + b"\x00", b"", data + data, data[: len(data) // 2], data + b"\x00" * 8])
        elif op == "nopad":
            pad = False
    blob, fields = st_serialize(items, data, length=length, pad=pad, metadata=metadata, text=text)
    if chance(r, 0.35):
        blob = mutate_bytes(r, blob, fields)
        notes.append("bytes")
    return Case("safetensors", {"x.safetensors": blob}, "x.safetensors", ("open", "detect", "load"), ",".join(notes))


# ------------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------------

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FMT = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f", BOOL: "?",
              UINT64: "Q", INT64: "q", FLOAT64: "d"}


@dataclass
class Arr:
    sub: int
    items: list


@dataclass
class GGUFModel:
    kvs: list  # [key (str | bytes), vtype, value]
    tensors: list  # [name (str | bytes), dims (ggml order), ggml type, offset]
    data: bytes
    align: int = 32
    version: int = 3
    magic: bytes = b"GGUF"
    n_tensors: int | None = None  # overrides of the counts in the header
    n_kv: int | None = None


def _pack(fmt: str, v) -> bytes:
    try:
        return struct.pack("<" + fmt, v)
    except (struct.error, TypeError, OverflowError, ValueError):
        size = struct.calcsize(fmt)
        try:
            iv = len(v) if isinstance(v, (str, bytes, list, tuple, dict, Arr)) else int(v)
        except (ValueError, OverflowError, TypeError):
            iv = 0
        if isinstance(v, Arr):
            iv = len(v.items)
        return (iv % (1 << (8 * size))).to_bytes(size, "little")


class _W:
    def __init__(self):
        self.buf = bytearray()
        self.fields: list[Field] = []

    def num(self, fmt: str, v, name: str | None = None) -> None:
        if name:
            self.fields.append(Field(len(self.buf), struct.calcsize(fmt), name))
        self.buf += _pack(fmt, v)

    def string(self, s, name: str) -> None:
        b = s if isinstance(s, bytes) else str(s).encode("utf-8", "surrogatepass")
        self.num("Q", len(b), name)
        self.buf += b

    def value(self, vtype: int, v) -> None:
        stack = [(vtype, v)]  # iterative: arrays may nest thousands deep
        while stack:
            vtype, v = stack.pop()
            if vtype in SCALAR_FMT:
                self.num(SCALAR_FMT[vtype], v, "kv.scalar")
            elif vtype == STRING:
                self.string(v if isinstance(v, (str, bytes)) else str(v), "kv.str.len")
            elif vtype == ARRAY:
                arr = v if isinstance(v, Arr) else Arr(UINT8, [])
                self.num("I", arr.sub, "kv.arr.type")
                self.num("Q", len(arr.items), "kv.arr.count")
                stack.extend((arr.sub, item) for item in reversed(arr.items))
            elif isinstance(v, bytes):
                self.buf += v


def gguf_serialize(m: GGUFModel) -> tuple[bytes, list[Field]]:
    w = _W()
    w.buf += m.magic
    w.num("I", m.version, "header.version")
    wide = "Q" if m.version != 1 else "I"
    w.num(wide, len(m.tensors) if m.n_tensors is None else m.n_tensors, "header.tensor_count")
    w.num(wide, len(m.kvs) if m.n_kv is None else m.n_kv, "header.kv_count")
    for key, vtype, value in m.kvs:
        w.string(key, "kv.key.len")
        w.num("I", vtype, "kv.type")
        w.value(vtype, value)
    for name, dims, ttype, offset in m.tensors:
        w.string(name, "tensor.name.len")
        w.num("I", len(dims), "tensor.ndims")
        for d in dims:
            w.num("Q", d, "tensor.dim")
        w.num("I", ttype, "tensor.type")
        w.num("Q", offset, "tensor.offset")
    if m.align > 0:
        w.buf += bytes(-len(w.buf) % m.align)
    w.buf += m.data
    return bytes(w.buf), w.fields


def _ggml_types():
    import gguf

    sizes = {t.name: (t.value, *gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGMLQuantizationType if t in gguf.GGML_QUANT_SIZES}
    return sizes


GG = None  # name -> (value, block, type_size), filled on first use
GG_COMMON = [(4, "Q8_0"), (4, "Q4_K"), (3, "F16"), (3, "F32"), (2, "BF16"), (1, "Q4_0"), (1, "Q5_0"), (1, "Q5_1"),
             (1, "Q4_1"), (1, "Q2_K"), (1, "Q3_K"), (1, "Q5_K"), (1, "Q6_K"), (1, "Q8_K"), (1, "I8"), (1, "I16"),
             (1, "I32"), (1, "I64"), (1, "F64"), (1, "IQ4_NL"), (1, "IQ4_XS"), (0.5, "IQ2_XXS"), (0.5, "IQ3_S"),
             (0.5, "IQ1_S"), (0.5, "TQ1_0"), (0.5, "TQ2_0"), (0.5, "MXFP4")]
GGUF_ARCHES = ["flux", "sd1", "sdxl", "sd3", "t5", "t5encoder", "llama", "", "aura", "sana", "pixart", "clip"]
T5_GGUF_NAMES = ["token_embd.weight", "enc.output_norm.weight", "enc.blk.0.attn_q.weight", "enc.blk.0.attn_k.weight",
                 "enc.blk.0.attn_v.weight", "enc.blk.0.attn_o.weight", "enc.blk.0.attn_norm.weight",
                 "enc.blk.0.attn_rel_b.weight", "enc.blk.0.ffn_up.weight", "enc.blk.0.ffn_gate.weight",
                 "enc.blk.0.ffn_down.weight", "enc.blk.0.ffn_norm.weight", "dec.blk.0.attn_q.weight"]
ORIG = "comfy.gguf.orig_shape."


def _gg_table():
    global GG
    if GG is None:
        GG = _ggml_types()
    return GG


def gen_gguf(r, g: random.Random) -> GGUFModel:
    gg = _gg_table()
    arch = g.choice(GGUF_ARCHES)
    kvs: list = [["general.architecture", STRING, arch]]
    if g.random() < 0.6:
        kvs.append(["general.name", STRING, "fuzz"])
    if g.random() < 0.4:
        kvs.append(["general.quantization_version", UINT32, 2])
    align = 32
    if g.random() < 0.3:
        align = g.choice([8, 16, 32, 64])
        kvs.append(["general.alignment", UINT32, align])
    for i in range(g.choice([0, 0, 1, 2, 4])):
        kind = g.randint(0, 7)
        key = f"fuzz.k{i}"
        if kind == 0:
            vt = g.choice(list(SCALAR_FMT))
            value = g.choice([0, 1, -1, 2**31, 1.5, True]) if vt in (FLOAT32, FLOAT64, BOOL) else g.randint(0, 100)
            kvs.append([key, vt, value])
        elif kind == 1:
            kvs.append([key, ARRAY, Arr(STRING, [g.choice(SIMPLE_NAMES[:8]) for _ in range(g.randint(0, 5))])])
        elif kind == 2:
            ints = [g.randint(0, 100) for _ in range(g.randint(0, 8))]
            kvs.append([key, ARRAY, Arr(g.choice([INT32, UINT32, INT64, UINT64, UINT8]), ints)])
        elif kind == 3:
            kvs.append([key, ARRAY, Arr(ARRAY, [Arr(INT32, [1, 2]), Arr(INT32, [])])])
        elif kind == 4:
            kvs.append([key, ARRAY, Arr(FLOAT32, [0.5] * g.randint(0, 4))])
        elif kind == 5:
            kvs.append([key, ARRAY, Arr(BOOL, [True, False])])
        elif kind == 6:
            kvs.append([key, STRING, g.choice(NASTY_STRINGS[:12])])
        else:
            kvs.append(["tokenizer.ggml.tokens", ARRAY, Arr(STRING, ["<s>", "</s>", "a", "\u00e9"])])
    tensors: list = []
    data = bytearray()
    names_pool = T5_GGUF_NAMES if arch in ("t5", "t5encoder") else None
    used: set = set()
    for i in range(g.choice([0, 1, 1, 2, 3, 4, 6])):
        tname = pick(g, GG_COMMON)
        if tname not in gg:
            continue
        tval, block, tsize = gg[tname]
        ne0 = block * g.choice([1, 1, 2]) if block > 1 else g.choice([1, 2, 3, 4, 8, 16])
        rank = g.choice([1, 2, 2, 2, 3, 4])
        dims = [ne0] + [g.choice([1, 1, 2, 3]) for _ in range(rank - 1)]
        numel = math.prod(dims)
        nbytes = numel // block * tsize
        if len(data) + nbytes > 256 << 10:
            continue
        if names_pool:
            name = g.choice(names_pool)
        else:
            name = g.choice(["w", "x.weight", "double_blocks.0.img_attn.norm.key_norm.scale", "input_blocks.0.0.weight",
                             "decoder.conv_in.weight", "blocks.0.mlp.fc1.weight", "label_emb.0.0.weight", "img_in.weight"])
            name += "" if g.random() < 0.5 else str(i)
        if name in used:
            continue
        used.add(name)
        data += bytes(-len(data) % align)
        tensors.append([name, dims, tval, len(data)])
        data += g.randbytes(nbytes)
        if g.random() < 0.3:  # ComfyUI-GGUF's record of a reshaped (conv) weight
            np_shape = list(reversed(dims))
            orig = g.choice([np_shape + [1, 1], [numel], [1] + np_shape, [np_shape[0], numel // np_shape[0], 1, 1]])
            kvs.append([ORIG + name, ARRAY, Arr(g.choice([INT32, INT32, UINT32, INT64, UINT64]), orig)])
    return GGUFModel(kvs, tensors, bytes(data), align=align)


def _mutate_gguf_model(r, m: GGUFModel, gg) -> str:
    op = pick(r, [(2, "kv-type"), (3, "kv-value"), (1, "kv-key"), (1, "kv-dup"), (1, "kv-unknown"), (2, "array"),
                  (2, "alignment"), (2, "arch"), (4, "orig-shape"), (3, "t-dims"), (3, "t-type"), (3, "t-offset"),
                  (2, "t-name"), (1, "t-dup"), (2, "counts"), (1, "version"), (1, "magic"), (2, "data"), (1, "pad"),
                  (1, "kv-delete")])
    if op == "kv-type" and m.kvs:
        kv = r.choice(m.kvs)
        kv[1] = r.choice(list(range(14)) + [2**31, 2**32 - 1])
    elif op == "kv-value" and m.kvs:
        kv = r.choice(m.kvs)
        kv[2] = r.choice([nasty_value(r), b"\xff\xfe", "\ud800", "x" * 100000, -1, 2**64 - 1, 2**63, Arr(STRING, [b"\xff"]),
                          Arr(INT32, [-1, 0]), Arr(ARRAY, []), 1.5, float("nan")])
    elif op == "kv-key" and m.kvs:
        r.choice(m.kvs)[0] = r.choice([b"\xff\xfe", "", "GGUF.version", "GGUF.kv_count", "general.alignment",
                                        "general.architecture", "\ud800", "k" * 70000, ORIG + "w", "\n"])
    elif op == "kv-dup" and m.kvs:
        kv = r.choice(m.kvs)
        m.kvs.insert(r.randint(0, len(m.kvs)), list(kv))
    elif op == "kv-delete" and m.kvs:
        m.kvs.pop(r.randint(0, len(m.kvs) - 1))
    elif op == "kv-unknown":
        m.kvs.append([f"fuzz.unknown{r.randint(0, 9)}", r.choice([13, 14, 255, 2**31, 2**32 - 1]), b"\x00" * r.choice([0, 4, 8])])
    elif op == "array":
        depth = r.choice([1, 2, 50, 1200])
        v = Arr(INT32, [1])
        for _ in range(depth):
            v = Arr(ARRAY, [v])
        m.kvs.append([f"fuzz.arr{r.randint(0, 9)}", ARRAY, r.choice([v, Arr(ARRAY, []), Arr(STRING, []), Arr(13, [b"\x00"]),
                                                                      Arr(STRING, ["a"] * 1000), Arr(ARRAY, [Arr(ARRAY, [])] * 100)])])
    elif op == "alignment":
        m.kvs = [kv for kv in m.kvs if kv[0] != "general.alignment"]
        vt = r.choice([UINT32, UINT32, UINT64, INT32, STRING, FLOAT32, ARRAY])
        m.kvs.append(["general.alignment", vt, r.choice([0, 1, 3, 31, 64, 2**31, 2**32 - 1, "32", Arr(UINT32, [32])])])
        if chance(r, 0.5):
            m.align = r.choice([0, 1, 16, 64])
    elif op == "arch":
        m.kvs = [kv for kv in m.kvs if kv[0] != "general.architecture"]
        if chance(r, 0.8):
            vt, v = r.choice([(STRING, "t5"), (STRING, "t5encoder"), (UINT32, 5), (ARRAY, Arr(STRING, ["flux"])),
                              (STRING, b"\xff"), (STRING, nasty_value(r) if chance(r, 0.5) else "flux"), (BOOL, True)])
            m.kvs.insert(0, ["general.architecture", vt, v])
            if v in ("t5", "t5encoder") and m.tensors:
                r.choice(m.tensors)[0] = r.choice(T5_GGUF_NAMES)
    elif op == "orig-shape":
        name = r.choice([t[0] for t in m.tensors]) if m.tensors and chance(r, 0.9) else "nope"
        m.kvs = [kv for kv in m.kvs if kv[0] != ORIG + str(name)] if isinstance(name, str) else m.kvs
        key = ORIG + name if isinstance(name, str) else ORIG.encode() + name
        m.kvs.append([key, *r.choice([
            (ARRAY, Arr(INT32, [-1, -1])), (ARRAY, Arr(INT32, [0])), (ARRAY, Arr(INT32, [])), (ARRAY, Arr(UINT64, [2**64 - 1, 1])),
            (ARRAY, Arr(INT64, [2**32, 2**32])), (ARRAY, Arr(STRING, ["3", "x"])), (ARRAY, Arr(FLOAT32, [1.5, 2.0])),
            (ARRAY, Arr(ARRAY, [Arr(INT32, [1])])), (INT32, 4), (STRING, "4,4"), (ARRAY, Arr(BOOL, [True, True])),
            (ARRAY, Arr(INT32, [2**31 - 1, 2**31 - 1, 2**31 - 1])), (ARRAY, Arr(INT32, [1] * 70)),
            (ARRAY, Arr(INT32, [r.randint(0, 8) for _ in range(r.randint(1, 4))])), (ARRAY, Arr(FLOAT32, [float("nan")])),
            (ARRAY, Arr(FLOAT64, [1e300, 1e300]))])])
    elif op == "t-dims" and m.tensors:
        t = r.choice(m.tensors)
        t[1] = r.choice([[], [0], [0, 32], t[1] + [1] * r.choice([1, 4, 60]), [2**32, 2**32], [2**63, 2], [2**64 - 1],
                         [t[1][0] + 1] + t[1][1:] if t[1] else [1], [t[1][0] * 2] + t[1][1:] if t[1] else [2],
                         [31], [255], [1] * 1000, list(reversed(t[1]))])
    elif op == "t-type" and m.tensors:
        t = r.choice(m.tensors)
        t[2] = r.choice([v for v, _, _ in gg.values()] + [4, 5, 31, 99, 2**31, 2**32 - 1, 36, 37])
    elif op == "t-offset" and m.tensors:
        t = r.choice(m.tensors)
        t[3] = r.choice([t[3] + 1, t[3] + m.align, len(m.data), len(m.data) + 32, 2**63, 2**64 - 1, 2**64 - 32, 0,
                         max(0, t[3] - 32)])
    elif op == "t-name" and m.tensors:
        r.choice(m.tensors)[0] = r.choice([b"\xff", "", "\ud800", "n" * 70000, "w", "a\nb", "x.weight"] + T5_GGUF_NAMES[:3])
    elif op == "t-dup" and m.tensors:
        t = r.choice(m.tensors)
        m.tensors.insert(r.randint(0, len(m.tensors)), list(t) if chance(r, 0.5) else [t[0] + "_", *t[1:]])
    elif op == "counts":
        if chance(r, 0.5):
            m.n_tensors = r.choice([len(m.tensors) + 1, max(0, len(m.tensors) - 1), boundary(r, 8)])
        else:
            m.n_kv = r.choice([len(m.kvs) + 1, max(0, len(m.kvs) - 1), boundary(r, 8)])
    elif op == "version":
        m.version = r.choice([0, 1, 2, 4, 0x03000000, 0x00030000, 2**32 - 1, 3 << 16])
    elif op == "magic":
        m.magic = r.choice([b"GGUG", b"FUGG", b"gguf", b"GGU", b"GGUF\x00"])
    elif op == "data":
        m.data = r.choice([m.data[:-1], m.data[: len(m.data) // 2], b"", m.data + b"\x00" * 64, m.data[:-32]])
    elif op == "pad":
        m.align = r.choice([0, 1, 8, 64])
    return op


def make_gguf_case(r) -> "Case":
    g = bulk(r)
    gg = _gg_table()
    m = gen_gguf(r, g)
    notes = []
    for _ in range(r.choice([0, 1, 1, 1, 2, 2, 3])):
        notes.append(_mutate_gguf_model(r, m, gg))
    blob, fields = gguf_serialize(m)
    if chance(r, 0.3):
        prefix = r.choice(["", "header.", "kv.", "kv.str.len", "kv.arr.count", "tensor.", "tensor.dim", "tensor.offset",
                           "tensor.ndims"])
        blob = mutate_field(r, blob, fields, prefix)
        notes.append("field:" + prefix)
    if chance(r, 0.25):
        blob = mutate_bytes(r, blob, fields)
        notes.append("bytes")
    return Case("gguf", {"x.gguf": blob}, "x.gguf", ("open", "detect", "load"), ",".join(notes))


# ------------------------------------------------------------------------------------------------
# torch pickles (zip and legacy)
# ------------------------------------------------------------------------------------------------

TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
                torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2]


def _base(g: random.Random, n: int, dtype) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.int64) % 7
    return t.to(dtype)


def gen_tensor(g: random.Random) -> torch.Tensor:
    dtype = g.choice(TORCH_DTYPES)
    kind = g.choice(["plain", "plain", "transposed", "slice", "narrow", "expand", "expand2", "strided", "empty",
                     "scalar", "param", "requires_grad", "big-storage", "complex", "sparse", "quantized", "meta", "uint16"])
    if kind == "plain":
        return _base(g, 12, dtype).reshape(g.choice([(12,), (3, 4), (2, 2, 3), (1, 12)]))
    if kind == "transposed":
        return _base(g, 12, dtype).reshape(3, 4).t()
    if kind == "slice":
        return _base(g, 24, dtype).reshape(4, 6)[1:, ::2]
    if kind == "narrow":
        return _base(g, 64, dtype)[5:9]
    if kind == "expand":
        return _base(g, 1, dtype).expand(g.choice([5, 1000, 2**20]))
    if kind == "expand2":
        return _base(g, 3, dtype).reshape(3, 1).expand(3, 4)
    if kind == "strided":
        return _base(g, 16, dtype).as_strided(g.choice([(3, 3), (4, 4), (2, 5)]), g.choice([(1, 1), (4, 1), (0, 1), (1, 3)]))
    if kind == "empty":
        return torch.zeros(g.choice([(0,), (0, 3), (3, 0, 2)]), dtype=dtype)
    if kind == "scalar":
        return torch.tensor(3, dtype=torch.int64).to(dtype)
    if kind == "param":
        return torch.nn.Parameter(_base(g, 6, torch.float32).reshape(2, 3), requires_grad=False)
    if kind == "requires_grad":
        return torch.zeros(3, requires_grad=True)
    if kind == "big-storage":
        return _base(g, 4096, dtype)[:1]
    if kind == "complex":
        return torch.zeros(3, dtype=torch.complex64)
    if kind == "sparse":
        return torch.zeros(3, 3).to_sparse()
    if kind == "quantized":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated, still loadable: that is what a file may hold
            return torch.quantize_per_tensor(torch.zeros(4), 0.1, 0, torch.qint8)
    if kind == "meta":
        return torch.empty(g.choice([(3,), (2**20, 2**20)]), device="meta")
    if hasattr(torch, "uint16"):
        return torch.zeros(3, dtype=torch.uint16)
    return torch.zeros(3)


def gen_torch_obj(g: random.Random):
    d: dict = {}
    shared = None
    for i in range(g.choice([0, 1, 1, 2, 3, 4, 6])):
        name = g.choice(["w", "model.diffusion_model.out.2.weight", "first_stage_model.decoder.conv_in.weight",
                         "text_model.embeddings.position_ids", "x", "blocks.0.mlp.fc1.weight", "\u00e9", "a\nb", ""]) + str(i)
        if shared is not None and g.random() < 0.15:
            d[name] = shared if g.random() < 0.5 else shared.reshape(-1)[:1]
            continue
        t = gen_tensor(g)
        if t.layout == torch.strided and t.device.type == "cpu" and shared is None:
            shared = t
        d[name] = t
    for _ in range(g.choice([0, 0, 1, 2])):
        d[g.choice(["epoch", "global_step", "lr", "cfg", "names", 3, ("t",)])] = g.choice(
            [3, 1.5, "x", None, [1, 2], (1, "a"), {"a": 1}, b"raw", True, collections.OrderedDict(a=1),
             torch.Size([1, 2]), torch.float16, {"nested": {"w": torch.zeros(2)}}])
    wrap = g.randint(0, 9)
    if wrap == 0:
        return {"state_dict": d}
    if wrap == 1:
        return {"state_dict": {"module": d}, "epoch": 3}
    if wrap == 2:
        return {"model": d, "optimizer": {"lr": 0.1}}
    if wrap == 3:
        return {"state_dict": d, "x": torch.zeros(1)}
    if wrap == 4:
        return g.choice([[d], (d,), collections.OrderedDict(d), {"state_dict": {"state_dict": {"state_dict": {"state_dict": d}}}}])
    if wrap == 5:
        return {"module": {"model": {"state_dict": d}}}
    return d


def torch_bytes(obj, zip_format: bool) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    data = buf.getvalue()
    return _fixed_serialization_id(data) if zip_format else _fixed_legacy_keys(data)


class _StandIn:
    """Accepts whatever a pickle does to an object (REDUCE, BUILD, SETITEMS, APPENDS)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


def _fixed_legacy_keys(data: bytes) -> bytes:
    """Legacy torch.save names storages by their memory address (and writes them sorted by it);
    rename them "0", "1", ... in order of first use and write the storages in that order, so a case
    is the same bytes every time it is built (Hypothesis replays it, the bench rebuilds it)."""
    split = _legacy_parts(data)
    if split is None:
        return data
    parts, rest = split
    types: dict[str, object] = {}

    class _Keys(pickle.Unpickler):  # reads the storage ids only: every other global is a stand-in
        def persistent_load(self, pid):  # ("storage", storage type, key, location, numel, view metadata)
            types.setdefault(pid[2], pid[1])
            return None

        def find_class(self, module, name):
            if module == "torch" and name.endswith("Storage"):
                return getattr(torch, name)
            return _StandIn

    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage is deprecated
            _Keys(io.BytesIO(parts[3])).load()
            dtypes = {k: getattr(t, "dtype", torch.uint8) for k, t in types.items()}  # UntypedStorage: bytes
        old_keys = pickle.loads(parts[4])
        records, pos = {}, 0
        for key in old_keys:
            (numel,) = struct.unpack_from("<q", rest, pos)
            dtype = dtypes[key]
            size = 8 + numel * torch.empty((), dtype=dtype).element_size()
            records[key] = rest[pos:pos + size]
            pos += size
    except Exception:  # noqa: BLE001 - leave a file we cannot take apart as it is
        return data
    mapping = {k: str(i) for i, k in enumerate(types)}
    out, last = [], 0
    for name, arg, a, b in _spans(parts[3]):
        if name in STR_OPS and arg in mapping:
            out += [parts[3][last:a], _encode_str(mapping[arg])]
            last = b
    parts[3] = b"".join(out) + parts[3][last:]
    parts[4] = pickle.dumps([mapping[k] for k in types], protocol=2)
    return b"".join(parts) + b"".join(records[k] for k in types) + rest[pos:]


def _fixed_serialization_id(data: bytes) -> bytes:
    """torch.save writes a random `.data/serialization_id`; zero its digits (and fix the CRCs) so a
    case is the same bytes every time it is built (Hypothesis replays, the bench rebuilds)."""
    buf = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if not info.filename.endswith("serialization_id") or info.compress_type != zipfile.ZIP_STORED:
                continue
            name_len, extra_len = struct.unpack_from("<HH", buf, info.header_offset + 26)
            start = info.header_offset + 30 + name_len + extra_len
            buf[start:start + info.file_size] = b"0" * info.file_size
            crc = zlib.crc32(bytes(buf[start:start + info.file_size]))
            struct.pack_into("<I", buf, info.header_offset + 14, crc)
            at = data.find(b"PK\x01\x02")
            while at >= 0:
                n, = struct.unpack_from("<H", buf, at + 28)
                if bytes(buf[at + 46:at + 46 + n]).decode("utf-8", "replace") == info.filename:
                    struct.pack_into("<I", buf, at + 16, crc)
                    break
                at = data.find(b"PK\x01\x02", at + 4)
    return bytes(buf)


PICKLE_STRINGS = ["0", "1", "2", "99", "-1", "../x", "/dev/zero", "", "cpu", "cuda", "cuda:0", "meta", "mps", "xla",
                  "storage", "state_dict", "module", "w", "FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage",
                  "BoolStorage", "ComplexFloatStorage", "QInt8Storage", "ByteStorage", "UntypedStorage", "Float8_e4m3fnStorage",
                  "NoSuchStorage", "x" * 1000, "\u00e9", "a\nb"]
PICKLE_GLOBALS = [("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                  ("torch._utils", "_rebuild_parameter_with_state"), ("torch._utils", "_rebuild_sparse_tensor"),
                  ("torch._utils", "_rebuild_qtensor"), ("torch._utils", "_rebuild_meta_tensor_no_storage"),
                  ("torch._utils", "_rebuild_wrapper_subclass"), ("torch._utils", "_rebuild_nested_tensor"),
                  ("torch._utils", "_rebuild_device_tensor_from_numpy"), ("torch._utils", "_rebuild_tensor"),
                  ("torch._tensor", "_rebuild_from_type_v2"), ("collections", "OrderedDict"), ("torch", "Size"),
                  ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "LongStorage"), ("torch", "BFloat16Storage"),
                  ("torch", "ComplexFloatStorage"), ("torch", "QInt8Storage"), ("torch", "float32"), ("torch", "device"),
                  ("torch.nn.parameter", "Parameter"), ("builtins", "set"), ("builtins", "slice"), ("builtins", "getattr"),
                  ("os", "system"), ("posix", "system"), ("numpy.core.multiarray", "_reconstruct"), ("numpy", "dtype"),
                  ("_codecs", "encode"), ("torch", "strided"), ("torch", "sparse_coo"), ("copy_reg", "_reconstructor"),
                  ("__builtin__", "set"), ("torch", "nope"), ("nope", "nope")]
PICKLE_OPS = [b"(", b")", b"t", b"\x85", b"\x86", b"\x87", b"R", b"b", b"0", b"2", b".", b"N", b"\x88", b"}", b"]",
              b"u", b"e", b"Q", b"h\x00", b"h\xff", b"q\x00", b"s", b"a", b"K\xff", b"J\xff\xff\xff\x7f", b"\x8c\x00"]
INT_OPS = {"BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG", "LONG4"}
STR_OPS = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINSTRING", "SHORT_BINSTRING"}
INTERESTING_INTS = [0, 1, -1, 2, 255, 256, 65535, 65536, 2**31 - 1, -2**31, 2**31, 2**32, 2**62, 2**63 - 1, 2**63,
                    2**64, -2**63, 10**30, 4096, 12, 77]


def _encode_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _encode_str(s: str, short: bool = False) -> bytes:
    """BINUNICODE (protocol 1+, what torch writes), or SHORT_BINUNICODE (protocol 4) when `short`."""
    b = s.encode("utf-8", "surrogatepass")
    return (b"\x8c" + bytes([len(b)]) + b) if short and len(b) < 256 else (b"X" + struct.pack("<I", len(b)) + b)


def _spans(data: bytes):
    """[(opcode name, arg, start, end)] of a pickle's ops (up to the first STOP or parse error)."""
    out = []
    try:
        for op, arg, pos in pickletools.genops(data):
            out.append([op.name, arg, pos, None])
    except Exception:
        pass
    for i in range(len(out)):
        out[i][3] = out[i + 1][2] if i + 1 < len(out) else (out[i][2] + 1 if out[i][0] == "STOP" else len(data))
    return out


def mutate_pickle(r, data: bytes, rounds: int | None = None) -> bytes:
    """Opcode-aware pickle mutations: int and string arguments, GLOBAL targets, length prefixes,
    memo indexes, op deletion/duplication/insertion/swap, truncation at an op."""
    for _ in range(rounds or r.choice([1, 1, 1, 2, 3])):
        spans = _spans(data)
        if len(spans) < 2:
            return mutate_bytes(r, data)
        op = pick(r, [(4, "int"), (3, "str"), (2, "global"), (1, "strlen"), (1, "delete"), (1, "dup"), (1, "swap"),
                      (2, "insert"), (1, "tuple"), (1, "memo"), (1, "truncate")])
        if op == "int":
            cands = [s for s in spans if s[0] in INT_OPS]
            if cands:
                name, arg, a, b = r.choice(cands)
                near = [arg + 1, arg - 1, arg * 2, -arg, arg + 2**32] if isinstance(arg, int) else []
                new = r.choice(INTERESTING_INTS + near)
                data = data[:a] + _encode_int(new) + data[b:]
                continue
        if op == "str":
            cands = [s for s in spans if s[0] in STR_OPS]
            if cands:
                name, arg, a, b = r.choice(cands)
                data = data[:a] + _encode_str(r.choice(PICKLE_STRINGS), short=chance(r, 0.2)) + data[b:]
                continue
        if op == "global":
            cands = [s for s in spans if s[0] == "GLOBAL"]
            if cands:
                name, arg, a, b = r.choice(cands)
                mod, nm = r.choice(PICKLE_GLOBALS)
                data = data[:a] + b"c" + mod.encode() + b"\n" + nm.encode() + b"\n" + data[b:]
                continue
        if op == "strlen":
            cands = [s for s in spans if s[0] in ("BINUNICODE", "SHORT_BINUNICODE", "BINSTRING", "SHORT_BINBYTES", "BINBYTES")]
            if cands:
                name, arg, a, b = r.choice(cands)
                width = 1 if name.startswith("SHORT") else 4
                buf = bytearray(data)
                _put(buf, a + 1, width, boundary(r, width))
                data = bytes(buf)
                continue
        i = r.randint(0, len(spans) - 1)
        _, _, a, b = spans[i]
        if op == "delete":
            data = data[:a] + data[b:]
        elif op == "dup":
            data = data[:b] + data[a:b] + data[b:]
        elif op == "swap" and i + 1 < len(spans):
            _, _, c, d = spans[i + 1]
            data = data[:a] + data[c:d] + data[a:b] + data[d:]
        elif op == "tuple":
            cands = [s for s in spans if s[0] in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE")]
            if cands:
                _, _, a, b = r.choice(cands)
                data = data[:a] + r.choice([b"t", b"\x85", b"\x86", b"\x87", b")", b"l", b"d"]) + data[b:]
        elif op == "memo":
            cands = [s for s in spans if s[0] in ("BINGET", "BINPUT", "LONG_BINGET", "LONG_BINPUT")]
            if cands:
                name, arg, a, b = r.choice(cands)
                data = data[:a] + r.choice([b"h", b"q"]) + bytes([r.choice([0, 1, 2, 200, 255])]) + data[b:]
        elif op == "truncate":
            data = data[:a]
        else:  # insert
            data = data[:a] + r.choice(PICKLE_OPS) + data[a:]
    return data


def zip_fields(data: bytes) -> list[Field]:
    """The numeric fields of a zip's local headers, central directory and end record."""
    fields: list[Field] = []
    local = [(4, 2, "version"), (6, 2, "flags"), (8, 2, "method"), (14, 4, "crc"), (18, 4, "csize"), (22, 4, "usize"),
             (26, 2, "name_len"), (28, 2, "extra_len")]
    central = [(6, 2, "version"), (8, 2, "flags"), (10, 2, "method"), (16, 4, "crc"), (20, 4, "csize"), (24, 4, "usize"),
               (28, 2, "name_len"), (30, 2, "extra_len"), (32, 2, "comment_len"), (34, 2, "disk"), (42, 4, "offset")]
    eocd = [(4, 2, "disk"), (6, 2, "cd_disk"), (8, 2, "n_here"), (10, 2, "n_total"), (12, 4, "cd_size"), (16, 4, "cd_offset"),
            (20, 2, "comment_len")]
    for sig, layout, what in ((b"PK\x03\x04", local, "zip.local."), (b"PK\x01\x02", central, "zip.central."),
                              (b"PK\x05\x06", eocd, "zip.eocd."), (b"PK\x06\x06", [(24, 8, "n_here"), (32, 8, "n_total"),
                                                                                 (40, 8, "cd_size"), (48, 8, "cd_offset")], "zip.eocd64.")):
        start = 0
        while True:
            at = data.find(sig, start)
            if at < 0:
                break
            fields += [Field(at + off, size, what + name) for off, size, name in layout]
            start = at + 4
    return fields


def _rebuild_zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(out, "w", method) as z:
            for name, content in members:
                z.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), content, compress_type=method)
    return out.getvalue()


def _mutate_torch_zip(r, data: bytes, notes: list) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    method = zipfile.ZIP_STORED
    for _ in range(r.choice([1, 1, 2, 3])):
        op = pick(r, [(6, "pickle"), (2, "storage"), (1, "delete"), (1, "rename"), (1, "add"), (2, "meta-members"),
                      (0.5, "deflate"), (0.5, "prefix"), (0.5, "dup")])
        notes.append(op)
        names = [n for n, _ in members]
        if op == "pickle":
            i = next((k for k, n in enumerate(names) if n.endswith("data.pkl")), None)
            if i is not None:
                members[i] = (members[i][0], mutate_pickle(r, members[i][1]))
        elif op == "storage":
            idx = [k for k, n in enumerate(names) if "/data/" in n]
            if idx:
                k = r.choice(idx)
                c = members[k][1]
                members[k] = (members[k][0], r.choice([c[:-1], b"", c + b"\x00" * 8, c[: len(c) // 2], c * 2, c[:1]]))
        elif op == "delete" and members:
            members.pop(r.randint(0, len(members) - 1))
        elif op == "rename" and members:
            k = r.randint(0, len(members) - 1)
            prefix = members[k][0].split("/")[0]
            members[k] = (r.choice([f"{prefix}/data/99", f"{prefix}/data.pkl", f"{prefix}/data/0", "../evil", "/abs",
                                    f"{prefix}/version", "x/data.pkl", f"{prefix}/data/-1"]), members[k][1])
        elif op == "add":
            prefix = names[0].split("/")[0] if names else "archive"
            members.append((r.choice([f"{prefix}/data/7", f"{prefix}/extra", f"{prefix}/data.pkl", "other/data.pkl"]),
                            r.choice([b"", b"\x00" * 64, b"\x80\x02N."])))
        elif op == "meta-members":
            targets = [k for k, n in enumerate(names) if n.rsplit("/", 1)[-1] in ("version", "byteorder", ".format_version",
                                                                                   ".storage_alignment", "serialization_id")]
            if targets:
                k = r.choice(targets)
                members[k] = (members[k][0], r.choice([b"", b"0", b"1", b"3", b"999", b"-1", b"big", b"little\n", b"middle",
                                                       b"abc", b"99999999999999999999", b"64", b"0\n", b"\xff"]))
        elif op == "deflate":
            method = zipfile.ZIP_DEFLATED
        elif op == "prefix" and members:
            k = r.randint(0, len(members) - 1)
            members[k] = ("other/" + members[k][0].split("/", 1)[-1], members[k][1])
        elif op == "dup" and members:
            members.insert(r.randint(0, len(members)), r.choice(members))
    return _rebuild_zip(members, method)


def _legacy_parts(data: bytes) -> tuple[list[bytes], bytes] | None:
    """A legacy torch file as its 5 pickles (magic, protocol, sys_info, object, storage keys) and the
    storage records after them."""
    parts = []
    pos = 0
    for _ in range(5):
        spans = _spans(data[pos:])
        if not spans or spans[-1][0] != "STOP":
            return None
        end = pos + spans[-1][3]
        parts.append(data[pos:end])
        pos = end
    return parts, data[pos:]


def _mutate_torch_legacy(r, data: bytes, notes: list) -> bytes:
    split = _legacy_parts(data)
    if split is None:
        return mutate_bytes(r, data)
    parts, rest = split
    for _ in range(r.choice([1, 1, 2])):
        op = pick(r, [(6, "object"), (1, "magic"), (1, "protocol"), (1, "sysinfo"), (2, "keys"), (2, "size-field"),
                      (1, "storage-data")])
        notes.append(op)
        if op == "object":
            parts[3] = mutate_pickle(r, parts[3])
        elif op == "magic":
            parts[0] = r.choice([pickle.dumps(0x1950A86A20F9469CFC6C + 1, 2), pickle.dumps("x", 2),
                                 mutate_pickle(r, parts[0])])
        elif op == "protocol":
            parts[1] = r.choice([pickle.dumps(1001, 2), pickle.dumps(999, 2), pickle.dumps(-1, 2), pickle.dumps(None, 2)])
        elif op == "sysinfo":
            parts[2] = r.choice([pickle.dumps({"little_endian": False, "type_sizes": {"int": 4, "long": 4, "short": 2},
                                               "protocol_version": 1001}, 2),
                                 pickle.dumps({"little_endian": True, "type_sizes": {"int": 8, "long": 16, "short": 1},
                                               "protocol_version": 1001}, 2), pickle.dumps({}, 2), mutate_pickle(r, parts[2])])
        elif op == "keys":
            parts[4] = r.choice([pickle.dumps([], 2), pickle.dumps(["0", "0"], 2), pickle.dumps(["99"], 2),
                                 pickle.dumps([0], 2), mutate_pickle(r, parts[4])])
        elif op == "size-field" and len(rest) >= 8:
            buf = bytearray(rest)
            _put(buf, 0, 8, boundary(r, 8, int.from_bytes(rest[:8], "little")))
            rest = bytes(buf)
        elif op == "storage-data":
            rest = r.choice([rest[:-1], rest[:8], b"", rest + b"\x00" * 8, rest[: len(rest) // 2]])
    return b"".join(parts) + rest


def make_pickle_case(r) -> "Case":
    g = bulk(r)
    suffix = r.choice([".ckpt", ".pt", ".pt", ".pth", ".bin"])
    kind = pick(r, [(6, "zip"), (4, "legacy"), (1, "raw")])
    notes = [kind]
    if kind == "raw":
        obj = r.choice([{"a": 1}, [1, 2], {"state_dict": {"w": 1}}, None, "x", {"w": b"\x00" * 16}])
        data = pickle.dumps(obj, protocol=r.randint(0, 5))
        if chance(r, 0.7):
            data = mutate_pickle(r, data)
    else:
        obj = gen_torch_obj(g)
        data = torch_bytes(obj, kind == "zip")
        if chance(r, 0.85):
            data = _mutate_torch_zip(r, data, notes) if kind == "zip" else _mutate_torch_legacy(r, data, notes)
        if kind == "zip" and chance(r, 0.2):
            data = mutate_field(r, data, zip_fields(data), r.choice(["zip.", "zip.local.", "zip.central.", "zip.eocd."]))
            notes.append("zipfield")
    if chance(r, 0.25):
        data = mutate_bytes(r, data, zip_fields(data) if kind == "zip" else ())
        notes.append("bytes")
    name = "x" + suffix
    return Case("pickle", {name: data}, name, ("open", "detect", "load"), ",".join(notes))


# ------------------------------------------------------------------------------------------------
# tensor names of real checkpoints (../shared/manifests) and of the family specs
# ------------------------------------------------------------------------------------------------


@dataclass
class NameTables:
    manifests: dict  # manifest name -> [(prefix, key, shape, dtype, component)]
    conditions: list  # (family, naming, prefix, key, dim, size)
    prefixes: list  # every component prefix and diffusers folder seen
    junk: list


_TABLES: NameTables | None = None


def name_tables() -> NameTables:
    global _TABLES
    if _TABLES is not None:
        return _TABLES
    manifests: dict = {}
    prefixes = {"", "model.diffusion_model.", "unet/", "transformer/", "vae/", "text_encoder/", "model.", "module."}
    for path in sorted(MANIFESTS.glob("*.json")) if MANIFESTS.is_dir() else []:
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        rows = []
        for comp, info in (doc.get("components") or {}).items():
            if not isinstance(info, dict):
                continue
            prefix = info.get("prefix") or ""
            prefixes.add(prefix)
            for key, (shape, dtype) in (info.get("tensors") or {}).items():
                rows.append((prefix, key, tuple(shape), dtype, comp))
        for extra in doc.get("extras") or []:
            if isinstance(extra, dict) and "key" in extra:
                rows.append(("", extra["key"], tuple(extra.get("shape") or ()), extra.get("dtype") or "F32", "extra"))
        if rows:
            manifests[path.stem] = rows
    conditions = []
    junk = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "model_ema.decay", "model_ema.num_updates",
            "model_ema.diffusion_modelinput_blocks00weight", "logit_scale",
            "cond_stage_model.transformer.text_model.embeddings.position_ids"]
    try:
        from ckptkit.families import FAMILIES
        from ckptkit.families.components import SIGNATURES

        for spec in FAMILIES:
            dm = spec.diffusion_model
            orig_prefixes = list(dict.fromkeys((dm.prefix, *dm.alt_prefixes, "")))
            for comp in spec.components:
                prefixes.add(comp.prefix)
                prefixes.add(comp.diffusers_folder + "/")
            conds = [(c, "original") for c in spec.detect] + [(c, "diffusers") for c in spec.detect_diffusers]
            for v in spec.variants:
                conds += [(c, "original") for c in v.when] + [(c, "diffusers") for c in v.when_diffusers]
            for c, naming in conds:
                pfx = orig_prefixes if naming == "original" else [dm.diffusers_folder + "/", ""]
                for p in pfx:
                    conditions.append((spec.name, naming, p, c.key, getattr(c, "dim", None), getattr(c, "size", None)))
            junk += [j for j in spec.junk if all(ch.isalnum() or ch in "._" for ch in j)]
        for sig in SIGNATURES:
            for c in sig.when:
                conditions.append((sig.name, "component", "", c.key, getattr(c, "dim", None), getattr(c, "size", None)))
    except Exception:  # the tables are a convenience: fuzzing goes on with the manifests alone
        pass
    _TABLES = NameTables(manifests, conditions, sorted(prefixes), junk)
    return _TABLES


def _fit_shape(g: random.Random, shape: tuple, dtype: str, budget: int = 4096) -> list[int]:
    """A shape near `shape` whose bytes stay small: as is when small, else one dim set to 0, or
    1-D / scalar / random small."""
    shape = list(shape)
    nbytes = math.prod(shape) * ST_SIZES.get(dtype, 4)
    mode = g.randint(0, 9)
    if mode <= 5:
        if nbytes <= budget:
            return shape
        if shape:
            shape[g.randint(0, len(shape) - 1)] = 0
            return shape
        return shape
    if mode == 6:
        return [g.choice([0, 1, 4])]
    if mode == 7:
        return []
    if mode == 8 and shape:
        return shape[:-1] if g.random() < 0.5 else shape + [0]
    return rand_shape(g, 256)


def _cond_shape(g: random.Random, dim, size) -> list[int]:
    """A zero-byte (or tiny) shape satisfying Has(key, dim, size), sometimes just missing it."""
    if size is None:
        return g.choice([[0, 4], [4], [0], [], [2, 2]])
    if dim is None:
        shape = list(size) if isinstance(size, (tuple, list)) else [size]
        return shape if math.prod(shape) <= 1024 else [0] + shape[1:]
    rank = max(abs(dim) + (dim >= 0), 2)
    shape = [0] * rank
    shape[dim] = size if g.random() < 0.85 else size + g.choice([-1, 1])
    if g.random() < 0.1:
        return shape[:-1]
    return shape


POSITION_IDS_CASES = [("I64", [1, 77], "arange"), ("F32", [1, 77], "arange"), ("F16", [1, 77], "arange"), ("I64", [77], "arange"),
                      ("I64", [], "zeros"), ("I64", [1, 0], "zeros"), ("I64", [2, 77], "arange"), ("F16", [1, 77], "random"),
                      ("BOOL", [1, 77], "zeros"), ("U8", [1, 77], "random"), ("F8_E4M3", [1, 77], "random"),
                      ("I32", [1, 77], "random"), ("I64", [1, 77], "big"), ("F32", [1, 77], "nan"), ("F64", [77, 1], "arange"),
                      ("I64", [1, 1, 77], "arange"), ("BF16", [1, 300], "arange")]


def _position_ids_bytes(g: random.Random, dtype: str, shape: list[int], fill: str) -> bytes:
    n = math.prod(shape)
    if fill == "random":
        return g.randbytes(n * ST_SIZES[dtype])
    if fill == "zeros":
        return bytes(n * ST_SIZES[dtype])
    np_types = {"I64": np.int64, "I32": np.int32, "F32": np.float32, "F16": np.float16, "F64": np.float64}
    if fill == "big":
        return (np.arange(n, dtype=np.int64) + 2**62).tobytes()
    if fill == "nan":
        return np.full(n, np.nan, dtype=np.float32).tobytes()
    if dtype == "BF16":
        return (np.arange(n, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    return np.arange(n).astype(np_types.get(dtype, np.int64)).tobytes() if dtype in np_types else bytes(n * ST_SIZES[dtype])


def gen_detect_tensors(r, g: random.Random, max_bytes: int = 512 << 10) -> list[tuple[str, str, list[int], bytes | None]]:
    """Tensor names from real layouts (random subsets, prefix games) with odd shapes and dtypes."""
    t = name_tables()
    chosen: dict[str, tuple[str, list[int], bytes | None]] = {}
    mode = pick(r, [(4, "manifest"), (3, "conditions"), (2, "mixed")])
    if mode in ("manifest", "mixed") and t.manifests:
        rows = t.manifests[r.choice(sorted(t.manifests))]
        prefix_mode = pick(r, [(4, "keep"), (2, "strip"), (1, "swap"), (1, "one-component")])
        if prefix_mode == "one-component":
            comp = r.choice(sorted({row[4] for row in rows}))
            rows = [row for row in rows if row[4] == comp]
        k = min(len(rows), pick(r, [(3, 1), (3, 3), (3, 10), (3, 30), (2, 100), (0.5, 400), (0.25, 100000)]))
        swap_to = r.choice(t.prefixes)
        for prefix, key, shape, dtype, _ in g.sample(rows, k):
            p = prefix if prefix_mode in ("keep", "one-component") else "" if prefix_mode == "strip" else swap_to
            dt = dtype if g.random() < 0.7 and isinstance(dtype, str) and dtype in ST_SIZES else g.choice(ST_CODES)
            chosen[p + key] = (dt, _fit_shape(g, shape, dt), None)
    if mode in ("conditions", "mixed") and t.conditions:
        family = r.choice(sorted({c[0] for c in t.conditions}))
        conds = [c for c in t.conditions if c[0] == family]
        naming = r.choice(sorted({c[1] for c in conds}))
        conds = [c for c in conds if c[1] == naming]
        prefix = r.choice(sorted({c[2] for c in conds}))
        for fam, _, p, key, dim, size in conds:
            if p == prefix and g.random() < 0.85:
                dt = g.choice(["F16", "F16", "BF16", "F32"] + ST_CODES)
                chosen[p + key] = (dt, _cond_shape(g, dim, size), None)
    if chance(r, 0.4):
        clip_prefixes = [p for p in t.prefixes if "transformer." in p or "text_model" in p] or [""]
        p = r.choice(clip_prefixes + ["", "text_encoder/"])
        dt, shape, fill = r.choice(POSITION_IDS_CASES)
        chosen[p + "text_model.embeddings.position_ids"] = (dt, shape, _position_ids_bytes(g, dt, shape, fill))
    if chance(r, 0.25):
        for name in g.sample(t.junk, min(len(t.junk), r.randint(1, 4))):
            chosen[name] = (g.choice(ST_CODES), g.choice([[], [1000], [0], [2, 2]]), None)
    if chance(r, 0.1):
        for i in range(r.randint(1, 5)):
            chosen[r.choice(NASTY_STRINGS[:12]) + str(i)] = (r.choice(ST_CODES), [1], None)
    out, total = [], 0
    for name, (dt, shape, data) in chosen.items():
        n = math.prod(shape) * ST_SIZES[dt]
        if total + n > max_bytes:
            shape = [0] + list(shape[1:])
            n = 0
            data = None
        total += n
        out.append((name, dt, list(shape), data))
    g.shuffle(out)
    return out


def detect_safetensors_bytes(g: random.Random, tensors, random_data: bool) -> bytes:
    items, data = [], bytearray()
    for name, dt, shape, content in tensors:
        n = math.prod(shape) * ST_SIZES[dt]
        items.append([name, {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + n]}])
        data += content if content is not None and len(content) == n else (g.randbytes(n) if random_data else bytes(n))
    return plain_header(items, bytes(data), {"format": "pt"} if g.random() < 0.5 else None)


def make_detect_case(r) -> "Case":
    g = bulk(r)
    tensors = gen_detect_tensors(r, g)
    blob = detect_safetensors_bytes(g, tensors, chance(r, 0.3))
    return Case("detect", {"x.safetensors": blob}, "x.safetensors", ("open", "detect", "load", "inspect", "set"),
                f"{len(tensors)} tensors")


# ------------------------------------------------------------------------------------------------
# JSON side files: shard indexes, ckptkit.json component sets, diffusers folders
# ------------------------------------------------------------------------------------------------


@dataclass
class Special:
    """A non-regular entry in a case folder: "fifo", "dir", or "symlink" (to `target`)."""
    kind: str
    target: str = ""


def _small_weights(r, g: random.Random, names: list[str] | None = None, fmt: str = "safetensors") -> bytes:
    if names is None:
        tensors = [(n, dt, s) for n, dt, s, _ in gen_detect_tensors(r, g, 64 << 10)]
    else:
        tensors = [(n, g.choice(["F16", "F32", "BF16"]), [0, 4] if g.random() < 0.7 else [2, 2]) for n in names]
    if fmt == "gguf":
        gg = _gg_table()
        data, ts = bytearray(), []
        for n, dt, s in tensors[:20]:
            dims = list(reversed([d for d in s])) or [1]
            nb = math.prod(dims) * 2
            data += bytes(-len(data) % 32)
            ts.append([n, dims, gg["F16"][0], len(data)])
            data += bytes(nb)
        return gguf_serialize(GGUFModel([["general.architecture", STRING, "flux"]], ts, bytes(data)))[0]
    if fmt == "pickle":
        return torch_bytes({n: torch.zeros(s, dtype=torch.float16) for n, _, s in tensors[:20]}, True)
    return safetensors_bytes(tensors)


CONFIG_CLASSES = ["UNet2DConditionModel", "AutoencoderKL", "FluxTransformer2DModel", "SD3Transformer2DModel",
                  "SanaTransformer2DModel", "PixArtTransformer2DModel", "CLIPTextModel", "CLIPTextModelWithProjection",
                  "T5EncoderModel"]


def _config(r, cls: str | None = None) -> dict:
    cls = cls or r.choice(CONFIG_CLASSES)
    if cls.startswith(("CLIP", "T5")):
        return {"architectures": [cls], "model_type": "clip_text_model" if cls.startswith("CLIP") else "t5",
                "transformers_version": "4.46.3", "hidden_size": 768, "num_hidden_layers": 12}
    return {"_class_name": cls, "_diffusers_version": "0.30.0", "in_channels": 4, "sample_size": 128,
            "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048}


def _diffusers_names(r, g: random.Random, folder: str | None) -> list[str]:
    t = name_tables()
    conds = [c for c in t.conditions if c[1] == "diffusers" and (c[2] == "" or folder is None)]
    names = sorted({c[3] for c in conds})
    picked = g.sample(names, min(len(names), r.choice([0, 2, 6, 20])))
    return picked + [f"extra.{i}.weight" for i in range(g.randint(0, 3))]


def gen_json_case(r, g: random.Random) -> tuple[str, dict, dict, str, tuple]:
    """(sub-kind, docs: rel path -> JSON value, files: rel path -> bytes | Special, entry, steps)."""
    kind = pick(r, [(3, "index"), (3, "set"), (2, "component"), (2, "pipeline")])
    docs: dict = {}
    files: dict = {}
    if kind == "index":
        tensors = [(n, dt, s) for n, dt, s, _ in gen_detect_tensors(r, g, 64 << 10)][:60] or [("w", "F16", [0])]
        n_shards = min(len(tensors), r.choice([1, 1, 2, 3]))
        base = r.choice(["model", "diffusion_pytorch_model"])
        shard_names = [f"{base}-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
        weight_map = {}
        for i, shard in enumerate(shard_names):
            part = tensors[i::n_shards]
            files[shard] = safetensors_bytes(part)
            weight_map.update({n: shard for n, _, _ in part})
        total = sum(math.prod(s) * ST_SIZES[dt] for _, dt, s in tensors)
        docs[f"{base}.safetensors.index.json"] = {"metadata": {"total_size": total}, "weight_map": weight_map}
        entry = r.choice([".", f"{base}.safetensors.index.json"])
        steps = ("open", "detect", "load", "set")
    elif kind == "set":
        comps = g.sample(["diffusion_model", "vae", "clip_l", "clip_g", "t5xxl"], r.randint(1, 3))
        entries = {}
        for c in comps:
            fmt = pick(r, [(6, "safetensors"), (1, "gguf"), (1, "pickle")])
            fname = c + {"safetensors": ".safetensors", "gguf": ".gguf", "pickle": ".pt"}[fmt]
            files[fname] = _small_weights(r, g, None, fmt)
            entries[c] = {"role": "diffusion_model" if c == "diffusion_model" else "vae" if c == "vae" else "text_encoder",
                          "file": fname, "layout": r.choice(["ldm_unet", "ldm_vae", "hf_clip", "mmdit", "flux"]),
                          "naming": "original", "diffusers_class": "UNet2DConditionModel", "dtypes": {"F16": 10},
                          "tensor_count": 3, "param_count": 12, "bytes": len(files[fname]), "sha256": "0" * 64}
        docs["ckptkit.json"] = {"format": "ckptkit.component-set/1", "tool": "ckptkit 0.1.0", "kind": "split",
                                "source": {"path": "/src/model.safetensors",
                                           "files": {"/src/model.safetensors": {"size": 1, "sha256": "0" * 64}}},
                                "family": r.choice(["sdxl", "sd1", "flux", "sd3", None, "nope"]), "variant": None,
                                "layout": "comfy", "components": entries, "dropped": {}, "notes": []}
        entry = "."
        steps = ("manifest", "set")
    elif kind == "component":
        cfg = _config(r)
        docs["config.json"] = cfg
        wname = r.choice(["diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                          "diffusion_pytorch_model.bin"])
        names = _diffusers_names(r, g, None)
        files[wname] = _small_weights(r, g, names, "pickle" if wname.endswith(".bin") else "safetensors")
        entry = "."
        steps = ("open", "detect", "load", "set")
    else:
        pipe = r.choice(["StableDiffusionXLPipeline", "FluxPipeline", "StableDiffusion3Pipeline", "SanaPipeline", "PixArtSigmaPipeline"])
        index = {"_class_name": pipe, "_diffusers_version": "0.30.0"}
        for folder, lib, cls in [("unet", "diffusers", "UNet2DConditionModel"), ("transformer", "diffusers", "FluxTransformer2DModel"),
                                 ("vae", "diffusers", "AutoencoderKL"), ("text_encoder", "transformers", "CLIPTextModel"),
                                 ("text_encoder_2", "transformers", "T5EncoderModel"), ("scheduler", "diffusers", "EulerDiscreteScheduler"),
                                 ("tokenizer", "transformers", "CLIPTokenizer")]:
            if g.random() < 0.6:
                index[folder] = [lib, cls]
                if folder in ("scheduler", "tokenizer"):
                    side = "scheduler_config" if folder == "scheduler" else "tokenizer_config"
                    docs[f"{folder}/{side}.json"] = {"_class_name": cls}
                    continue
                docs[f"{folder}/config.json"] = _config(r, cls)
                wname = "model.safetensors" if lib == "transformers" else "diffusion_pytorch_model.safetensors"
                names = _diffusers_names(r, g, folder)
                files[f"{folder}/{wname}"] = _small_weights(r, g, names)
        if chance(r, 0.2):
            index["safety_checker"] = [None, None]
        docs["model_index.json"] = index
        entry = "."
        steps = ("open", "detect", "load", "set")
    return kind, docs, files, entry, steps


def make_json_case(r) -> "Case":
    g = bulk(r)
    kind, docs, files, entry, steps = gen_json_case(r, g)
    notes = [kind]
    raw: dict[str, bytes] = {}
    for _ in range(r.choice([0, 1, 1, 1, 2, 2, 3])):
        op = pick(r, [(8, "json"), (2, "json-text"), (1, "fs-delete"), (1, "fs-special"), (1, "fs-empty"), (1, "weights"),
                      (1, "fs-stray")])
        notes.append(op)
        if op == "json" and docs:
            k = r.choice(sorted(docs))
            docs[k] = mutate_json(r, docs[k])
        elif op == "json-text" and docs:
            k = r.choice(sorted(docs))
            raw[k] = mutate_json_text(r, raw.get(k) or dumps(docs[k]).encode("utf-8", "surrogatepass"))
        elif op in ("fs-delete", "fs-special", "fs-empty"):
            names = sorted(set(docs) | set(files))
            if not names:
                continue
            k = r.choice(names)
            docs.pop(k, None)
            raw.pop(k, None)
            if op == "fs-delete":
                files.pop(k, None)
            elif op == "fs-empty":
                files[k] = b""
            else:
                files[k] = r.choice([Special("fifo"), Special("dir"), Special("symlink", "/dev/zero"), Special("symlink", "nowhere"),
                                     Special("symlink", k.rsplit("/", 1)[-1]), Special("symlink", "/"), Special("symlink", "..")])
        elif op == "weights":
            ws = [k for k, v in files.items() if isinstance(v, bytes)]
            if ws:
                k = r.choice(ws)
                files[k] = mutate_bytes(r, files[k], [Field(0, 8, "header_length")] if k.endswith(".safetensors") else ())
        elif op == "fs-stray":
            files[r.choice(["other.safetensors.index.json", "x.safetensors", "unet/x.safetensors", "model_index.json",
                            "config.json", "ckptkit.json", "sub/config.json"])] = r.choice(
                [b"{}", b"", safetensors_bytes([("w", "F16", [0])])])
    for k, v in docs.items():
        files[k] = raw[k] if k in raw else dumps(v).encode("utf-8", "surrogatepass")
    for k, v in raw.items():
        files.setdefault(k, v)
    return Case("json", files, entry, steps, ",".join(notes))


# ------------------------------------------------------------------------------------------------
# cases and the harness
# ------------------------------------------------------------------------------------------------


@dataclass
class Case:
    fmt: str
    files: dict  # relative path -> bytes | Special
    entry: str  # what is opened, relative to the case folder ("." = the folder)
    steps: tuple  # entry points: open, detect, load, inspect, set, manifest
    note: str = ""

    def size(self) -> int:
        return sum(len(v) for v in self.files.values() if isinstance(v, bytes))

    def __repr__(self) -> str:  # Hypothesis prints failing examples: names and sizes, not megabytes
        files = {k: len(v) if isinstance(v, bytes) else v for k, v in self.files.items()}
        return f"Case({self.fmt!r}, files={files!r}, entry={self.entry!r}, steps={self.steps!r}, note={self.note!r})"

    def _repr_pretty_(self, p, cycle) -> None:  # Hypothesis' pretty printer would list the dataclass fields
        p.text(repr(self))


FORMATS = {"safetensors": make_safetensors_case, "gguf": make_gguf_case, "pickle": make_pickle_case,
           "json": make_json_case, "detect": make_detect_case}


def materialize(case: Case, root: Path) -> Path:
    """Write the case under `root` (which must not exist yet); returns the path to open."""
    root.mkdir(parents=True)
    for rel, content in sorted(case.files.items(), key=lambda kv: isinstance(kv[1], Special)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Special):
            if path.exists() or path.is_symlink():
                continue
            if content.kind == "fifo":
                os.mkfifo(path)
            elif content.kind == "dir":
                path.mkdir()
            else:
                os.symlink(content.target, path)
        else:
            if path.is_dir() and not path.is_symlink():
                continue
            path.write_bytes(content)
    return root / case.entry if case.entry != "." else root


class Hang(BaseException):
    """Raised by the alarm: BaseException so the readers' `except Exception` cannot turn it into a
    CkptError."""


class ContractViolation(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Outcome:
    status: str  # "ok" | "refused" | "error" | "hang"
    step: str = ""
    kind: str = ""  # exception type, or Hang / MultilineCkptError / MemoryLimit / InputModified / LoadShapeMismatch
    message: str = ""
    where: str = ""  # innermost frame
    origin: str = ""  # innermost frame in ckptkit
    tb: str = ""
    slow: bool = False  # timed out once, then finished on a rerun (a loaded machine, not a hang)

    @property
    def failed(self) -> bool:
        return self.status in ("error", "hang")

    def key(self, fmt: str) -> str:
        return f"{fmt}|{self.step}|{self.kind}|{self.origin}|{self.where}"

    def summary(self) -> str:
        return f"{self.kind} in {self.step}: {self.message[:300]!r} at {self.where} (ckptkit: {self.origin})"


def _frame(f) -> str:
    name = f.filename
    for marker in ("/site-packages/", "/ckptkit/", "/lib/python3"):
        if marker in name:
            name = name[name.index(marker) + 1:] if marker != "/ckptkit/" else "ckptkit/" + name.split("/ckptkit/", 1)[1]
            break
    return f"{name}:{f.lineno} {f.name}"


def _describe(step: str, kind: str, exc: BaseException, status: str = "error") -> Outcome:
    cause = exc.__cause__ or exc.__context__
    prefix = ""
    if kind == "MemoryLimit" and cause is not None:  # a CkptError raised `from None`: where did memory run out?
        prefix = f"{exc} <- "
        exc = cause
    frames = traceback.extract_tb(exc.__traceback__)
    frames = [f for f in frames if not f.filename.endswith("tests/fuzz/mutators.py")] or frames
    where = _frame(frames[-1]) if frames else ""
    origin = next((_frame(f) for f in reversed(frames) if "/ckptkit/" in f.filename), "")
    message = prefix + (str(exc) or type(exc).__name__)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-12:])
    return Outcome(status, step, kind, message[:2000], where, origin, tb[-6000:])


LOAD_CAP = 64 << 20
MEMORY_WORDS = ("can't allocate memory", "Cannot allocate memory", "MemoryError", "out of memory", "bad_alloc",
                "Unable to allocate")


def _step_open(path, ctx):
    from ckptkit.formats import open_checkpoint

    ctx["ckpt"] = open_checkpoint(path)


def _step_detect(path, ctx):
    from ckptkit.families.detect import detect

    detect(ctx["ckpt"])


def _step_load(path, ctx):
    ckpt = ctx["ckpt"]
    loaded = 0
    for name, info in list(ckpt.tensors.items()):
        numel = math.prod(info.shape)
        if info.nbytes > LOAD_CAP or numel * 4 > LOAD_CAP or loaded > LOAD_CAP:
            continue
        t = ckpt.load(name)
        loaded += info.nbytes
        if tuple(t.shape) != tuple(info.shape):
            raise ContractViolation("LoadShapeMismatch", f"{name!r}: load gave {tuple(t.shape)}, info says {info.shape}")
        if t.device.type == "cpu" and t.layout == torch.strided:
            t.detach().clone()  # touch every byte
        del t


def _step_inspect(path, ctx):
    from ckptkit.inspect import inspect_checkpoint

    inspect_checkpoint(path)


def _step_set(path, ctx):
    from ckptkit.verify.sets import open_set

    open_set(path).close()


def _step_manifest(path, ctx):
    from ckptkit.engine.manifest import read_manifest

    read_manifest(path if path.is_dir() else path.parent)


STEPS = {"open": _step_open, "detect": _step_detect, "load": _step_load, "inspect": _step_inspect, "set": _step_set,
         "manifest": _step_manifest}


def _run_steps(case: Case, path: Path) -> Outcome:
    from ckptkit.errors import CkptError

    ctx: dict = {}
    refused = None
    try:
        for step in case.steps:
            if step in ("detect", "load") and ctx.get("ckpt") is None:
                continue
            try:
                STEPS[step](path, ctx)
            except CkptError as exc:
                message = str(exc)
                if "\n" in message:
                    return _describe(step, "MultilineCkptError", exc)
                if any(w in message for w in MEMORY_WORDS):
                    # A clean one-line refusal, after an allocation the claimed sizes asked for was refused
                    # by the harness's data limit (torch's legacy-format loader allocates each storage at
                    # its claimed size before reading it; untouched, it never raises RSS). Counted apart
                    # ("allocation refused") so the bench reports it; not a contract violation.
                    refused = refused or Outcome("refused", step, "AllocationRefused", message[:500])
                    continue
                refused = refused or Outcome("refused", step, type(exc).__name__, message[:500])
            except ContractViolation as exc:
                return _describe(step, exc.kind, exc)
            except (Hang, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001 - every other exception breaks the contract
                return _describe(step, type(exc).__name__, exc)
    finally:
        ckpt = ctx.pop("ckpt", None)
        if ckpt is not None:
            try:
                ckpt.close()
            except (Hang, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001
                return _describe("close", type(exc).__name__, exc)
    return refused or Outcome("ok")


def _on_alarm(signum, frame):
    raise Hang("timed out")


def _vm_data() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _modified(case: Case, root: Path) -> str | None:
    for rel, content in case.files.items():
        if not isinstance(content, bytes):
            continue
        path = root / rel
        try:
            if path.is_symlink() or not path.is_file():
                continue  # shadowed by a special entry at materialization
            if path.read_bytes() != content:
                return rel
        except OSError:
            return rel
    return None


def run_case(case: Case, workdir: Path, timeout: float = 5.0, mem_limit: int = 1 << 30, confirm: bool = True) -> Outcome:
    """Write `case` to a fresh folder under `workdir`, run its entry points under a `timeout`-second
    alarm and a data-segment limit of current + `mem_limit` bytes, and check the input is unchanged.
    A timeout is rerun once (`confirm`): only a second timeout counts as a hang, so a busy machine
    does not report a 100-byte file as one."""
    outcome = _run_once(case, workdir, timeout, mem_limit)
    if outcome.status == "hang" and confirm:
        again = _run_once(case, workdir, timeout, mem_limit)
        if again.status != "hang":
            again.slow = True
            return again
    return outcome


def _run_once(case: Case, workdir: Path, timeout: float, mem_limit: int) -> Outcome:
    root = Path(workdir) / "case"
    if root.exists() or root.is_symlink():
        shutil.rmtree(root)
    path = materialize(case, root)
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    old_limit = resource.getrlimit(resource.RLIMIT_DATA)
    limited = False
    if mem_limit:
        want = _vm_data() + mem_limit
        if old_limit[1] == resource.RLIM_INFINITY or want <= old_limit[1]:
            resource.setrlimit(resource.RLIMIT_DATA, (want, old_limit[1]))
            limited = True
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            outcome = _run_steps(case, path)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except Hang as exc:
        outcome = _describe("?", "Hang", exc, status="hang")
        outcome.step = _hang_step(exc)
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if limited:
            resource.setrlimit(resource.RLIMIT_DATA, old_limit)
    if not outcome.failed:
        changed = _modified(case, root)
        if changed:
            outcome = Outcome("error", "?", "InputModified", f"{changed} changed while reading")
    return outcome


def _hang_step(exc: BaseException) -> str:
    for f in reversed(traceback.extract_tb(exc.__traceback__)):
        if f.name.startswith("_step_"):
            return f.name[len("_step_"):]
    return "?"


# A mutation stacked on an already-mangled field can trip the generator itself (b + 1 on a string
# offset): that is a generator limit, not a finding, so the case is drawn again from the same stream.
# No ckptkit code runs while a case is generated, so nothing of the target is masked.
GENERATOR_ERRORS = (TypeError, ValueError, IndexError, KeyError, OverflowError, AttributeError, ZeroDivisionError)


def build_case(fmt: str, r) -> Case:
    for _ in range(50):
        try:
            return FORMATS[fmt](r)
        except GENERATOR_ERRORS:
            continue
    return FORMATS[fmt](r)


def case_for(fmt: str, seed: int | str, index: int) -> Case:
    """The bench's case `index` of `fmt` under `seed` (deterministic: random.Random of a string)."""
    return build_case(fmt, random.Random(f"{seed}:{fmt}:{index}"))


def save_reproducer(case: Case, outcome: Outcome, folder: Path) -> Path:
    """Write the case's files under folder/files, its traceback, and a repro.py that rebuilds and
    reruns it."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        materialize(case, folder / "files")
    except OSError:
        pass
    (folder / "traceback.txt").write_text(f"{outcome.summary()}\nnote: {case.note}\n\n{outcome.tb}")
    payload = {rel: (base64.b64encode(zlib.compress(v, 9)).decode() if isinstance(v, bytes) else [v.kind, v.target])
               for rel, v in case.files.items()}
    (folder / "repro.py").write_text(
        "# Rebuild this fuzz case and run it through the harness (from the repository root):\n"
        f"#   python {folder / 'repro.py'}\n"
        "import base64, sys, tempfile, zlib\nfrom pathlib import Path\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.fuzz.mutators import Case, Special, run_case\n"
        f"PAYLOAD = {json.dumps(payload)}\n"
        "files = {k: zlib.decompress(base64.b64decode(v)) if isinstance(v, str) else Special(*v)\n"
        "         for k, v in PAYLOAD.items()}\n"
        f"case = Case({case.fmt!r}, files, {case.entry!r}, {case.steps!r}, {case.note!r})\n"
        "out = run_case(case, Path(tempfile.mkdtemp()))\nprint(out.summary())\nprint(out.tb)\n")
    return folder


def scratch_dir(tag: str) -> Path:
    """A private folder for case files, in /dev/shm when there is one."""
    base = Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else Path(
        os.environ.get("TMPDIR", "/tmp"))
    path = base / f"ckptkit-fuzz-{tag}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_stat_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
