"""Normal parts (washers, gears, screws, bolts, circuit boards) and surfaces (woven, brushed, wood grain) drawn
from code, so that tests and CI never need outside data."""
from __future__ import annotations

import math

import cv2
import numpy as np

from data_synth.noise import smooth_noise
from data_synth.sources.base import Category, NormalSource
from data_synth.synth import SynthError

cv2.setNumThreads(1)


METALS = {"steel": (172, 174, 180), "brass": (196, 164, 84), "black oxide": (78, 78, 84),
          "copper": (196, 124, 84), "zinc": (150, 170, 190)}
KINDS = ["washer", "gear", "screw", "bolt", "pcb", "woven", "brushed", "wood"]
KIND_NOUNS = {"washer": "washer", "gear": "gear", "screw": "screw", "bolt": "bolt", "pcb": "circuit board",
              "woven": "woven fabric", "brushed": "brushed metal surface", "wood": "wood surface"}


def _smooth_alpha(sd: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, positive inside) -> anti-aliased coverage."""
    return np.clip(sd + 0.5, 0.0, 1.0).astype(np.float32)


def _background(rng, size, color):
    t = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    a, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0, 14)
    grad = (np.cos(a) * amp) * t[None, :] + (np.sin(a) * amp) * t[:, None]  # (size, size) lighting ramp
    return np.array(color, np.float32) + grad[..., None]


_NOISE: dict[int, np.ndarray] = {}


def _sensor_noise(size: int) -> np.ndarray:
    """A fixed (size, size, 3) float32 Gaussian noise field (sigma 2), rolled randomly per sample (cheap)."""
    if size not in _NOISE:
        _NOISE[size] = np.random.default_rng(12345).standard_normal((size, size, 3), dtype=np.float32) * 2.0
    return _NOISE[size]


def _product(kind: str, j: int) -> np.random.Generator:
    return np.random.default_rng([KINDS.index(kind), j, 7919])


class ProceduralSource(NormalSource):
    """Normal parts and surfaces drawn from code. A category is one product (fixed shape, colour and
    layout); every sample varies pose, position, scale, lighting and noise."""

    name = "procedural"

    def __init__(self, products_per_kind: int = 3, kinds: list[str] | None = None):
        kinds = kinds or KINDS
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise SynthError(f"unknown procedural kinds {bad}; expected some of {KINDS}")
        if products_per_kind <= 0:
            raise SynthError(f"products_per_kind: expected >= 1, got {products_per_kind}")
        self.cats = [Category(f"procedural/{k}-{j}", KIND_NOUNS[k], k not in ("woven", "brushed", "wood"))
                     for k in kinds for j in range(products_per_kind)]
        self.params = {c.key: self._params(c.key) for c in self.cats}

    def categories(self) -> list[Category]:
        return self.cats

    @staticmethod
    def _params(key: str) -> dict:
        kind, j = key.split("/", 1)[1].rsplit("-", 1)
        r = _product(kind, int(j))
        metal = list(METALS)[int(r.integers(len(METALS)))]
        mc = np.array(METALS[metal], np.float32)
        dark_bg = float(mc.mean()) > 120
        bg = r.uniform(25, 60, 3) if dark_bg else r.uniform(190, 235, 3)
        p = {"kind": kind, "metal": mc, "bg": bg, "light": r.uniform(0, 2 * np.pi)}
        if kind == "washer":
            p.update(ratio=r.uniform(0.35, 0.6), radius=r.uniform(0.28, 0.38))
        elif kind == "gear":
            p.update(teeth=int(r.integers(8, 22)), radius=r.uniform(0.3, 0.38), depth=r.uniform(0.08, 0.16),
                     hole=r.uniform(0.1, 0.25), holes=int(r.choice([0, 0, 4, 5, 6])))
        elif kind in ("screw", "bolt"):
            p.update(length=r.uniform(0.5, 0.7), diam=r.uniform(0.1, 0.16), head=r.uniform(0.22, 0.32),
                     pitch=r.uniform(0.025, 0.04), thread=r.uniform(0.5, 0.9), base_angle=r.uniform(0, np.pi))
        elif kind == "pcb":
            board = [(0, 110, 40), (10, 60, 120), (25, 25, 30), (130, 20, 25)][int(r.integers(4))]
            tracks = []
            for _ in range(int(r.integers(10, 18))):
                pts = [r.uniform(0.08, 0.92, 2)]
                for _ in range(int(r.integers(2, 5))):
                    d = r.choice([0, 1, 2, 3, 4, 5, 6, 7]) * np.pi / 4
                    ln = r.uniform(0.08, 0.3)
                    pts.append(np.clip(pts[-1] + ln * np.array([np.cos(d), np.sin(d)]), 0.06, 0.94))
                tracks.append(np.array(pts))
            chip = r.uniform(0.25, 0.55, 2)
            p.update(board=np.array(board, np.float32), tracks=tracks, chip=chip, chip_size=r.uniform(0.15, 0.25),
                     copper=np.array((205, 165, 80) if r.random() < 0.6 else (200, 200, 205), np.float32),
                     bg=r.uniform(200, 235, 3), cover=r.uniform(0.62, 0.8))
        elif kind == "woven":
            p.update(period=r.uniform(7, 14), warp_c=r.uniform(60, 220, 3), weft_c=r.uniform(60, 220, 3),
                     twill=bool(r.random() < 0.4))
        elif kind == "brushed":
            p.update(level=r.uniform(110, 200), tint=r.uniform(-10, 10, 3), angle=r.uniform(0, 180))
        elif kind == "wood":
            p.update(light_c=np.array([r.uniform(180, 225), r.uniform(130, 170), r.uniform(80, 110)], np.float32),
                     dark_c=np.array([r.uniform(110, 150), r.uniform(70, 100), r.uniform(35, 60)], np.float32),
                     freq=r.uniform(6, 14), angle=r.uniform(-15, 15))
        return p

    def sample(self, cat: Category, rng: np.random.Generator, size: int) -> np.ndarray:
        p = self.params[cat.key]
        fn = getattr(self, f"_draw_{p['kind'] if p['kind'] not in ('screw', 'bolt') else 'fastener'}")
        img = fn(p, rng, size)
        gain = np.float32(rng.uniform(0.9, 1.1))
        noise = np.roll(_sensor_noise(size), (int(rng.integers(size)), int(rng.integers(size))), axis=(0, 1))
        img = img.astype(np.float32) * gain + noise
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # -- parts (on a plain background) ------------------------------------------------------------
    @staticmethod
    def _polar(rng, size, radius):
        s = size
        cy, cx = s / 2 + rng.uniform(-0.06, 0.06) * s, s / 2 + rng.uniform(-0.06, 0.06) * s
        R = radius * s * rng.uniform(0.92, 1.08)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        return yy - cy, xx - cx, np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx), R

    @staticmethod
    def _metal_shade(p, rng, theta, r, R):
        light = p["light"] + rng.uniform(-0.6, 0.6)
        rings = 0.04 * np.sin(r * rng.uniform(1.5, 3.0))  # turning marks
        shade = 0.78 + 0.22 * np.cos(theta - light) * np.clip(r / R, 0, 1) + rings
        return p["metal"] * shade[..., None]

    def _draw_washer(self, p, rng, size):
        _, _, r, th, R = self._polar(rng, size, p["radius"])
        Ri = R * p["ratio"]
        alpha = _smooth_alpha(np.minimum(R - r, r - Ri))
        bevel = np.clip(np.minimum(R - r, r - Ri) / 3.0, 0.6, 1.0)
        obj = self._metal_shade(p, rng, th, r, R) * bevel[..., None]
        bg = _background(rng, size, p["bg"])
        return bg * (1 - alpha[..., None]) + obj * alpha[..., None]

    def _draw_gear(self, p, rng, size):
        dy, dx, r, th, R = self._polar(rng, size, p["radius"])
        rot = rng.uniform(0, 2 * np.pi)
        n = p["teeth"]
        t = ((th + rot) * n / (2 * np.pi)) % 1.0
        tooth = np.clip((0.3 - np.abs(t - 0.5)) * 7, 0, 1)
        Rr = R * (1 - p["depth"])
        prof = Rr + (R - Rr) * tooth
        hole = R * p["hole"]
        sd = np.minimum(prof - r, r - hole)
        if p["holes"]:
            for k in range(p["holes"]):
                a = rot + 2 * np.pi * k / p["holes"]
                rc = (hole + Rr) / 2
                hr = (Rr - hole) * 0.28
                d = np.hypot(dx - rc * np.cos(a), dy - rc * np.sin(a))
                sd = np.minimum(sd, d - hr)
        alpha = _smooth_alpha(sd)
        obj = self._metal_shade(p, rng, th, r, R)
        face = np.where(r > Rr * 0.97, 0.88, 1.0)[..., None]  # teeth a bit darker than the face
        edge = np.clip(sd / 2.5, 0.65, 1.0)[..., None]
        bg = _background(rng, size, p["bg"])
        return bg * (1 - alpha[..., None]) + obj * face * edge * alpha[..., None]

    def _draw_fastener(self, p, rng, size):
        s = size
        ang = p["base_angle"] + rng.uniform(-0.35, 0.35)
        cy, cx = s / 2 + rng.uniform(-0.05, 0.05) * s, s / 2 + rng.uniform(-0.05, 0.05) * s
        sc = s * rng.uniform(0.93, 1.07)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        u = (xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)  # along the axis
        v = -(xx - cx) * math.sin(ang) + (yy - cy) * math.cos(ang)  # across
        L, d, hw = p["length"] * sc, p["diam"] * sc / 2, p["head"] * sc / 2
        hl = hw * (0.55 if p["kind"] == "bolt" else 0.7)
        u0 = -L / 2  # head/shank junction
        tip = d * 0.9
        # shank with a pointed (screw) or chamfered (bolt) end
        end = L / 2
        taper = np.clip((end - u) / tip, 0, 1) if p["kind"] == "screw" else np.clip((end - u) / (tip * 0.3), 0.7, 1)
        thread_zone = u > u0 + L * (1 - p["thread"])
        pitch = p["pitch"] * sc
        crest = 0.08 * d * np.abs(np.sin(np.pi * (u + 0.35 * v) / pitch)) * thread_zone
        sd_shank = np.minimum.reduce([d * taper + crest - np.abs(v), u - u0 + 1, end - u])
        if p["kind"] == "bolt":
            sd_head = np.minimum(hw - np.abs(v), np.minimum(u - (u0 - hl), u0 + 1 - u))
        else:  # pan head: half-ellipse
            e = ((u - u0) / hl) ** 2 + (v / hw) ** 2
            sd_head = np.where(u <= u0 + 1, (1 - np.sqrt(e)) * min(hl, hw), -5.0)
        alpha = _smooth_alpha(np.maximum(sd_shank, sd_head))
        cyl = np.sqrt(np.clip(1 - (v / np.maximum(d * taper, 1)) ** 2, 0, 1))
        thread_shade = np.where(thread_zone, 0.72 + 0.28 * np.abs(np.cos(np.pi * (u + 0.35 * v) / pitch)), 1.0)
        shank = 0.45 + 0.6 * cyl * thread_shade
        if p["kind"] == "bolt":
            head = np.select([v < -hw / 3, v > hw / 3], [0.7, 0.85], 1.0)  # three hex faces
        else:
            head = 0.5 + 0.55 * np.sqrt(np.clip(1 - ((u - u0) / hl) ** 2 - (v / hw) ** 2, 0, 1))
        shade = np.where(sd_head > sd_shank, head, shank)
        obj = p["metal"] * shade[..., None]
        bg = _background(rng, size, p["bg"])
        return bg * (1 - alpha[..., None]) + obj * alpha[..., None]

    def _draw_pcb(self, p, rng, size):
        s = size
        b = int(s * p["cover"])
        board = np.empty((b, b, 3), np.float32)
        board[:] = p["board"]
        board += smooth_noise(b, b, rng, cells=4, octaves=2)[..., None] * 8
        cu = tuple(float(c) for c in p["copper"])
        w = max(1, round(b * 0.012))
        for tr in p["tracks"]:
            pts = np.round(tr * (b - 1)).astype(np.int32)
            cv2.polylines(board, [pts], False, cu, thickness=w, lineType=cv2.LINE_AA)
            for q in (pts[0], pts[-1]):
                cv2.circle(board, tuple(int(t) for t in q), w + 2, cu, -1, cv2.LINE_AA)
                cv2.circle(board, tuple(int(t) for t in q), max(1, w - 1), (30, 30, 30), -1, cv2.LINE_AA)
        cy, cx = (p["chip"] * b).astype(int)
        cs = int(p["chip_size"] * b)
        for k in range(6):  # chip pins
            for side in (-1, 1):
                py = cy + int((k - 2.5) * cs / 6)
                cv2.rectangle(board, (cx + side * cs // 2, py - 1), (cx + side * (cs // 2 + cs // 6), py + 1), cu, -1)
        cv2.rectangle(board, (cx - cs // 2, cy - cs // 2), (cx + cs // 2, cy + cs // 2), (28, 28, 32), -1)
        cv2.circle(board, (cx - cs // 3, cy - cs // 3), max(1, cs // 12), (70, 70, 75), -1)
        # place on the background with a small rotation and shift
        ang = rng.uniform(-8, 8)
        off = rng.uniform(-0.05, 0.05, 2) * s
        m = cv2.getRotationMatrix2D((b / 2, b / 2), ang, 1.0)
        m[:, 2] += (s - b) / 2 + off
        obj = cv2.warpAffine(board, m, (s, s), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(np.ones((b, b), np.float32), m, (s, s), flags=cv2.INTER_LINEAR)[..., None]
        bg = _background(rng, size, p["bg"])
        light = 0.9 + 0.1 * np.cos(np.linspace(0, np.pi, s) + rng.uniform(0, np.pi))[None, :, None]
        return bg * (1 - alpha) + obj * light * alpha

    # -- surfaces (textures, fill the frame) ------------------------------------------------------
    @staticmethod
    def _rotated_grid(rng, size, angle_deg):
        a = math.radians(angle_deg)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        return xx * math.cos(a) + yy * math.sin(a), -xx * math.sin(a) + yy * math.cos(a)

    def _draw_woven(self, p, rng, size):
        per = p["period"] * rng.uniform(0.9, 1.1)
        u, v = self._rotated_grid(rng, size, rng.uniform(-4, 4))
        jit = smooth_noise(size, size, rng, cells=3, octaves=2) * per * 0.15
        u, v = u + jit + rng.uniform(0, per * 2), v - jit + rng.uniform(0, per * 2)
        i, j = np.floor(u / per), np.floor(v / per)
        fu, fv = u / per - i, v / per - j
        over = ((i + j) % 2 == 0) if not p["twill"] else (((i + j) % 4) < 2)
        prof_warp = np.sin(np.pi * fu) ** 0.6  # across a vertical thread
        prof_weft = np.sin(np.pi * fv) ** 0.6
        warp = p["warp_c"] * (0.55 + 0.45 * prof_warp)[..., None]
        weft = p["weft_c"] * (0.55 + 0.45 * prof_weft)[..., None]
        img = np.where(over[..., None], warp, weft)
        fib = rng.normal(0, 5, (size, size, 1)).astype(np.float32)
        return img + fib + smooth_noise(size, size, rng, 2, 2)[..., None] * 10

    def _draw_brushed(self, p, rng, size):
        big = int(size * 1.5)
        n = rng.normal(0, 1, (big, big)).astype(np.float32)
        n = cv2.blur(n, (41, 1)) * 6.4
        n = n + cv2.blur(rng.normal(0, 1, (big, big)).astype(np.float32), (9, 1)) * 1.5
        m = cv2.getRotationMatrix2D((big / 2, big / 2), p["angle"] + rng.uniform(-5, 5), 1.0)
        n = cv2.warpAffine(n, m, (big, big), borderMode=cv2.BORDER_REFLECT)
        o = (big - size) // 2
        n = n[o:o + size, o:o + size]
        xx = np.linspace(-1, 1, size, dtype=np.float32)
        band = 18 * np.exp(-((xx[None, :] - rng.uniform(-0.6, 0.6)) ** 2) / 0.15)
        lvl = p["level"] + n * 9 + band
        return lvl[..., None] + p["tint"]

    def _draw_wood(self, p, rng, size):
        _, v = self._rotated_grid(rng, size, p["angle"] + rng.uniform(-3, 3))
        warp = smooth_noise(size, size, rng, cells=2, octaves=3)
        t = np.sin((v / size * p["freq"] + warp * 1.6 + rng.uniform(0, 10)) * 2 * np.pi) * 0.5 + 0.5
        t = t ** 1.6
        fib = cv2.blur(rng.normal(0, 1, (size, size)).astype(np.float32), (15, 1)) * 10
        img = p["light_c"] * (1 - t[..., None]) + p["dark_c"] * t[..., None]
        return img + fib[..., None]
