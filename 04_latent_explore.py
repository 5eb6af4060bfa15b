"""Latent-space exploration of a trained generator: GANSpace and SeFa directions, edits, memes, a web UI.

Papers
- GANSpace: Härkönen, Hertzmann, Lehtinen, Paris, "GANSpace: Discovering Interpretable GAN Controls",
  NeurIPS 2020, arXiv:2004.02546. For StyleGAN/StyleGAN2 the paper runs PCA directly on style vectors
  w = M(z) (harskish/ganspace, `--layer style --use_w`): the principal axes of W are edit directions,
  applied to a chosen range of the generator's per-layer styles ("E(i, s-e)").
- SeFa: Shen, Zhou, "Closed-Form Factorization of Latent Semantics in GANs", CVPR 2021,
  arXiv:2007.06600. No sampling: with A the stacked style-affine weights (each output unit's weight row
  normalised to unit length, as genforce/sefa's `factorize_weight`), the directions n maximising
  ||A n||^2 subject to ||n|| = 1 are the eigenvectors of A^T A (Eq. 5 of the paper), strongest first.

What this file implements
- `ganspace`: exact PCA of W (mean and covariance accumulated in float64 over N samples; the same
  subspace sklearn's full PCA finds; GANSpace's default incremental PCA approximates it).
- `sefa`: eigenvectors of A^T A for the selected layers (numpy eigh on the symmetric 512x512 matrix).
- `edit`: a grid PNG and an animated GIF per seed sweeping one direction over a range of degrees,
  with meme captions (white text, black outline, fitted to the width; any font with `--font`).
- `mix`: the style-mixing figure (coarse, middle and fine crossovers).
- `ui`: a gradio page with sliders (optional extra: `pip install -r requirements-ui.txt`).
It works on every generator that `03_stylegan2_ada.py` (StyleGAN2: ours, rosinality .pt, NVIDIA .pkl)
or `02_stylegan_freezed.py` (StyleGAN v1) can load; those scripts are imported with importlib, so copy
them along with this file.

A directions file (`torch.save`, loads with weights_only=True) holds: `directions` [K, 512] unit rows,
strongest first; `values` [K] (explained variances for GANSpace, eigenvalues for SeFa); `method`;
`layers` (the style slots the directions were computed for and are applied to); GANSpace also stores
`mean` [512] and `stdev` [K] (spread of W along each direction).

Run
    python 04_latent_explore.py sefa --ckpt RUN/checkpoints/best.pt --out sefa.pt
    python 04_latent_explore.py ganspace --ckpt RUN/checkpoints/best.pt --out ganspace.pt
    python 04_latent_explore.py edit --ckpt RUN/checkpoints/best.pt --dirs sefa.pt --index 0 \\
        --degrees=-5:5:11 --seeds 0-3 --caption-top "WHEN THE CODE" --caption-bottom "FINALLY RUNS" --out edits
    python 04_latent_explore.py mix --ckpt RUN/checkpoints/best.pt --rows 0-3 --cols 10-14 --out mix.png
    python 04_latent_explore.py ui --ckpt RUN/checkpoints/best.pt --dirs sefa.pt

Sections: 1 loading a generator · 2 directions (GANSpace, SeFa, file format) · 3 editing, captions,
grids and GIFs · 4 style mixing · 5 web UI · 6 CLI.
"""
import argparse
import importlib
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ops import OPS_HELP, OPS_MODES, set_ops
from ops.device import DEVICE_HELP, resolve_device

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

W_AVG_SAMPLES = 4096  # z samples averaged into w_avg when a checkpoint stores none (rosinality mean_latent)
W_AVG_SEED = 123      # fixed, so truncation is reproducible across runs
GANSPACE_SEED = 1     # harskish/ganspace draws its latents after seeding with 1 (SEED_SAMPLING)
STDEV_SAMPLES = 5000  # fresh w samples used to measure the spread along each direction (GANSpace)
# Style-mixing bands of the StyleGAN paper (Sec. 3.1): coarse 4^2-8^2, middle 16^2-32^2, fine 64^2+.
# With two style slots per resolution these are slots [0, 4), [4, 8) and [8, n_latent).
MIX_BANDS = (("coarse", 0, 4), ("middle", 4, 8), ("fine", 8, None))


