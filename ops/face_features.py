"""FD-faces (demo faces only): a Frechet distance on the features of a small CNN trained on the
demo's own procedural faces, so that a score sees what a reader sees in those faces.

Why: offline, FID runs on random Inception weights (ops/fid.py without the released file), and
random features do not see line quality: the demo's FreezeD + ADA samples are speckled and its
baseline's clean, yet both score FID 0.54. FID depends on what its feature network was trained to
notice (Kynkaeaenniemi, Karras, Aittala, Aila, Lehtinen, "The Role of ImageNet Classes in Frechet
Inception Distance", ICLR 2023, arXiv:2203.06026). 01_prepare_data.py draws the demo's faces from
known parameters (hair, eyes, nose, mouth, flags, yaw, roll, head size and position, shading), so
a network can be taught to read them, and to tell clean lines from degraded ones.

This measure reads calm-gan's demo faces only (01's line-art target faces and shaded source
faces, 32 px). A user's own faces are scored with FID (ops/fid.py, the released Inception
weights), which stays the headline; every line that prints an FD-faces number says so (NOTE).

The network (FaceFeatureNet): 32x32 RGB in [-1, 1] -> six 3x3 convolutions (16, 16/2, 32, 32/2,
64, 64/2 channels/stride; batch norm, ReLU) -> [64, 4, 4] -> Linear -> D = 64 features. Linear
heads read the features (so every attribute is linearly in them, and a Gaussian fit of the
features sees each attribute's distribution):
    one classifier per class label of 01's FACE_LABELS (style, hair, eyes, nose, mouth, head
    shape, shading, brows, the flags; the source style's hair length and colours), one regression
    on the continuous ones (scale, position, yaw, roll, eye and mouth geometry, light), and a
    degradation head: clean, speckle (salt-and-pepper dots on and beside the lines), blur, noise,
    jpeg-like blocks (`degrade`), with the strength regressed.
Features: the 64 outputs standardized by the mean and std of clean target faces (buffers), so
one unit is one standard deviation of the real faces and KID's cubic kernel sees unit scales.

Distances (ops.fid, the same formulas as FID/KID):
    FD-faces  = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))   on these features  (`fd_faces`)
    KID-faces = unbiased MMD^2, kernel (x.y / d + 1)^3, over random subsets    (`kid_faces`)

Input: tensors [N, 3, H, W] (or [N, 1, H, W]) in [-1, 1], clamped there as a PNG save would;
image folders (ops.image_files) and lists of PIL images, decoded to RGB. Other sizes than 32 are
resized to 32x32 by RESIZE_METHOD (the aspect ratio is not kept).

Run:
    python demo.py --make-face-net                    # draw faces through 01, train, validate, ship
    python -m ops.face_features real/ fake/           # FD-faces and KID-faces of two folders
From Python:
    net = load_face_net()                             # demo_models/face_features_32px.pt
    fd = fd_faces(features(real_folder, net), features(fake_tensor, net))

Sections: 1 constants, 2 network, 3 weights, 4 images -> features, 5 distances,
6 degradations, 7 training, 8 CLI.
"""
import argparse
import math
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import ops
from ops.fid import frechet_distance, kid, statistics

# ----------------------------------------------------------------------------------------------
# 1. Constants
MEASURE = "FD-faces (demo faces only)"
KID_MEASURE = "KID-faces (demo faces only)"
NOTE = ("reads calm-gan's procedural demo faces only (a network trained on 01's drawings); "
        "score other faces with FID")
FORMAT = "calm-gan face features 1"  # the `format` key of the weights file
SIZE = 32                            # the network's input side
DIMS = 64                            # feature dimension (100 samples per side in the demo's table)
CHANNELS = (16, 16, 32, 32, 64, 64)  # the six convolutions; every second one has stride 2
DEGRADATIONS = ("clean", "speckle", "blur", "noise", "blocks")
RESIZE_METHOD = ("antialiased bilinear to 32x32: torch F.interpolate(mode='bilinear', antialias=True, "
                 "align_corners=False) on [-1, 1] floats")
WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo_models",
                       "face_features_32px.pt")


class FaceNetError(Exception):
    """A bad weights file or bad input: the message is one line naming the file and what is wrong."""


# ----------------------------------------------------------------------------------------------
# 2. Network
class FaceFeatureNet(nn.Module):
    """32x32 RGB in [-1, 1] -> D features, and the linear heads trained on them.

    classes: {label name: [class values]} (one classifier per label); regression: [label names]
    (one linear map to all of them, targets standardized by regression_mean / regression_std).
    """

    def __init__(self,
                 classes,                 # {name: [values]}: 01's class labels and their values
                 regression,              # [names]: 01's continuous labels
                 dims=DIMS,               # feature dimension
                 channels=CHANNELS):      # conv widths; strides 1, 2, 1, 2, 1, 2
        super().__init__()
        layers, c_in = [], 3
        for k, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 + k % 2, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            c_in = c
        self.trunk = nn.Sequential(*layers)                     # [N, 64, 4, 4] at 32 px
        self.embed = nn.Linear(c_in * (SIZE // 8) ** 2, dims)   # [N, D]
        self.class_heads = nn.ModuleDict({name: nn.Linear(dims, len(v)) for name, v in classes.items()})
        self.regression_head = nn.Linear(dims, len(regression))
        self.degradation_head = nn.Linear(dims, len(DEGRADATIONS))
        self.strength_head = nn.Linear(dims, 1)
        self.register_buffer("feature_mean", torch.zeros(dims))
        self.register_buffer("feature_std", torch.ones(dims))
        self.register_buffer("regression_mean", torch.zeros(len(regression)))
        self.register_buffer("regression_std", torch.ones(len(regression)))
        self.classes = {name: list(v) for name, v in classes.items()}
        self.regression = list(regression)
        self.dims, self.channels = dims, tuple(channels)

    def embedding(self, x):
        """x [N, 3, 32, 32] in [-1, 1] -> raw embedding [N, D] (what the heads read)."""
        assert x.ndim == 4 and x.shape[1:] == (3, SIZE, SIZE), f"expected [N, 3, {SIZE}, {SIZE}], got {list(x.shape)}"
        return self.embed(self.trunk(x).flatten(1))

    def forward(self, x):
        """x [N, 3, 32, 32] -> features [N, D], standardized by the clean target faces' statistics."""
        return (self.embedding(x) - self.feature_mean) / self.feature_std

    def heads(self, e):
        """Raw embedding [N, D] -> {name: logits}, regression [N, R], degradation logits, strength [N]."""
        return ({name: h(e) for name, h in self.class_heads.items()}, self.regression_head(e),
                self.degradation_head(e), self.strength_head(e)[:, 0])

    @torch.inference_mode()
    def predict(self, x):
        """What the heads read in x [N, 3, 32, 32]: a list of dicts (labels, degradation, strength)."""
        logits, reg, deg, strength = self.heads(self.embedding(x))
        reg = reg * self.regression_std + self.regression_mean
        out = []
        for i in range(len(x)):
            d = {name: self.classes[name][int(v[i].argmax())] for name, v in logits.items()}
            d.update({name: float(reg[i, j]) for j, name in enumerate(self.regression)})
            d.update(degradation=DEGRADATIONS[int(deg[i].argmax())], strength=float(strength[i]))
            out.append(d)
        return out


# ----------------------------------------------------------------------------------------------
# 3. Weights: one dict, loaded with weights_only=True and strictly
def save_face_net(net, path, record=None):
    """Write net to path (fp16 weights, fp32 buffers of statistics) atomically; never replaces a file."""
    if os.path.exists(path):
        raise FaceNetError(f"{path} exists; move it away first (a shipped network is never overwritten)")
    state = {k: v.half() if v.is_floating_point() and not k.endswith(("_mean", "_std", "running_var"))
             else v for k, v in net.state_dict().items()}
    obj = {"format": FORMAT, "net": state, "classes": net.classes, "regression": net.regression,
           "dims": net.dims, "channels": list(net.channels), "size": SIZE, "degradations": list(DEGRADATIONS),
           "measure": MEASURE, "note": NOTE, "record": record or {}}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    ops.chmod_like_open(fd)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


_LOADED = {}


def load_face_net(path=None, device="cpu"):
    """The shipped FaceFeatureNet (or the file at path) in eval mode, fp32, on device.

    Loaded with torch.load(weights_only=True) and load_state_dict(strict=True); a file that is not
    such a network raises FaceNetError with one line naming it and what is wrong."""
    path = WEIGHTS if path is None else os.fspath(path)
    key = (os.path.abspath(path), str(device))
    if key in _LOADED:
        return _LOADED[key]
    if not os.path.isfile(path):
        raise FaceNetError(f"{path}: face-feature weights not found (made by `python demo.py --make-face-net`)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise FaceNetError(f"{path}: not a face-feature weights file ({type(e).__name__}: {first})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise FaceNetError(f"{path}: not a face-feature weights file (format {found!r}, expected {FORMAT!r})")
    try:
        net = FaceFeatureNet(ck["classes"], ck["regression"], ck["dims"], tuple(ck["channels"]))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["net"].items()},
                            strict=True)
    except (KeyError, TypeError, RuntimeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise FaceNetError(f"{path}: face-feature weights do not fit the network "
                           f"({type(e).__name__}: {first})") from None
    net.record = ck.get("record", {})
    _LOADED[key] = net = net.eval().to(device)
    return net


# ----------------------------------------------------------------------------------------------
# 4. Images -> features
def to_input(x):
    """Images -> float32 [N, 3, 32, 32] in [-1, 1] (RESIZE_METHOD where the size differs).

    x: a tensor [N, 3 or 1, H, W] (or one image [3, H, W]) in [-1, 1], clamped there; a list of
    PIL images; or an image folder (every image file directly in it, ops.image_files)."""
    if isinstance(x, (str, os.PathLike)):
        return _folder_input(os.fspath(x))
    if isinstance(x, (list, tuple)):
        if not x:
            raise FaceNetError("no images given")
        return torch.cat([_pil_input(im) for im in x])
    if not torch.is_tensor(x):
        raise FaceNetError(f"images must be a tensor, a list of PIL images or a folder, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise FaceNetError(f"expected images [N, 3, H, W] (or [N, 1, H, W]), got {list(x.shape)}")
    x = x.detach().float()
    if not torch.isfinite(x).all():
        raise FaceNetError("images contain NaN or infinity")
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return _resize(x.clamp(-1, 1))


def _resize(x):
    if x.shape[-2:] == (SIZE, SIZE):
        return x
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)


def _pil_input(im):
    arr = np.asarray(im.convert("RGB"), dtype=np.float32)           # [H, W, 3] in 0..255
    return _resize(torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1)


def _folder_input(folder):
    if not os.path.isdir(folder):
        raise FaceNetError(f"{folder}: not a folder of images")
    files = ops.image_files(folder)
    if not files:
        raise FaceNetError(f"{folder}: no image files ({' '.join(ops.IMAGE_EXTENSIONS)})")
    out = []
    for path in files:
        try:
            with ops.pil_bombs_are_errors(), Image.open(path) as im:
                out.append(_pil_input(im))
        except Exception as e:  # PIL raises many types for damaged files
            raise FaceNetError(f"{path}: cannot read as an image ({type(e).__name__}: {e})") from None
    return torch.cat(out)


@torch.inference_mode()
def features(images, net=None, batch_size=250, device=None):
    """Images (see to_input) -> float64 numpy features [N, D] of the face network (default: shipped)."""
    net = load_face_net() if net is None else net
    device = device or next(net.parameters()).device
    x = to_input(images)
    was_training = net.training
    net.eval()
    out = [net(x[i:i + batch_size].to(device)).double().cpu() for i in range(0, len(x), batch_size)]
    net.train(was_training)
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------------------------
# 5. Distances (ops.fid's formulas on these features)
def fd_faces(feats_a, feats_b):
    """FD-faces: the Frechet distance between Gaussian fits of two [N, D] feature sets (Heusel et
    al. 2017, Eq. 6, as FID): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    mu_a, s_a = statistics(feats_a)
    mu_b, s_b = statistics(feats_b)
    return frechet_distance(mu_a, s_a, mu_b, s_b)


def kid_faces(feats_a, feats_b, subsets=100, subset_size=None, seed=0):
    """KID-faces: ops.fid.kid on these features -> (mean, std over subsets)."""
    return kid(feats_a, feats_b, subsets=subsets, subset_size=subset_size, seed=seed)


def score(real, fake, net=None, kid_subset_size=None):
    """FD-faces and KID-faces of two image sets (anything `features` takes), with their names."""
    fr, ff = features(real, net), features(fake, net)
    km, ks = kid_faces(fr, ff, subset_size=kid_subset_size)
    return {"measure": MEASURE, "fd": fd_faces(fr, ff), "kid_mean": km, "kid_std": ks,
            "n_real": len(fr), "n_fake": len(ff), "note": NOTE}


# ----------------------------------------------------------------------------------------------
# 6. Degradations: what the degradation head learns to see (and what the validation adds)
def _gray_range(x):
    """max - min of the channel mean over each pixel's 3x3 neighbourhood: [N, 1, H, W], 0..2."""
    g = x.mean(1, keepdim=True)
    return F.max_pool2d(g, 3, 1, 1) + F.max_pool2d(-g, 3, 1, 1)


def speckle(x, strength, generator=None, near_lines=True):
    """Salt-and-pepper dots on and beside the lines: each pixel within one pixel of a line or edge
    (3x3 range of the gray value over 0.5, in [-1, 1] units) turns, with probability 0.6 * strength,
    white (45%), black (35%) or a random colour (20%). near_lines=False: anywhere in the image."""
    n = len(x)
    s = torch.as_tensor(strength, dtype=x.dtype).reshape(-1, 1, 1, 1).expand(n, 1, 1, 1)
    u = torch.rand(x[:, :1].shape, generator=generator)
    pick = u < 0.6 * s
    if near_lines:
        pick &= _gray_range(x) > 0.5
    kind = torch.rand(x[:, :1].shape, generator=generator)
    colour = torch.rand(x.shape, generator=generator) * 2 - 1
    value = torch.where(kind < 0.45, torch.ones_like(x), torch.where(kind < 0.8, -torch.ones_like(x), colour))
    return torch.where(pick, value, x)


def blur(x, strength):
    """Gaussian blur with sigma = 0.3 + 1.2 * strength pixels (7x7, reflect padding), per image."""
    n, c, h, w = x.shape
    sigma = (0.3 + 1.2 * torch.as_tensor(strength, dtype=x.dtype).reshape(-1)).expand(n)
    t = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)           # [N * C, 7]
    y = F.pad(x.reshape(1, n * c, h, w), (3, 3, 3, 3), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)                  # along x
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)                  # along y
    return y.reshape(n, c, h, w)


