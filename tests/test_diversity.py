"""ops.lpips and ops.diversity: LPIPS Eq. 1 against a numpy computation, the all-pairs fast form
against the direct one, torchvision's VGG16 key layout, and intra-cluster LPIPS / the copy share
on sets whose answers are known by construction (copies of the training images, fresh images)."""
import numpy as np
import pytest
import torch

from ops import diversity, lpips


def lpips_by_hand(maps_a, maps_b, lin=None):
    out = np.zeros(maps_a[0].shape[0])
    for l, (a, b) in enumerate(zip(maps_a, maps_b)):
        a, b = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
        a = a / (np.sqrt((a ** 2).sum(1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b ** 2).sum(1, keepdims=True)) + 1e-10)
        w = np.ones(a.shape[1]) if lin is None else lin[l].numpy()
        out += ((a - b) ** 2 * w[None, :, None, None]).sum(1).mean((1, 2))
    return out


@pytest.mark.parametrize("with_lin", [False, True])
def test_lpips_eq1_and_the_all_pairs_form(with_lin):
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(3, 4, 5, 5, generator=g).relu(), torch.randn(3, 6, 2, 2, generator=g)]
    b = [torch.randn(4, 4, 5, 5, generator=g).relu(), torch.randn(4, 6, 2, 2, generator=g)]
    lin = [torch.rand(4, generator=g), torch.rand(6, generator=g)] if with_lin else None
    pairs = lpips.distances([f[:3] for f in a], [f[:3] for f in b], lin)
    np.testing.assert_allclose(pairs.numpy(), lpips_by_hand([f[:3] for f in a], [f[:3] for f in b], lin), rtol=1e-5)
    cross = lpips.cross_distances(a, b, lin)
    for i in range(3):
        want = lpips_by_hand([f[i:i + 1].expand(4, *f.shape[1:]) for f in a], b, lin)
        np.testing.assert_allclose(cross[i].numpy(), want, rtol=1e-4, atol=1e-6)


def test_vgg16_loads_torchvisions_layout_and_refuses_other_files(tmp_path):
    import torchvision
    sd = torchvision.models.vgg16().state_dict()  # random weights, torchvision's key names
    torch.save(sd, tmp_path / "vgg16.pth")
    net = lpips.load_vgg16(str(tmp_path / "vgg16.pth"))
    maps = net(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert [tuple(f.shape[1:]) for f in maps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(lpips.LPIPSWeightsError, match="bad.pth: does not fit VGG16"):
        lpips.load_vgg16(str(tmp_path / "bad.pth"))


def pixel_net():
    """A fixed stand-in network whose 'maps' are the image at two scales (a test of the bookkeeping)."""
    return diversity.PerceptualNetwork("pixels", lambda x: [x + 1.5, torch.nn.functional.avg_pool2d(x, 2) + 1.5])


def test_copies_of_the_training_images_score_zero_diversity_and_all_copies():
    g = torch.Generator().manual_seed(1)
    train = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    gen = train[torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])]
    r = diversity.diversity(gen, train, pixel_net())
    assert r["intra_lpips"] == pytest.approx(0, abs=1e-6) and r["copies"] == 8 and r["copy_share"] == 1
    assert r["cluster_sizes"] == [2, 2, 1, 3] and r["clusters_scored"] == 3   # a 1-member cluster has no pair


def test_fresh_images_are_diverse_and_no_copies_and_clusters_by_hand():
    g = torch.Generator().manual_seed(2)
    base = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1  # three close but distinct training images
    train = base + 0.2 * torch.randn(3, 3, 8, 8, generator=g)
    gen = torch.rand(30, 3, 8, 8, generator=g) * 2 - 1   # fresh images: farther from each than they are apart
    net = pixel_net()
    r = diversity.diversity(gen, train, net, cluster_size=5, seed=0)
    assert r["copies"] == 0 and r["intra_lpips"] > 0.01
    d = lpips_by_hand([f.repeat_interleave(3, 0) for f in net.maps(gen)], [f.repeat(30, 1, 1, 1) for f in net.maps(train)])
    assign = d.reshape(30, 3).argmin(1)
    assert r["cluster_sizes"] == [int((assign == k).sum()) for k in range(3)]
    # each cluster's score: the mean over pairs of its (at most 5) members, by hand
    rng = np.random.RandomState(0)
    scores = []
    for k in range(3):
        members = np.nonzero(assign == k)[0]
        if len(members) > 5:
            members = np.sort(rng.choice(members, 5, replace=False))
        pairs = [(i, j) for a, i in enumerate(members) for j in members[a + 1:]]
        maps = net.maps(gen)
        scores.append(np.mean([lpips_by_hand([f[i:i + 1] for f in maps], [f[j:j + 1] for f in maps])[0] for i, j in pairs]))
    assert r["intra_lpips"] == pytest.approx(np.mean(scores), rel=1e-5)
