"""The component-set manifest `ckptkit.json`: what a folder of component files holds and where
it came from (source hash, family, per-component file, layout, dtypes, counts and hashes)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from ckptkit import __version__
from ckptkit.engine.execute import WrittenFile
from ckptkit.engine.plan import Plan
from ckptkit.errors import CkptError
from ckptkit.formats.atomic import atomic_write
from ckptkit.formats.hashing import cached_sha256, source_sha256
from ckptkit.formats.safetensors import cached_fraction

MANIFEST = "ckptkit.json"


class SourceHasher:
    """sha256 of the source file(s) for the manifest, on a background thread while the executor
    works; a file hashed before and not changed since comes from the hash cache (formats/hashing.py).

    Reading the source a second time just to hash it would cost a second pass over the disk when
    the source does not fit in the page cache. So, given the checkpoint and the plan, the hasher
    trails the executor: it hashes a 16 MB piece of a safetensors source once the piece's pages are
    in the page cache (mincore) or the executor has released every planned tensor in it, and reads
    pieces that no planned tensor touches (dropped junk) straight away. What is left when the
    executor finishes (`join`) is read then. The digest is the plain sha256 of the file either way.
    """

    CHUNK = 16 << 20
    POLL = 0.05  # seconds between looks at the page cache while waiting for the executor

    def __init__(self, paths: list[Path], ckpt=None, plan: Plan | None = None):
        self.paths = [p for p in paths if p.is_file()]
        self.result: dict[str, dict] = {}
        self._error: CkptError | None = None
        self._cancelled = False
        self._finished = threading.Event()  # the executor is done: read whatever is left
        self._released = threading.Condition()
        self._trail: dict[str, tuple[list[tuple[int, int]], set[int]]] = {}  # path -> (planned spans, released begins)
        if ckpt is not None and plan is not None:
            self._follow(ckpt, plan)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _follow(self, ckpt, plan: Plan) -> None:
        from ckptkit.formats.safetensors import SafetensorsCheckpoint

        by_file: dict[int, tuple[SafetensorsCheckpoint, set[str]]] = {}
        for name in {n for out in plan.outputs for op in out.tensors for n in op.expr.sources()}:
            part, inner = ckpt.source_of(name) if hasattr(ckpt, "source_of") else (ckpt, name)
            if isinstance(part, SafetensorsCheckpoint):
                by_file.setdefault(id(part), (part, set()))[1].add(inner)
        for part, names in by_file.values():
            if cached_sha256(part.path) is not None:
                continue
            released: set[int] = set()
            self._trail[str(part.path)] = (sorted(part.raw_span(n) for n in names), released)

            def hook(begin, _end, released=released):
                with self._released:
                    released.add(begin)
                    self._released.notify_all()

            part.release_hooks.append(hook)

    @staticmethod
    def _released_all(begin: int, end: int, spans, released, first: int) -> bool:
        """Every planned tensor with bytes in [begin, end) was released by the executor."""
        for b, e in spans[first:]:
            if b >= end:
                return True
            if e > begin and b not in released:
                return False
        return True

    def _wait_until_ready(self, fd: int, begin: int, end: int, spans, released, first: int) -> None:
        while not self._finished.is_set():
            with self._released:
                if self._released_all(begin, end, spans, released, first):
                    return
            if cached_fraction(fd, begin, end) == 1.0:
                return
            with self._released:
                if not self._finished.is_set():
                    self._released.wait(self.POLL)

    def _hash_file(self, path: Path, spans, released) -> str | None:
        """sha256 of the file, piece by piece as the pieces become ready; None when cancelled."""
        h = hashlib.sha256()
        buf = memoryview(bytearray(self.CHUNK))
        first = 0  # index of the first planned span that ends after `offset`
        with open(path, "rb", buffering=0) as fh:
            size, fd, offset = os.fstat(fh.fileno()).st_size, fh.fileno(), 0
            while offset < size:
                end = min(offset + self.CHUNK, size)
                while first < len(spans) and spans[first][1] <= offset:
                    first += 1
                self._wait_until_ready(fd, offset, end, spans, released, first)
                if self._cancelled:
                    return None
                n = os.preadv(fd, [buf[:end - offset]], offset)
                if n != end - offset:
                    raise OSError(f"{path}: the file shrank while it was read")
                h.update(buf[:n])
                offset = end
        return h.hexdigest()

    def _run(self):
        try:
            self._hash_all()
        except OSError as exc:
            self._error = CkptError(f"cannot hash the source: {exc}")

    def _hash_all(self):
        for path in self.paths:
            trail = self._trail.get(str(path), ([], set()))
            digest = source_sha256(path, lambda p: self._hash_file(p, *trail))
            if digest is None:  # cancelled
                return
            self.result[str(path)] = {"size": path.stat().st_size, "sha256": digest}

    def join(self) -> dict[str, dict]:
        """The hashes, once the executor is done (whatever it left unread is read now)."""
        self._stop_waiting()
        if self._error is not None:
            raise self._error
        return self.result

    def cancel(self) -> None:
        """Stop hashing (the run failed): the thread ends at its next piece."""
        self._cancelled = True
        self._stop_waiting()

    def _stop_waiting(self) -> None:
        self._finished.set()
        with self._released:
            self._released.notify_all()
        self._thread.join()

    def __enter__(self) -> "SourceHasher":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.cancel()


def build_manifest(plan: Plan, written: list[WrittenFile], sources: dict[str, dict], extra: dict | None = None) -> dict:
    components = {}
    for w in written:
        info = plan.info.get("components", {}).get(w.component, {})
        components[w.component or w.path] = {
            "role": info.get("role"), "file": w.path, "layout": w.layout, "naming": info.get("naming"),
            "diffusers_class": info.get("diffusers_class"), "dtypes": w.dtypes, "tensor_count": w.tensors,
            "param_count": w.params, "bytes": w.bytes, "sha256": w.sha256,
            **({"policy": info["policy"]} if "policy" in info else {}),
            **({"client": info["client"]} if "client" in info else {}),
        }
    dropped: dict[str, list[str]] = {}
    for name, reason in plan.dropped.items():
        dropped.setdefault(reason, []).append(name)
    return {
        "format": "ckptkit.component-set/1",
        "tool": f"ckptkit {__version__}",
        "kind": plan.kind,
        "source": {"path": plan.source, "files": sources},
        "family": plan.info.get("family"),
        "variant": plan.info.get("variant"),
        "layout": plan.info.get("layout"),
        "components": components,
        "dropped": {reason: {"count": len(names), "names": names[:50]} for reason, names in dropped.items()},
        "notes": plan.notes,
        **(extra or {}),
    }


def write_manifest(folder: Path, manifest: dict) -> Path:
    path = folder / MANIFEST
    with atomic_write(path) as fh:
        fh.write((json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return path


def _manifest_schema():
    from ckptkit.formats.schema import AnyValue, Int, List, Map, Null, Num, Obj, OneOf, Str

    text = OneOf((Str(), Null()))
    component = Obj({"file": Str(), "sha256": text, "role": text, "layout": text, "naming": text,
                     "diffusers_class": text, "dtypes": Map(Int(0)), "tensor_count": Int(0), "param_count": Int(0),
                     "bytes": Int(0), "policy": Map(AnyValue()), "client": Str()}, required=("file",))
    return Obj({"format": Str(), "tool": Str(), "kind": text, "family": text, "variant": text, "layout": text,
                "components": Map(component),
                "source": Obj({"path": text, "files": Map(Obj({"size": Int(0), "sha256": Str()}))}),
                "dropped": Map(Obj({"count": Int(0), "names": List(Str())})), "notes": List(Str()),
                "trigflow": Obj({"time_scale": Num(), "sigma_data": Num()})},
               required=("components",))


def read_manifest(folder: Path, path: Path | None = None, check_files: bool = True) -> dict | None:
    """The folder's ckptkit.json (or the manifest at `path`, for `verify --expect-manifest FILE`),
    checked field by field (None when there is none). With `check_files`, every component's `file`
    must be a relative name inside the folder (`component_file` resolves it); verify checks them
    one by one instead, to report each."""
    from ckptkit.formats.files import inside, read_json_file

    path = Path(path) if path is not None else Path(folder) / MANIFEST
    if not os.path.lexists(path):
        return None
    data = read_json_file(path, _manifest_schema(), "manifest")
    if check_files:
        for name, info in data["components"].items():
            inside(folder, info["file"], str(path), f"component {name!r}: file")
    return data


def component_file(folder: Path, manifest: dict, name: str) -> Path:
    """Where a manifest's component lives (its `file`, already checked to stay inside `folder`)."""
    return Path(folder) / manifest["components"][name]["file"]