def noise(x, strength, generator=None):
    """Gaussian noise of std 0.35 * strength per pixel and channel (colour noise), clamped."""
    s = torch.as_tensor(strength, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return (x + torch.randn(x.shape, generator=generator) * 0.35 * s).clamp(-1, 1)


def _dct_matrix(n=8):
    """Orthonormal DCT-II matrix [n, n]: D[u, i] = a_u cos(pi (2i + 1) u / 2n)."""
    i = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * i[None] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


def blocks(x, strength):
    """JPEG-like blocks: each 8x8 block of each channel -> DCT, coefficient (u, v) rounded to a step
    of (0.03 + 0.5 * strength) * (1 + (u + v) / 2) (coarser at high frequency), inverse DCT."""
    n, c, h, w = x.shape
    d = _dct_matrix(8).to(x.dtype)
    b = x.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)   # [N, C, H/8, W/8, 8, 8]
    coef = d @ b @ d.T
    uv = torch.arange(8, dtype=x.dtype)
    step = (0.03 + 0.5 * torch.as_tensor(strength, dtype=x.dtype).reshape(-1, 1, 1, 1, 1, 1)) \
        * (1 + (uv[:, None] + uv[None]) / 2)
    coef = torch.round(coef / step) * step
    y = (d.T @ coef @ d).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)
    return y.clamp(-1, 1)


