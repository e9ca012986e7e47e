"""Procedural dermoscopy-like images with exact lesion masks.

This is the dataset a fresh clone trains on (no real data ships with the repo) and the data the
tests use. Each image shows one lesion of one of four HAM10000 classes on a patch of skin, with
the usual dermoscopy artefacts (scope vignette, hairs, ruler, gel bubbles). The classes differ in
size, border irregularity, colour and texture, so a small CNN or a linear probe on a pretrained
backbone learns them in minutes.

Everything is drawn with numpy and Pillow from ``numpy.random.default_rng`` streams seeded by
the item, so rendering is deterministic and needs no files. Four independent streams are used:
lesion (shape, colours, texture; seeded by ``lesion_seed`` and the label), skin tone (by
``lesion_seed``: one patient per lesion), view (pose, lighting, skin texture; by ``lesion_seed``
and ``view``) and artefacts (also by ``lesion_seed`` and ``view``). Only the lesion stream sees
the label, so the background and artefacts carry no class information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SYNTHETIC_CLASSES: tuple[str, ...] = ("bkl", "mel", "nv", "vasc")
SYNTHETIC_SIZE: tuple[int, int] = (256, 192)

_LABEL_WEIGHTS: dict[str, float] = {"bkl": 0.20, "mel": 0.25, "nv": 0.40, "vasc": 0.15}
_VIEW_COUNT_WEIGHTS = (0.5, 0.3, 0.2)  # P(1 view), P(2 views), P(3 views)
_MAX_FORCED_VIEWS = 2  # first four lesions: at most 2 views each, so n >= 8 shows every class

# Distinct stream ids so the plan, lesion, view, skin and artefact generators never share draws.
_PLAN_STREAM, _LESION_STREAM, _VIEW_STREAM, _SKIN_STREAM, _ARTEFACT_STREAM = 11, 23, 37, 41, 53

_REFERENCE_SIDE = 192.0  # pixel sizes below are for a 192 px short side and scale with it

_BICUBIC_GAIN = 1.0 / 0.83
_LUMA = np.array([0.30, 0.59, 0.11])

Colour = tuple[float, float, float]

_SKIN_TONES: tuple[Colour, ...] = (  # Fitzpatrick I..VI as seen under polarised dermoscopy
    (0.93, 0.77, 0.71),
    (0.89, 0.69, 0.59),
    (0.81, 0.59, 0.47),
    (0.69, 0.48, 0.35),
    (0.53, 0.36, 0.25),
    (0.37, 0.25, 0.18),
)
_SKIN_TONE_WEIGHTS = (0.22, 0.30, 0.22, 0.13, 0.08, 0.05)

_LIGHT_BROWN: Colour = (0.66, 0.46, 0.33)
_MID_BROWN: Colour = (0.52, 0.32, 0.20)
_DARK_BROWN: Colour = (0.34, 0.18, 0.10)
_BLACK: Colour = (0.11, 0.08, 0.08)
_BLUE_GREY: Colour = (0.44, 0.49, 0.60)
_PINK_RED: Colour = (0.78, 0.38, 0.40)
_SCAR_WHITE: Colour = (0.86, 0.80, 0.78)
_TAN_LIGHT: Colour = (0.78, 0.58, 0.45)
_TAN_DARK: Colour = (0.58, 0.40, 0.30)
_MILIA: Colour = (0.95, 0.92, 0.82)
_CRYPT: Colour = (0.30, 0.22, 0.16)
_VASC_RED: Colour = (0.76, 0.18, 0.24)
_VASC_MAROON: Colour = (0.50, 0.10, 0.18)
_VASC_PURPLE: Colour = (0.48, 0.20, 0.44)
_SEPTUM_PINK: Colour = (0.88, 0.62, 0.62)


@dataclass(frozen=True)
class SyntheticItem:
    """One synthetic image: which lesion it shows and from which view."""

    image_id: str
    label: str
    group: str
    lesion_seed: int
    view: int


def plan_synthetic(n: int, seed: int = 0) -> list[SyntheticItem]:
    """Plan ``n`` images: lesions of 1-3 consecutive views with a mildly imbalanced label mix.

    Deterministic in ``(n, seed)``. Every class is present whenever ``n >= 8``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng([_PLAN_STREAM, seed])
    labels = list(_LABEL_WEIGHTS)
    label_p = np.array([_LABEL_WEIGHTS[c] for c in labels])
    # The first four lesions take one class each (in a seeded order): small plans stay complete.
    forced = [labels[i] for i in rng.permutation(len(labels))]
    items: list[SyntheticItem] = []
    lesion_index = 0
    while len(items) < n:
        label = labels[int(rng.choice(len(labels), p=label_p))]
        views = 1 + int(rng.choice(3, p=_VIEW_COUNT_WEIGHTS))
        lesion_seed = int(rng.integers(0, 2**31 - 1))
        if lesion_index < len(forced):
            label = forced[lesion_index]
            views = min(views, _MAX_FORCED_VIEWS)
        views = min(views, n - len(items))
        group = f"syn_s{seed}_lesion_{lesion_index:04d}"
        for view in range(views):
            image_id = f"syn_s{seed}_{len(items):06d}"
            items.append(SyntheticItem(image_id, label, group, lesion_seed, view))
        lesion_index += 1
    return items


