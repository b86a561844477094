"""Procedural Pillow drawings of the synthetic world: concept sprites, memory photos and query scenes.

* :func:`render_sprite` draws one concept (:class:`~.world.Look`) on a transparent canvas in a
  :class:`Pose`: the kind's body (cat, bird, person-like figure, mug, toy robot), its pattern (stripes,
  spots or a patch, clipped to the body) and its accessory (hat, scarf, collar, glasses, bow, backpack).
* :func:`render_reference` puts the sprite, upright and centred, on a plain grey card: the view the
  similarity measure embeds.
* :func:`render_memory` is the concept's context photo: the sprite in the rest pose, large and upright,
  on a memory backdrop, in neutral light (:func:`plan_memory`).
* :func:`render_scene` composes 1-4 sprites into a query image (:func:`plan_query`) that differs from every
  memory photo in three ways, by construction: each sprite takes a pose that memory photos never use
  (limbs raised, head turned and/or crouched; plus mirror, tilt and scale), the backdrop's sky/ground
  palette pair is one memory photos never use, and the light changes (brightness at least 15% away from
  neutral and a warm or cool colour cast). Matching a query to its memory photo therefore needs the
  concept's look (kind, colours, pattern, accessory), not the photo's pixels.

All randomness comes from the ``random.Random`` passed in; the same seed gives the same pixels (and, saved
with :func:`png_bytes`, the same file bytes).
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

from covip.training.data.world import COLOURS, Look

__all__ = [
    "Pose",
    "REST_POSE",
    "QUERY_POSES",
    "MEMORY_BACKDROPS",
    "QUERY_BACKDROPS",
    "Placement",
    "ScenePlan",
    "plan_memory",
    "plan_query",
    "render_plan",
    "render_sprite",
    "render_reference",
    "render_memory",
    "render_scene",
    "png_bytes",
]

_S = 256  # sprite canvas side; everything is drawn at this scale and resized down
_SKIN = ((241, 200, 165), (198, 134, 66), (141, 85, 36), (224, 172, 105))
_SKIES = ((150, 200, 240), (250, 200, 150), (90, 110, 160), (200, 220, 230), (230, 170, 190), (120, 170, 120))
_GROUNDS = ((90, 160, 80), (210, 190, 140), (120, 110, 100), (170, 170, 180), (70, 120, 150), (160, 120, 80))
_CASTS = ((255, 200, 140), (140, 170, 255), (255, 160, 200), (170, 255, 190))

MEMORY_BACKDROPS: tuple[tuple[int, int], ...] = tuple(
    (i, j) for i in range(len(_SKIES)) for j in range(len(_GROUNDS)) if (i + j) % 2 == 0)
"""(sky, ground) palette pairs of memory photos; every sky and every ground colour occurs in both sets."""
QUERY_BACKDROPS: tuple[tuple[int, int], ...] = tuple(
    (i, j) for i in range(len(_SKIES)) for j in range(len(_GROUNDS)) if (i + j) % 2 == 1)
"""(sky, ground) palette pairs of query scenes: disjoint from :data:`MEMORY_BACKDROPS`."""


@dataclass(frozen=True)
class Pose:
    """How a sprite stands: limbs (arms, wings, tail) raised, head shifted sideways, body squashed."""

    raised: bool = False
    head_shift: int = 0
    """Pixels (on the 256 canvas) the head, face and head accessories move toward the facing side."""
    squash: float = 1.0
    """Height factor of a crouch (the width grows by the inverse square root, so the area stays)."""


REST_POSE = Pose()
"""The pose of every memory photo and reference card."""
QUERY_POSES: tuple[Pose, ...] = tuple(
    Pose(r, h, q) for r in (False, True) for h in (0, 14) for q in (1.0, 0.8) if (r, h, q) != (False, 0, 1.0))
"""Poses of query scenes: every combination except the rest pose."""


@dataclass(frozen=True)
class Placement:
    """One sprite in a picture: pose, mirror, tilt (degrees), width relative to its cell, cell jitter."""

    pose: Pose
    mirror: bool
    tilt: float
    scale: float
    jitter: float
    lift: float


@dataclass(frozen=True)
class ScenePlan:
    """Everything that makes a picture of some concepts, except the looks and the backdrop's details."""

    backdrop: tuple[int, int]
    """(sky, ground) palette indices."""
    placements: tuple[Placement, ...]
    brightness: float
    cast: tuple[int, int, int]
    cast_alpha: float