def degrade(x, kind, strength, generator=None):
    """x [N, 3, H, W] in [-1, 1] degraded by DEGRADATIONS[kind] ('clean' returns x) at strength in [0, 1]."""
    name = DEGRADATIONS[kind] if isinstance(kind, int) else kind
    if name == "clean":
        return x
    if name == "speckle":
        return speckle(x, strength, generator)
    if name == "blur":
        return blur(x, strength)
    if name == "noise":
        return noise(x, strength, generator)
    if name == "blocks":
        return blocks(x, strength)
    raise ValueError(f"unknown degradation {kind!r}: one of {', '.join(DEGRADATIONS)}")


def random_degradations(x, generator, clean_share=0.4):
    """Each image clean (clean_share) or one degradation of the others at strength U(0.05, 1).
    Returns (images, kind index [N], strength [N], 0 for clean)."""
    n = len(x)
    others = len(DEGRADATIONS) - 1
    u = torch.rand(n, generator=generator)
    kind = torch.where(u < clean_share, torch.zeros(n, dtype=torch.long),
                       1 + (torch.rand(n, generator=generator) * others).long().clamp(max=others - 1))
    strength = torch.where(kind > 0, 0.05 + 0.95 * torch.rand(n, generator=generator), torch.zeros(n))
    out = x.clone()
    for k in range(1, len(DEGRADATIONS)):
        m = kind == k
        if m.any():
            out[m] = degrade(x[m], k, strength[m], generator)
    return out, kind, strength