def render_synthetic(item: SyntheticItem, size: tuple[int, int] = SYNTHETIC_SIZE) -> tuple[Image.Image, np.ndarray]:
    """Draw one item: an RGB image of ``size`` (w, h) and its (h, w) uint8 mask of 0/255."""
    if item.label not in SYNTHETIC_CLASSES:
        raise ValueError(f"unknown synthetic label {item.label!r}; expected {SYNTHETIC_CLASSES}")
    w, h = int(size[0]), int(size[1])
    if w < 16 or h < 16:
        raise ValueError(f"size must be at least 16x16, got {size}")
    scale = min(w, h) / _REFERENCE_SIDE
    class_index = SYNTHETIC_CLASSES.index(item.label)
    lesion_rng = np.random.default_rng([_LESION_STREAM, item.lesion_seed, class_index])
    view_rng = np.random.default_rng([_VIEW_STREAM, item.lesion_seed, item.view])
    skin_rng = np.random.default_rng([_SKIN_STREAM, item.lesion_seed])
    artefact_rng = np.random.default_rng([_ARTEFACT_STREAM, item.lesion_seed, item.view])

    shape = _lesion_shape(lesion_rng, item.label, scale)
    skin_tone = _skin_tone(skin_rng)
    albedo = _skin_albedo(view_rng, skin_tone, w, h, scale)
    frame = _lesion_frame(lesion_rng, view_rng, shape, w, h, scale)
    pigment, edge = _PAINTERS[item.label](lesion_rng, frame, shape)
    pigment *= _pigment_gain(skin_tone)
    _composite_lesion(albedo, pigment, edge, frame)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[frame.y0 : frame.y1, frame.x0 : frame.x1] = np.where(frame.inside, 255, 0)
    _draw_artefacts(artefact_rng, albedo, scale)
    rgb = albedo * _illumination(view_rng, w, h)
    _apply_scope_vignette(artefact_rng, rgb, scale)
    rgb += view_rng.standard_normal((h, w), dtype=np.float32) * 0.012
    planes = np.clip(rgb * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(planes.transpose(1, 2, 0))), mask


# --- lesion geometry -------------------------------------------------------------------------


@dataclass(frozen=True)
class _LesionShape:
    """r(theta) = radius * (1 + sum_k amps[k] * cos((k + 1) * theta + phases[k])), in pixels."""

    radius: float
    amps: np.ndarray
    phases: np.ndarray
    edge_px: float  # width of the soft edge in the image (the mask stays exact)

    @property
    def max_radius(self) -> float:
        return self.radius * (1.0 + float(np.abs(self.amps).sum()))

    def radius_at(self, theta: np.ndarray) -> np.ndarray:
        k = np.arange(1, len(self.amps) + 1)
        wave = np.cos(np.outer(theta, k) + self.phases) @ self.amps
        return self.radius * (1.0 + wave)


@dataclass(frozen=True)
class _ShapeStyle:
    radius: tuple[float, float]  # reference pixels
    harmonics: int
    amplitude: float
    decay: float
    ellipticity: float  # extra weight on the k=2 term
    lopsided: float  # extra weight on the k=1 term (asymmetry)
    edge: tuple[float, float]  # reference pixels


