"""The 1-step check's memory plan, decided from tensor shapes before any work (a second, even for a
12B model), so that a machine too small is told at once, with the numbers, instead of after
minutes of hashing.

The check runs one model at a time (reference, then candidate, per component; outputs kept, model
freed). A component whose weights in the compute dtype exceed STREAM_ABOVE is layer-streamed
(streamed.py): only the running module's weights are resident. The planned peak is

    base (this process now) + max(resident model, the numeric check's largest tensor pair)

and it must fit in what is available (MemAvailable, the cgroup's limit, or --memory-limit) less
RESERVE, the stated headroom for activations, the tensor being read and cast, and the runtime.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from ckptkit.units import human_bytes

STREAM_ABOVE = 10 ** 9  # bytes in the compute dtype: larger components are layer-streamed
RESERVE = 10 ** 9  # bytes kept free: activations, the source tensor in flight and its cast, the runtime
NUMERIC_COPIES = 3  # the numeric check holds a tensor pair in float64 plus their difference


@dataclass
class ModelMemory:
    side: str  # "reference" | "candidate"
    component: str
    numel: int
    bytes: int  # whole, in the compute dtype
    largest: int  # bytes of its largest tensor in float32 (what one layer-step holds)
    streamed: bool
    resident: int  # bytes held while it runs

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class MemoryPlan:
    device: str
    dtype: str
    base: int  # this process's resident memory when planned
    available: int | None  # more memory this process may take (None: the system does not say)
    source: str  # where `available` comes from
    reserve: int
    numeric: int  # the numeric check's peak above base
    models: list[ModelMemory] = field(default_factory=list)
    stream_above: int = STREAM_ABOVE

    @property
    def peak(self) -> int:
        model = max((m.resident for m in self.models), default=0)
        return self.base + max(model, self.numeric)

    @property
    def fits(self) -> bool:
        return self.available is None or self.peak - self.base + self.reserve <= self.available

    def streamed(self, side: str, component: str) -> bool:
        return any(m.streamed for m in self.models if m.side == side and m.component == component)

    def largest(self) -> ModelMemory | None:
        return max(self.models, key=lambda m: m.resident, default=None)

    def line(self) -> str:
        """The plan in one line (the report row's detail)."""
        big = self.largest()
        what = "no model to run" if big is None else (
            f"largest model {big.side} {big.component} {human_bytes(big.bytes)} as {self.dtype}, "
            + (f"layer-streamed ({human_bytes(big.resident)} resident)" if big.streamed else "loaded whole"))
        avail = "unknown" if self.available is None else human_bytes(self.base + self.available)
        return (f"one model at a time on {self.device}: {what}; planned peak {human_bytes(self.peak)} "
                f"(process now {human_bytes(self.base)}) of {avail} ({self.source}), keeping "
                f"{human_bytes(self.reserve)} free for activations and reads")

    def refusal(self) -> str:
        big = self.largest()
        hint = "use --dtype bf16, --device cuda, a larger --memory-limit, or --no-onestep"
        return (f"1-step check: planned peak {human_bytes(self.peak)} ({big.side} {big.component} "
                f"{human_bytes(big.resident)} resident, process now {human_bytes(self.base)}) plus "
                f"{human_bytes(self.reserve)} kept free exceeds the {human_bytes(self.base + (self.available or 0))} "
                f"available ({self.source}); {hint}") if big else \
            f"1-step check: {human_bytes(self.base)} in use, nothing left under {self.source}; {hint}"

    def to_json(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "base": self.base, "available": self.available,
                "source": self.source, "reserve": self.reserve, "numeric": self.numeric, "peak": self.peak,
                "fits": self.fits, "stream_above": self.stream_above, "models": [m.to_json() for m in self.models]}


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_LIBC = None


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_ABOVE = 1 << 20  # allocations from 1 MiB up get their own mapping, returned to the system on free


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
            _LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):  # not glibc: nothing to do
            _LIBC = False
    return _LIBC


def trim() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim). A model's tensors of a few
    MB each are allocated from malloc's arenas once its mmap threshold has grown past them, and
    freeing them leaves the pages mapped: without this, each model run one after the other adds
    its size to the resident peak."""
    if _libc():
        _LIBC.malloc_trim(0)


def bounded_heap() -> None:
    """Fix glibc's mmap threshold at MMAP_ABOVE for the rest of the process. By default it grows to
    the largest block freed (up to 32 MB), after which a layer-streamed model's weights (allocated
    and freed layer by layer) come from malloc's arenas and fragment them: the resident memory then
    creeps towards the model's size. Tensors of a MiB and more each get a mapping of their own
    instead, unmapped when freed."""
    if _libc():
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE)


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit (containers, CI runners), or None."""
    try:
        with open("/proc/self/cgroup") as fh:
            rel = next((ln.split(":", 2)[2].strip() for ln in fh if ln.startswith("0::")), None)
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as fh:
            limit = fh.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as fh:
            return max(0, int(limit) - int(fh.read().strip()))
    except (OSError, ValueError):
        return None


def available(device: torch.device, limit: int | None = None, base: int = 0) -> tuple[int | None, str]:
    """(bytes this process may still take, where that figure comes from)."""
    if limit is not None:
        return max(0, limit - base), f"--memory-limit {human_bytes(limit)}"
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]), "free GPU memory"
    room, source = None, "unknown"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    room, source = int(line.split()[1]) * 1024, "MemAvailable"
    except OSError:
        pass
    cg = _cgroup_room()
    if cg is not None and (room is None or cg < room):
        room, source = cg, "cgroup memory.max"
    return room, source


def _bytes_per(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4


def plan_memory(ref, cand, device: torch.device, dtype: torch.dtype, limit: int | None = None,
                stream_above: int | None = None) -> MemoryPlan:
    """The plan for running `ref` and `cand` (onestep.ModelSet) one model at a time."""
    from ckptkit.convert.components import local_shapes

    stream_above = STREAM_ABOVE if stream_above is None else stream_above
    base = rss_bytes() if device.type == "cpu" else 0  # on a GPU the models take device memory
    room, source = available(device, limit, base)
    size = _bytes_per(dtype)
    models, largest_any = [], 0
    for side, mset in (("reference", ref), ("candidate", cand)):
        for name, src in mset.sources.items():
            shapes = local_shapes(src.ckpt, src.prefix, set(src.exclude))
            numels = [math.prod(s) for s in shapes.values()]
            numel, top = sum(numels), max(numels, default=0)
            largest_any = max(largest_any, top)
            whole = numel * size
            streamed = whole > stream_above
            # while a tensor loads it exists up to three times: the source (or dequantized float32), its
            # cast, and the model's copy (streamed: the running layer's only; whole: the model's all)
            resident = top * (4 + 2 * size) if streamed else whole + top * (4 + size)
            models.append(ModelMemory(side, name, numel, whole, top * 4, streamed, resident))
    numeric = largest_any * 8 * NUMERIC_COPIES if cand is not None else 0
    dev = "cuda" if device.type == "cuda" else "cpu"
    return MemoryPlan(dev, str(dtype).removeprefix("torch."), base, room, source, RESERVE, numeric, models,
                      stream_above)