# ----------------------------------------------------------------------------------------------
# 7. Training: multi-task heads on freshly drawn faces of both styles
def encode_labels(labels, classes=None, regression=None):
    """[label dicts] -> (classes {name: sorted values}, regression [names], class index [N, K] with
    -1 where a face lacks the label, regression targets [N, R] with NaN where it lacks it).

    Floats are regression targets; strings, booleans and ints are classes. A label that takes
    one value only (01's line width at 32 px) is left out: there is nothing to learn."""
    if classes is None:
        names = sorted(set().union(*labels))
        values = {k: [d[k] for d in labels if k in d] for k in names}
        regression = [k for k in names if all(isinstance(v, float) for v in values[k])
                      and np.std(values[k]) > 0]
        classes = {k: sorted(set(values[k])) for k in names
                   if k not in regression and not all(isinstance(v, float) for v in values[k])
                   and len(set(values[k])) > 1}
    index = {k: {v: i for i, v in enumerate(vs)} for k, vs in classes.items()}
    cls = torch.full((len(labels), len(classes)), -1, dtype=torch.long)
    reg = torch.full((len(labels), len(regression)), float("nan"))
    for i, d in enumerate(labels):
        for j, k in enumerate(classes):
            if k in d:
                cls[i, j] = index[k].get(d[k], -1)
        for j, k in enumerate(regression):
            if k in d:
                reg[i, j] = float(d[k])
    return classes, regression, cls, reg


def images_to_uint8(faces):
    """[PIL RGB 32x32] -> uint8 [N, 3, 32, 32]."""
    return torch.from_numpy(np.stack([np.asarray(f.convert("RGB")) for f in faces])).permute(0, 3, 1, 2).contiguous()


def _as_input(x8):
    return _resize(x8.float() / 127.5 - 1)