# ----------------------------------------------------------------------------------------------------
# 1. Loading a generator
# ----------------------------------------------------------------------------------------------------

class StyleGAN2Explorer:
    """A StyleGAN2 generator (03_stylegan2_ada.Generator) seen as: z -> w -> per-layer styles -> image.

    Style slots: conv layer l (conv1 = 0, convs[i] = i + 1) reads ws[:, l]; ToRGB layers read the slot
    after their conv; slot n_latent - 1 feeds only the last ToRGB. SeFa uses the modulation (style
    affine) weight of the conv layer behind each selected slot.
    """

    family = "stylegan2"

    def __init__(self, g, w_avg=None):
        self.g = g.eval()
        self.style_dim = g.style_dim
        self.n_latent = g.n_latent
        self.size = g.size
        self.device = next(g.parameters()).device
        self.w_avg = (w_avg.reshape(1, -1).to(self.device).float() if w_avg is not None
                      else mean_w(self.mapping, self.style_dim, self.device))

    @torch.no_grad()
    def mapping(self, z):
        return self.g.style(z)

    def style_weights(self, layers):
        """[(slot, weight [C_in, style_dim])] for the selected slots that feed a modulated conv."""
        convs = [self.g.conv1] + list(self.g.convs)
        return [(s, convs[s].conv.modulation.weight.detach()) for s in layers if s < len(convs)]

    @torch.no_grad()
    def synthesize(self, ws, noise_mode="const"):
        """ws [B, n_latent, style_dim] -> images [B, 3, size, size] in [-1, 1]."""
        noise = None
        if noise_mode == "none":
            noise = [torch.zeros_like(getattr(self.g.noises, f"noise_{i}")) for i in range(self.g.num_layers)]
        img, _ = self.g([ws], input_is_latent=True, noise=noise, randomize_noise=noise_mode == "random")
        return img


class StyleGANv1Explorer:
    """A StyleGAN v1 generator (02_stylegan_freezed.StyledGenerator) at one resolution.

    rosinality's v1 synthesis takes one style per progressive block (both AdaINs of a block read it),
    so the style slots here are the step + 1 blocks (7 at 256 px). SeFa stacks both AdaIN affine
    weights of each selected block ([2C, dim] each: scale rows then shift rows, as genforce's layer
    pairs). v1 checkpoints store no noise maps: 'const' noise is drawn once from a fixed seed.
    """

    family = "stylegan"

    def __init__(self, g, size, device="cpu"):
        self.sg1 = load_script("02_stylegan_freezed")
        self.g = g.eval().to(device)
        self.device = device
        self.size = size
        self.step = self.sg1.size_to_step(size)
        self.style_dim = g.code_dim
        self.n_latent = self.step + 1
        self.w_avg = mean_w(self.mapping, self.style_dim, device)
        self.const_noise = [n.to(device) for n in self.sg1.seed_noise(g, 0, self.step, "random")]

    @torch.no_grad()
    def mapping(self, z):
        return self.g.style(z)

    def style_weights(self, layers):
        blocks = self.g.generator.progression
        return [(s, torch.cat([blocks[s].adain1.style.linear.weight_orig.detach(),
                               blocks[s].adain2.style.linear.weight_orig.detach()], 0))
                for s in layers if s < self.n_latent]

    @torch.no_grad()
    def synthesize(self, ws, noise_mode="const"):
        b = ws.shape[0]
        if noise_mode == "const":
            noise = [n.expand(b, -1, -1, -1) for n in self.const_noise]
        else:
            noise = self.g.make_noise(b, self.step, self.device)
            if noise_mode == "none":
                noise = [torch.zeros_like(n) for n in noise]
        return self.g.generator([ws[:, i] for i in range(self.n_latent)], noise, self.step)


def mean_w(mapping, style_dim, device):
    """w_avg: mean of M(z) over W_AVG_SAMPLES latents from a fixed seed -> [1, style_dim]."""
    z = torch.from_numpy(np.random.RandomState(W_AVG_SEED).randn(W_AVG_SAMPLES, style_dim)).float()
    return mapping(z.to(device)).mean(0, keepdim=True)


def load_script(name):
    """Import a numbered sibling script (its file name starts with a digit) as a module."""
    return importlib.import_module(name)


