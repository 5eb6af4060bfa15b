"""LPIPS (Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep Features as
a Perceptual Metric", CVPR 2018, arXiv:1801.03924), Eq. 1:

    d(x, y) = sum_l 1 / (H_l W_l) sum_hw || w_l * (f^_l(x)_hw - f^_l(y)_hw) ||_2^2

f^_l: a network's layer-l activations unit-normalised along channels; w_l: the learned per-channel
weights of the `lpips` package (its weights/v0.1/vgg.pth) when it is installed, else ones. The
network: VGG16's five taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) with torchvision's ImageNet
weights (vgg16-397923af.pth: `--vgg FILE` or the torch hub cache; nothing is downloaded here), on
inputs scaled as LPIPS does (its ScalingLayer). Any other network that returns a list of feature
maps can stand in (`distances` takes the maps), e.g. the demo's face network (ops/diversity.py).
"""
import importlib.util
import os
import zipfile

import torch
import torch.nn as nn
import torch.nn.functional as F

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)       # torchvision features.N after relu1_2 ... relu5_3 (LPIPS' taps)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS ScalingLayer: (x - shift) / scale on [-1, 1] input
LPIPS_SCALE = (0.458, 0.448, 0.450)
TORCHVISION_VGG16 = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16 file name in the hub cache
UNIT_EPS = 1e-10                          # LPIPS normalize_tensor's epsilon


class LPIPSWeightsError(ValueError):
    """A weights file that is not VGG16's (one line naming it)."""


def unit_normalize(f, eps=UNIT_EPS):
    """f / ||f||_2 along channels (dim 1), as LPIPS normalize_tensor."""
    return f / (f.square().sum(1, keepdim=True).sqrt() + eps)


class VGG16Features(nn.Module):
    """VGG16 conv layers (Simonyan & Zisserman 2015) in torchvision's `features` numbering, returning the
    five LPIPS taps. Input [B, 3, S, S] in [-1, 1]; images above 256 px are area-downsampled to 256
    first (NVIDIA projector.py: VGG was trained at 224 px)."""

    def __init__(self, state_dict):
        super().__init__()
        layers, c = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)                 # indices 0..29 as torchvision's
        self.features.load_state_dict(state_dict, strict=True)
        self.requires_grad_(False).eval()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def forward(self, img):
        if img.shape[2] > 256:
            img = F.interpolate(img, size=(256, 256), mode="area")
        x = (img - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG16_TAPS:
                out.append(x)
            if i == VGG16_TAPS[-1]:
                break
        return out


def hub_vgg16_file():
    """torchvision's VGG16 weights in the torch hub cache, if a download ever put them there."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", TORCHVISION_VGG16)
    return path if os.path.isfile(path) else None


def lpips_lin_weights():
    """The `lpips` package's learned VGG layer weights (weights/v0.1/vgg.pth) as 5 [C] tensors, if installed."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "v0.1", "vgg.pth")
    if not os.path.isfile(path):
        return None
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return [sd[f"lin{i}.model.1.weight"].flatten().float() for i in range(len(VGG16_TAPS))]


def load_vgg16(path):
    """torchvision's VGG16 state dict (features.* keys; classifier.* ignored) -> VGG16Features.
    A TorchScript file (NVIDIA's vgg16.pt holds code) is refused; every problem is one line."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist()):
                raise LPIPSWeightsError(f"{path}: a TorchScript file (NVIDIA's vgg16.pt holds code, which is "
                                        f"not loaded); pass torchvision's {TORCHVISION_VGG16}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable, truncated, or refused by the weights-only loader
        raise LPIPSWeightsError(f"{path}: not a weights-only VGG16 file ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(sd, dict):
        raise LPIPSWeightsError(f"{path}: not a VGG16 state dict")
    feats = {k[len("features."):]: v for k, v in sd.items() if str(k).startswith("features.")} or sd
    try:
        return VGG16Features(feats)
    except RuntimeError as e:
        lines = str(e).splitlines()
        raise LPIPSWeightsError(f"{path}: does not fit VGG16's conv layers "
                                f"({lines[1].strip() if len(lines) > 1 else e})") from None


def distances(maps_a, maps_b, lin=None):
    """LPIPS Eq. 1 between corresponding images: maps_a, maps_b = lists of [N, C_l, H_l, W_l]
    (the same network's layers for two batches of N images) -> [N]."""
    total = 0.0
    for l, (fa, fb) in enumerate(zip(maps_a, maps_b)):
        d = (unit_normalize(fa) - unit_normalize(fb)).square()      # [N, C_l, H_l, W_l]
        if lin is not None:
            d = d * lin[l].view(1, -1, 1, 1).to(d)
        total = total + d.sum(1).mean((1, 2))                       # [N]
    return total


def cross_distances(maps_a, maps_b, lin=None):
    """Every pair at once: [Na, Nb] with entry (i, j) = distances(a_i, b_j), from
    sum_c w_c (a_c - b_c)^2 = sum_c w_c a_c^2 + sum_c w_c b_c^2 - 2 sum_c w_c a_c b_c per pixel on the
    unit-normalised maps (one product over channels instead of Na x Nb differences; `distances`
    is the direct form, tested equal)."""
    total = 0.0
    for l, (fa, fb) in enumerate(zip(maps_a, maps_b)):
        a, b = unit_normalize(fa), unit_normalize(fb)               # [Na, C, H, W], [Nb, C, H, W]
        w = lin[l].view(1, -1, 1, 1).to(a) if lin is not None else torch.ones(1, a.shape[1], 1, 1).to(a)
        sq_a = (w * a.square()).sum(1).mean((1, 2))                 # [Na]
        sq_b = (w * b.square()).sum(1).mean((1, 2))                 # [Nb]
        cross = torch.einsum("achw,bchw->ab", w * a, b) / (a.shape[2] * a.shape[3])
        total = total + sq_a[:, None] + sq_b[None, :] - 2 * cross
    return total.clamp(min=0)
