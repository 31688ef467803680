"""The embedded default data set: seeded phantom images of three kinds written as real DICOM, with fake
patient data in their headers and ``labels.csv`` (``medti phantoms``).

Python API (imported lazily, so ``medti --help`` stays fast)::

    from medti.phantoms import generate_phantoms
    result = generate_phantoms("chest_xray", "data/raw/phantoms/chest_xray", subjects_per_class=40, seed=7)
    result.out, result.files, result.images, result.subjects

The kinds (``KINDS``) are ``chest_xray``, ``prostate_mri`` and ``histopathology``; ``DEFAULT_CLASSES`` and
``LABEL_KEYS`` give each one's classes and the key of its ``labels.csv``. ``chest_image``,
``prostate_volume`` and ``histo_patch`` draw the pixels alone.
"""

from medti.lazy import lazy_exports

__all__ = [
    "DEFAULT_CLASSES",
    "KINDS",
    "LABEL_KEYS",
    "PhantomResult",
    "chest_image",
    "generate_phantoms",
    "histo_patch",
    "prostate_volume",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["PhantomResult", "generate_phantoms"], "dataset"),
    **dict.fromkeys(["DEFAULT_CLASSES", "KINDS", "LABEL_KEYS"], "kinds"),
    **dict.fromkeys(["chest_image", "histo_patch", "prostate_volume"], "images"),
})