def load_explorer(path, device="cpu", size=None):
    """Any checkpoint 03 (StyleGAN2) or 02 (StyleGAN v1) can load -> an explorer object.
    `size` matters only for StyleGAN v1 files, which hold every resolution up to 1024."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path}: no such checkpoint file")
    sg2 = load_script("03_stylegan2_ada")
    try:
        g, latent_avg = sg2.load_generator(path, device=device)
        return StyleGAN2Explorer(g, latent_avg)
    except (Exception, SystemExit) as err:  # not a StyleGAN2 checkpoint: try StyleGAN v1
        err_sg2 = str(err).splitlines()[0] if str(err) else type(err).__name__
    sg1 = load_script("02_stylegan_freezed")
    try:
        g, ckpt = sg1.load_sampling_generator(path, device)
    except (Exception, SystemExit) as err:
        raise SystemExit(f"error: {path}: neither a StyleGAN2 checkpoint ({err_sg2}) "
                         f"nor a StyleGAN v1 one ({str(err).splitlines()[0]})") from None
    trained = ckpt.get("args", {}).get("size") if isinstance(ckpt.get("args"), dict) else None
    return StyleGANv1Explorer(g, size or trained or 256, device)


# ----------------------------------------------------------------------------------------------------
# 2. Directions
# ----------------------------------------------------------------------------------------------------

def canonical_sign(directions):
    """Eigenvectors have arbitrary signs; make each row's largest-magnitude entry positive."""
    idx = directions.abs().argmax(dim=1)
    sign = torch.sign(directions[torch.arange(len(directions)), idx])
    return directions * sign[:, None]


@torch.no_grad()
def ganspace(mapping, style_dim, n_samples=1_000_000, components=80, batch=10_000, seed=GANSPACE_SEED,
             device="cpu"):
    """GANSpace (Sec. 3.1): PCA of w = M(z), z ~ N(0, I), exactly (float64 moments).

    mean = E[w]; C = E[(w - mean)(w - mean)^T] (unbiased); C = V diag(lambda) V^T;
    directions = top-K columns of V as rows, values = lambda (explained variance).
    Latents: np.random.RandomState(seed).standard_normal, drawn in chunks (same stream as one call).
    """
    rng = np.random.RandomState(seed)
    total = torch.zeros(style_dim, dtype=torch.float64)
    outer = torch.zeros(style_dim, style_dim, dtype=torch.float64)
    done = 0
    with tqdm(total=n_samples, desc="ganspace: sampling W", leave=False) as bar:
        while done < n_samples:
            b = min(batch, n_samples - done)
            z = torch.from_numpy(rng.standard_normal((b, style_dim))).float().to(device)
            w = mapping(z).cpu().double()                 # [b, style_dim]; float64 on the CPU (MPS has none)
            total += w.sum(0)
            outer += w.T @ w
            done += b
            bar.update(b)
    mean = total / n_samples
    cov = (outer - n_samples * torch.outer(mean, mean)) / (n_samples - 1)
    values, vectors = torch.linalg.eigh(cov)               # ascending
    order = torch.argsort(values, descending=True)[:components]
    directions = canonical_sign(vectors[:, order].T.contiguous())
    # spread of fresh samples along each unit direction (GANSpace's lat_stdev)
    z = torch.from_numpy(np.random.RandomState(seed + 1).standard_normal((STDEV_SAMPLES, style_dim)))
    proj = mapping(z.float().to(device)).cpu().double() @ directions.T
    return {"directions": directions.float(), "values": values[order].float(), "method": "ganspace",
            "mean": mean.float(), "stdev": proj.std(0).float(), "n_samples": n_samples}


def sefa(weights):
    """SeFa (Eq. 5): A = stacked style-affine weights [sum C_in, dim], each row scaled to unit norm
    (genforce/sefa normalisation); directions = eigenvectors of A^T A by descending eigenvalue."""
    weights = [w.detach().cpu().double() for w in weights]  # float64 on the CPU (MPS has none)
    a = torch.cat([w / w.norm(dim=1, keepdim=True) for w in weights], dim=0)
    values, vectors = np.linalg.eigh((a.T @ a).numpy())    # symmetric: real, ascending
    order = np.argsort(values)[::-1].copy()
    directions = canonical_sign(torch.from_numpy(vectors[:, order].T.copy()))
    return {"directions": directions.float(), "values": torch.from_numpy(values[order].copy()).float(),
            "method": "sefa"}


