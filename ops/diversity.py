"""What FID cannot say at 10 shots: is a generator diverse, or does it copy its few training images?

Intra-cluster LPIPS (Ojha et al., "Few-shot Image Generation via Cross-domain Correspondence",
CVPR 2021, arXiv:2104.06820, Sec. 4.2 and Table 2; its feat_cluster.py): each generated image joins
the cluster of the training image nearest to it by LPIPS; inside each cluster the mean LPIPS over
all pairs of (at most `cluster_size` = 50, a random subset as the official code) members; the
score is the mean (and std) over the clusters that have two members or more. A generator that
copies its training set scores about 0; higher is more diverse.

The copy share: the fraction of generated images nearer to a training image than the two closest
distinct training images are to each other (ops.fid_eval's rule, leaving out near-duplicate pairs
inside the training set), by the same distance.

The distance is one fixed network's for every row of a table (never each checkpoint's own
discriminator, which would make rows incomparable): LPIPS on VGG16 when torchvision's weights are
at hand (ops.lpips), else the LPIPS form (Eq. 1, unit-normalised channels, layer weights 1) on the
taps of the demo's face network (ops.face_features: after each stride-2 block, 16, 8 and 4 px),
which reads calm-gan's demo faces only. `network` names the one used.
"""
import os

import numpy as np
import torch

from ops import lpips
from ops.fid_eval import DUPLICATE_FRACTION, _robust_min

CLUSTER_SIZE = 50   # feat_cluster.py: cluster_size = 50 members per cluster at most
FACE_TAPS = (5, 11, 17)  # FaceFeatureNet.trunk indices after the stride-2 blocks' ReLUs (16, 8, 4 px)


class PerceptualNetwork:
    """name + maps(images [N, 3, H, W] in [-1, 1]) -> list of [N, C_l, H_l, W_l] + lin (or None)."""

    def __init__(self, name, maps, lin=None, note=""):
        self.name, self.maps, self.lin, self.note = name, maps, lin, note


def vgg_network(path, device="cpu"):
    vgg = lpips.load_vgg16(path).to(device)
    lin = lpips.lpips_lin_weights()
    name = "LPIPS (VGG16" + (", learned layer weights)" if lin is not None else ", layer weights 1)")
    return PerceptualNetwork(name, lambda x: vgg(x.to(device)), lin)


def face_network(path=None, device="cpu"):
    """LPIPS-form distance on the demo face network's trunk taps (16, 8 and 4 px)."""
    from ops import face_features
    net = face_features.load_face_net(path, device=device)

    def maps(x):
        x = face_features.to_input(x).to(device)
        out = []
        for k, layer in enumerate(net.trunk):
            x = layer(x)
            if k in FACE_TAPS:
                out.append(x)
        return out

    return PerceptualNetwork("LPIPS form on the demo face network (demo faces only)", maps,
                             note=face_features.NOTE)


def perceptual_network(vgg=None, face_weights=None, device="cpu"):
    """LPIPS/VGG16 when `vgg` (or the torch hub's copy) is there, else the demo face network
    (`face_weights`, default the shipped one); ValueError (one line) when neither is."""
    path = vgg or lpips.hub_vgg16_file()
    if path:
        return vgg_network(path, device)
    from ops import face_features
    if face_weights or os.path.isfile(face_features.WEIGHTS):
        return face_network(face_weights, device)
    raise ValueError(f"the diversity measure needs LPIPS's VGG16 ({lpips.TORCHVISION_VGG16}: --vgg FILE or the "
                     f"torch hub cache) or the demo face network ({face_features.WEIGHTS})")


@torch.no_grad()
def pairwise(net, a, b, batch=64):
    """LPIPS distances [len(a), len(b)] between two image tensors [N, 3, H, W] in [-1, 1]
    (ops.lpips.cross_distances on blocks of `batch` images)."""
    maps_b = [net.maps(b[j:j + batch]) for j in range(0, len(b), batch)]
    rows = []
    for i in range(0, len(a), batch):
        ma = net.maps(a[i:i + batch])
        rows.append(torch.cat([lpips.cross_distances(ma, mb, net.lin).double().cpu() for mb in maps_b], 1))
    return torch.cat(rows)


def copy_threshold(train_dist):
    """The closest pair of distinct training images by this distance, leaving out near-duplicates
    (nearest other training image closer than DUPLICATE_FRACTION x the median). Returns (value, rule)."""
    d = train_dist.clone().numpy()
    np.fill_diagonal(d, np.inf)
    value, left_out = _robust_min(d.min(1))
    return value, (f"copy threshold {value:.4g} = the closest pair of training images by this distance "
                   f"({left_out} near-duplicate(s) left out, nearest neighbour under {DUPLICATE_FRACTION} x the median)")


def diversity(gen, train, net, cluster_size=CLUSTER_SIZE, seed=0):
    """Intra-cluster LPIPS and the copy share of generated images `gen` against the training images
    `train` (tensors [N, 3, H, W] in [-1, 1]). Returns a dict of plain numbers and the network's name."""
    if len(train) < 2:
        raise ValueError("the diversity measure needs at least 2 training images")
    to_train = pairwise(net, gen, train)                            # [G, T]
    nearest, assign = to_train.min(1)
    rng = np.random.RandomState(seed)
    per_cluster, sizes = [], []
    for k in range(len(train)):
        members = torch.nonzero(assign == k).flatten().numpy()
        sizes.append(int(len(members)))
        if len(members) > cluster_size:
            members = np.sort(rng.choice(members, cluster_size, replace=False))
        if len(members) < 2:
            continue
        within = pairwise(net, gen[members], gen[members])
        iu = np.triu_indices(len(members), 1)
        per_cluster.append(float(within.numpy()[iu].mean()))
    threshold, rule = copy_threshold(pairwise(net, train, train))
    copies = int((nearest < threshold).sum())
    return {"intra_lpips": float(np.mean(per_cluster)) if per_cluster else float("nan"),
            "intra_lpips_std": float(np.std(per_cluster)) if per_cluster else float("nan"),
            "clusters_scored": len(per_cluster), "cluster_sizes": sizes,
            "copies": copies, "copy_share": copies / len(gen), "copy_threshold": threshold,
            "threshold_rule": rule, "n_gen": len(gen), "n_train": len(train), "network": net.name}
