"""The family registry: one declarative spec per model family, in detection order."""

from ckptkit.families import chroma, flux, flux2, pixart, qwen_image, sana, sd1, sd2, sd3, sdxl, sdxl_refiner
from ckptkit.families import auraflow, hidream, hunyuan_video, lumina2, wan, z_image
from ckptkit.families import ltx2, ltxv
from ckptkit.families.spec import ComponentSpec, FamilySpec

# Order matters only where two specs could both match; the markers are exclusive today, except that
# FLUX.1's (a double block's QK norm) also hold for Chroma and FLUX.2 (diffusers names: for Chroma),
# so those two come before it.
FAMILIES: tuple[FamilySpec, ...] = (
    sdxl.SPEC, sdxl_refiner.SPEC, sd1.SPEC, sd2.SPEC, sd3.SPEC, chroma.SPEC, flux2.SPEC, flux.SPEC, sana.SPEC,
    pixart.SPEC, qwen_image.SPEC, z_image.SPEC, lumina2.SPEC, hidream.SPEC, auraflow.SPEC, wan.SPEC, hunyuan_video.SPEC,
    ltx2.SPEC, ltxv.SPEC,  # LTX-2 holds every LTX-Video marker: before it
)
BY_NAME = {f.name: f for f in FAMILIES}


def get_family(name: str) -> FamilySpec:
    if isinstance(name, str) and name in BY_NAME:
        return BY_NAME[name]
    from ckptkit.errors import CkptError
    from ckptkit.formats.files import printable

    raise CkptError(f"unknown family {printable(repr(name))}; known: {', '.join(BY_NAME)}")


__all__ = ["FAMILIES", "BY_NAME", "ComponentSpec", "FamilySpec", "get_family"]