def parse_range(text, n=None):
    """'0-3' -> [0, 1, 2, 3]; '1,4,7' -> [1, 4, 7]; 'all' -> range(n); inclusive, as sefa's parse_indices."""
    if text in (None, "", "all"):
        return list(range(n))
    out = []
    for part in str(text).split(","):
        if "-" in part.strip()[1:]:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    if n is not None and any(i < 0 or i >= n for i in out):
        raise SystemExit(f"error: layer/seed range {text!r} outside 0..{n - 1}")
    return out


def parse_degrees(text):
    """'-5:5:11' -> 11 evenly spaced degrees from -5 to 5 (inclusive); '1,2,3' -> a list."""
    if ":" in text:
        start, stop, num = text.split(":")
        return [float(v) for v in np.linspace(float(start), float(stop), int(num))]
    return [float(v) for v in text.split(",")]


def save_directions(path, result, layers):
    result = dict(result, layers=list(layers))
    tmp = path + ".tmp"
    torch.save(result, tmp)
    os.replace(tmp, path)


def load_directions(path):
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path}: no such directions file (make one with `sefa` or `ganspace`)")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SystemExit(f"error: {path}: not a readable directions file ({err.__class__.__name__})") from None
    if not isinstance(d, dict) or "directions" not in d or d["directions"].ndim != 2:
        raise SystemExit(f"error: {path}: not a directions file (needs a [K, 512] 'directions' tensor)")
    return d


# ----------------------------------------------------------------------------------------------------
# 3. Editing, captions, grids and GIFs
# ----------------------------------------------------------------------------------------------------

def seed_w(explorer, seed):
    """z = np.random.RandomState(seed).randn(1, dim) (NVIDIA's seed convention, as 03 generate) -> w [1, dim]."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, explorer.style_dim)).float()
    return explorer.mapping(z.to(explorer.device))


def styles_for(explorer, w, truncation=1.0):
    """w [B, dim] -> per-layer styles [B, n_latent, dim], truncated toward w_avg: w' = w_avg + psi (w - w_avg)."""
    w = explorer.w_avg + truncation * (w - explorer.w_avg)
    return w[:, None, :].repeat(1, explorer.n_latent, 1)


def apply_edit(ws, direction, degree, layers):
    """ws[:, l] += degree * direction for l in layers (GANSpace E(i, s-e), SeFa's edit)."""
    ws = ws.clone()
    ws[:, layers, :] += degree * direction.to(ws)
    return ws


def to_pil(img):
    """[3, H, W] in [-1, 1] -> PIL through 03's `to_uint8`, so edits quantize exactly as `generate`."""
    return Image.fromarray(load_script("03_stylegan2_ada").to_uint8(img[None].cpu())[0].numpy(), "RGB")


def load_font(size, font_path=None):
    if font_path:
        try:
            return ImageFont.truetype(font_path, size)
        except OSError:
            raise SystemExit(f"error: {font_path}: not a readable TrueType/OpenType font") from None
    return ImageFont.load_default(size=size)


def _wrap(draw, text, font, stroke, width):
    """Greedy word wrap so that every line fits `width` pixels (a word that cannot fit stays alone)."""
    lines = []
    for word in text.split():
        trial = f"{lines[-1]} {word}" if lines else word
        box = draw.textbbox((0, 0), trial, font=font, stroke_width=stroke)
        if lines and box[2] - box[0] <= width:
            lines[-1] = trial
        else:
            lines.append(word)
    return "\n".join(lines)


