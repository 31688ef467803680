"""The pixels of the three phantom kinds, drawn from seeded random anatomy.

* :func:`chest_image`: a frontal chest radiograph as attenuation in [0, 1], with an optional focal opacity
  in a lung (:func:`chest_anatomy` and :func:`random_opacity` draw the anatomy and the opacity);
* :func:`prostate_volume`: one sequence (T2W, ADC or high-b DWI) of an axial prostate MRI, with an optional
  peripheral-zone lesion (:func:`prostate_anatomy` draws the anatomy);
* :func:`histo_patch`: an H&E patch, benign glands or crowded atypical nuclei.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def _smooth(img, sigma):
    return gaussian_filter(img, sigma)


# -- chest radiographs ----------------------------------------------------------------------------------------
def chest_image(rng, anatomy: dict, opacity: dict | None, size: int):
    """A frontal chest radiograph as attenuation in [0, 1] (dense = bright): body, lungs, heart,
    mediastinum, spine, ribs, clavicles; ``opacity`` adds a focal density inside a lung."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j].astype(np.float32)
    x = x - anatomy["shift"]
    img = np.full((size, size), 0.04, np.float32)
    body = (x / anatomy["body_w"]) ** 2 + ((y - 0.1) / 1.15) ** 2 < 1
    img[body] = 0.5
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        cx, rx, ry = side * 0.36, anatomy["lung_w"] * (0.92 if side > 0 else 1.0), anatomy["lung_h"]
        ell = ((x - cx) / rx) ** 2 + ((y + 0.02) / ry) ** 2 < 1
        dome = y < 0.02 + ry * 0.72 - 0.22 * ((x - cx) / rx) ** 2
        lungs |= ell & dome
    img[lungs] = 0.16
    img[(np.abs(x) < 0.09 + 0.04 * (y > 0)) & (y > -0.95) & body] = 0.68
    heart = ((x - 0.13) / anatomy["heart_r"]) ** 2 + ((y - 0.3) / (anatomy["heart_r"] * 0.78)) ** 2 < 1
    img[heart & body] = 0.64
    img += 0.08 * ((np.abs(x) < 0.045) & body)
    ribs = np.zeros_like(img)
    for k in range(10):
        yk = -0.62 + k * 0.12
        ribs += np.exp(-(((y - (yk + 0.28 * np.abs(x) ** 1.6)) / 0.018) ** 2)) * (np.abs(x) > 0.06)
    img += 0.09 * np.clip(ribs, 0, 1) * body
    clav = np.exp(-(((y - (-0.66 + 0.14 * np.abs(x))) / 0.02) ** 2)) * ((np.abs(x) > 0.08) & (np.abs(x) < 0.62))
    img += 0.14 * clav * body
    if opacity is not None:
        r2 = (x - opacity["x"]) ** 2 + (y - opacity["y"]) ** 2
        blob = opacity["amp"] * np.exp(-r2 / (2 * opacity["sigma"] ** 2))
        img += blob * np.clip(_smooth(lungs.astype(np.float32), size / 40), 0, 1)
    img = _smooth(img, size / 110)
    img *= 1.0 + 0.06 * y
    img += rng.normal(0, 0.012, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def chest_anatomy(rng) -> dict:
    return {"shift": rng.uniform(-0.04, 0.04), "body_w": rng.uniform(0.86, 0.97), "lung_w": rng.uniform(0.22, 0.27),
            "lung_h": rng.uniform(0.5, 0.6), "heart_r": rng.uniform(0.22, 0.3)}


def random_opacity(rng, anatomy: dict) -> dict:
    side = -1 if rng.random() < 0.5 else 1
    return {"x": side * 0.36 + rng.uniform(-0.1, 0.1), "y": rng.uniform(-0.35, 0.25),
            "sigma": rng.uniform(0.07, 0.12), "amp": rng.uniform(0.28, 0.42)}


# -- prostate MRI -----------------------------------------------------------------------------------------------
# Tissue signal per sequence: T2-weighted (relative), ADC (10^-6 mm^2/s), high-b (b=1400) DWI (relative).
_TISSUE = {           # T2W   ADC   HBV
    "background":    (0.00, 0, 0.00),
    "fat":           (0.85, 250, 0.03),
    "muscle":        (0.25, 1400, 0.12),
    "marrow":        (0.60, 400, 0.05),
    "cortex":        (0.05, 150, 0.01),
    "pz":            (0.72, 1750, 0.20),
    "tz":            (0.42, 1250, 0.24),
    "rectum_wall":   (0.30, 1150, 0.22),
    "rectum_lumen":  (0.05, 200, 0.00),
    "bladder":       (0.95, 2900, 0.04),
    "nodule":        (0.30, 1050, 0.30),
    "lesion":        (0.22, 720, 0.85),
}


def prostate_volume(rng, anatomy: dict, grid: dict, sequence: int):
    """One sequence (0 T2W, 1 ADC, 2 HBV) sampled on ``grid`` (shape z, y, x; spacing and origin in mm)."""
    nz, ny, nx = grid["shape"]
    sx, sy = grid["spacing"]
    xs = grid["origin"][0] + sx * np.arange(nx)
    ys = grid["origin"][1] + sy * np.arange(ny)
    Z, Y, X = np.meshgrid(np.asarray(grid["z"], np.float32), ys.astype(np.float32), xs.astype(np.float32),
                          indexing="ij")
    value = {name: v[sequence] for name, v in _TISSUE.items()}
    out = np.full(X.shape, value["background"], np.float32)

    def put(mask, name, weight=None):
        if weight is None:
            out[mask] = value[name]
        else:
            out[:] = out * (1 - weight) + value[name] * weight

    e = (X / anatomy["body_a"]) ** 2 + (Y / anatomy["body_b"]) ** 2
    put(e < 1, "fat")
    put(e < (1 - 14 / anatomy["body_b"]) ** 2, "muscle")
    for side in (-1, 1):
        d = np.hypot(X - side * 62, Y - 4)
        put(d < 16, "cortex")
        put(d < 12, "marrow")
    cx, cy, rx, ry, rz = anatomy["prostate"]
    p = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 + (Z / rz) ** 2
    bladder = np.hypot(np.hypot(X, Y + 30), Z - 24) < 22
    put(bladder, "bladder")
    put(p < 1, "pz")
    tz = ((X - cx) / (rx * 0.62)) ** 2 + ((Y - cy + ry * 0.25) / (ry * 0.6)) ** 2 + (Z / (rz * 0.8)) ** 2 < 1
    put(tz & (p < 1), "tz")
    rect = np.hypot(X - cx, Y - (cy + ry + 11))
    put(rect < 10, "rectum_wall")
    put(rect < 5.5, "rectum_lumen")
    for kind in ("nodule", "lesion"):
        spot = anatomy.get(kind)
        if spot is not None:
            lx, ly, lz, r = spot
            d2 = ((X - lx) ** 2 + (Y - ly) ** 2 + ((Z - lz) / 1.3) ** 2) / r**2
            put(None, kind, weight=np.exp(-d2**2) * (p < 1.1))
    sigma = (0.6, 0.7, 0.7)
    out = _smooth(out, sigma)
    if sequence == 0:  # the coil's sensitivity falls off away from the rectum
        out *= 0.75 + 0.45 * np.exp(-np.hypot(X - cx, Y - (cy + ry + 11)) / 45)
    noise = (0.025, 45.0, 0.03)[sequence]
    out = np.abs(out + rng.normal(0, noise, out.shape).astype(np.float32))
    return out


def prostate_anatomy(rng, cancer: bool) -> dict:
    rx, ry, rz = rng.uniform(18, 25), rng.uniform(14, 18), rng.uniform(14, 18)
    cx, cy = rng.uniform(-3, 3), rng.uniform(0, 8)
    anatomy = {"body_a": rng.uniform(88, 100), "body_b": rng.uniform(64, 74), "prostate": (cx, cy, rx, ry, rz)}
    if cancer:  # a lesion in the peripheral zone (posterior), near the mid-gland
        side = -1 if rng.random() < 0.5 else 1
        anatomy["lesion"] = (cx + side * rng.uniform(5, 12), cy + ry * rng.uniform(0.45, 0.65),
                             rng.uniform(-2.5, 2.5), rng.uniform(5.5, 8.0))
    if rng.random() < 0.5:  # benign hyperplasia nodule in the transition zone, in either class
        anatomy["nodule"] = (cx + rng.uniform(-6, 6), cy - ry * 0.3, rng.uniform(-4, 4), rng.uniform(4, 6))
    return anatomy


# -- histopathology -------------------------------------------------------------------------------------------
_HEMATOXYLIN = (0.65, 0.70, 0.29)   # optical density per RGB channel (Ruifrok & Johnston)
_EOSIN = (0.07, 0.99, 0.11)


def _nucleus(h, rng, cy, cx, ry, rx, angle, density, jagged):
    size = h.shape[0]
    r = int(np.ceil(max(ry, rx))) + 2
    y0, y1, x0, x1 = max(0, int(cy) - r), min(size, int(cy) + r + 1), max(0, int(cx) - r), min(size, int(cx) + r + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    theta = np.arctan2(v, u)
    wobble = 1 + jagged * (np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.5 * np.sin(5 * theta + rng.uniform(0, 6.3)))
    d = np.sqrt((u / rx) ** 2 + (v / ry) ** 2) / wobble
    body = np.clip((1.15 - d) / 0.3, 0, 1)
    texture = 1 + 0.25 * rng.standard_normal(body.shape).astype(np.float32)  # chromatin
    h[y0:y1, x0:x1] = np.maximum(h[y0:y1, x0:x1], density * body * texture)


def histo_patch(rng, atypical: bool, stain: tuple[float, float], size: int = 96, look: dict | None = None):
    """An H&E patch (uint8 RGB) by Beer-Lambert from hematoxylin and eosin densities; ``look`` (a dict, if
    given) receives what the patch shows: its number of glands, or whether a small lumen is left."""
    look = {} if look is None else look
    noise = _smooth(rng.standard_normal((size, size)).astype(np.float32), (0.8, 3.0))
    e = 0.42 + 0.35 * noise
    h = np.full((size, size), 0.04, np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if not atypical:  # glands: a lumen lined by a ring of small, regular, evenly spaced nuclei
        look["glands"] = int(rng.integers(1, 3))
        for _ in range(look["glands"]):
            gy, gx, gr = rng.uniform(15, size - 15), rng.uniform(15, size - 15), rng.uniform(9, 15)
            dist = np.hypot(yy - gy, xx - gx)
            e = np.where(dist < gr + 4, 0.55, e)
            e = np.where(dist < gr, 0.03, e)
            for a in np.linspace(0, 2 * np.pi, int(2 * np.pi * (gr + 2) / 5), endpoint=False):
                _nucleus(h, rng, gy + (gr + 2) * np.sin(a), gx + (gr + 2) * np.cos(a), 1.7, 2.2, a, 0.9, 0.02)
        for _ in range(rng.integers(10, 18)):  # sparse stromal nuclei: small, spindle-shaped
            _nucleus(h, rng, rng.uniform(0, size), rng.uniform(0, size), 1.2, rng.uniform(2.5, 3.5),
                     rng.uniform(0, np.pi), 0.85, 0.03)
    else:  # crowded, enlarged, pleomorphic, hyperchromatic nuclei with nucleoli; glands lost
        look["lumen"] = bool(rng.random() < 0.4)
        if look["lumen"]:
            gy, gx = rng.uniform(20, size - 20, 2)
            e = np.where(np.hypot(yy - gy, xx - gx) < rng.uniform(3, 6), 0.05, e)
        for _ in range(rng.integers(55, 85)):
            r = rng.uniform(2.8, 5.2)
            cy, cx = rng.uniform(0, size, 2)
            _nucleus(h, rng, cy, cx, r * rng.uniform(0.6, 1.0), r, rng.uniform(0, np.pi),
                     rng.uniform(1.2, 1.7), rng.uniform(0.05, 0.14))
            if rng.random() < 0.6:
                _nucleus(h, rng, cy + rng.uniform(-1, 1), cx + rng.uniform(-1, 1), 0.7, 0.7, 0, 2.4, 0)
    h = _smooth(h, 0.5) * stain[0]
    e = np.clip(e, 0, None) * stain[1]
    od = h[..., None] * np.asarray(_HEMATOXYLIN, np.float32) + e[..., None] * np.asarray(_EOSIN, np.float32)
    rgb = 255 * np.exp(-od * 1.1) + rng.normal(0, 2.5, od.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)