def multitask_loss(net, x, cls, reg, kind, strength):
    """Sum of the heads' losses: mean cross-entropy over the class heads (faces lacking a label
    ignored), mean squared error of the standardized regression targets (NaN ignored), and the
    degradation head's cross-entropy plus its strength error (degraded images), each weighted 1."""
    logits, reg_pred, deg, s_pred = net.heads(net.embedding(x))
    ce = torch.stack([F.cross_entropy(logits[k], cls[:, j], ignore_index=-1) for j, k in enumerate(net.classes)
                      if (cls[:, j] >= 0).any()]).mean()
    target = (reg - net.regression_mean) / net.regression_std
    known = ~torch.isnan(target)
    mse = ((reg_pred - target.nan_to_num()) ** 2)[known].mean()
    deg_ce = F.cross_entropy(deg, kind)
    bad = kind > 0
    s_mse = ((s_pred[bad] - strength[bad]) ** 2).mean() if bad.any() else deg_ce * 0
    parts = {"class": ce, "regression": mse, "degradation": deg_ce, "strength": s_mse}
    return ce + mse + deg_ce + s_mse, {k: float(v.detach()) for k, v in parts.items()}


@torch.inference_mode()
def evaluate_heads(net, x8, cls, reg, seed=1, batch=500):
    """Validation numbers: accuracy per class head and R^2 per regression target on clean images,
    and on randomly degraded copies the degradation accuracy and the strength's mean abs error."""
    net.eval()
    g = torch.Generator().manual_seed(seed)
    hits = torch.zeros(len(net.classes))
    counts = torch.zeros(len(net.classes))
    preds, kinds, kind_hat, strengths, s_hat = [], [], [], [], []
    for i in range(0, len(x8), batch):
        x = _as_input(x8[i:i + batch])
        logits, r, _, _ = net.heads(net.embedding(x))
        for j, k in enumerate(net.classes):
            c = cls[i:i + batch, j]
            hits[j] += (logits[k].argmax(1)[c >= 0] == c[c >= 0]).sum()
            counts[j] += (c >= 0).sum()
        preds.append(r * net.regression_std + net.regression_mean)
        xd, kind, s = random_degradations(x, g)
        _, _, d, sp = net.heads(net.embedding(xd))
        kinds.append(kind), kind_hat.append(d.argmax(1)), strengths.append(s), s_hat.append(sp)
    pred = torch.cat(preds)
    out = {"accuracy": {k: round(float(hits[j] / counts[j]), 4) for j, k in enumerate(net.classes) if counts[j]},
           "r2": {}}
    for j, k in enumerate(net.regression):
        m = ~torch.isnan(reg[:, j])
        t = reg[m, j]
        out["r2"][k] = round(float(1 - ((pred[m, j] - t) ** 2).mean() / t.var(unbiased=False)), 4)
    kind, kh, s, sh = torch.cat(kinds), torch.cat(kind_hat), torch.cat(strengths), torch.cat(s_hat)
    out["degradation_accuracy"] = round(float((kind == kh).float().mean()), 4)
    out["clean_called_clean"] = round(float((kh[kind == 0] == 0).float().mean()), 4)
    out["strength_mae"] = round(float((sh[kind > 0] - s[kind > 0]).abs().mean()), 4)
    return out