_SHAPE_STYLES: dict[str, _ShapeStyle] = {
    "nv": _ShapeStyle((34, 54), 6, 0.035, 1.2, 0.10, 0.02, (3.0, 7.0)),
    "mel": _ShapeStyle((56, 76), 14, 0.10, 0.55, 0.12, 0.14, (2.0, 6.0)),
    "bkl": _ShapeStyle((44, 62), 9, 0.06, 0.8, 0.16, 0.04, (1.5, 3.0)),
    "vasc": _ShapeStyle((26, 40), 5, 0.035, 1.2, 0.12, 0.02, (1.5, 3.0)),
}
_MAX_WAVE = 0.6  # keeps r(theta) >= 0.4 * radius so the region stays star-shaped and solid


def _lesion_shape(rng: np.random.Generator, label: str, scale: float) -> _LesionShape:
    style = _SHAPE_STYLES[label]
    k = np.arange(1, style.harmonics + 1, dtype=np.float64)
    amps = style.amplitude * rng.uniform(0.3, 1.0, style.harmonics) / k**style.decay
    amps[0] += style.lopsided * rng.uniform(0.0, 1.0)
    amps[1] += style.ellipticity * rng.uniform(0.0, 1.0)
    total = amps.sum()
    if total > _MAX_WAVE:
        amps *= _MAX_WAVE / total
    phases = rng.uniform(0.0, 2.0 * math.pi, style.harmonics)
    radius = rng.uniform(*style.radius) * scale
    edge = rng.uniform(*style.edge) * scale
    return _LesionShape(radius, amps.astype(np.float32), phases.astype(np.float32), edge)