@dataclass(frozen=True)
class _Anchors:
    """Where accessories go on a sprite (canvas coordinates)."""

    head: tuple[int, int, int]  # centre x, centre y, radius
    neck_y: int
    body: tuple[int, int, int, int]
    eyes: tuple[tuple[int, int], tuple[int, int]]


def _c(name: str) -> tuple[int, int, int]:
    return COLOURS[name]


def _darker(rgb: tuple[int, int, int], f: float = 0.6) -> tuple[int, int, int]:
    return tuple(int(v * f) for v in rgb)  # type: ignore[return-value]


def _body_mask(kind: str) -> tuple[Image.Image, _Anchors]:
    """The body silhouette (L mask, patterns are clipped to it) and the anchors of a kind."""
    m = Image.new("L", (_S, _S), 0)
    d = ImageDraw.Draw(m)
    if kind == "cat":
        body = (60, 120, 200, 220)
        d.ellipse(body, fill=255)
        anchors = _Anchors((128, 85, 45), 128, body, ((112, 80), (144, 80)))
    elif kind == "bird":
        body = (70, 100, 190, 200)
        d.ellipse(body, fill=255)
        anchors = _Anchors((150, 78, 38), 112, body, ((140, 72), (165, 72)))
    elif kind == "person":
        body = (85, 118, 171, 200)
        d.rounded_rectangle(body, radius=18, fill=255)
        anchors = _Anchors((128, 78, 36), 116, body, ((115, 74), (141, 74)))
    elif kind == "mug":
        body = (70, 90, 180, 220)
        d.rounded_rectangle(body, radius=14, fill=255)
        anchors = _Anchors((125, 78, 52), 92, body, ((105, 140), (145, 140)))
    else:  # robot
        body = (80, 120, 176, 205)
        d.rectangle(body, fill=255)
        anchors = _Anchors((128, 78, 40), 118, body, ((112, 76), (144, 76)))
    return m, anchors


def _shifted(a: _Anchors, dx: int) -> _Anchors:
    """The anchors with the head (and eyes) moved ``dx`` pixels sideways: a turned head."""
    hx, hy, hr = a.head
    (lx, ly), (rx, ry) = a.eyes
    return _Anchors((hx + dx, hy, hr), a.neck_y, a.body, ((lx + dx, ly), (rx + dx, ry)))


