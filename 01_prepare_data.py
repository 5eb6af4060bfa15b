"""Comic pages and hand-marked face boxes -> square face crops, plus a procedural demo data set.

Face detectors (OpenCV's Haar cascade, nagadomi's lbpcascade_animeface) fail on cartoon faces, so
the seed experiment (bryandlee/malnyun_faces) marked 500 face boxes by hand on comic pages, cut
square crops around them and upscaled the small ones to 256x256 with a CARN-based cartoon
super-resolution model. This file is that stage, and the source of the demo data every later
calm-gan script trains on.

Super-resolution network:
    N. Ahn, B. Kang, K.-A. Sohn, "Fast, Accurate, and Lightweight Super-Resolution with Cascading
    Residual Network", ECCV 2018, arXiv:1803.08664 (CARN).
    The variant here is CARN_V2 of yu45020/Waifu2x (Models.py, Common.py): CARN with
    residual-in-residual cascading blocks, 3x3 "single" convolutions, leaky ReLU(0.1) and
    concurrent spatial and channel squeeze-excitation (A. G. Roy, N. Navab, C. Wachinger,
    arXiv:1803.02579). Its key names and shapes are those of the released
    `model_check_points/CRAN_V2/CARN_model_checkpoint.pt`, loaded strictly; its tiling follows
    `utils/prepare_images.py` (ImageSplitter: replicate padding, overlapping tiles).
    No weights ship with calm-gan: `--upscaler lanczos` (default) needs none.

Run:
    python 01_prepare_data.py --pages pages/ --boxes boxes.csv --out data/faces            # Lanczos
    python 01_prepare_data.py --pages pages/ --boxes boxes.csv --out data/faces \\
        --upscaler carn --sr-weights CARN_model_checkpoint.pt --margin 0.2 --dedupe
    python 01_prepare_data.py --demo 500 --out data/demo                 # no pages needed
    python 01_prepare_data.py --demo 16 --out data/demo32 --size 32    # tiny, for CPU tests
    python 01_prepare_data.py --demo 4000 --demo-style source --size 32 --out data/source32
                                 # shaded colour faces: the source domain (stand-in for FFHQ)
    python 01_prepare_data.py mark --pages pages/ --boxes boxes.csv     # draw boxes in a browser
                                                  # at http://127.0.0.1:8765/, saved at each change
    The flag forms above are shorthands for the subcommands `prepare`, `demo` (`--demo N` is
    `demo --n N`) and `mark`; `python 01_prepare_data.py prepare -h` lists every flag.

Inputs:
    pages    png, jpg, webp, bmp, gif (first frame); any mode (1, L, LA, P, RGBA, CMYK, I;16)
             becomes RGB, transparency composited on white, EXIF orientation applied.
    boxes    CSV with header `filename,x0,y0,x1,y1[,label]` in page pixels (x1, y1 exclusive;
             filename relative to --pages), or a JSON list of objects with the same keys.
Outputs (DATA/):
    00000.png ...       square RGB crops at --size
    index.csv           file,page,x0,y0,x1,y1,label,crop_x0,crop_y0,crop_side
    dataset.json        count, size and how the set was made
    overview/contact_sheet.png   a numbered grid of all crops (in a sub-folder, so that training
                        and FID, which read the images directly in DATA, never count it as a face)
    Crops are written first, index.csv is rewritten atomically after every page, so a run that
    stops half-way leaves a consistent, usable folder.
Importable (tests and later scripts load this file with importlib):
    make_demo_faces(n, size, seed, style) -> [PIL.Image]; write_demo(out_dir, n, size, seed, overwrite, style)
    make_demo_faces_with_labels(n, size, seed, style, start) -> ([PIL.Image], [dict]): the same faces and
        what was drawn for each (hair, eyes, nose, mouth, flags, yaw, roll, ...: FACE_LABELS)
    read_boxes(path) -> [Box]; square_around(box, margin); crop_square(page, left, top, side, pad)
    load_carn(path, device) -> CARNV2; carn_upscale(model, img, size); make_mark_server(pages, boxes)

Map (the method, top to bottom; a copier cuts at the plumbing line):
    1. Constants
    2. Square crop geometry: `square_around`, `crop_square`, `resize_square`, and `crop_face`
       (one box -> one square face crop: the step `prepare` repeats)
    3. CARN_V2 network (`CARNV2`), `load_carn`, tiled x2 upscaling (`carn_x2`, `carn_upscale`)
    4. Perceptual hash for --dedupe (`phash`, `hamming`), `make_contact_sheet`
    ---- plumbing line ----
    5. Page reading (mode conversion) and box files (parsing, validation)
    6. Atomic writers and the output folder
    7. Demo faces: line-art cartoon faces (target style), shaded colour faces (source style)
    8. prepare(args), demo(args)
    9. mark(args): a local web page to draw the boxes
    10. CLI
"""
import argparse
import codecs
import colorsys
import csv
import io
import json
import locale
import math
import os
import random
import re
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps, UnidentifiedImageError

import ops  # noqa: F401  (checks the torch version: one line and exit on torch < 2.6)
from ops.device import DEVICE_HELP, resolve_device

# ---------------------------------------------------------------------------------------------
# 1. Constants
# ---------------------------------------------------------------------------------------------
PAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
BOX_FIELDS = ("filename", "x0", "y0", "x1", "y1")
INDEX_FIELDS = ("file", "page", "x0", "y0", "x1", "y1", "label", "crop_x0", "crop_y0", "crop_side")
CARN_WEIGHTS_SOURCE = ("the released CARN_V2 weights are CARN_model_checkpoint.pt in "
                       "model_check_points/CRAN_V2/ of https://github.com/yu45020/Waifu2x")
CARN_PARAMETERS = 2_149_607       # parameter count of the released CARN_V2 (Waifu2x README table)
PHASH_BITS = 64                   # 8x8 low-frequency DCT block, one bit per coefficient
CONTACT_THUMB = 64                # contact-sheet thumbnail side in pixels
CONTACT_MAX_COLUMNS = 25          # 500 faces -> a 25 x 20 grid, like the seed's overview


class PrepareError(Exception):
    """Bad input: the message names the file (and row) and what is wrong."""


# ---------------------------------------------------------------------------------------------
# 2. Square crop geometry
# ---------------------------------------------------------------------------------------------
def square_around(box, margin):
    """(left, top, side) of the square centred on the box with side = max(w, h) * (1 + margin).

    Integer pixels: side rounded to nearest, left/top = round-half-up of centre - side / 2, so
    margin 0 on a square box gives the box itself.
    """
    side = max(1, int(round(max(box.w, box.h) * (1.0 + margin))))
    left = math.floor((box.x0 + box.x1) / 2 - side / 2 + 0.5)
    top = math.floor((box.y0 + box.y1) / 2 - side / 2 + 0.5)
    return left, top, side


def crop_square(page, left, top, side, pad_color=(255, 255, 255)):
    """The side x side window of `page` at (left, top); parts off the page are `pad_color`."""
    out = Image.new("RGB", (side, side), tuple(pad_color))
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + side, page.width), min(top + side, page.height)
    if x1 > x0 and y1 > y0:
        out.paste(page.crop((x0, y0, x1, y1)), (x0 - left, y0 - top))
    return out


RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}


def resize_square(img, size, upscaler="lanczos", sr=None):
    """Resize a square crop to size x size; unchanged when it already is. `sr` upscales (CARN)."""
    if img.width == size:
        return img
    if upscaler == "carn" and img.width < size:
        return sr(img, size)
    return img.resize((size, size), RESAMPLE["bicubic" if upscaler == "bicubic" else "lanczos"])


def crop_face(page, box, margin, size, pad_color=(255, 255, 255), upscaler="lanczos", sr=None):
    """One hand-marked box -> one square face crop at size x size, and where it was cut.

    The square is centred on the box with side max(w, h) * (1 + margin) (`square_around`), padded
    with pad_color where it leaves the page (`crop_square`), then resized (`resize_square`: Lanczos,
    or CARN x2 passes then Lanczos). Returns (crop, (left, top, side)) in page pixels."""
    left, top, side = square_around(box, margin)
    return resize_square(crop_square(page, left, top, side, pad_color), size, upscaler, sr), (left, top, side)


# ---------------------------------------------------------------------------------------------
# 3. CARN_V2 (yu45020/Waifu2x) for x2 cartoon super-resolution
# ---------------------------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """Convolution + activation; `m` = [conv, act] (Waifu2x Common.ConvBlock)."""

    def __init__(self, c_in, c_out, kernel_size, act):
        super().__init__()
        self.m = nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2), act)

    def forward(self, x):
        return self.m(x)


class ResidualBlock(nn.Module):
    """act(conv(act(conv(x))) + x): the residual block of CARN, Sec. 3.1 (Waifu2x ResidualFixBlock)."""

    def __init__(self, channels, act):
        super().__init__()
        self.act = act
        self.m = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), act,
                               nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return self.act(self.m(x) + x)