@dataclass
class _LesionFrame:
    """The image crop around the lesion, in lesion-local (unrotated) coordinates."""

    x0: int
    y0: int
    x1: int
    y1: int
    cx: float  # lesion centre, image pixels
    cy: float
    cos_a: float  # view rotation
    sin_a: float
    scale: float
    u: np.ndarray  # local coordinates of each crop pixel, (ch, cw)
    v: np.ndarray
    dist: np.ndarray
    cos_t: np.ndarray  # cos/sin of the local polar angle
    sin_t: np.ndarray
    radius: np.ndarray  # r(theta) at each crop pixel
    rho: np.ndarray  # dist / r(theta): < 1 inside the lesion
    inside: np.ndarray  # the exact mask region
    canvas: int  # side of the square local canvas that texture fields are drawn on
    flat_index: np.ndarray  # crop pixel -> index into a flattened local canvas

    @property
    def crop_shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def sample(self, field: np.ndarray) -> np.ndarray:
        """Look up a local-canvas field at every crop pixel (so textures rotate with the view)."""
        return np.take(field, self.flat_index)

    def to_crop(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local coordinates -> crop pixel coordinates."""
        x = self.cx + self.cos_a * u - self.sin_a * v - self.x0
        y = self.cy + self.sin_a * u + self.cos_a * v - self.y0
        return x, y


def _lesion_frame(
    lesion_rng: np.random.Generator,
    view_rng: np.random.Generator,
    shape: _LesionShape,
    w: int,
    h: int,
    scale: float,
) -> _LesionFrame:
    # Placement comes from the lesion stream; each view adds a small shift and a rotation. The
    # centre stays in the middle 40% of the image, so the crop is never empty.
    base_dx, base_dy = lesion_rng.normal(0.0, 0.06, 2)
    base_angle = lesion_rng.uniform(0.0, 2.0 * math.pi)
    shift = view_rng.normal(0.0, 6.0 * scale, 2)
    angle = base_angle + view_rng.uniform(-math.pi, math.pi)
    cx = float(np.clip(w * (0.5 + base_dx) + shift[0], 0.3 * w, 0.7 * w))
    cy = float(np.clip(h * (0.5 + base_dy) + shift[1], 0.3 * h, 0.7 * h))
    reach = shape.max_radius + 2.0 * shape.edge_px + 2.0
    x0, x1 = max(0, int(cx - reach)), min(w, int(math.ceil(cx + reach)))
    y0, y1 = max(0, int(cy - reach)), min(h, int(math.ceil(cy + reach)))
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    u = cos_a * dx + sin_a * dy
    v = -sin_a * dx + cos_a * dy
    dist = np.sqrt(u * u + v * v)
    inv = 1.0 / np.maximum(dist, 1e-6)
    cos_t, sin_t = u * inv, v * inv
    radius = shape.radius * (1.0 + _harmonic_sum(cos_t, sin_t, shape.amps, shape.phases))
    canvas = int(2.0 * reach) + 4  # pixels beyond `reach` have alpha 0, so clipping is harmless
    half = canvas // 2
    ui = np.clip((u + half).astype(np.int32), 0, canvas - 1)
    vi = np.clip((v + half).astype(np.int32), 0, canvas - 1)
    return _LesionFrame(
        x0=x0,
        y0=y0,
        x1=x1,
        y1=y1,
        cx=cx,
        cy=cy,
        cos_a=cos_a,
        sin_a=sin_a,
        scale=scale,
        u=u,
        v=v,
        dist=dist,
        cos_t=cos_t,
        sin_t=sin_t,
        radius=radius,
        rho=dist / radius,
        inside=dist < radius,
        canvas=canvas,
        flat_index=vi * canvas + ui,
    )


def _harmonic_sum(cos_t: np.ndarray, sin_t: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """sum_k amps[k] cos((k+1) theta + phases[k]) via the angle-addition recurrence (no trig)."""
    total = np.zeros_like(cos_t)
    ck, sk = cos_t, sin_t
    for k in range(len(amps)):
        if k:
            ck, sk = ck * cos_t - sk * sin_t, sk * cos_t + ck * sin_t
        a, p = float(amps[k]), float(phases[k])
        total += (a * math.cos(p)) * ck - (a * math.sin(p)) * sk
    return total


# --- noise and drawing helpers ---------------------------------------------------------------


def _noise(rng: np.random.Generator, cells: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """Smooth noise of shape ``out`` (h, w), about zero mean and unit std, from a coarse grid."""
    gh, gw = max(2, cells[0]), max(2, cells[1])
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    # Normalising the small grid is much cheaper than the output; bicubic upsampling of unit
    # white noise leaves a std of about 0.83, which the gain restores.
    grid = (grid - grid.mean()) * (_BICUBIC_GAIN / (grid.std() + 1e-6))
    image = Image.fromarray(grid).resize((out[1], out[0]), Image.Resampling.BICUBIC)
    return np.asarray(image)


def _local_noise(rng: np.random.Generator, frame: _LesionFrame, cell_px: float) -> np.ndarray:
    """Noise with features about ``cell_px`` reference pixels wide, fixed to the lesion."""
    cells = max(2, round(frame.canvas / (cell_px * frame.scale)))
    field = _noise(rng, (cells, cells), (frame.canvas, frame.canvas))
    return frame.sample(field)


def _network(rng: np.random.Generator, frame: _LesionFrame, cell_px: float, sharpness: float) -> np.ndarray:
    """A reticular mesh in [0, 1]: 1 on the lines, 0 in the holes.

    The zero crossings of one noise field are loose worm-like curves; overlaying those of two
    independent fields closes them into the honeycomb-like cells of a pigment network.
    """
    a = _local_noise(rng, frame, cell_px)
    b = _local_noise(rng, frame, cell_px)
    return np.exp(-np.minimum(a * a, b * b) * sharpness)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _mix(base: np.ndarray, colour: Colour | np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blend planar ``base`` (3, h, w) towards ``colour`` by ``weight`` (h, w), in place."""
    target = np.asarray(colour, dtype=np.float32)
    if target.ndim == 1:
        # One plane at a time: broadcasting over a trailing axis of 3 is several times slower.
        for c in range(3):
            base[c] += (target[c] - base[c]) * weight
    else:
        base += (target - base) * weight
    return base


def _jitter(rng: np.random.Generator, colour: Colour, amount: float) -> np.ndarray:
    """Mostly a brightness change, with only a slight hue shift (per-channel noise turns olive)."""
    gain = math.exp(rng.normal(0.0, 2.0 * amount))
    shifted = np.asarray(colour) * gain + rng.normal(0.0, 0.3 * amount, 3)
    return np.clip(shifted, 0.02, 1.0).astype(np.float32)


def _lerp(a: Colour, b: Colour, t: float) -> Colour:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def _polar_points(rng: np.random.Generator, shape: _LesionShape, n: int, rho_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points in local coordinates, uniform by area between two fractions of r(theta)."""
    theta = rng.uniform(0.0, 2.0 * math.pi, n)
    lo, hi = rho_range
    rho = np.sqrt(rng.uniform(lo * lo, hi * hi, n))
    r = rho * shape.radius_at(theta)
    return r * np.cos(theta), r * np.sin(theta)


def _dot_layer(frame: _LesionFrame, u: np.ndarray, v: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Round dots at local points, drawn in the crop; returns coverage in [0, 1], (ch, cw)."""
    ch, cw = frame.crop_shape
    layer = Image.new("L", (cw, ch), 0)
    draw = ImageDraw.Draw(layer)
    xs, ys = frame.to_crop(u, v)
    for x, y, r in zip(xs.tolist(), ys.tolist(), radii.tolist(), strict=True):
        if -r <= x <= cw + r and -r <= y <= ch + r:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    layer = layer.filter(ImageFilter.BoxBlur(1))  # cheap anti-aliasing
    return np.asarray(layer, dtype=np.float32) * (1.0 / 255.0)


def _pigment_gain(skin: np.ndarray) -> np.float32:
    # Lesion colours are designed on type II skin. Melanin darkens a lesion along with the skin
    # around it; without this, lesions on type V-VI skin come out paler than the skin.
    luminance = float(skin @ _LUMA)
    reference = float(np.asarray(_SKIN_TONES[1]) @ _LUMA)
    return np.float32(np.clip((luminance / reference) ** 0.8, 0.35, 1.1))


# --- class painters: planar lesion colour (3, ch, cw) and soft-edge width (ch, cw) -----------

Painted = tuple[np.ndarray, np.ndarray]


def _flat(frame: _LesionFrame, colour: np.ndarray) -> np.ndarray:
    col = np.empty((3, *frame.crop_shape), dtype=np.float32)
    col[:] = np.asarray(colour, dtype=np.float32)[:, None, None]
    return col


def _paint_nv(rng: np.random.Generator, frame: _LesionFrame, shape: _LesionShape) -> Painted:
    base = _jitter(rng, _lerp(_LIGHT_BROWN, _DARK_BROWN, rng.uniform(0.15, 0.9)), 0.03)
    col = _flat(frame, base)
    rho = frame.rho
    centre = rng.uniform(-0.05, 0.3)  # most naevi are darker in the middle, some lighter
    col *= 1.0 - centre * np.clip(1.0 - rho * rho, 0.0, 1.0)
    rim = _smoothstep((rho - 0.55) / 0.45 + 0.15 * _local_noise(rng, frame, 12.0))
    _mix(col, np.asarray(_lerp(tuple(base), _TAN_LIGHT, 0.6)), rim * rng.uniform(0.2, 0.6))
    col *= 1.0 + 0.07 * _local_noise(rng, frame, 24.0)
    if rng.uniform() < 0.75:
        line = _network(rng, frame, rng.uniform(6.0, 9.0), 6.0) * np.clip(1.25 - rho, 0.0, 1.0)
        strength = rng.uniform(0.25, 0.45)
        col *= 1.0 + 0.1 * strength - strength * line
    if rng.uniform() < 0.35:
        n = int(rng.integers(5, 16))
        u, v = _polar_points(rng, shape, n, (0.0, 0.6))
        dots = _dot_layer(frame, u, v, rng.uniform(1.4, 2.6, n) * frame.scale)
        _mix(col, base * 0.65, dots * 0.8)
    edge = np.full(frame.crop_shape, shape.edge_px, dtype=np.float32)
    return col, edge


def _paint_mel(rng: np.random.Generator, frame: _LesionFrame, shape: _LesionShape) -> Painted:
    col = _flat(frame, _jitter(rng, _lerp(_LIGHT_BROWN, _MID_BROWN, rng.uniform()), 0.03))
    # Pigment is piled up off-centre, which makes the colour asymmetric as well as the border.
    hub = rng.uniform(-0.45, 0.45, 2) * shape.radius
    off = np.sqrt((frame.u - hub[0]) ** 2 + (frame.v - hub[1]) ** 2) / shape.radius
    dark = _smoothstep(0.6 * _local_noise(rng, frame, 30.0) + 1.0 - off)
    _mix(col, _jitter(rng, _DARK_BROWN, 0.03), dark)
    black = _smoothstep(0.9 * (_local_noise(rng, frame, 20.0) - 0.5) + 0.7 - off)
    _mix(col, _BLACK, black * rng.uniform(0.5, 0.9))
    veil = _smoothstep(1.2 * (_local_noise(rng, frame, 34.0) - rng.uniform(0.2, 0.9)))
    _mix(col, _jitter(rng, _BLUE_GREY, 0.03), veil * rng.uniform(0.4, 0.8))
    red = _smoothstep(1.2 * (_local_noise(rng, frame, 26.0) - rng.uniform(0.5, 1.2)))
    _mix(col, _PINK_RED, red * 0.6)
    if rng.uniform() < 0.35:
        scar = _smoothstep(1.5 * (_local_noise(rng, frame, 22.0) - 1.2))
        _mix(col, _SCAR_WHITE, scar * 0.5)
    # Atypical network: thick, broken lines only in patches.
    patches = _smoothstep(_local_noise(rng, frame, 30.0))
    col *= 1.0 - 0.35 * _network(rng, frame, rng.uniform(8.0, 12.0), 3.0) * patches
    col *= 1.0 + 0.06 * _local_noise(rng, frame, 6.0)
    # Irregular dots and globules, clumped in a few places rather than spread evenly.
    clumps = int(rng.integers(2, 5))
    cu, cv = _polar_points(rng, shape, clumps, (0.3, 0.95))
    n = int(rng.integers(10, 32))
    which = rng.integers(0, clumps, n)
    spread = rng.uniform(0.1, 0.25) * shape.radius
    u = cu[which] + rng.normal(0.0, spread, n)
    v = cv[which] + rng.normal(0.0, spread, n)
    dots = _dot_layer(frame, u, v, rng.uniform(0.7, 2.6, n) ** 1.3 * frame.scale)
    _mix(col, _jitter(rng, _lerp(_BLACK, _DARK_BROWN, rng.uniform()), 0.02), dots * 0.85)
    # Abrupt edge on part of the rim, blurry elsewhere.
    phase = rng.uniform(0.0, 2.0 * math.pi)
    cos_p, sin_p = math.cos(phase), math.sin(phase)
    fuzz = 1.0 + 0.8 * (frame.cos_t * cos_p - frame.sin_t * sin_p)
    return col, shape.edge_px * fuzz


def _paint_bkl(rng: np.random.Generator, frame: _LesionFrame, shape: _LesionShape) -> Painted:
    base = _jitter(rng, _lerp(_TAN_LIGHT, _TAN_DARK, rng.uniform()), 0.03)
    col = _flat(frame, base)
    col *= 1.0 + 0.10 * _local_noise(rng, frame, 25.0)
    # Cerebriform "stuck-on" surface: soft dark furrows between lighter, yellower ridges.
    ridges = _local_noise(rng, frame, rng.uniform(10.0, 14.0))
    furrow = np.exp(-(ridges * ridges) * 2.5)
    col *= 1.0 - 0.2 * furrow
    _mix(col, (0.86, 0.74, 0.63), np.clip(ridges - 0.6, 0.0, 1.0) * 0.35)
    sheen = _smoothstep(_local_noise(rng, frame, 18.0) - 0.4)
    _mix(col, (0.9, 0.86, 0.80), sheen * 0.15)  # waxy, milky surface
    n = int(rng.integers(3, 12))
    u, v = _polar_points(rng, shape, n, (0.0, 0.9))
    milia = _dot_layer(frame, u, v, rng.uniform(1.0, 2.4, n) * frame.scale)
    _mix(col, _MILIA, milia * 0.8)
    n = int(rng.integers(4, 16))
    u, v = _polar_points(rng, shape, n, (0.0, 0.9))
    crypts = _dot_layer(frame, u, v, rng.uniform(1.2, 3.4, n) * frame.scale)
    _mix(col, _CRYPT, crypts * 0.6)
    edge = np.full(frame.crop_shape, shape.edge_px, dtype=np.float32)
    return col, edge


def _paint_vasc(rng: np.random.Generator, frame: _LesionFrame, shape: _LesionShape) -> Painted:
    hue = _lerp(_VASC_RED, _VASC_MAROON if rng.uniform() < 0.6 else _VASC_PURPLE, rng.uniform())
    base = _jitter(rng, hue, 0.03)
    col = _flat(frame, np.asarray(_lerp(tuple(base), _SEPTUM_PINK, rng.uniform(0.2, 0.45))))
    col *= 1.0 + 0.07 * _local_noise(rng, frame, 14.0)
    # Lacunae: packed round red-purple blobs separated by paler septa.
    n = int(rng.integers(10, 28))
    u, v = _polar_points(rng, shape, n, (0.0, 0.92))
    lacunae = _dot_layer(frame, u, v, rng.uniform(2.5, 6.5, n) * frame.scale * 0.8)
    _mix(col, base, lacunae)
    dark = _smoothstep(_local_noise(rng, frame, 16.0) - 0.2)
    _mix(col, base * 0.55, lacunae * dark * 0.8)
    edge = np.full(frame.crop_shape, shape.edge_px, dtype=np.float32)
    return col, edge


_PAINTERS = {"bkl": _paint_bkl, "mel": _paint_mel, "nv": _paint_nv, "vasc": _paint_vasc}


def _composite_lesion(albedo: np.ndarray, pigment: np.ndarray, edge: np.ndarray, frame: _LesionFrame) -> None:
    # Signed distance to the border is about r - d, so alpha crosses 0.5 exactly on the mask edge.
    alpha = _smoothstep((frame.radius - frame.dist) / np.maximum(edge, 0.5) + 0.5)
    region = albedo[:, frame.y0 : frame.y1, frame.x0 : frame.x1]
    region += (pigment - region) * alpha


# --- skin, light and artefacts ---------------------------------------------------------------


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    tone = _SKIN_TONES[int(rng.choice(len(_SKIN_TONES), p=_SKIN_TONE_WEIGHTS))]
    redness = rng.uniform(-0.02, 0.05)  # polarised dermoscopy shows skin a little pink
    colour = np.asarray(tone, np.float32) + rng.normal(0.0, 0.025, 3).astype(np.float32)
    colour += np.array([redness, -redness, -0.3 * redness], np.float32)
    return np.clip(colour, 0.1, 1.0).astype(np.float32)


def _skin_albedo(rng: np.random.Generator, tone: np.ndarray, w: int, h: int, scale: float) -> np.ndarray:
    blotch = _noise(rng, (3, 4), (h, w))
    erythema = _noise(rng, (4, 5), (h, w))
    cells = (max(2, round(h / (6.0 * scale))), max(2, round(w / (6.0 * scale))))
    grain = _noise(rng, cells, (h, w))
    furrows = _full_network(rng, w, h, scale)
    shade = 1.0 + 0.04 * blotch + 0.03 * grain - 0.03 * furrows
    albedo = tone[:, None, None] * shade
    # Patchy redness: more red, less green/blue where the capillaries are fuller.
    redness = (0.04 * float(tone.mean())) * np.maximum(erythema, 0.0)
    for c, weight in enumerate((1.0, -0.6, -0.4)):
        albedo[c] += weight * redness
    return albedo


def _full_network(rng: np.random.Generator, w: int, h: int, scale: float) -> np.ndarray:
    """Faint criss-cross skin furrows over the whole image (same trick as ``_network``)."""
    cells = (max(2, round(h / (12.0 * scale))), max(2, round(w / (12.0 * scale))))
    a = _noise(rng, cells, (h, w))
    b = _noise(rng, cells, (h, w))
    return np.exp(-np.minimum(a * a, b * b) * 4.0)


def _illumination(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    brightness = rng.uniform(0.88, 1.08)
    tint = (1.0 + rng.normal(0.0, 0.02, 3)).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    slope = rng.uniform(0.0, 0.12)
    hotspot = rng.uniform(0.0, 0.15)
    x = (np.arange(w, dtype=np.float32) - w / 2) / max(w, h)
    y = (np.arange(h, dtype=np.float32) - h / 2) / max(w, h)
    gradient = slope * (math.cos(angle) * x[None, :] + math.sin(angle) * y[:, None])
    falloff = hotspot * 2.0 * (x[None, :] ** 2 + y[:, None] ** 2)
    light = (brightness * (1.0 + gradient - falloff)).astype(np.float32)
    return light * tint[:, None, None]


def _draw_artefacts(rng: np.random.Generator, albedo: np.ndarray, scale: float) -> None:
    """Ruler, gel bubbles, specular glints and hairs, drawn over skin and lesion alike."""
    h, w = albedo.shape[1:]
    bright = Image.new("L", (w, h), 0)
    dark = Image.new("L", (w, h), 0)
    bright_draw, dark_draw = ImageDraw.Draw(bright), ImageDraw.Draw(dark)
    used_bright = used_dark = False
    if rng.uniform() < 0.12:
        _draw_ruler(rng, bright_draw, dark_draw, w, h, scale)
        used_bright = used_dark = True
    if rng.uniform() < 0.25:
        _draw_bubbles(rng, bright_draw, w, h, scale)
        used_bright = True
    if rng.uniform() < 0.2:
        n = int(rng.integers(2, 10))
        xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
        radii = rng.uniform(0.6, 2.0, n) * scale
        for x, y, r in zip(xs.tolist(), ys.tolist(), radii.tolist(), strict=True):
            bright_draw.ellipse((x - r, y - r, x + r, y + r), fill=230)
        used_bright = True
    if rng.uniform() < 0.4:
        _draw_hairs(rng, dark_draw, w, h, scale)
        used_dark = True
    hair_colour = _jitter(rng, (0.12, 0.09, 0.07), 0.03)
    if used_bright:
        layer = np.asarray(bright.filter(ImageFilter.BoxBlur(1)), np.float32) * (1.0 / 255.0)
        _mix(albedo, (0.97, 0.96, 0.94), layer)
    if used_dark:
        layer = np.asarray(dark.filter(ImageFilter.SMOOTH), np.float32) * (1.0 / 255.0)
        _mix(albedo, hair_colour, layer)


def _draw_hairs(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int, scale: float) -> None:
    n = int(rng.integers(1, 14))
    for _ in range(n):
        x0, y0 = rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        length = rng.uniform(0.3, 1.2) * max(w, h)
        bend = rng.normal(0.0, 0.15) * length
        x2, y2 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
        mx = (x0 + x2) / 2 - bend * math.sin(angle)
        my = (y0 + y2) / 2 + bend * math.cos(angle)
        t = np.linspace(0.0, 1.0, 12)
        xs = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * mx + t**2 * x2
        ys = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * my + t**2 * y2
        width = max(1, round(rng.uniform(0.8, 2.4) * scale))
        points = list(zip(xs.tolist(), ys.tolist(), strict=True))
        draw.line(points, fill=int(rng.integers(190, 256)), width=width)


def _draw_ruler(
    rng: np.random.Generator,
    band_draw: ImageDraw.ImageDraw,
    tick_draw: ImageDraw.ImageDraw,
    w: int,
    h: int,
    scale: float,
) -> None:
    side = int(rng.integers(4))  # 0 top, 1 bottom, 2 left, 3 right
    depth = rng.uniform(9.0, 15.0) * scale
    step = rng.uniform(4.5, 7.0) * scale
    horizontal = side < 2
    length = w if horizontal else h
    edge = 0.0 if side in (0, 2) else (h if horizontal else w)
    inward = 1.0 if side in (0, 2) else -1.0
    start = rng.uniform(-0.2, 0.2) * length
    stop = start + rng.uniform(0.6, 1.2) * length
    band = sorted((edge, edge + inward * depth))
    box = (start, band[0], stop, band[1]) if horizontal else (band[0], start, band[1], stop)
    band_draw.rectangle(box, fill=int(rng.integers(150, 220)))
    tick_w = max(1, round(scale))
    for i, pos in enumerate(np.arange(start + step, stop, step).tolist()):
        tick = depth * (0.75 if i % 5 == 4 else 0.4)
        a, b = edge + inward * 1.0, edge + inward * tick
        line = [(pos, a), (pos, b)] if horizontal else [(a, pos), (b, pos)]
        tick_draw.line(line, fill=230, width=tick_w)


def _draw_bubbles(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int, scale: float) -> None:
    for _ in range(int(rng.integers(1, 6))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(3.0, 22.0) * scale
        draw.ellipse((x - r, y - r, x + r, y + r), fill=25, outline=200, width=max(1, round(scale)))
        g = r * 0.25
        gx, gy = x - 0.4 * r, y - 0.4 * r
        draw.ellipse((gx - g, gy - g, gx + g, gy + g), fill=235)


def _apply_scope_vignette(rng: np.random.Generator, rgb: np.ndarray, scale: float) -> None:
    """The dark round rim of the dermoscope's field of view, seen in the corners."""
    draw_it = rng.uniform() < 0.55
    radius = rng.uniform(0.78, 0.98)
    centre = rng.normal(0.0, 0.04, 2)
    softness = rng.uniform(3.0, 10.0) * scale
    floor = rng.uniform(0.01, 0.07)
    if not draw_it:
        return
    h, w = rgb.shape[1:]
    half_diag = 0.5 * math.hypot(w, h)
    x = np.arange(w, dtype=np.float32) + 0.5 - w * (0.5 + centre[0])
    y = np.arange(h, dtype=np.float32) + 0.5 - h * (0.5 + centre[1])
    dist = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2)
    keep = _smoothstep((radius * half_diag - dist) / softness + 0.5)
    rgb *= floor + (1.0 - floor) * keep