def _draw_kind(d: ImageDraw.ImageDraw, look: Look, a: _Anchors, skin: tuple[int, int, int], raised: bool) -> None:
    """Everything of the kind that is not the (patterned) body: head, ears, limbs, handle, ..."""
    col, outline = _c(look.colour), _darker(_c(look.colour), 0.45)
    hx, hy, hr = a.head
    if look.kind == "cat":
        d.polygon([(hx - hr, hy - 10), (hx - hr + 12, hy - hr - 22), (hx - 8, hy - hr + 4)], fill=col, outline=outline)
        d.polygon([(hx + hr, hy - 10), (hx + hr - 12, hy - hr - 22), (hx + 8, hy - hr + 4)], fill=col, outline=outline)
        d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=col, outline=outline, width=3)
        tail = [(200, 190), (216, 140), (208, 92)] if raised else [(200, 190), (232, 150), (226, 120)]
        d.line(tail, fill=col, width=12)
        d.polygon([(hx - 5, hy + 6), (hx + 5, hy + 6), (hx, hy + 12)], fill=(230, 120, 140))
    elif look.kind == "bird":
        d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=col, outline=outline, width=3)
        d.polygon([(hx + hr - 4, hy - 6), (hx + hr + 24, hy + 2), (hx + hr - 4, hy + 10)], fill=(245, 165, 40))
        _draw_wing(d, col, raised)
        for x in (115, 140):
            d.line([(x, 198), (x, 228)], fill=(245, 165, 40), width=5)
        d.polygon([(72, 150), (40, 175), (70, 180)], fill=_darker(col, 0.8))
    elif look.kind == "person":
        for x in (100, 140):
            d.rectangle((x, 198, x + 16, 240), fill=(60, 60, 90))
        hands = ((58, 70), (198, 70)) if raised else ((60, 185), (196, 185))
        d.line([(88, 128), hands[0]], fill=skin, width=12)
        d.line([(168, 128), hands[1]], fill=skin, width=12)
        d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=skin, outline=_darker(skin, 0.6), width=3)
        d.chord((hx - hr, hy - hr - 4, hx + hr, hy + hr - 20), 180, 360, fill=_darker(col, 0.5))
    elif look.kind == "mug":
        d.ellipse((168, 115, 218, 185), outline=col, width=14)
        if raised:  # a spoon standing in the mug instead of steam
            d.line([(150, 96), (176, 30)], fill=(190, 190, 200), width=7)
            d.ellipse((166, 14, 190, 40), fill=(190, 190, 200))
        else:
            for x in (100, 128, 156):
                d.arc((x - 10, 40, x + 10, 80), 90, 270, fill=(200, 200, 210), width=4)
    else:  # robot
        d.line([(hx, hy - hr), (hx, hy - hr - 25)], fill=(90, 90, 90), width=4)
        d.ellipse((hx - 8, hy - hr - 35, hx + 8, hy - hr - 19), fill=(230, 60, 60))
        d.rectangle((hx - hr, hy - hr, hx + hr, hy + hr), fill=col, outline=outline, width=3)
        arm_y = (66, 121) if raised else (130, 185)
        d.rectangle((60, arm_y[0], 78, arm_y[1]), fill=(150, 150, 160))
        d.rectangle((178, arm_y[0], 196, arm_y[1]), fill=(150, 150, 160))
        for x in (100, 140):
            d.rectangle((x, 205, x + 16, 240), fill=(150, 150, 160))


def _draw_wing(d: ImageDraw.ImageDraw, col: tuple[int, int, int], raised: bool) -> None:
    """A bird's wing: folded on the body, or raised above the back."""
    if raised:
        d.polygon([(100, 150), (160, 145), (118, 72), (96, 96)], fill=_darker(col, 0.8), outline=_darker(col, 0.45))
    else:
        d.ellipse((95, 125, 165, 175), fill=_darker(col, 0.8), outline=_darker(col, 0.45), width=2)


@cache
def _outline(kind: str) -> Image.Image:
    """The body's 3-pixel outline ring (L mask); cached per kind, never modified."""
    mask = _body_mask(kind)[0]
    return ImageChops.subtract(mask, mask.filter(ImageFilter.MinFilter(7)))