class SpatialChannelSE(nn.Module):
    """Concurrent spatial and channel squeeze-excitation, x * cSE(x) + x * sSE(x) (Roy et al. 2018).

    cSE: global average -> Linear(C, hidden) -> ReLU -> Linear(hidden, C) -> sigmoid, per channel.
    sSE: 1x1 conv to one map -> sigmoid, per pixel. hidden = max(C // reduction, 4).
    """

    def __init__(self, channels, reduction):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.channel_excite = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(),
                                            nn.Linear(hidden, channels), nn.Sigmoid())
        self.spatial_excite = nn.Sequential(nn.Conv2d(channels, 1, 1, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c = x.shape[:2]
        channel = self.channel_excite(x.mean(dim=(2, 3))).view(b, c, 1, 1)   # [B, C, 1, 1]
        spatial = self.spatial_excite(x)                                      # [B, 1, H, W]
        return x * channel + x * spatial


class CascadingBlock(nn.Module):
    """CARN's cascading block (Sec. 3.2, Fig. 3b) as Waifu2x CARN_Block(repeat=3, SEBlock=True).

    `blocks` = [RB, SE, RB, SE, RB, SE] and `singles` = three 3x3 ConvBlocks that fuse the
    concatenated features (64 * (i + 2) -> 64 channels). The reference iterates
    zip(blocks, singles), which stops after three steps, so only blocks[0] (RB), blocks[1] (SE)
    and blocks[2] (RB) run; blocks[3..5] are loaded but unused. Kept as is for identical outputs.
    """

    def __init__(self, channels, act, repeat=3):
        super().__init__()
        layers = []
        for _ in range(repeat):
            layers += [ResidualBlock(channels, act), SpatialChannelSE(channels, reduction=channels)]
        self.blocks = nn.Sequential(*layers)
        self.singles = nn.Sequential(*[ConvBlock(channels * (i + 2), channels, 3, act)
                                       for i in range(repeat)])

    def forward(self, x):
        cascade = x
        for i, single in enumerate(self.singles):
            cascade = torch.cat([cascade, self.blocks[i](x)], dim=1)   # [B, C * (i + 2), H, W]
            x = single(cascade)                                         # [B, C, H, W]
        return x


class UpSampleBlock(nn.Module):
    """x2 sub-pixel upsampling: conv to 4C channels, act, PixelShuffle(2) (`m.0.0` in the keys)."""

    def __init__(self, channels, act):
        super().__init__()
        self.m = nn.Sequential(nn.Sequential(nn.Conv2d(channels, 4 * channels, 3, padding=1), act,
                                             nn.PixelShuffle(2)))

    def forward(self, x):
        return self.m(x)


class CARNV2(nn.Module):
    """Waifu2x CARN_V2(color_channels=3, mid_channels=64, scale=2, LeakyReLU(0.1), SEBlock=True,
    repeat_blocks=3, single_conv_size=3): CARN (Sec. 3.2, Fig. 2) with a global residual
    around the three cascading blocks. Input [B, 3, H, W] in [0, 1] -> [B, 3, 2H, 2W], unclamped.
    """

    def __init__(self, channels=64, n_blocks=3):
        super().__init__()
        act = nn.LeakyReLU(0.1)
        self.entry_block = ConvBlock(3, channels, 3, act)
        self.blocks = nn.Sequential(*[CascadingBlock(channels, act) for _ in range(n_blocks)])
        self.singles = nn.Sequential(*[ConvBlock(channels * (i + 2), channels, 3, act)
                                       for i in range(n_blocks)])
        self.upsampler = UpSampleBlock(channels, act)
        self.exit_conv = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x):
        assert x.ndim == 4 and x.shape[1] == 3, f"expected [B, 3, H, W], got {list(x.shape)}"
        x = self.entry_block(x)                                         # [B, 64, H, W]
        res = cascade = x
        for block, single in zip(self.blocks, self.singles):
            cascade = torch.cat([cascade, block(x)], dim=1)             # [B, 64 * (i + 2), H, W]
            x = single(cascade)                                         # [B, 64, H, W]
        x = self.upsampler(x + res)                                     # [B, 64, 2H, 2W]
        return self.exit_conv(x)                                        # [B, 3, 2H, 2W]


def load_carn(path, device="cpu"):
    """Build CARNV2 and load the released weights strictly.

    The released file is a state dict saved from nn.Sequential(tofp16(), model.half()), so its
    keys carry a `1.` prefix and its tensors are fp16 (yu45020/Waifu2x Models.py loading recipe); a bare
    state dict (no prefix, or `module.`) is accepted too. Tensors are cast to float32.
    """
    if not path:
        raise PrepareError(f"--upscaler carn needs --sr-weights FILE: {CARN_WEIGHTS_SOURCE}")
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: CARN weights file not found ({CARN_WEIGHTS_SOURCE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PrepareError(f"{path}: cannot load as a PyTorch state dict "
                           f"({e.__class__.__name__}: {first})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise PrepareError(f"{path}: expected a state dict of tensors (the CARN_V2 weights file)")
    for prefix in ("1.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    model = CARNV2()
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {name} (e.g. {keys[0]})")
        raise PrepareError(f"{path}: not a CARN_V2 state dict: {', '.join(parts)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval().to(device)


@torch.no_grad()
def carn_x2(model, x, tile=64, overlap=3):
    """One x2 pass over [1, 3, H, W] in [0, 1], tile by tile (Waifu2x ImageSplitter scheme).

    The image is replicate-padded by `overlap`; each tile of `tile` pixels is upscaled with
    `overlap` context on every side, and only its centre is kept. tile <= 0: one tile.
    Returns [1, 3, 2H, 2W] clamped to [0, 1].
    """
    _, c, h, w = x.shape
    assert c == 3, f"expected [1, 3, H, W], got {list(x.shape)}"
    tile = max(h, w) if tile <= 0 else tile
    xp = F.pad(x, (overlap, overlap, overlap, overlap), mode="replicate")
    out = x.new_zeros(1, 3, 2 * h, 2 * w)
    for i in range(0, h, tile):
        for j in range(0, w, tile):
            th, tw = min(tile, h - i), min(tile, w - j)
            y = model(xp[:, :, i:i + th + 2 * overlap, j:j + tw + 2 * overlap])
            out[:, :, 2 * i:2 * (i + th), 2 * j:2 * (j + tw)] = \
                y[:, :, 2 * overlap:2 * (overlap + th), 2 * overlap:2 * (overlap + tw)]
    return out.clamp_(0, 1)


def carn_upscale(model, img, size, tile=64, overlap=3):
    """x2 CARN passes until the crop is at least `size`, then an exact Lanczos resize to size."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    x = x.to(device)                                                     # [1, 3, s, s]
    while x.shape[-1] < size:
        x = carn_x2(model, x, tile=tile, overlap=overlap)                # [1, 3, 2s, 2s]
    a = (x[0].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    out = Image.fromarray(a, "RGB")
    return out if out.width == size else out.resize((size, size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------------
# 4. Perceptual hash (--dedupe) and the contact sheet
# ---------------------------------------------------------------------------------------------
def _dct_matrix(n):
    """Orthonormal DCT-II matrix D (n x n): D @ v is the DCT of v."""
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * m + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_DCT32 = _dct_matrix(32)


def phash(img):
    """64-bit perceptual hash: 32x32 grey, 2-D DCT, the 8x8 lowest frequencies vs their median."""
    g = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ g @ _DCT32.T)[:8, :8].ravel()
    bits = low > np.median(low)
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a, b):
    return bin(a ^ b).count("1")


def make_contact_sheet(images, numbers=None, thumb=CONTACT_THUMB, columns=None):
    """A numbered grid of thumbnails (label under each). Returns an RGB image."""
    n = len(images)
    numbers = list(range(n)) if numbers is None else list(numbers)
    columns = columns or max(1, min(CONTACT_MAX_COLUMNS, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / columns))
    label_h, gap = 14, 4
    cell_w, cell_h = thumb + gap, thumb + label_h + gap
    sheet = Image.new("RGB", (columns * cell_w + gap, rows * cell_h + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, (img, num) in enumerate(zip(images, numbers)):
        x = gap + (k % columns) * cell_w
        y = gap + (k // columns) * cell_h
        sheet.paste(img.convert("RGB").resize((thumb, thumb), Image.Resampling.LANCZOS), (x, y))
        draw.text((x + 1, y + thumb + 1), str(num), fill=(0, 0, 0), font=font)
    return sheet


# ---- plumbing: data, checkpoints, formats, settings, distributed, run folder, CLI ----
# ---------------------------------------------------------------------------------------------
# 5. Pages and box files (reading, validation)
# ---------------------------------------------------------------------------------------------
def to_rgb(img, background=(255, 255, 255)):
    """Any PIL mode -> RGB; alpha (or a palette/grey transparency key) composited on `background`.

    16- and 32-bit integer greyscale (I;16, I) is scaled from 0..65535 to 0..255, float (F) from
    0..1; CMYK uses PIL's conversion (exact when K = 0).
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        a = a * 255.0 if img.mode == "F" else a / 257.0
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _oriented_size(img):
    """Size after EXIF orientation (tags 5-8 swap width and height), without decoding pixels."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


_WARNINGS_LOCK = threading.Lock()


def _open_page(path):
    """Image.open, refusing a page that declares more pixels than PIL's decompression-bomb limit
    (Image.MAX_IMAGE_PIXELS): such a header (30000 x 30000, often with little data behind it)
    would cost gigabytes to decode, or decode into a mostly black page."""
    with _WARNINGS_LOCK, warnings.catch_warnings():  # the mark server opens pages from several threads
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked just below instead
        img = Image.open(path)
    w, h = img.size
    if w * h > Image.MAX_IMAGE_PIXELS:
        img.close()
        raise Image.DecompressionBombError(f"{w}x{h} = {w * h} pixels, over PIL's decompression-bomb limit "
                                           f"of {Image.MAX_IMAGE_PIXELS}")
    return img


_BAD_PAGE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def page_size(path):
    """(width, height) of a page as load_page will return it; raises PrepareError if unreadable."""
    try:
        with _open_page(path) as img:
            return _oriented_size(img)
    except _BAD_PAGE as e:
        raise PrepareError(f"{path}: cannot read image ({e.__class__.__name__}: {e})") from None


def load_page(path):
    """Read a page (first frame of an animated file) as RGB with EXIF orientation applied."""
    try:
        with _open_page(path) as img:
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except _BAD_PAGE as e:
        raise PrepareError(f"{path}: cannot read image ({e.__class__.__name__}: {e})") from None


class Box:
    """One face box: page file name, pixel corners (x1, y1 exclusive), label, and its source row."""

    __slots__ = ("filename", "x0", "y0", "x1", "y1", "label", "where")

    def __init__(self, filename, x0, y0, x1, y1, label="", where=""):
        self.filename, self.label, self.where = filename, label, where
        self.x0, self.y0, self.x1, self.y1 = x0, y0, x1, y1

    @property
    def w(self):
        return self.x1 - self.x0

    @property
    def h(self):
        return self.y1 - self.y0

    def as_tuple(self):
        return (self.x0, self.y0, self.x1, self.y1)


def _coordinate(value, name, where):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PrepareError(f"{where}: {name} is {value!r}, not a number") from None
    if not math.isfinite(v):
        raise PrepareError(f"{where}: {name} is {value!r}, not a finite number")
    return int(round(v))


def _box_from_record(rec, where):
    missing = [k for k in BOX_FIELDS if rec.get(k) in (None, "")]
    if missing:
        raise PrepareError(f"{where}: missing {', '.join(missing)}")
    label = rec.get("label")
    return Box(str(rec["filename"]).strip(),
               *(_coordinate(rec[k], k, where) for k in BOX_FIELDS[1:]),
               label="" if label is None else str(label), where=where)


def read_boxes(path):
    """Read a box file: CSV with header `filename,x0,y0,x1,y1[,label]`, or a JSON list.

    JSON items are objects with the same keys, or lists [filename, x0, y0, x1, y1(, label)].
    Rows are named `FILE row N` with N the CSV line number (header = row 1) or the JSON index.
    """
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: box file not found")
    text = _decode_box_file(path)
    boxes = []
    if path.lower().endswith(".json") or text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise PrepareError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(items, list):
            raise PrepareError(f"{path}: expected a JSON list of boxes")
        for i, item in enumerate(items):
            where = f"{path} item {i}"
            if isinstance(item, (list, tuple)):
                item = dict(zip(BOX_FIELDS + ("label",), item))
            if not isinstance(item, dict):
                raise PrepareError(f"{where}: expected an object with keys {','.join(BOX_FIELDS)}")
            boxes.append(_box_from_record(item, where))
        return boxes
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if any(k not in header for k in BOX_FIELDS):
        raise PrepareError(f"{path}: header must be filename,x0,y0,x1,y1[,label], got "
                           f"{','.join(header) or 'nothing'}")
    reader.fieldnames = header
    for rec in reader:
        where = f"{path} row {reader.line_num}"
        if all(v in (None, "") for v in rec.values()):
            continue                                   # blank line
        for key in ("filename", "label"):              # undo csv_text's guard
            if isinstance(rec.get(key), str):
                rec[key] = _unguard(rec[key])
        boxes.append(_box_from_record(rec, where))
    return boxes


def _decode_box_file(path):
    """The text of a box file: UTF-8 (with or without a BOM), else the locale's encoding, else
    cp949 (Korean spreadsheets save CSV so); anything else is one line saying what to do."""
    with open(path, "rb") as f:
        data = f.read()
    tried = []
    for encoding in ("utf-8-sig", locale.getpreferredencoding(False), "cp949"):
        if codecs.lookup(encoding).name in tried:
            continue
        tried.append(codecs.lookup(encoding).name)
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if tried[-1] != "utf-8-sig":
            warn(f"{path} is not UTF-8; read it as {encoding} (save it as UTF-8 to be sure)")
        return text
    raise PrepareError(f"{path}: not UTF-8 text (nor {', '.join(tried[1:])}); save it as UTF-8 "
                       f"(in a spreadsheet: CSV UTF-8) or convert it, e.g. iconv -f ENCODING -t utf-8")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula


def csv_text(value):
    """A text cell that a spreadsheet shows as text, never runs as a formula (OWASP CSV injection):
    '=1+1' is written as "'=1+1". read_boxes removes the apostrophe again (_unguard)."""
    value = str(value)
    if value.startswith(FORMULA_START) or (value[:1] == "'" and value[1:2] in FORMULA_START + ("'",)):
        return "'" + value
    return value


def _unguard(value):
    return value[1:] if value[:1] == "'" and value[1:2] in FORMULA_START + ("'",) and value[1:2] else value


def write_boxes(path, boxes):
    """Write boxes as CSV (the format read_boxes reads), atomically."""
    def body(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(BOX_FIELDS + ("label",))
        for b in boxes:
            w.writerow([csv_text(b.filename), b.x0, b.y0, b.x1, b.y1, csv_text(b.label)])
    write_atomic(path, body, text=True)


def validate_boxes(boxes, pages_dir):
    """Check every box before any work. Returns ({filename: (w, h)}, [unreadable page names]).

    Errors (PrepareError naming the row): a missing page file, a box of zero area, a box that is
    not inside its page. An unreadable page is a warning: its boxes are skipped.
    """
    sizes, unreadable = {}, []
    for b in boxes:
        if b.x1 <= b.x0 or b.y1 <= b.y0:
            raise PrepareError(f"{b.where}: box {b.as_tuple()} has zero area (need x1 > x0 and y1 > y0)")
        if b.filename not in sizes and b.filename not in unreadable:
            path = os.path.join(pages_dir, b.filename)
            if not os.path.isfile(path):
                raise PrepareError(f"{b.where}: page file {path} not found")
            try:
                sizes[b.filename] = page_size(path)
            except PrepareError as e:
                warn(f"{e}; its boxes are skipped")
                unreadable.append(b.filename)
        if b.filename in sizes:
            w, h = sizes[b.filename]
            if b.x0 < 0 or b.y0 < 0 or b.x1 > w or b.y1 > h:
                raise PrepareError(f"{b.where}: box {b.as_tuple()} is outside its page "
                                   f"{b.filename} ({w}x{h})")
    return sizes, unreadable


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# 6. Atomic writers and the output folder (--overwrite removes only what 01 wrote)
# ---------------------------------------------------------------------------------------------
def write_atomic(path, write, text=False):
    """Call write(f) on a temporary file beside `path`, then os.replace it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    ops.chmod_like_open(fd)  # mkstemp makes 0600; the user's umask decides
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8", "newline": ""} if text else {})) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


SHEET_NAME = os.path.join("overview", "contact_sheet.png")  # kept out of the image folder itself


def save_png(img, path):
    write_atomic(path, lambda f: img.save(f, format="PNG"))


def write_index(out_dir, rows):
    def body(f):
        w = csv.DictWriter(f, fieldnames=INDEX_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: csv_text(v) if k in ("page", "label") else v for k, v in r.items()} for r in rows)
    write_atomic(os.path.join(out_dir, "index.csv"), body, text=True)


def write_json(path, obj):
    write_atomic(path, lambda f: f.write(json.dumps(obj, indent=2) + "\n"), text=True)


_CROP_NAME = re.compile(r"^\d{5,}\.png$")


def _inside(path, folder):
    """True if `path` is `folder` or lies inside it (real paths, links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _files_written_before(out_dir):
    """The files an earlier run of this script wrote into out_dir, as its index.csv lists them
    (crop names only: a name with a folder in it is not ours), plus index.csv, dataset.json and
    the contact sheet."""
    names = []
    index = os.path.join(out_dir, "index.csv")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8", newline="") as f:
                names = [r.get("file") or "" for r in csv.DictReader(f)]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise PrepareError(f"{index}: cannot read it to see which crops this script wrote ({e}); "
                               f"remove the old crops yourself or choose another --out") from None
    names = [n for n in names if _CROP_NAME.match(n)] + ["index.csv", "dataset.json", SHEET_NAME]
    return [os.path.join(out_dir, n) for n in names if os.path.isfile(os.path.join(out_dir, n))]


def prepare_out_dir(out_dir, overwrite, inputs=()):
    """Create the output folder; refuse an existing non-empty one unless overwrite.

    inputs: (what, path) pairs the run reads (the pages folder, the box file, weights). An output
    folder that is, contains or lies inside an input folder is refused, and so is one where an
    input file would be replaced. With overwrite, only the files an earlier run wrote are removed
    (the crops its index.csv lists, index.csv, dataset.json, overview/contact_sheet.png), one by
    one; anything else in the folder is left alone, and no folder is ever removed.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PrepareError(f"{out_dir}: exists and is not a folder")
    for what, path in inputs:
        if path is None or not os.path.exists(path):
            continue
        if os.path.isdir(path) and (_inside(out_dir, path) or _inside(path, out_dir)):
            relation = ("is" if os.path.realpath(out_dir) == os.path.realpath(path) else
                        "lies inside" if _inside(out_dir, path) else "contains")
            raise PrepareError(f"--out {out_dir} {relation} the {what} {path}: this run reads it, so "
                               f"nothing may be written or removed there; choose an output folder outside it")
        if os.path.isfile(path) and _inside(path, out_dir):
            rel = os.path.relpath(os.path.realpath(path), os.path.realpath(out_dir)).replace(os.sep, "/")
            if _CROP_NAME.match(rel) or rel in ("index.csv", "dataset.json", SHEET_NAME.replace(os.sep, "/")):
                raise PrepareError(f"--out {out_dir}: the {what} {path} has the name of a file this script "
                                   f"writes there; move it or choose another --out")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise PrepareError(f"{out_dir}: output folder exists and is not empty "
                               f"(pass --overwrite to replace its crops)")
        for path in _files_written_before(out_dir):
            os.unlink(path)
        left = sorted(n for n in os.listdir(out_dir) if _CROP_NAME.match(n))
        if left:
            warn(f"{out_dir}: {len(left)} numbered .png files ({left[0]}, ...) are not in its index.csv, so "
                 f"they are left as they are; new crops with the same names replace them")
    os.makedirs(out_dir, exist_ok=True)


# ---------------------------------------------------------------------------------------------
# 7. Demo data: procedural black-and-white line-art cartoon faces (the TARGET style) and shaded
#    colour faces with the same layout (the SOURCE style, for pretraining the demo's source models)
# ---------------------------------------------------------------------------------------------
def _head_outline(rng, cx, cy, hw, hh, labels=None):
    """Points of a head outline: superellipse, egg (tapered) or square jaw with a chin.
    `labels` (a dict), when given, receives the shape drawn."""
    shape = rng.choice(["oval", "round-square", "egg", "pear", "jaw"])
    if labels is not None:
        labels["head_shape"] = shape
    exponent = {"oval": 2.0, "round-square": rng.uniform(3.0, 4.5)}.get(shape, rng.uniform(2.0, 2.8))
    taper = {"egg": rng.uniform(0.12, 0.3), "pear": -rng.uniform(0.1, 0.25),
             "jaw": rng.uniform(0.05, 0.15)}.get(shape, 0.0)
    pts = []
    for k in range(72):
        t = 2 * math.pi * k / 72
        c, s = math.cos(t), math.sin(t)
        u = math.copysign(abs(c) ** (2 / exponent), c)
        v = math.copysign(abs(s) ** (2 / exponent), s)        # v > 0: lower half (y down)
        width = 1.0 - taper * v                                # taper > 0: narrower chin
        if shape == "jaw" and v > 0.55:
            width *= 1.0 - 0.9 * (v - 0.55)                    # straight jaw lines to a chin
        pts.append((cx + hw * u * width, cy + hh * v))
    return pts


def _draw_hair(rng, draw, outline, cx, cy, hw, hh, lw):
    """Draws one of seven hair styles on the head; returns the style's name."""
    style = rng.choice(["bald", "cap", "spiky", "curly", "bowl", "strands", "flat-top"])
    top = cy - hh
    if style in ("cap", "bowl"):
        line = cy - hh * rng.uniform(0.25, 0.55)
        upper = [p for p in outline if p[1] < line]
        upper.sort(key=lambda p: math.atan2(p[1] - cy, p[0] - cx))
        if style == "cap":                                       # wavy / zig-zag fringe
            n = rng.randint(3, 7)
            fringe = []
            for k in range(n + 1):
                x = cx + hw * (1 - 2 * k / n) * 0.95
                y = line + (hh * rng.uniform(0.05, 0.2) if k % 2 else 0)
                fringe.append((x, y))
            poly = upper + fringe
        else:
            poly = upper + [(cx + hw, line), (cx - hw, line)]
        if len(poly) >= 3:
            draw.polygon(poly, fill=0)
    elif style == "spiky":
        n = rng.randint(5, 9)
        for k in range(n):
            a = math.pi * (1.1 + 0.8 * k / (n - 1))
            bx, by = cx + hw * math.cos(a), cy + hh * math.sin(a)
            length = hh * rng.uniform(0.15, 0.35)
            tip = (bx + length * math.cos(a), by + length * math.sin(a))
            da = 0.18
            p1 = (cx + hw * math.cos(a - da), cy + hh * math.sin(a - da))
            p2 = (cx + hw * math.cos(a + da), cy + hh * math.sin(a + da))
            draw.polygon([p1, tip, p2], fill=0 if rng.random() < 0.6 else 255, outline=0, width=lw)
    elif style == "curly":
        n = rng.randint(6, 11)
        r = hw * rng.uniform(0.12, 0.2)
        fill = 0 if rng.random() < 0.4 else 255
        for k in range(n):
            a = math.pi * (1.05 + 0.9 * k / (n - 1))
            x, y = cx + hw * 0.95 * math.cos(a), cy + hh * 0.95 * math.sin(a)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=0, width=lw)
    elif style == "strands":
        for _ in range(rng.randint(3, 8)):
            x0 = cx + rng.uniform(-0.6, 0.6) * hw
            y0 = top + hh * 0.05
            x1 = x0 + rng.uniform(-0.4, 0.4) * hw
            y1 = top + hh * rng.uniform(0.25, 0.5)
            draw.line([(x0, y0), ((x0 + x1) / 2 + rng.uniform(-0.1, 0.1) * hw, (y0 + y1) / 2), (x1, y1)],
                      fill=0, width=lw)
    elif style == "flat-top":
        y1 = top + hh * rng.uniform(0.15, 0.3)
        draw.rectangle([cx - hw * 0.8, top - hh * rng.uniform(0.1, 0.3), cx + hw * 0.8, y1], fill=0)
    return style


def _draw_eyes(rng, draw, ex, ey, spacing, r, yaw, lw):
    style = rng.choice(["dot", "ring", "closed", "glare", "shades", "oval", "tired"])
    if style == "shades":
        w, h = r * 2.0, r * 1.3
        for side in (-1, 1):
            x = ex + side * spacing
            draw.rounded_rectangle([x - w, ey - h, x + w, ey + h], radius=h * 0.6, fill=0)
        draw.line([(ex - spacing + w, ey - h * 0.4), (ex + spacing - w, ey - h * 0.4)], fill=0, width=lw)
        return style
    pupil_dx = rng.uniform(-0.4, 0.4) * r
    for side in (-1, 1):
        x = ex + side * spacing
        rr = r * (1.0 - 0.35 * yaw * side)                       # far eye smaller when turned
        if style == "dot":
            draw.ellipse([x - rr * 0.6, ey - rr * 0.6, x + rr * 0.6, ey + rr * 0.6], fill=0)
        elif style in ("ring", "oval", "glare"):
            ry = rr * (1.4 if style == "oval" else 0.7 if style == "glare" else 1.0)
            draw.ellipse([x - rr, ey - ry, x + rr, ey + ry], fill=255, outline=0, width=lw)
            p = rr * (0.25 if style == "glare" else 0.45)
            draw.ellipse([x + pupil_dx - p, ey - p, x + pupil_dx + p, ey + p], fill=0)
        elif style == "closed":
            up = rng.random() < 0.5
            draw.arc([x - rr, ey - rr * 0.7, x + rr, ey + rr * 0.7], 200 if up else 20, 340 if up else 160,
                     fill=0, width=lw)
        else:                                                     # tired: half-closed lid
            draw.ellipse([x - rr, ey - rr * 0.6, x + rr, ey + rr * 0.6], fill=255, outline=0, width=lw)
            draw.chord([x - rr, ey - rr * 0.6, x + rr, ey + rr * 0.6], 180, 360, fill=0)
    return style


def _draw_face(rng, size, labels=None):
    """One face as an L image at size x size (drawn at a larger scale, then Lanczos-reduced).

    `labels` (a dict), when given, receives what was drawn (see FACE_LABELS); recording them
    draws no extra random numbers, so the image is the same with or without it."""
    lab = {} if labels is None else labels
    s = max(2 * size, 128)                                          # supersampled canvas
    img = Image.new("L", (s, s), 255)
    draw = ImageDraw.Draw(img)
    lw = max(math.ceil(s / size), 2, round(s * rng.uniform(0.010, 0.02)))  # line width, >= 1 output px
    scale = rng.uniform(0.6, 0.88)                                  # head size in the frame
    hw = s * scale * rng.uniform(0.3, 0.42)                         # half width
    hh = s * scale * rng.uniform(0.4, 0.5)                          # half height
    cx = s / 2 + rng.uniform(-0.06, 0.06) * s
    cy = s / 2 + rng.uniform(-0.03, 0.07) * s
    yaw = rng.uniform(-0.3, 0.3)                                    # features shift sideways
    fx = cx + yaw * hw * 0.6                                        # face centre line
    lab.update(style="target", line_width=lw * size / s, scale=scale, half_width=hw / s, half_height=hh / s,
               x=cx / s - 0.5, y=cy / s - 0.5, yaw=yaw)

    lab["ears"] = rng.random() < 0.75
    if lab["ears"]:                                                 # ears, behind the head
        er_w, er_h = hw * rng.uniform(0.12, 0.2), hh * rng.uniform(0.15, 0.25)
        for side in (-1, 1):
            ex = cx + side * hw * (0.97 - 0.25 * max(0.0, side * yaw))
            draw.ellipse([ex - er_w, cy - er_h, ex + er_w, cy + er_h], fill=255, outline=0, width=lw)
    outline = _head_outline(rng, cx, cy, hw, hh, lab)
    draw.polygon(outline, fill=255, outline=0, width=lw)

    inner = Image.new("L", (s, s), 0)                               # inside of the head, for shading
    ImageDraw.Draw(inner).polygon([(cx + 0.92 * (x - cx), cy + 0.94 * (y - cy)) for x, y in outline],
                                  fill=255)
    lab["shading"], lab["shading_side"] = "none", "none"
    if rng.random() < 0.5:                                          # hatching or screentone on one side
        side = rng.choice([-1, 1])
        layer = Image.new("L", (s, s), 0)
        ld = ImageDraw.Draw(layer)
        split = cx + side * hw * rng.uniform(0.2, 0.5)
        x_lo, x_hi = (split, s) if side > 0 else (0, split)
        hatching = rng.random() < 0.6
        lab["shading"], lab["shading_side"] = "hatching" if hatching else "screentone", "right" if side > 0 else "left"
        if hatching:
            step = lw * rng.uniform(2.5, 4.0)
            slope = rng.uniform(-1.2, 1.2)
            k = -s
            while k < 2 * s:
                ld.line([(k, 0), (k + slope * s, s)], fill=255, width=max(1, lw // 2))
                k += step
        else:
            step = lw * rng.uniform(2.5, 3.5)
            rdot = lw * 0.45
            y = 0.0
            while y < s:
                x = (step / 2) if int(y / step) % 2 else 0.0
                while x < s:
                    ld.ellipse([x - rdot, y - rdot, x + rdot, y + rdot], fill=255)
                    x += step
                y += step
        region = Image.new("L", (s, s), 0)
        ImageDraw.Draw(region).rectangle([x_lo, 0, x_hi, s], fill=255)
        img.paste(0, mask=ImageChops.multiply(ImageChops.multiply(layer, inner), region))

    lab["hair"] = _draw_hair(rng, draw, outline, cx, cy, hw, hh, lw)

    ey = cy + rng.uniform(-0.22, 0.02) * hh                         # eyes
    spacing = hw * rng.uniform(0.3, 0.5)
    r = hw * rng.uniform(0.08, 0.16)
    eye_style = _draw_eyes(rng, draw, fx, ey, spacing, r, yaw, lw)
    lab.update(eyes=eye_style, eye_y=(ey - cy) / hh, eye_spacing=spacing / hw, eye_size=r / hw,
               brows="none", thick_brows=False)

    if rng.random() < 0.85 and eye_style != "shades":               # brows: neutral, angry, sad, thick
        tilt = rng.choice([0.0, 0.35, -0.35]) * r
        lab["brows"] = "neutral" if tilt == 0 else "angry" if tilt > 0 else "sad"   # inner ends low: angry
        lab["thick_brows"] = rng.random() < 0.3
        bw = lw * (2.5 if lab["thick_brows"] else 1)
        by = ey - r * rng.uniform(1.5, 2.3)
        for side in (-1, 1):
            x = fx + side * spacing
            inner_x, outer_x = x - side * r * 1.1, x + side * r * 1.1
            draw.line([(inner_x, by + tilt), (outer_x, by - tilt)], fill=0, width=int(bw))
    lab["glasses"] = eye_style not in ("shades",) and rng.random() < 0.15
    if lab["glasses"]:                                              # round glasses
        for side in (-1, 1):
            x = fx + side * spacing
            g = r * 1.8
            draw.ellipse([x - g, ey - g, x + g, ey + g], outline=0, width=lw)
        draw.line([(fx - spacing + r * 1.8, ey), (fx + spacing - r * 1.8, ey)], fill=0, width=lw)

    ny = ey + hh * rng.uniform(0.2, 0.32)                           # nose
    nose = rng.choice(["none", "hook", "dots", "round", "line"])
    nw = hw * rng.uniform(0.06, 0.12)
    lab["nose"] = nose
    if nose == "hook":
        draw.line([(fx, ny - nw * 2), (fx - nw * math.copysign(1, yaw or 1), ny), (fx, ny)], fill=0, width=lw)
    elif nose == "dots":
        for side in (-1, 1):
            draw.ellipse([fx + side * nw - lw, ny - lw, fx + side * nw + lw, ny + lw], fill=0)
    elif nose == "round":
        draw.arc([fx - nw, ny - nw, fx + nw, ny + nw], 20, 200, fill=0, width=lw)
    elif nose == "line":
        draw.line([(fx, ny - nw * 2), (fx, ny)], fill=0, width=lw)

    my = min(cy + hh * 0.8, ny + hh * rng.uniform(0.18, 0.32))      # mouth
    mw = hw * rng.uniform(0.2, 0.55)
    mouth = rng.choice(["line", "smile", "frown", "open", "teeth", "wavy", "o"])
    lab.update(mouth=mouth, mouth_width=mw / hw)
    if mouth == "line":
        draw.line([(fx - mw, my), (fx + mw, my)], fill=0, width=lw)
    elif mouth in ("smile", "frown"):
        mh = mw * rng.uniform(0.3, 0.7)
        box = [fx - mw, my - mh, fx + mw, my + mh]
        draw.arc(box, 15, 165, fill=0, width=lw) if mouth == "smile" else draw.arc(box, 195, 345, fill=0, width=lw)
    elif mouth == "open":
        mh = mw * rng.uniform(0.4, 0.9)
        draw.chord([fx - mw, my - mh, fx + mw, my + mh], 0, 180, fill=0)
    elif mouth == "teeth":
        mh = mw * 0.35
        draw.rectangle([fx - mw, my - mh, fx + mw, my + mh], fill=255, outline=0, width=lw)
        for k in range(1, 4):
            x = fx - mw + 2 * mw * k / 4
            draw.line([(x, my - mh), (x, my + mh)], fill=0, width=max(1, lw // 2))
    elif mouth == "wavy":
        pts = [(fx - mw + 2 * mw * k / 6, my + (mw * 0.15 if k % 2 else -mw * 0.15)) for k in range(7)]
        draw.line(pts, fill=0, width=lw)
    else:
        o = mw * 0.35
        draw.ellipse([fx - o, my - o, fx + o, my + o], fill=255, outline=0, width=lw)

    lab["moustache"] = rng.random() < 0.15
    if lab["moustache"]:                                             # moustache
        draw.chord([fx - mw * 0.9, my - hh * 0.16, fx + mw * 0.9, my - hh * 0.02], 180, 360, fill=0)
    lab["stubble"] = rng.random() < 0.4
    if lab["stubble"]:                                               # stubble dots on the jaw
        mask = inner.load()
        rd = max(1.0, lw * 0.45)
        for _ in range(rng.randint(30, 120)):
            x = fx + rng.uniform(-1, 1) * hw * 0.8
            y = ny + rng.uniform(0.05, 1.0) * (cy + hh - ny)
            if 0 <= x < s and 0 <= y < s and mask[int(x), int(y)] and abs(y - my) > lw * 1.5:
                draw.ellipse([x - rd, y - rd, x + rd, y + rd], fill=0)
    lab["blush"] = rng.random() < 0.2
    if lab["blush"]:                                                 # blush strokes
        for side in (-1, 1):
            x = fx + side * spacing * 1.2
            y = (ny + my) / 2
            for k in range(3):
                dx = (k - 1) * lw * 2.5
                draw.line([(x + dx - lw, y + lw * 1.5), (x + dx + lw, y - lw * 1.5)], fill=0, width=max(1, lw // 2))
    lab["sweat"] = rng.random() < 0.1
    if lab["sweat"]:                                                 # sweat drop
        x, y, d = cx + hw * 0.75, cy - hh * 0.45, hw * 0.09
        draw.polygon([(x, y - 2 * d), (x - d, y), (x + d, y)], fill=255, outline=0, width=max(1, lw // 2))
        draw.ellipse([x - d, y - d, x + d, y + d], fill=255, outline=0, width=max(1, lw // 2))

    angle = rng.uniform(-14, 14)                                     # roll
    lab["roll"] = angle
    img = img.rotate(angle, resample=Image.Resampling.BICUBIC, center=(cx, cy), fillcolor=255)
    return img.resize((size, size), Image.Resampling.LANCZOS)


# The SOURCE style (the demo's stand-in for FFHQ): shaded, coloured faces of many identities on
# coloured backgrounds. Its head, eye, nose and mouth placement are drawn from the same ranges as
# _draw_face above (the TARGET style, the stand-in for the cartoon faces), so a model trained on
# one style has already learned where a face's parts go in the other, as FFHQ -> cartoon faces.
SKIN_TONES = [(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 140, 100), (160, 105, 70),
              (120, 80, 55), (250, 210, 180)]
HAIR_COLOURS = [(25, 20, 18), (60, 40, 25), (105, 70, 40), (150, 110, 60), (215, 180, 110),
                (170, 75, 35), (150, 150, 150), (235, 230, 220)]
IRIS_COLOURS = [(60, 40, 25), (90, 60, 30), (60, 110, 160), (70, 120, 80), (40, 40, 40)]


def _jitter(rng, colour, amount):
    return tuple(max(0, min(255, int(c + rng.uniform(-amount, amount)))) for c in colour)


def _mix(a, b, t):
    return tuple(int((1 - t) * x + t * y) for x, y in zip(a, b))


def _shade(colour, factor):
    return tuple(max(0, min(255, int(c * factor))) for c in colour)


def _draw_source_face(rng, size, labels=None):
    """One shaded colour face as an RGB image at size x size (supersampled, then reduced).

    `labels` (a dict), when given, receives what was drawn (see FACE_LABELS), without drawing
    extra random numbers: the image is the same with or without it."""
    lab = {} if labels is None else labels
    s = max(2 * size, 128)
    # background: a vertical gradient between two colours of one random hue
    hue = rng.random()
    top_c = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, rng.uniform(0.1, 0.6), rng.uniform(0.35, 0.95)))
    bot_c = _shade(_jitter(rng, top_c, 40), rng.uniform(0.6, 1.0))
    ramp = np.linspace(0.0, 1.0, s)[:, None, None]
    bg = (1 - ramp) * np.array(top_c, float) + ramp * np.array(bot_c, float)
    background = Image.fromarray(np.broadcast_to(bg, (s, s, 3)).astype(np.uint8), "RGB")

    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))                 # the person, rotated as one
    draw = ImageDraw.Draw(layer)
    scale = rng.uniform(0.6, 0.88)                                  # same ranges as _draw_face
    hw = s * scale * rng.uniform(0.3, 0.42)
    hh = s * scale * rng.uniform(0.4, 0.5)
    cx = s / 2 + rng.uniform(-0.06, 0.06) * s
    cy = s / 2 + rng.uniform(-0.03, 0.07) * s
    yaw = rng.uniform(-0.3, 0.3)
    fx = cx + yaw * hw * 0.6
    skin_base = rng.choice(SKIN_TONES)
    skin = _jitter(rng, skin_base, 12)
    hair_base = rng.choice(HAIR_COLOURS)
    hair = _jitter(rng, hair_base, 15)
    shirt = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.8),
                                                            rng.uniform(0.2, 0.9)))
    lab.update(style="source", background_hue=hue, scale=scale, half_width=hw / s, half_height=hh / s,
               x=cx / s - 0.5, y=cy / s - 0.5, yaw=yaw, skin_tone=SKIN_TONES.index(skin_base),
               hair_colour=HAIR_COLOURS.index(hair_base))

    # shoulders and neck, under the head
    draw.ellipse([cx - hw * 2.0, cy + hh * 1.05, cx + hw * 2.0, cy + hh * 2.6], fill=shirt)
    draw.rectangle([cx - hw * 0.45, cy + hh * 0.5, cx + hw * 0.45, cy + hh * 1.2], fill=_shade(skin, 0.8))
    hair_len = rng.choice(["short", "short", "short", "long", "long", "bald"])
    lab["hair_length"] = hair_len
    if hair_len == "long":                                          # long hair behind the head
        draw.rounded_rectangle([cx - hw * 1.2, cy - hh * 1.12, cx + hw * 1.2, cy + hh * rng.uniform(0.6, 1.3)],
                               radius=hw * 0.8, fill=hair)
    for side in (-1, 1):                                            # ears
        ex = cx + side * hw * (0.97 - 0.25 * max(0.0, side * yaw))
        draw.ellipse([ex - hw * 0.14, cy - hh * 0.18, ex + hw * 0.14, cy + hh * 0.12], fill=_shade(skin, 0.9))
    outline = _head_outline(rng, cx, cy, hw, hh, lab)
    draw.polygon(outline, fill=skin)

    # light from one side: darken the head away from it (a smooth ramp, limited to the head)
    light = rng.uniform(-1, 1)
    lab["light"] = light                                            # > 0: lit from the right
    xs = (np.arange(s)[None, :] - cx) / hw
    ys = (np.arange(s)[:, None] - cy) / hh
    shade = np.clip(1.0 - 0.28 * (xs * -light + 0.6 * ys + 0.2 * (xs ** 2 + ys ** 2)), 0.45, 1.1)
    head_mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(head_mask).polygon(outline, fill=255)
    arr = np.asarray(layer).astype(float)
    m = (np.asarray(head_mask) > 0)
    arr[..., :3][m] *= np.repeat(shade[..., None], 3, -1)[m]
    layer = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGBA")
    draw = ImageDraw.Draw(layer)

    if hair_len != "bald":                                          # hair cap down to a hairline
        line = cy - hh * rng.uniform(0.3, 0.6)
        upper = [p for p in outline if p[1] < line + hh * 0.05]
        upper = [(cx + 1.08 * (x - cx), cy + 1.08 * (y - cy)) for x, y in upper]
        upper.sort(key=lambda p: math.atan2(p[1] - cy, p[0] - cx))
        part = cx + rng.uniform(-0.4, 0.4) * hw
        poly = upper + [(cx + hw * 1.02, line + hh * 0.15), (part, line - hh * 0.05),
                        (cx - hw * 1.02, line + hh * 0.15)]
        if len(poly) >= 3:
            draw.polygon(poly, fill=hair)
        for _ in range(rng.randint(2, 6)):                          # a few lighter strands
            x0 = cx + rng.uniform(-0.7, 0.7) * hw
            draw.line([(x0, cy - hh * 0.95), (x0 + rng.uniform(-0.3, 0.3) * hw, line)],
                      fill=_shade(hair, 1.35), width=max(1, s // 96))

    ey = cy + rng.uniform(-0.22, 0.02) * hh                         # eyes (same ranges)
    spacing = hw * rng.uniform(0.3, 0.5)
    r = hw * rng.uniform(0.08, 0.16)
    iris_base = rng.choice(IRIS_COLOURS)
    iris = _jitter(rng, iris_base, 10)
    closed = rng.random() < 0.15
    look = rng.uniform(-0.35, 0.35) * r
    lab.update(eye_y=(ey - cy) / hh, eye_spacing=spacing / hw, eye_size=r / hw, eyes_closed=closed,
               iris_colour=IRIS_COLOURS.index(iris_base))
    lid = _shade(skin, 0.55)
    for side in (-1, 1):
        x = fx + side * spacing
        rr = r * (1.0 - 0.35 * yaw * side)
        if closed:
            draw.arc([x - rr, ey - rr * 0.5, x + rr, ey + rr * 0.5], 20, 160, fill=lid, width=max(1, s // 80))
        else:
            draw.ellipse([x - rr * 1.2, ey - rr * 0.62, x + rr * 1.2, ey + rr * 0.62], fill=(245, 240, 235))
            p = rr * 0.55
            draw.ellipse([x + look - p, ey - p, x + look + p, ey + p], fill=iris)
            q = p * 0.5
            draw.ellipse([x + look - q, ey - q, x + look + q, ey + q], fill=(15, 10, 10))
            draw.arc([x - rr * 1.2, ey - rr * 0.62, x + rr * 1.2, ey + rr * 0.62], 190, 350, fill=lid,
                     width=max(1, s // 100))
    tilt = rng.choice([0.0, 0.0, 0.3, -0.3]) * r                    # brows: neutral, angry, sad
    lab["brows"] = "neutral" if tilt == 0 else "angry" if tilt > 0 else "sad"    # inner ends low: angry
    by = ey - r * rng.uniform(1.4, 2.0)
    for side in (-1, 1):
        x = fx + side * spacing
        draw.line([(x - side * r * 1.2, by + tilt), (x + side * r * 1.3, by - tilt)],
                  fill=_shade(hair, 0.8), width=max(2, int(r * rng.uniform(0.35, 0.6))))
    ny = ey + hh * rng.uniform(0.2, 0.32)                           # nose: a soft shadow
    nw = hw * rng.uniform(0.07, 0.12)
    nside = -1 if light > 0 else 1
    draw.line([(fx + nside * nw * 0.3, ey + r), (fx + nside * nw * 0.6, ny)], fill=_shade(skin, 0.8),
              width=max(1, s // 90))
    draw.ellipse([fx - nw, ny - nw * 0.35, fx + nw, ny + nw * 0.35], fill=_shade(skin, 0.72))

    my = min(cy + hh * 0.8, ny + hh * rng.uniform(0.18, 0.32))      # mouth (same ranges)
    mw = hw * rng.uniform(0.2, 0.45)
    lips = _jitter(rng, (190, 90, 90), 25)
    mouth = rng.choice(["neutral", "smile", "smile", "open", "frown"])
    lab.update(mouth=mouth, mouth_width=mw / hw)
    if mouth == "neutral":
        draw.ellipse([fx - mw, my - mw * 0.18, fx + mw, my + mw * 0.22], fill=lips)
        draw.line([(fx - mw, my), (fx + mw, my)], fill=_shade(lips, 0.55), width=max(1, s // 100))
    elif mouth in ("smile", "frown"):
        mh = mw * rng.uniform(0.35, 0.6)
        box = [fx - mw, my - mh, fx + mw, my + mh]
        if mouth == "smile":
            draw.chord(box, 0, 180, fill=lips)
            draw.chord([fx - mw * 0.8, my, fx + mw * 0.8, my + mh * 0.55], 0, 180, fill=(250, 250, 245))
        else:
            draw.arc(box, 200, 340, fill=lips, width=max(2, int(mw * 0.25)))
    else:
        mh = mw * rng.uniform(0.5, 0.9)
        draw.ellipse([fx - mw * 0.7, my - mh * 0.6, fx + mw * 0.7, my + mh * 0.6], fill=lips)
        draw.ellipse([fx - mw * 0.5, my - mh * 0.4, fx + mw * 0.5, my + mh * 0.4], fill=(70, 20, 25))
    lab["blush"] = rng.random() < 0.3
    if lab["blush"]:                                                # blush
        for side in (-1, 1):
            x, y = fx + side * spacing * 1.15, (ny + my) / 2
            draw.ellipse([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=_mix(skin, (230, 120, 120), 0.35))
    lab["glasses"] = rng.random() < 0.12
    if lab["glasses"]:                                              # glasses
        for side in (-1, 1):
            x = fx + side * spacing
            g = r * 1.7
            draw.ellipse([x - g, ey - g * 0.8, x + g, ey + g * 0.8], outline=(30, 30, 30), width=max(1, s // 90))

    angle = rng.uniform(-14, 14)                                    # roll, as the target style
    lab["roll"] = angle
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, center=(cx, cy))
    background.paste(layer, mask=layer.split()[3])
    img = background.filter(ImageFilter.GaussianBlur(radius=s / 200))  # photo softness
    return img.resize((size, size), Image.Resampling.LANCZOS)


DEMO_STYLES = {
    # style: (drawing function, rng prefix, description for dataset.json)
    "target": (_draw_face, "calm-gan-demo", "procedural black-and-white line-art cartoon faces"),
    "source": (_draw_source_face, "calm-gan-demo-source", "procedural shaded colour faces (the source domain)"),
}


# What the drawing functions report (`labels`, make_demo_faces_with_labels): one dict per face.
# Floats are continuous parameters; strings, booleans and ints are classes. Positions and sizes are
# fractions of the frame (x, y: head centre minus the frame's centre), eye and mouth geometry
# fractions of the head's half width / half height, as the drawing code computes them.
FACE_LABELS = {
    "style": "both: 'target' (_draw_face) or 'source' (_draw_source_face)",
    "scale": "both: head size in the frame, 0.6-0.88",
    "half_width": "both: head half width / frame", "half_height": "both: head half height / frame",
    "x": "both: head centre x / frame - 0.5", "y": "both: head centre y / frame - 0.5",
    "yaw": "both: sideways turn, -0.3-0.3 (features shift by yaw * 0.6 half widths)",
    "roll": "both: rotation in degrees, -14-14",
    "head_shape": "both: oval, round-square, egg, pear, jaw",
    "eye_y": "both: eye height below the head centre / half height",
    "eye_spacing": "both: eye distance from the centre line / half width",
    "eye_size": "both: eye radius / half width",
    "brows": "both: neutral, angry, sad; target also none",
    "mouth": "target: line, smile, frown, open, teeth, wavy, o; source: neutral, smile, open, frown",
    "mouth_width": "both: mouth half width / head half width",
    "glasses": "both: round glasses", "blush": "both: blush strokes (target) or cheeks (source)",
    "line_width": "target: line width in output pixels (1 at 32 px: the 1-pixel floor)",
    "ears": "target", "shading": "target: none, hatching, screentone",
    "shading_side": "target: none, left, right",
    "hair": "target: bald, cap, spiky, curly, bowl, strands, flat-top",
    "eyes": "target: dot, ring, closed, glare, shades, oval, tired",
    "thick_brows": "target", "nose": "target: none, hook, dots, round, line",
    "moustache": "target", "stubble": "target", "sweat": "target: sweat drop",
    "background_hue": "source: hue of the background gradient, 0-1",
    "skin_tone": "source: index into SKIN_TONES", "hair_colour": "source: index into HAIR_COLOURS",
    "iris_colour": "source: index into IRIS_COLOURS", "hair_length": "source: short, long, bald",
    "light": "source: light direction, -1 (left) to 1 (right)", "eyes_closed": "source",
}


def make_demo_faces_with_labels(n, size=256, seed=0, style="target", start=0):
    """Faces start .. start + n - 1 of make_demo_faces(start + n, size, seed, style), the same images,
    and for each a dict of what was drawn (FACE_LABELS). Returns (faces, labels)."""
    draw_face, prefix, _ = DEMO_STYLES[style]
    faces, labels = [], []
    for i in range(start, start + n):
        rng = random.Random(f"{prefix}:{seed}:{i}")
        labels.append({})
        faces.append(draw_face(rng, size, labels[-1]).convert("RGB"))
    return faces, labels


def make_demo_faces(n, size=256, seed=0, style="target"):
    """n procedural faces (RGB PIL images, size x size): style 'target' draws black-and-white
    line-art cartoon faces (the stand-in for the seed's cartoon faces), 'source' shaded colour
    faces with the same face layout (the stand-in for FFHQ, the source domain of transfer).

    Face i depends only on (seed, style, i), so a longer set starts with the shorter one.
    """
    return make_demo_faces_with_labels(n, size, seed, style)[0]


def write_demo(out_dir, n, size=256, seed=0, overwrite=False, style="target"):
    """Write n demo faces as a data set folder (same layout as prepare). Returns the count."""
    prepare_out_dir(out_dir, overwrite)
    rows, images = [], []
    for i, img in enumerate(make_demo_faces(n, size, seed, style)):
        name = f"{i:05d}.png"
        save_png(img, os.path.join(out_dir, name))
        images.append(img)
        rows.append({"file": name, "page": "", "x0": 0, "y0": 0, "x1": size, "y1": size,
                     "label": f"demo seed {seed} face {i}", "crop_x0": 0, "crop_y0": 0, "crop_side": size})
    write_index(out_dir, rows)
    write_json(os.path.join(out_dir, "dataset.json"),
               {"count": n, "size": size, "source": "demo",
                "made_by": "01_prepare_data.py demo", "seed": seed, "style": style,
                "description": DEMO_STYLES[style][2]})
    os.makedirs(os.path.join(out_dir, os.path.dirname(SHEET_NAME)), exist_ok=True)
    save_png(make_contact_sheet(images, thumb=min(size, CONTACT_THUMB)), os.path.join(out_dir, SHEET_NAME))
    return n


# ---------------------------------------------------------------------------------------------
# 8. prepare(args), demo(args)
# ---------------------------------------------------------------------------------------------
def parse_color(text):
    """'white', 'black', '#rrggbb' or 'r,g,b' -> (r, g, b)."""
    named = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}
    t = text.strip().lower()
    if t in named:
        return named[t]
    m = re.fullmatch(r"#?([0-9a-f]{6})", t)
    if m:
        return tuple(int(m.group(1)[k:k + 2], 16) for k in (0, 2, 4))
    parts = t.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        return tuple(int(p) for p in parts)
    raise argparse.ArgumentTypeError(f"colour {text!r}: use white, black, #rrggbb or r,g,b")


def pick_device(name):
    return str(resolve_device(name))  # auto: cuda, then mps, then cpu


def prepare(args):
    """Cut, pad and resize every box; write crops, index.csv, dataset.json, overview/contact_sheet.png."""
    if not os.path.isdir(args.pages):
        raise PrepareError(f"{args.pages}: pages folder not found")
    boxes = read_boxes(args.boxes)
    if not boxes:
        raise PrepareError(f"{args.boxes}: no boxes")
    sizes, unreadable = validate_boxes(boxes, args.pages)
    sr = None
    if args.upscaler == "carn":
        device = pick_device(args.device)
        model = load_carn(args.sr_weights, device)
        tile = 0 if device.startswith("cuda") else args.sr_tile       # whole crops on a GPU
        sr = lambda img, size: carn_upscale(model, img, size, tile=tile, overlap=args.sr_overlap)  # noqa: E731
    prepare_out_dir(args.out, args.overwrite, inputs=[
        ("pages folder", args.pages), ("box file", args.boxes),
        ("CARN weights", args.sr_weights if args.upscaler == "carn" else None)])

    kept = [b for b in boxes if b.filename not in unreadable]
    small = [b for b in kept if max(b.w, b.h) < args.min_size]
    if args.min_size:
        print(f"--min-size {args.min_size}: dropped {len(small)} of {len(kept)} boxes "
              f"(longer side under {args.min_size} px)")
        kept = [b for b in kept if max(b.w, b.h) >= args.min_size]

    by_page = {}
    for b in kept:
        by_page.setdefault(b.filename, []).append(b)
    rows, hashes, thumbs, duplicates, skipped = [], [], [], [], list(unreadable)
    t0 = time.time()
    for filename, page_boxes in by_page.items():
        try:
            page = load_page(os.path.join(args.pages, filename))
        except PrepareError as e:
            warn(f"{e}; its {len(page_boxes)} boxes are skipped")
            skipped.append(filename)
            continue
        for b in page_boxes:
            crop, (left, top, side) = crop_face(page, b, args.margin, args.size, args.pad_color,
                                                args.upscaler, sr)
            if args.dedupe:
                h = phash(crop)
                near = [(hamming(h, h2), k) for k, h2 in enumerate(hashes) if hamming(h, h2) <= args.dedupe_bits]
                if near:
                    dist, k = min(near)
                    duplicates.append((b, rows[k]["file"], dist))
                    continue
                hashes.append(h)
            name = f"{len(rows):05d}.png"
            save_png(crop, os.path.join(args.out, name))
            rows.append({"file": name, "page": filename, "x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1,
                         "label": b.label, "crop_x0": left, "crop_y0": top, "crop_side": side})
            thumbs.append(crop.resize((min(args.size, CONTACT_THUMB),) * 2, Image.Resampling.LANCZOS))
        write_index(args.out, rows)                       # after every page: nothing written is lost
    if args.dedupe:
        print(f"--dedupe: dropped {len(duplicates)} near-duplicate crops")
        for b, first, dist in duplicates:
            print(f"  {b.where} ({b.filename} {b.as_tuple()}) ~ {first} (hash distance {dist})")
    write_index(args.out, rows)
    info = {"count": len(rows), "size": args.size, "source": "pages",
            "made_by": "01_prepare_data.py prepare",
            "pages": args.pages, "boxes": args.boxes, "boxes_read": len(boxes),
            "margin": args.margin, "pad_color": list(args.pad_color), "upscaler": args.upscaler,
            "sr_weights": os.path.basename(args.sr_weights) if args.upscaler == "carn" else None,
            "min_size": args.min_size, "dropped_small": len(small) if args.min_size else 0,
            "dedupe": args.dedupe, "dropped_duplicates": len(duplicates),
            "skipped_pages": skipped}
    write_json(os.path.join(args.out, "dataset.json"), info)
    os.makedirs(os.path.join(args.out, os.path.dirname(SHEET_NAME)), exist_ok=True)
    save_png(make_contact_sheet(thumbs, thumb=min(args.size, CONTACT_THUMB)), os.path.join(args.out, SHEET_NAME))
    print(f"wrote {len(rows)} crops of {args.size}x{args.size} to {args.out} "
          f"in {time.time() - t0:.1f}s ({args.upscaler})")
    return info


def demo(args):
    """Draw the procedural demo faces into args.out."""
    t0 = time.time()
    write_demo(args.out, args.n, args.size, args.seed, overwrite=args.overwrite, style=args.demo_style)
    print(f"wrote {args.n} {args.demo_style} demo faces of {args.size}x{args.size} (seed {args.seed}) to {args.out} "
          f"in {time.time() - t0:.1f}s")


# ---------------------------------------------------------------------------------------------
# 9. mark(args): a local web page to draw the face boxes
# ---------------------------------------------------------------------------------------------
MARK_PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>calm-gan: mark face boxes</title>
<style>
 body { margin: 0; font: 13px sans-serif; display: flex; height: 100vh; overflow: hidden; }
 #side { width: 230px; box-sizing: border-box; padding: 8px; border-right: 1px solid #bbb;
         display: flex; flex-direction: column; gap: 6px; }
 #pages { flex: 1; overflow: auto; margin: 0; padding: 0; border: 1px solid #ddd; }
 #pages li { list-style: none; padding: 2px 6px; cursor: pointer; white-space: nowrap; }
 #pages li.cur { background: #cde; }
 #pages li .n { float: right; color: #666; }
 #main { flex: 1; display: flex; align-items: center; justify-content: center; background: #eee; }
 #stage { position: relative; user-select: none; cursor: crosshair; }
 #img { display: block; max-width: calc(100vw - 250px); max-height: calc(100vh - 20px); }
 .box { position: absolute; box-sizing: border-box; border: 2px solid #e22; cursor: move; }
 .box.sel { border-color: #06f; background: rgba(0, 102, 255, 0.08); }
 .box .lab { position: absolute; left: -2px; top: -17px; font-size: 11px; background: #fff;
             padding: 0 3px; white-space: nowrap; }
 .h { position: absolute; width: 10px; height: 10px; background: #06f; display: none; }
 .box.sel .h { display: block; }
 .h.nw { left: -6px; top: -6px; cursor: nwse-resize; } .h.ne { right: -6px; top: -6px; cursor: nesw-resize; }
 .h.sw { left: -6px; bottom: -6px; cursor: nesw-resize; } .h.se { right: -6px; bottom: -6px; cursor: nwse-resize; }
 #status.err { color: #c00; } kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 3px; }
</style></head>
<body>
<div id="side">
 <b>Pages</b><ul id="pages"></ul>
 <label>Label of selected box <input id="label" disabled style="width: 100%; box-sizing: border-box"></label>
 <label><input type="checkbox" id="square"> square lock (<kbd>s</kbd>)</label>
 <div id="status">loading</div>
 <div style="color: #555">Drag to draw; drag a box to move it, its corners to resize it.
  <kbd>n</kbd>/<kbd>&rarr;</kbd> next page, <kbd>p</kbd>/<kbd>&larr;</kbd> previous,
  <kbd>Del</kbd> delete box, <kbd>Esc</kbd> deselect. Every change is saved at once.</div>
</div>
<div id="main"><div id="stage"><img id="img" draggable="false" alt=""></div></div>
<script>
"use strict";
let pages = [], cur = -1, boxes = [], sel = -1, drag = null, pending = Promise.resolve();
const $ = (id) => document.getElementById(id);
const img = $("img"), stage = $("stage");

function status(text, err) { $("status").textContent = text; $("status").className = err ? "err" : ""; }
async function api(url, opts) {
  const r = await fetch(url, opts);
  const body = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function renderList() {
  const ul = $("pages"); ul.innerHTML = "";
  pages.forEach((p, i) => {
    const li = document.createElement("li");
    li.textContent = p.name; li.title = p.name; if (i === cur) li.className = "cur";
    const n = document.createElement("span"); n.className = "n"; n.textContent = p.boxes; li.appendChild(n);
    li.onclick = () => openPage(i); ul.appendChild(li);
  });
}
async function openPage(i) {
  if (i < 0 || i >= pages.length) return;
  await pending;
  cur = i; sel = -1; drag = null; renderList();
  try {
    boxes = (await api("/api/boxes?page=" + encodeURIComponent(pages[i].name))).boxes;
    img.onload = () => { render(); status(pages[i].name + ": " + boxes.length + " boxes"); };
    img.src = "/page/" + encodeURIComponent(pages[i].name);
  } catch (e) { status(e.message, true); }
}
function scale() { return img.clientWidth / (img.naturalWidth || 1); }
function render() {
  stage.querySelectorAll(".box").forEach((d) => d.remove());
  const s = scale();
  boxes.forEach((b, i) => {
    const d = document.createElement("div");
    d.className = "box" + (i === sel ? " sel" : ""); d.dataset.i = i;
    Object.assign(d.style, {left: b.x0 * s + "px", top: b.y0 * s + "px",
                            width: (b.x1 - b.x0) * s + "px", height: (b.y1 - b.y0) * s + "px"});
    for (const c of ["nw", "ne", "sw", "se"]) {
      const h = document.createElement("div"); h.className = "h " + c; h.dataset.corner = c; d.appendChild(h);
    }
    if (b.label) { const l = document.createElement("span"); l.className = "lab"; l.textContent = b.label; d.appendChild(l); }
    stage.appendChild(d);
  });
  const lab = $("label"); lab.disabled = sel < 0; lab.value = sel >= 0 ? (boxes[sel].label || "") : "";
}
function save() {
  const page = pages[cur], body = JSON.stringify({boxes: boxes});
  pending = pending.then(() => api("/api/boxes?page=" + encodeURIComponent(page.name),
                                   {method: "PUT", headers: {"Content-Type": "application/json"}, body: body})
    .then((r) => { page.boxes = r.boxes.length; renderList(); status("saved " + page.name + ": " + r.boxes.length + " boxes"); })
    .catch((e) => status("not saved: " + e.message, true)));
  return pending;
}
function point(e) {
  const r = img.getBoundingClientRect(), s = scale();
  return [Math.min(Math.max((e.clientX - r.left) / s, 0), img.naturalWidth),
          Math.min(Math.max((e.clientY - r.top) / s, 0), img.naturalHeight)];
}
stage.addEventListener("mousedown", (e) => {
  if (cur < 0 || e.button !== 0) return;
  e.preventDefault();
  const [x, y] = point(e), t = e.target, boxEl = t.closest(".box");
  if (boxEl) {
    sel = +boxEl.dataset.i;
    drag = {mode: t.dataset.corner ? "resize" : "move", corner: t.dataset.corner, x: x, y: y, orig: {...boxes[sel]}};
  } else {
    boxes.push({x0: x, y0: y, x1: x, y1: y, label: ""}); sel = boxes.length - 1;
    drag = {mode: "resize", corner: "se", x: x, y: y, created: true, orig: {x0: x, y0: y, x1: x, y1: y, label: ""}};
  }
  render();
});
window.addEventListener("mousemove", (e) => {
  if (!drag) return;
  const [x, y] = point(e), o = drag.orig, b = boxes[sel], W = img.naturalWidth, H = img.naturalHeight;
  if (drag.mode === "move") {
    const w = o.x1 - o.x0, h = o.y1 - o.y0;
    const nx = Math.min(Math.max(o.x0 + x - drag.x, 0), W - w), ny = Math.min(Math.max(o.y0 + y - drag.y, 0), H - h);
    Object.assign(b, {x0: nx, y0: ny, x1: nx + w, y1: ny + h});
  } else {
    // the corner opposite the dragged one stays fixed
    const fx = drag.corner.includes("w") ? o.x1 : o.x0, fy = drag.corner.includes("n") ? o.y1 : o.y0;
    let dx = x - fx, dy = y - fy;
    if ($("square").checked) {
      const side = Math.max(Math.abs(dx), Math.abs(dy));
      const room = Math.min(dx < 0 ? fx : W - fx, dy < 0 ? fy : H - fy);
      const s = Math.min(side, room);
      dx = dx < 0 ? -s : s; dy = dy < 0 ? -s : s;
    }
    Object.assign(b, {x0: Math.min(fx, fx + dx), x1: Math.max(fx, fx + dx), y0: Math.min(fy, fy + dy), y1: Math.max(fy, fy + dy)});
  }
  render();
});
window.addEventListener("mouseup", () => {
  if (!drag) return;
  const d = drag, b = boxes[sel];
  drag = null;
  for (const k of ["x0", "y0", "x1", "y1"]) b[k] = Math.round(b[k]);
  if (b.x1 - b.x0 < 2 || b.y1 - b.y0 < 2) {
    if (d.created) { boxes.splice(sel, 1); sel = -1; render(); return; }   // a click, not a box
    Object.assign(b, d.orig);                                              // collapsed: undo
  }
  render();
  if (["x0", "y0", "x1", "y1"].some((k) => b[k] !== d.orig[k]) || d.created) save();
});
$("label").addEventListener("input", () => { if (sel >= 0) { boxes[sel].label = $("label").value; render(); } });
$("label").addEventListener("change", () => { if (sel >= 0) save(); });
$("square").addEventListener("change", () => status("square lock " + ($("square").checked ? "on" : "off")));
window.addEventListener("resize", render);
window.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" && e.target.type === "text") { if (e.key === "Escape") e.target.blur(); return; }
  if (e.key === "ArrowRight" || e.key === "n") openPage(cur + 1);
  else if (e.key === "ArrowLeft" || e.key === "p") openPage(cur - 1);
  else if ((e.key === "Delete" || e.key === "Backspace") && sel >= 0) { boxes.splice(sel, 1); sel = -1; render(); save(); }
  else if (e.key === "s") { $("square").checked = !$("square").checked; $("square").dispatchEvent(new Event("change")); }
  else if (e.key === "Escape") { sel = -1; render(); }
  else return;
  e.preventDefault();
});
api("/api/pages").then((p) => { pages = p.pages; renderList(); if (pages.length) openPage(0); else status("no pages found"); })
  .catch((e) => status(e.message, true));
</script></body></html>
"""

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
        ".bmp": "image/bmp", ".gif": "image/gif"}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
MAX_LABEL = 200


class MarkRequestError(Exception):
    """A refused request: HTTP status and a one-line message returned as {"error": ...}."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class MarkState:
    """The pages under `pages_dir` and every box of `boxes_path`, saved atomically on each change."""

    def __init__(self, pages_dir, boxes_path):
        if not os.path.isdir(pages_dir):
            raise PrepareError(f"{pages_dir}: pages folder not found")
        self.root = os.path.realpath(pages_dir)
        self.boxes_path = boxes_path
        self.lock = threading.Lock()
        self.boxes = read_boxes(boxes_path) if os.path.exists(boxes_path) else []

    def page_names(self):
        names = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in files:
                if f.lower().endswith(PAGE_EXTENSIONS) and not f.startswith("."):
                    names.append(os.path.relpath(os.path.join(folder, f), self.root).replace(os.sep, "/"))
        return sorted(names)

    def resolve(self, name):
        """Page name -> real file path under the root; refuses traversal, absolute paths, links out."""
        if not name or "\x00" in name or "\\" in name or name.startswith("/") or os.path.isabs(name) \
                or re.match(r"^[A-Za-z]:", name) or any(part in ("..", ".") for part in name.split("/")):
            raise MarkRequestError(403, f"page name {name!r} refused: only files under the pages folder")
        path = os.path.realpath(os.path.join(self.root, *name.split("/")))
        if os.path.commonpath([path, self.root]) != self.root:
            raise MarkRequestError(403, f"page name {name!r} refused: it leads outside the pages folder")
        if not name.lower().endswith(PAGE_EXTENSIONS):
            raise MarkRequestError(403, f"page name {name!r} refused: not an image file")
        if not os.path.isfile(path):
            raise MarkRequestError(404, f"page {name!r} not found")
        return path

    def pages(self):
        counts = {}
        with self.lock:
            for b in self.boxes:
                counts[b.filename] = counts.get(b.filename, 0) + 1
        out = []
        for name in self.page_names():
            entry = {"name": name, "boxes": counts.get(name, 0)}
            try:
                entry["width"], entry["height"] = page_size(os.path.join(self.root, name))
            except PrepareError as e:
                entry["error"] = str(e)
            out.append(entry)
        return out

    def get_boxes(self, name):
        self.resolve(name)
        with self.lock:
            return [box_json(b) for b in self.boxes if b.filename == name]

    def put_boxes(self, name, payload):
        path = self.resolve(name)
        try:
            w, h = page_size(path)
        except PrepareError as e:
            raise MarkRequestError(400, str(e)) from None
        items = payload.get("boxes") if isinstance(payload, dict) else payload
        if not isinstance(items, list):
            raise MarkRequestError(400, 'expected {"boxes": [{"x0":..,"y0":..,"x1":..,"y1":..,"label":..}, ...]}')
        new = [parse_box_update(item, k, name, w, h) for k, item in enumerate(items)]
        with self.lock:
            others = [b for b in self.boxes if b.filename != name]
            boxes = sorted(others + new, key=lambda b: b.filename)         # stable: keeps drawn order
            try:
                write_boxes(self.boxes_path, boxes)
            except OSError as e:
                raise MarkRequestError(500, f"{self.boxes_path}: could not save ({e})") from None
            self.boxes = boxes
            return [box_json(b) for b in new]


def box_json(b):
    return {"x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1, "label": b.label}


def parse_box_update(item, k, name, w, h):
    """One box of a PUT body -> Box; MarkRequestError(400) naming the box and what is wrong."""
    if not isinstance(item, dict):
        raise MarkRequestError(400, f"box {k}: expected an object with x0, y0, x1, y1 (and label)")
    coords = []
    for key in ("x0", "y0", "x1", "y1"):
        v = item.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise MarkRequestError(400, f"box {k}: {key} is {v!r}, not a number")
        coords.append(int(round(v)))
    x0, y0, x1, y1 = coords
    if x1 <= x0 or y1 <= y0:
        raise MarkRequestError(400, f"box {k}: ({x0}, {y0}, {x1}, {y1}) has zero area")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise MarkRequestError(400, f"box {k}: ({x0}, {y0}, {x1}, {y1}) is outside the page ({w}x{h})")
    label = item.get("label", "")
    label = "" if label is None else label
    if not isinstance(label, str) or len(label) > MAX_LABEL or any(ord(c) < 32 for c in label):
        raise MarkRequestError(400, f"box {k}: label must be text of at most {MAX_LABEL} characters, one line")
    return Box(name, x0, y0, x1, y1, label=label, where=f"box {k}")


class MarkHandler(BaseHTTPRequestHandler):
    """GET /, GET /api/pages, GET|PUT /api/boxes?page=NAME, GET /page/NAME (the image file)."""

    server_version = "calm-gan-mark"
    quiet = True
    timeout = 15  # seconds a connection may stall (a body shorter than its Content-Length) before it is closed

    def log_message(self, fmt, *a):
        if not self.quiet:
            super().log_message(fmt, *a)

    def _send(self, status, body, ctype="application/json; charset=utf-8"):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _check_host(self):
        """When bound to loopback, only loopback Host headers (stops DNS rebinding)."""
        if self.server.server_address[0] not in ("127.0.0.1", "::1"):
            return
        host = (self.headers.get("Host") or "").strip()
        hostname = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        if hostname not in LOOPBACK_NAMES:
            raise MarkRequestError(403, f"Host {host!r} refused: this server answers only on loopback")

    def _route(self, method):
        try:
            self._check_host()
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            state = self.server.state
            if method == "GET" and path in ("/", "/index.html"):
                return self._send(200, MARK_PAGE.encode(), "text/html; charset=utf-8")
            if method == "GET" and path == "/api/pages":
                return self._send(200, {"pages": state.pages()})
            if path == "/api/boxes":
                name = (query.get("page") or [""])[0]
                if method == "GET":
                    return self._send(200, {"page": name, "boxes": state.get_boxes(name)})
                if method == "PUT":
                    return self._send(200, {"page": name, "boxes": state.put_boxes(name, self._json_body())})
                raise MarkRequestError(405, f"{method} not allowed on /api/boxes")
            if method == "GET" and path.startswith("/page/"):
                file = state.resolve(path[len("/page/"):])
                try:
                    with open(file, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise MarkRequestError(404 if isinstance(e, FileNotFoundError) else 500,
                                           f"page {path[len('/page/'):]!r} cannot be read ({e.strerror})") from None
                return self._send(200, data, MIME.get(os.path.splitext(file)[1].lower(), "application/octet-stream"))
            raise MarkRequestError(404, f"no such resource: {method} {url.path}")
        except MarkRequestError as e:
            self._send(e.status, {"error": str(e)})
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # the client stalled or went away: nothing to answer
        except Exception as e:  # a bug must not kill the thread with a traceback: one line, 500
            warn(f"mark: {self.command} {self.path}: {type(e).__name__}: {e}")
            self._send(500, {"error": f"{type(e).__name__}: {e}"})

    def _json_body(self):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise MarkRequestError(415, "box updates must be sent as application/json")
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            raise MarkRequestError(411, "box updates need a Content-Length") from None
        if not 0 <= length <= 4 << 20:
            raise MarkRequestError(413, "box update too large (over 4 MiB)")
        raw = self.rfile.read(length)  # a stalled body ends in TimeoutError after `timeout` seconds
        if len(raw) != length:
            self.close_connection = True
            raise MarkRequestError(400, f"request body has {len(raw)} of its {length} bytes")
        try:
            return json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise MarkRequestError(400, "request body is nested too deeply") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MarkRequestError(400, f"request body is not valid JSON ({e})") from None

    def do_GET(self):
        self._route("GET")

    def do_PUT(self):
        self._route("PUT")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")


def make_mark_server(pages_dir, boxes_path, host="127.0.0.1", port=0):
    """A ThreadingHTTPServer for `mark` (port 0 picks a free port: server.server_address[1])."""
    state = MarkState(pages_dir, boxes_path)
    server = ThreadingHTTPServer((host, port), MarkHandler)
    server.daemon_threads = True
    server.state = state
    return server


def mark(args):
    """Serve the box-drawing page until Ctrl-C; every change is written to args.boxes at once."""
    folder = os.path.dirname(os.path.abspath(args.boxes))
    if not os.path.isdir(folder):
        raise PrepareError(f"{args.boxes}: folder {folder} does not exist")
    server = make_mark_server(args.pages, args.boxes, args.host, args.port)
    host, port = server.server_address[:2]
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"serving on {args.host}: anyone who can reach this machine can edit {args.boxes}")
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '127.0.0.1') else host}:{port}/"
    print(f"{len(server.state.page_names())} pages in {args.pages}; boxes saved to {args.boxes}")
    print(f"open {url}  (Ctrl-C to stop)", flush=True)
    if args.open:
        import webbrowser
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---------------------------------------------------------------------------------------------
# 10. CLI
# ---------------------------------------------------------------------------------------------
def _nonnegative_float(text):
    v = float(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0")
    return v


def _positive_int(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 1")
    return v


def build_parser():
    p = argparse.ArgumentParser(
        prog="01_prepare_data.py",
        description="Face boxes on comic pages -> square crops; or procedural demo faces; or a "
                    "web page to mark boxes. Flag forms: `--pages ... --boxes ... --out ...` runs "
                    "prepare, `--demo N --out ...` runs demo.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("prepare", help="crop hand-marked boxes from comic pages (the default)")
    q.add_argument("--pages", required=True, help="folder of comic pages")
    q.add_argument("--boxes", required=True, help="CSV filename,x0,y0,x1,y1[,label] or JSON list")
    q.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    q.add_argument("--size", type=_positive_int, default=256, help="crop side in pixels (seed: 256)")
    q.add_argument("--margin", type=_nonnegative_float, default=0.0,
                   help="square side = max(w, h) * (1 + margin); 0 = the box itself when square")
    q.add_argument("--pad-color", type=parse_color, default=(255, 255, 255),
                   help="fill where a crop leaves the page: white (default), black, #rrggbb, r,g,b")
    q.add_argument("--upscaler", choices=["lanczos", "bicubic", "carn"], default="lanczos",
                   help="resizing; carn = CARN_V2 x2 super-resolution (seed) for crops under --size")
    q.add_argument("--sr-weights", default=None, help="CARN_model_checkpoint.pt (yu45020/Waifu2x)")
    q.add_argument("--sr-tile", type=int, default=64, help="CARN tile side on CPU (Waifu2x README: 64)")
    q.add_argument("--sr-overlap", type=int, default=3, help="CARN tile overlap (Waifu2x: 3)")
    q.add_argument("--device", default="auto", help="CARN device: " + DEVICE_HELP)
    q.add_argument("--min-size", type=int, default=0, help="drop boxes whose longer side is under N px")
    q.add_argument("--dedupe", action="store_true", help="drop near-duplicate crops (perceptual hash)")
    q.add_argument("--dedupe-bits", type=int, default=4,
                   help="pHash Hamming distance (of 64 bits) at or under which crops are duplicates")
    q.add_argument("--overwrite", action="store_true", help="replace the crops of an existing --out")
    q.set_defaults(func=prepare)

    d = sub.add_parser("demo", help="draw N procedural demo faces, line-art or --demo-style source (no data needed)")
    d.add_argument("--n", "--demo", dest="n", type=_positive_int, default=500, help="number of faces")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--size", type=_positive_int, default=256, help="face side in pixels")
    d.add_argument("--seed", type=int, default=0, help="same seed, same faces")
    d.add_argument("--demo-style", choices=sorted(DEMO_STYLES), default="target",
                   help="target: line-art cartoon faces (default); source: shaded colour faces, the "
                        "stand-in for FFHQ that the shipped demo models were trained on")
    d.add_argument("--overwrite", action="store_true", help="replace the crops of an existing --out")
    d.set_defaults(func=demo)

    m = sub.add_parser("mark", help="a local web page to draw the face boxes (saved to --boxes)")
    m.add_argument("--pages", required=True, help="folder of comic pages (only files under it are served)")
    m.add_argument("--boxes", required=True, help="CSV read and written at every change (created if missing)")
    m.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    m.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    m.add_argument("--open", action="store_true", help="open the page in the default browser")
    m.set_defaults(func=mark)
    return p


def _expand_shorthand(argv):
    """`--demo N ...` -> `demo --n N ...`; other flag-first command lines -> `prepare ...`."""
    if not argv or argv[0] in ("-h", "--help") or not argv[0].startswith("-"):
        return argv
    if any(a == "--demo" or a.startswith("--demo=") for a in argv):
        return ["demo"] + argv
    return ["prepare"] + argv


def main(argv=None):
    if __name__ == "__main__":  # a program's warnings one line each; a test importing this file keeps Python's
        ops.readable_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_expand_shorthand(argv))
    try:
        return args.func(args)
    except PrepareError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
