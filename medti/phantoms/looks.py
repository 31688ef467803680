"""What a phantom image shows, in the generator's own visual terms, never in its class's.

The toy base model (:mod:`medti.models.toy`) is pre-trained on phantom images captioned from these looks, so
it knows what "a bright round spot in the left upper field" of a radiograph looks like without ever having
seen a class name, a label or any word of the classes' ``init`` phrases (``normal``, ``opacity``, ``cancer``,
``nuclei``...). Textual Inversion then has to find the class in the model's visual vocabulary, as it finds
"csPCa" in Stable Diffusion's. A look is a short key (``spot_left_upper``); :func:`caption` turns it into
one of a few phrasings.
"""

from __future__ import annotations

# Words no caption may use: the default classes' names and init phrases (checked by a test).
FORBIDDEN_WORDS = frozenset(
    "normal chest x ray xray focal opacity opacities prostate mri cancer cspca no_cspca benign tissue crowded "
    "atypical nuclei nucleus".split()
)


def chest_look(opacity: dict | None) -> str:
    """``clear`` or ``spot_<left|right>_<upper|lower>`` (image left and right; upper: above mid-lung)."""
    if opacity is None:
        return "clear"
    return f"spot_{'left' if opacity['x'] < 0 else 'right'}_{'upper' if opacity['y'] < -0.05 else 'lower'}"


def prostate_look(anatomy: dict) -> str:
    """``plain`` or ``spot_<left|right>``, with ``_nodule`` where the central nodule is present."""
    key = "plain"
    if anatomy.get("lesion") is not None:
        key = f"spot_{'left' if anatomy['lesion'][0] < anatomy['prostate'][0] else 'right'}"
    return key + ("_nodule" if anatomy.get("nodule") is not None else "")


def histo_look(look: dict) -> str:
    """``rings_<1|2>`` (glands) or ``dense`` / ``dense_hole`` (packed dark dots, a small lumen left or not)."""
    if "glands" in look:
        return f"rings_{look['glands']}"
    return "dense_hole" if look.get("lumen") else "dense"


_MODALITY = {
    "chest_xray": ["a grey radiograph", "radiograph, grey", "a grey frontal radiograph"],
    "prostate_mri": ["an axial colour scan", "axial scan in colour", "a colour axial slice"],
    "histopathology": ["a pink stained slide", "stained slide, pink", "a pink and purple stained slide"],
}


def _parts(modality: str, look: str) -> list[str]:
    bits = look.split("_")
    if modality == "chest_xray":
        if bits[0] == "clear":
            return ["both dark fields clear"]
        return [f"a bright round spot in the {bits[1]} {bits[2]} field"]
    if modality == "prostate_mri":
        parts = []
        if bits[0] == "spot":
            parts.append(f"a bright blue spot at the lower {bits[1]} rim")
        if bits[-1] == "nodule":
            parts.append("a round grey disc in the middle")
        return parts or ["a smooth grey oval in the middle"]
    if modality == "histopathology":
        if bits[0] == "rings":
            return [f"{'one white ring' if bits[1] == '1' else 'two white rings'} lined by small purple dots",
                    "few small dots"]
        parts = ["large dark purple dots packed close"]
        if bits[-1] == "hole":
            parts.append("one small white hole")
        return parts
    raise KeyError(modality)


def caption(modality: str, look: str, variant: int = 0) -> str:
    """One phrasing (``variant`` picks which) of what an image of ``modality`` with ``look`` shows."""
    heads = _MODALITY[modality]
    head = heads[variant % len(heads)]
    parts = _parts(modality, look)
    if variant % 2:
        parts = parts[::-1]
    return ", ".join([head, *parts]) if variant % 3 else f"{head} with {' and '.join(parts)}"


def looks(modality: str) -> list[str]:
    """Every look a phantom of ``modality`` can have."""
    if modality == "chest_xray":
        return ["clear"] + [f"spot_{s}_{v}" for s in ("left", "right") for v in ("upper", "lower")]
    if modality == "prostate_mri":
        return [k + n for k in ("plain", "spot_left", "spot_right") for n in ("", "_nodule")]
    if modality == "histopathology":
        return ["rings_1", "rings_2", "dense", "dense_hole"]
    raise KeyError(modality)