def _pattern_layer(look: Look, mask: Image.Image, a: _Anchors) -> Image.Image:
    """The body fill with its pattern, clipped to the body mask (RGBA)."""
    col = _c(look.colour)
    fill = Image.new("RGBA", (_S, _S), col + (255,))
    d = ImageDraw.Draw(fill)
    pc = _c(look.pattern_colour)
    x0, y0, x1, y1 = a.body
    if look.pattern == "stripes":
        for y in range(y0 + 8, y1, 22):
            d.rectangle((x0, y, x1, y + 9), fill=pc)
    elif look.pattern == "spots":
        for i, y in enumerate(range(y0 + 14, y1 - 6, 28)):
            for x in range(x0 + 14 + (i % 2) * 14, x1 - 6, 30):
                d.ellipse((x - 7, y - 7, x + 7, y + 7), fill=pc)
    elif look.pattern == "patch":
        d.ellipse((x0 + (x1 - x0) // 3, y0 + 10, x1 + 10, y0 + (y1 - y0) * 2 // 3), fill=pc)
    layer = Image.new("RGBA", (_S, _S), (0, 0, 0, 0))
    layer.paste(fill, (0, 0), mask)
    outline = _outline(look.kind)
    layer.paste(_darker(col, 0.45) + (255,), (0, 0), outline)
    return layer


def _draw_face(d: ImageDraw.ImageDraw, look: Look, a: _Anchors) -> None:
    for ex, ey in a.eyes:
        if look.kind == "robot":
            d.rectangle((ex - 7, ey - 6, ex + 7, ey + 6), fill=(250, 250, 120), outline=(40, 40, 40))
        else:
            d.ellipse((ex - 6, ey - 6, ex + 6, ey + 6), fill=(255, 255, 255), outline=(30, 30, 30), width=2)
            d.ellipse((ex - 3, ey - 3, ex + 3, ey + 3), fill=(20, 20, 20))


def _draw_accessory(d: ImageDraw.ImageDraw, look: Look, a: _Anchors) -> None:
    ac = _c(look.accessory_colour)
    dark = _darker(ac, 0.55)
    hx, hy, hr = a.head
    top = hy - hr
    if look.accessory == "hat":
        d.rectangle((hx - hr - 10, top - 2, hx + hr + 10, top + 8), fill=dark)
        d.rectangle((hx - hr + 8, top - 38, hx + hr - 8, top + 2), fill=ac, outline=dark, width=2)
    elif look.accessory == "scarf":
        y = a.neck_y
        d.rounded_rectangle((hx - hr - 6, y - 9, hx + hr + 6, y + 9), radius=8, fill=ac, outline=dark, width=2)
        d.rectangle((hx + 8, y + 4, hx + 24, y + 52), fill=ac, outline=dark, width=2)
    elif look.accessory == "collar":
        y = a.neck_y
        d.rectangle((hx - hr + 4, y - 5, hx + hr - 4, y + 5), fill=ac, outline=dark)
        d.ellipse((hx - 8, y + 2, hx + 8, y + 18), fill=(240, 200, 60), outline=(150, 120, 30))
    elif look.accessory == "glasses":
        (lx, ly), (rx, ry) = a.eyes
        d.ellipse((lx - 13, ly - 12, lx + 13, ly + 12), outline=ac, width=4)
        d.ellipse((rx - 13, ry - 12, rx + 13, ry + 12), outline=ac, width=4)
        d.line([(lx + 13, ly), (rx - 13, ry)], fill=ac, width=4)
    elif look.accessory == "bow":
        bx, by = hx + hr - 10, top + 6
        d.polygon([(bx, by), (bx - 26, by - 16), (bx - 26, by + 16)], fill=ac, outline=dark)
        d.polygon([(bx, by), (bx + 26, by - 16), (bx + 26, by + 16)], fill=ac, outline=dark)
        d.ellipse((bx - 6, by - 6, bx + 6, by + 6), fill=dark)
    elif look.accessory == "backpack":
        x0, y0, _x1, y1 = a.body
        d.rounded_rectangle((x0 - 26, y0 + 10, x0 + 14, y1 - 20), radius=8, fill=ac, outline=dark, width=3)
        d.line([(x0 - 6, y0 + 10), (x0 + 30, y0 - 4)], fill=dark, width=5)


def render_sprite(look: Look, pose: Pose = REST_POSE) -> Image.Image:
    """The concept on a transparent ``256 x 256`` RGBA canvas, facing right, in ``pose`` (a fresh copy)."""
    return _sprite(look, pose).copy()


@lru_cache(maxsize=1024)
def _sprite(look: Look, pose: Pose) -> Image.Image:
    mask, anchors = _body_mask(look.kind)
    anchors = _shifted(anchors, pose.head_shift)
    img = Image.new("RGBA", (_S, _S), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    skin = _SKIN[look.skin % len(_SKIN)]
    if look.kind in ("cat", "bird"):  # tail / wings behind the body, head in front
        _draw_kind(d, look, anchors, skin, pose.raised)
        img.alpha_composite(_pattern_layer(look, mask, anchors))
        d = ImageDraw.Draw(img)
        hx, hy, hr = anchors.head
        col = _c(look.colour)
        d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=col, outline=_darker(col, 0.45), width=3)
        if look.kind == "cat":
            d.polygon([(hx - 5, hy + 6), (hx + 5, hy + 6), (hx, hy + 12)], fill=(230, 120, 140))
        else:
            _draw_wing(d, col, pose.raised)
            d.polygon([(hx + hr - 4, hy - 6), (hx + hr + 24, hy + 2), (hx + hr - 4, hy + 10)], fill=(245, 165, 40))
    else:
        img.alpha_composite(_pattern_layer(look, mask, anchors))
        d = ImageDraw.Draw(img)
        _draw_kind(d, look, anchors, skin, pose.raised)
    _draw_face(d, look, anchors)
    _draw_accessory(d, look, anchors)
    if pose.squash != 1.0:  # crouch: shorter and wider, feet stay on the canvas floor
        h = max(1, round(_S * pose.squash))
        w = min(_S, round(_S / pose.squash ** 0.5))
        small = img.resize((w, h), Image.Resampling.LANCZOS)
        img = Image.new("RGBA", (_S, _S), (0, 0, 0, 0))
        img.paste(small, ((_S - w) // 2, _S - h))
    return img


def _background(size: int, backdrop: tuple[int, int], rng: random.Random) -> Image.Image:
    """A simple outdoor/indoor scene: sky-to-ground gradient, horizon, sun or lamp, trees, houses, clouds."""
    sky, ground = _SKIES[backdrop[0]], _GROUNDS[backdrop[1]]
    horizon = rng.randint(int(size * 0.45), int(size * 0.7))
    img = Image.new("RGB", (size, size), sky)
    d = ImageDraw.Draw(img)
    for y in range(horizon):
        f = y / max(1, horizon)
        d.line([(0, y), (size, y)], fill=tuple(int(s * (1.1 - 0.25 * f)) for s in sky))
    d.rectangle((0, horizon, size, size), fill=ground)
    r = size // 12
    cx, cy = rng.randint(r, size - r), rng.randint(r, max(r, horizon - 2 * r))
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rng.choice(((250, 230, 120), (245, 245, 235), (255, 190, 120))))
    for _ in range(rng.randint(0, 3)):
        x, w = rng.randint(0, size), rng.randint(size // 12, size // 6)
        if rng.random() < 0.5:  # tree
            d.rectangle((x - w // 6, horizon - w, x + w // 6, horizon), fill=(100, 70, 40))
            d.polygon([(x - w // 2, horizon - w // 2), (x + w // 2, horizon - w // 2), (x, horizon - 2 * w)],
                      fill=(40, 110 + rng.randint(0, 60), 50))
        else:  # house
            colour = tuple(rng.randint(120, 230) for _ in range(3))
            d.rectangle((x - w // 2, horizon - w, x + w // 2, horizon), fill=colour)
            d.polygon([(x - w // 2 - 3, horizon - w), (x + w // 2 + 3, horizon - w), (x, horizon - w - w // 2)],
                      fill=(150, 60, 50))
    for _ in range(rng.randint(0, 2)):
        x, y, w = rng.randint(0, size), rng.randint(0, max(1, horizon // 2)), rng.randint(size // 8, size // 4)
        d.ellipse((x - w // 2, y - w // 5, x + w // 2, y + w // 5), fill=(245, 245, 250))
    return img


def _place(canvas: Image.Image, sprite: Image.Image, box_w: int, cx: int, base_y: int) -> None:
    """Paste a sprite scaled to width ``box_w`` with its bottom centre at (cx, base_y)."""
    bbox = sprite.getbbox() or (0, 0, _S, _S)
    sprite = sprite.crop(bbox)
    scale = box_w / max(sprite.width, sprite.height)
    w, h = max(1, round(sprite.width * scale)), max(1, round(sprite.height * scale))
    sprite = sprite.resize((w, h), Image.Resampling.LANCZOS)
    canvas.paste(sprite, (cx - w // 2, base_y - h), sprite)


def render_reference(look: Look, size: int) -> Image.Image:
    """The concept upright and centred on a plain grey card (what the similarity measure embeds)."""
    img = Image.new("RGBA", (size, size), (200, 200, 200, 255))
    _place(img, render_sprite(look), int(size * 0.85), size // 2, int(size * 0.93))
    return img.convert("RGB")


def plan_memory(rng: random.Random) -> ScenePlan:
    """A memory photo's plan: rest pose, upright, large, centred, a memory backdrop, neutral light."""
    return ScenePlan(rng.choice(MEMORY_BACKDROPS), (Placement(REST_POSE, False, 0.0, 0.7, 0.0, 0.05),),
                     1.0, (255, 255, 255), 0.0)


def plan_query(n: int, rng: random.Random) -> ScenePlan:
    """A query scene's plan for ``n`` sprites: query poses and backdrops, changed brightness and colour cast."""
    if n < 1:
        raise ValueError(f"a query scene holds at least one concept, got {n}")
    placements = tuple(
        Placement(rng.choice(QUERY_POSES), rng.random() < 0.5, rng.uniform(-20, 20),
                  rng.uniform(0.7, 0.95) * (0.8 if n == 1 else 1.0), rng.uniform(-0.1, 0.1), rng.uniform(0.0, 0.1))
        for _ in range(n))
    brightness = rng.uniform(0.65, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.3)
    return ScenePlan(rng.choice(QUERY_BACKDROPS), placements, brightness, rng.choice(_CASTS), rng.uniform(0.08, 0.2))


def render_plan(looks: Sequence[Look], plan: ScenePlan, size: int, rng: random.Random) -> Image.Image:
    """Draw ``looks`` (one per placement, in cells of a grid) as ``plan`` says; ``rng`` draws the backdrop's details."""
    n = len(looks)
    if n != len(plan.placements):
        raise ValueError(f"the plan places {len(plan.placements)} concepts, got {n} looks")
    img = _background(size, plan.backdrop, rng).convert("RGBA")
    cols, rows = (1, 1) if n == 1 else ((2, 1) if n == 2 else (2, (n + 1) // 2))
    cells = [(c, r) for r in range(rows) for c in range(cols)]
    rng.shuffle(cells)
    cw, ch = size / cols, size / rows
    for look, p, (col, row) in zip(looks, plan.placements, cells):
        sprite = render_sprite(look, p.pose)
        if p.mirror:
            sprite = sprite.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        side = max(32, 2 * int(min(cw, ch) * p.scale))
        if side < _S:  # rotate a smaller copy: the same picture at a fraction of the cost
            sprite = sprite.resize((side, side), Image.Resampling.LANCZOS)
        if p.tilt:
            sprite = sprite.rotate(p.tilt, resample=Image.Resampling.BICUBIC, expand=True)
        width = int(min(cw, ch) * p.scale)
        cx = int(cw * (col + 0.5) + p.jitter * (cw - width))
        base = int(ch * (row + 1) - p.lift * ch)
        _place(img, sprite, max(8, width), cx, base)
    out = img.convert("RGB")
    if plan.brightness != 1.0:
        out = ImageEnhance.Brightness(out).enhance(plan.brightness)
    if plan.cast_alpha:
        out = Image.blend(out, Image.new("RGB", (size, size), plan.cast), plan.cast_alpha)
    return out


def render_memory(look: Look, size: int, rng: random.Random) -> Image.Image:
    """The concept's context photo (:func:`plan_memory`): rest pose, large and upright, neutral light."""
    return render_plan([look], plan_memory(rng), size, rng)


def render_scene(looks: Sequence[Look], size: int, rng: random.Random) -> Image.Image:
    """A query image holding every look once in a new pose, on a new backdrop, in new light (:func:`plan_query`)."""
    return render_plan(looks, plan_query(len(looks), rng), size, rng)


def png_bytes(img: Image.Image) -> bytes:
    """PNG bytes with no metadata (the same pixels give the same bytes)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