def train_face_net(face_source, n_target=12000, n_source=4000, n_val=500, epochs=6, batch=128, lr=2e-3,
                   seed=0, device="cpu", log=print):
    """Train a FaceFeatureNet on faces drawn by face_source; returns (net, record).

    face_source(n, style, seed) -> ([PIL RGB images, 32 px], [label dicts]) draws n faces of one
    style ('target' or 'source') with 01's labels (01_prepare_data.make_demo_faces_with_labels).
    Training faces are drawn with seeds seed + 1 (target) and seed + 2 (source), validation faces
    with seed + 3 and seed + 4; the demo's own faces (seed 0) are not among them when seed >= 0.
    Adam (lr, betas 0.9/0.999), cosine decay to 0 over the epochs; each batch is degraded afresh
    (random_degradations), so the degradation head never sees one image twice the same way.
    """
    t0 = time.time()
    torch.manual_seed(seed)
    parts, val_parts = [], []
    for style, n, k in (("target", n_target, 1), ("source", n_source, 2)):
        faces, labels = face_source(n, style, seed + k)
        parts.append((images_to_uint8(faces), labels))
        faces, labels = face_source(n_val, style, seed + k + 2)
        val_parts.append((images_to_uint8(faces), labels))
    x8 = torch.cat([p[0] for p in parts])
    classes, regression, cls, reg = encode_labels([d for p in parts for d in p[1]])
    vx8 = torch.cat([p[0] for p in val_parts])
    _, _, vcls, vreg = encode_labels([d for p in val_parts for d in p[1]], classes, regression)
    t_draw = time.time() - t0
    log(f"drew {len(x8)} training and {len(vx8)} validation faces in {t_draw:.0f} s; "
        f"{len(classes)} class heads, {len(regression)} regression targets")

    net = FaceFeatureNet(classes, regression).to(device)
    net.regression_mean.copy_(torch.nanmean(reg, 0))
    net.regression_std.copy_(torch.tensor([float(np.nanstd(reg[:, j].numpy())) for j in range(reg.shape[1])]))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    batch = min(batch, len(x8))
    steps = epochs * (len(x8) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    t1 = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x8), generator=g)
        sums, count = {}, 0
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            x, kind, strength = random_degradations(_as_input(x8[idx]), g)
            loss, parts_ = multitask_loss(net, x.to(device), cls[idx].to(device), reg[idx].to(device),
                                          kind.to(device), strength.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in parts_.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
        log(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v / count:.3f}" for k, v in sums.items())
            + f" ({time.time() - t1:.0f} s)")
    t_train = time.time() - t1

    net.eval()
    with torch.inference_mode():                               # features standardized on clean target faces
        e = torch.cat([net.embedding(_as_input(x8[i:i + 500]).to(device)).cpu() for i in range(0, n_target, 500)])
    net.feature_mean.copy_(e.mean(0))
    net.feature_std.copy_(e.std(0).clamp_min(1e-6))
    val = evaluate_heads(net, vx8, vcls, vreg, seed=seed + 1)
    record = {"train_faces": {"target": n_target, "source": n_source}, "val_faces": {"target": n_val, "source": n_val},
              "seeds": {"train_target": seed + 1, "train_source": seed + 2, "val_target": seed + 3,
                        "val_source": seed + 4},
              "epochs": epochs, "batch": batch, "lr": lr, "steps": steps, "dims": net.dims,
              "parameters": sum(p.numel() for p in net.parameters()),
              "class_heads": {k: len(v) for k, v in classes.items()}, "regression": regression,
              "seconds": {"draw": round(t_draw, 1), "train": round(t_train, 1)},
              "torch_threads": torch.get_num_threads(), "validation_heads": val}
    return net, record


# ----------------------------------------------------------------------------------------------
# 8. CLI: python -m ops.face_features real/ fake/
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ops.face_features",
                                description=f"{MEASURE} and {KID_MEASURE} of two image folders: {NOTE}.")
    p.add_argument("real", help="folder of real demo faces")
    p.add_argument("fake", help="folder of generated faces")
    p.add_argument("--weights", default=None, help=f"face-feature weights (default {os.path.relpath(WEIGHTS)})")
    p.add_argument("--kid-subset-size", type=int, default=None, help="KID subset size (default: ops.fid's rule)")
    args = p.parse_args(argv)
    try:
        r = score(args.real, args.fake, load_face_net(args.weights), args.kid_subset_size)
    except FaceNetError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{r['n_real']} real, {r['n_fake']} generated images; {NOTE}")
    print(f"{KID_MEASURE}: {r['kid_mean']:.6g} ± {r['kid_std']:.6g}")
    print(f"{MEASURE}: {r['fd']:.4f}")
    return r


if __name__ == "__main__":
    main()