def draw_caption(img, text, where="top", font_path=None):
    """Meme caption: white text with a black outline, centred, at the largest font size (<= H/7)
    whose word-wrapped lines fit the width and half the height."""
    if not text:
        return img
    img = img.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    margin = max(2, w // 40)
    for size in range(max(6, h // 7), 2, -1):
        font = load_font(size, font_path)
        stroke = max(1, size // 12)
        lines = _wrap(draw, text, font, stroke, w - 2 * margin)
        box = draw.multiline_textbbox((0, 0), lines, font=font, stroke_width=stroke, align="center")
        tw, th = box[2] - box[0], box[3] - box[1]
        if tw <= w - 2 * margin and th <= h // 2 - margin:
            break
    x = (w - tw) // 2 - box[0]
    y = (margin - box[1]) if where == "top" else (h - margin - th - box[1])
    draw.multiline_text((x, y), lines, font=font, fill="white", stroke_width=stroke, stroke_fill="black",
                        align="center")
    return img


def caption(img, top=None, bottom=None, font_path=None):
    return draw_caption(draw_caption(img, top, "top", font_path), bottom, "bottom", font_path)


def grid(images, ncol, pad=2, bg=(255, 255, 255)):
    w, h = images[0].size
    nrow = (len(images) + ncol - 1) // ncol
    sheet = Image.new("RGB", (ncol * (w + pad) + pad, nrow * (h + pad) + pad), bg)
    for i, im in enumerate(images):
        sheet.paste(im, (pad + (i % ncol) * (w + pad), pad + (i // ncol) * (h + pad)))
    return sheet


def save_gif(frames, path, duration_ms=80):
    """Animated GIF, one frame per degree, looping forever."""
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0,
                   optimize=False, disposal=2)


def edit_frames(explorer, direction, seed, degrees, layers, truncation=1.0, top=None, bottom=None,
                font_path=None, noise_mode="const"):
    """One image per degree for one seed (the direction swept over the chosen layers)."""
    ws = styles_for(explorer, seed_w(explorer, seed), truncation)
    batch = torch.cat([apply_edit(ws, direction, d, layers) for d in degrees], 0)
    imgs = torch.cat([explorer.synthesize(b, noise_mode) for b in batch.split(8)], 0)
    return [caption(to_pil(im), top, bottom, font_path) for im in imgs]


def run_edit(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    d = load_directions(args.dirs)
    if not 0 <= args.index < len(d["directions"]):
        raise SystemExit(f"error: {args.dirs}: --index {args.index} outside 0..{len(d['directions']) - 1}")
    layers = parse_range(args.layers, explorer.n_latent) if args.layers else list(d.get("layers") or
                                                                                   range(explorer.n_latent))
    degrees = parse_degrees(args.degrees)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for seed in tqdm(parse_range(args.seeds), desc="edit"):
        frames = edit_frames(explorer, d["directions"][args.index], seed, degrees, layers, args.truncation,
                             args.caption_top, args.caption_bottom, args.font, args.noise_mode)
        save_gif(frames, os.path.join(args.out, f"seed{seed:04d}_dir{args.index:02d}.gif"), args.duration)
        rows.extend(frames)
    grid(rows, len(degrees)).save(os.path.join(args.out, f"grid_dir{args.index:02d}.png"))
    print(f"wrote {args.out}: grid_dir{args.index:02d}.png and one GIF per seed "
          f"({len(degrees)} frames, degrees {degrees[0]:g}..{degrees[-1]:g}, layers {layers[0]}-{layers[-1]})")


def run_directions(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    layers = parse_range(args.layers, explorer.n_latent)
    if args.cmd == "sefa":
        weights = explorer.style_weights(layers)
        if not weights:
            raise SystemExit(f"error: --layers {args.layers} select no style-modulated layer")
        result = sefa([w for _, w in weights])
        result["directions"] = result["directions"][: args.components]
        result["values"] = result["values"][: args.components]
    else:
        result = ganspace(explorer.mapping, explorer.style_dim, args.samples, args.components,
                          args.batch, device=explorer.device)
    save_directions(args.out, result, layers)
    v = result["values"]
    print(f"wrote {args.out}: {len(v)} {args.cmd} directions; top values "
          + ", ".join(f"{x:.4g}" for x in v[:5].tolist()))


# ----------------------------------------------------------------------------------------------------
# 4. Style mixing
# ----------------------------------------------------------------------------------------------------

def mix_figure(explorer, rows, cols, truncation=1.0, noise_mode="const"):
    """StyleGAN Fig. 3: top row = column sources, left column = row sources; each cell takes the row
    source's styles except the band's slots, which come from the column source. One block per band."""
    w_rows = torch.cat([seed_w(explorer, s) for s in rows], 0)
    w_cols = torch.cat([seed_w(explorer, s) for s in cols], 0)
    ws_rows, ws_cols = styles_for(explorer, w_rows, truncation), styles_for(explorer, w_cols, truncation)
    row_imgs = [to_pil(i) for i in explorer.synthesize(ws_rows, noise_mode)]
    col_imgs = [to_pil(i) for i in explorer.synthesize(ws_cols, noise_mode)]
    size = row_imgs[0].size
    blocks = []
    for name, a, b in MIX_BANDS:
        b = explorer.n_latent if b is None else min(b, explorer.n_latent)
        if a >= b:
            continue
        blank = draw_caption(Image.new("RGB", size, (255, 255, 255)), f"{name} {a}-{b - 1}", "top")
        cells = [blank] + col_imgs
        for i, img in enumerate(row_imgs):
            ws = ws_rows[i:i + 1].repeat(len(cols), 1, 1)
            ws[:, a:b] = ws_cols[:, a:b]
            cells += [img] + [to_pil(x) for x in explorer.synthesize(ws, noise_mode)]
        blocks.append(grid(cells, len(cols) + 1))
    sheet = Image.new("RGB", (blocks[0].width, sum(b.height for b in blocks)), (255, 255, 255))
    y = 0
    for block in blocks:
        sheet.paste(block, (0, y))
        y += block.height
    return sheet


def run_mix(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    sheet = mix_figure(explorer, parse_range(args.rows), parse_range(args.cols), args.truncation, args.noise_mode)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


# ----------------------------------------------------------------------------------------------------
# 5. Web UI (gradio, optional)
# ----------------------------------------------------------------------------------------------------

class Session:
    """What a slider change re-runs: styles from (seed, truncation), plus the weighted directions, then
    synthesis only (directions are computed once, beforehand)."""

    def __init__(self, explorer, dirs=None, n_sliders=8):
        self.explorer = explorer
        self.dirs = dirs["directions"][:n_sliders] if dirs is not None else torch.zeros(0, explorer.style_dim)
        self.scale = (dirs.get("stdev")[:n_sliders] if dirs is not None and "stdev" in dirs
                      else torch.ones(len(self.dirs)))

    def render(self, seed, truncation, layer_start, layer_end, top, bottom, *amounts):
        e = self.explorer
        layers = list(range(int(layer_start), int(layer_end) + 1))
        ws = styles_for(e, seed_w(e, int(seed)), float(truncation))
        for direction, scale, amount in zip(self.dirs, self.scale, amounts):
            if amount:
                ws = apply_edit(ws, direction, float(amount) * float(scale), layers)
        return caption(to_pil(e.synthesize(ws)[0]), top or None, bottom or None)

    def gif(self, seed, truncation, layer_start, layer_end, top, bottom, index, *amounts):
        """A GIF sweeping direction `index` from -10 to +10 (slider units) on top of the other sliders."""
        index = int(index)
        if not 0 <= index < len(self.dirs):
            raise ValueError(f"direction {index} outside 0..{len(self.dirs) - 1}")
        frames = []
        for a in np.linspace(-10, 10, 11):
            values = list(amounts)
            values[index] = float(a)
            frames.append(self.render(seed, truncation, layer_start, layer_end, top, bottom, *values))
        path = os.path.join(tempfile.mkdtemp(prefix="calm-gan-"), f"seed{int(seed):04d}_dir{index:02d}.gif")
        save_gif(frames, path)
        return path


def build_ui(explorer, dirs=None, n_sliders=8):
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit("error: the web UI needs gradio: pip install -r requirements-ui.txt") from None
    session = Session(explorer, dirs, n_sliders)
    n = explorer.n_latent
    with gr.Blocks(title="calm-gan latent explorer") as demo:
        gr.Markdown(f"### calm-gan latent explorer: {explorer.family}, {explorer.size} px, "
                    f"{len(session.dirs)} directions" + (f" ({dirs['method']})" if dirs is not None else ""))
        with gr.Row():
            with gr.Column():
                seed = gr.Number(value=0, precision=0, label="seed")
                trunc = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="truncation psi")
                start = gr.Slider(0, n - 1, value=0, step=1, label="first layer")
                end = gr.Slider(0, n - 1, value=n - 1, step=1, label="last layer")
                top = gr.Textbox(label="caption top")
                bottom = gr.Textbox(label="caption bottom")
                sliders = [gr.Slider(-10, 10, value=0, step=0.1, label=f"direction {i}")
                           for i in range(len(session.dirs))]
            with gr.Column():
                image = gr.Image(type="pil", label="image (download with the arrow)", format="png", height=384)
                gif_index = gr.Number(value=0, precision=0, label="GIF: sweep direction")
                gif_button = gr.Button("make GIF")
                gif_file = gr.File(label="GIF")
        inputs = [seed, trunc, start, end, top, bottom] + sliders
        for comp in inputs:
            comp.change(session.render, inputs, image, api_name=False)
        button = gr.Button("render")
        button.click(session.render, inputs, image, api_name="render")
        gif_button.click(session.gif, [seed, trunc, start, end, top, bottom, gif_index] + sliders, gif_file,
                         api_name="gif")
        demo.load(session.render, inputs, image, api_name=False)
    return demo


def run_ui(args):
    explorer = load_explorer(args.ckpt, args.device, args.size)
    dirs = load_directions(args.dirs) if args.dirs else None
    demo = build_ui(explorer, dirs, args.sliders)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


# ----------------------------------------------------------------------------------------------------
# 6. CLI
# ----------------------------------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--ckpt", required=True, help="generator checkpoint (02 or 03 loadable)")
        sp.add_argument("--device", default="auto", help=DEVICE_HELP)
        sp.add_argument("--ops", choices=OPS_MODES, default="auto", help="StyleGAN2's " + OPS_HELP)
        sp.add_argument("--size", type=int, default=None,
                        help="StyleGAN v1 only: resolution to run at (default: the trained one, else 256)")

    g = sub.add_parser("ganspace", help="PCA directions of W (GANSpace)")
    common(g)
    g.add_argument("--out", required=True)
    g.add_argument("--samples", type=int, default=1_000_000, help="w samples (GANSpace's StyleGAN2 setting: 1M)")
    g.add_argument("--components", type=int, default=80, help="directions kept (GANSpace default 80)")
    g.add_argument("--batch", type=int, default=10_000)
    g.add_argument("--layers", default="all", help="style slots the edits apply to, e.g. 0-5 (default all)")

    s = sub.add_parser("sefa", help="closed-form factorization directions (SeFa)")
    common(s)
    s.add_argument("--out", required=True)
    s.add_argument("--layers", default="all", help="style slots to factorize and edit, e.g. 0-1 (default all)")
    s.add_argument("--components", type=int, default=512)

    e = sub.add_parser("edit", help="grid + GIF per seed sweeping one direction")
    common(e)
    e.add_argument("--dirs", required=True)
    e.add_argument("--index", type=int, default=0)
    e.add_argument("--degrees", default="-5:5:11", help="start:stop:count or a comma list; write --degrees=-5:5:11 when it starts with a minus")
    e.add_argument("--seeds", default="0-3")
    e.add_argument("--layers", default=None, help="style slots to edit (default: the file's layers)")
    e.add_argument("--truncation", type=float, default=0.7, help="psi (SeFa's sampling used 0.7)")
    e.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
    e.add_argument("--caption-top", default=None)
    e.add_argument("--caption-bottom", default=None)
    e.add_argument("--font", default=None, help="TrueType/OpenType font file (e.g. one covering Hangul)")
    e.add_argument("--duration", type=int, default=80, help="ms per GIF frame")
    e.add_argument("--out", required=True)

    m = sub.add_parser("mix", help="style-mixing figure (coarse / middle / fine)")
    common(m)
    m.add_argument("--rows", default="0-3")
    m.add_argument("--cols", default="10-14")
    m.add_argument("--truncation", type=float, default=0.7)
    m.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
    m.add_argument("--out", required=True)

    u = sub.add_parser("ui", help="interactive gradio page")
    common(u)
    u.add_argument("--dirs", default=None)
    u.add_argument("--sliders", type=int, default=8)
    u.add_argument("--host", default="127.0.0.1", help="bind address (loopback unless told otherwise)")
    u.add_argument("--port", type=int, default=7860)
    u.add_argument("--share", action="store_true", help="make a public gradio link (off by default)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.device = str(resolve_device(args.device))
    set_ops(args.ops)
    t0 = time.time()
    {"ganspace": run_directions, "sefa": run_directions, "edit": run_edit, "mix": run_mix,
     "ui": run_ui}[args.cmd](args)
    if args.cmd != "ui":
        print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
