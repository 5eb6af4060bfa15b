"""--device auto, and every script's device path free of float64 (MPS has none) and of stray CPU use.

The machine that runs the suite has no accelerator, so `StandInDevice` makes one up: inside it
torch.device("mps") is accepted everywhere, and a tensor "on the device" is a CPU tensor whose
storage is tagged. Two modes do the bookkeeping:
- a TorchFunctionMode sees every call with a device argument: `mps` is rewritten to the CPU and
  the results are tagged as device tensors; a copy to the CPU (`.cpu()`, `.to("cpu")`) gets a fresh,
  untagged storage, as it would from a real device; `x.device` of a device tensor says `mps`;
- a TorchDispatchMode sees every aten op, including those autograd runs in backward: a result
  computed from device tensors is a device tensor.
What a real MPS device refuses becomes a recorded violation (with the script line): a float64
device tensor (created, moved or computed), `.numpy()` on a device tensor, a CPU random generator
drawing device tensors, and forward code that mixes device tensors with CPU tensors of more than
one element (CPU integer indices are allowed, as on real devices; in backward autograd makes some
zeros from options the stand-in cannot see, so mixing is not judged there).
The scripts themselves run unchanged, through their command lines, with `--device mps`.
"""
import os
import traceback

import numpy as np
import pytest
import torch
from PIL import Image
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import ops.device
from conftest import ROOT, load_script
from conftest import random_image_folder as make_images
from ops.device import resolve_device

STAND_IN = "mps"


def _is_stand_in(v):
    if isinstance(v, torch.device):
        return v.type == STAND_IN
    return isinstance(v, str) and v.split(":")[0] == STAND_IN


def _tensors(tree):
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _where():
    """file:line of the innermost project frame (not tests/) that led here."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if path.startswith(ROOT + os.sep) and os.sep + "tests" + os.sep not in path:
            return f"{os.path.relpath(path, ROOT)}:{frame.lineno}"
    return "?"


class StandInDevice:
    """with StandInDevice(monkeypatch) as dev: ...  dev.violations lists what a real device refuses."""

    def __init__(self, monkeypatch):
        monkeypatch.setattr(ops.device, "mps_available", lambda: True)  # resolve_device accepts mps
        self.violations = []
        self._tags = {}  # storage id -> StorageWeakRef (a freed storage's id is never reused while held)
        outer = self

        class Placement(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func in (torch.device, torch._C._nn._parse_to):  # naming the device is fine; using it counts
                    return func(*args, **kwargs)
                if func == torch.Tensor.device.__get__:  # device tensors say where they are
                    return torch.device(STAND_IN) if outer.tagged(args[0]) else func(*args, **kwargs)
                flat = tree_flatten((args, kwargs))[0]
                name = getattr(func, "__name__", str(func))
                to_device = any(_is_stand_in(v) for v in flat) or (  # x.to(device_tensor)
                    name == "to" and any(outer.tagged(v) for v in flat[1:]))
                if to_device:
                    swap = lambda v: torch.device("cpu") if _is_stand_in(v) else v  # noqa: E731
                    args = tuple(swap(a) for a in args)
                    kwargs = {k: swap(v) for k, v in kwargs.items()}
                    gen = kwargs.get("generator")
                    if isinstance(gen, torch.Generator):
                        outer.violations.append(f"{_where()}: {name}: a CPU torch.Generator draws device tensors")
                elif name == "numpy" and args and outer.tagged(args[0]):
                    outer.violations.append(f"{_where()}: Tensor.numpy() on a device tensor (needs .cpu() first)")
                to_cpu = name == "cpu" or (not to_device and any(
                    (isinstance(v, torch.device) and v.type == "cpu") or v == "cpu"
                    for v in flat if isinstance(v, (torch.device, str))))
                source = args[0] if args and isinstance(args[0], torch.Tensor) else None
                out = func(*args, **kwargs)
                if to_device:
                    if source is not None and out is source and not outer.tagged(source):
                        out = source.clone()  # a real move copies; the CPU original stays untagged
                    for t in _tensors(out):
                        outer.tag(t, f"{name}(device=...)")
                elif to_cpu and isinstance(out, torch.Tensor) and outer.tagged(out):
                    out = out.clone()  # a real copy to the CPU has its own storage
                    outer.untag(out)
                elif not to_cpu and outer.tagged(source):
                    # copies made outside aten (deepcopy, pickling) stay on the source's device
                    for t in _tensors(out):
                        if not outer.tagged(t):
                            outer.tag(t, name)
                return out

        class Propagation(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                inputs = _tensors((args, kwargs))
                out = func(*args, **kwargs)
                on_device = [t for t in inputs if outer.tagged(t)]
                if on_device:
                    cpu_big = [t for t in inputs if not outer.tagged(t) and t.numel() > 1 and not (
                        "index" in str(func) and not t.is_floating_point())]  # CPU indices are fine
                    # copy_ is how data moves; in backward, autograd makes some zeros by device options
                    # the stand-in cannot see (a CPU tensor here), so mixing is checked in forward code
                    if cpu_big and func is not torch.ops.aten.copy_.default and \
                            torch._C._current_graph_task_id() == -1:
                        outer.violations.append(f"{_where()}: {func}: mixes device tensors with a CPU tensor of shape "
                                                f"{tuple(cpu_big[0].shape)}")
                    input_storages = {outer._sid(t) for t in inputs}
                    for t in _tensors(out):
                        if outer._sid(t) not in input_storages:  # new memory; views and in-place keep theirs
                            outer.tag(t, str(func))
                for t in _tensors(out):
                    if outer.tagged(t) and t.dtype in (torch.float64, torch.complex128):
                        outer.violations.append(f"{_where()}: {func}: {t.dtype} result on the device")
                return out

        self._modes = [Propagation(), Placement()]

    @staticmethod
    def _sid(t):
        try:
            return t.untyped_storage()._cdata
        except (RuntimeError, NotImplementedError):  # a tensor without a storage (sparse, nested): untracked
            return None

    def tagged(self, t):
        if not isinstance(t, torch.Tensor):
            return False
        ref = self._tags.get(self._sid(t))
        return ref is not None and not ref.expired()

    def tag(self, t, where):
        sid = self._sid(t)
        if sid is None:
            return
        if t.dtype in (torch.float64, torch.complex128):
            self.violations.append(f"{_where()}: {where}: {t.dtype} tensor created on the device")
        self._tags[sid] = StorageWeakRef(t.untyped_storage())

    def untag(self, t):
        self._tags.pop(self._sid(t), None)

    def __enter__(self):
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        return False


# ----------------------------------------------------------------------------------------------
# The stand-in catches what it should (each of these fails on a real MPS device)


def test_stand_in_catches_what_mps_refuses(monkeypatch):
    with StandInDevice(monkeypatch) as dev:
        d = resolve_device("mps")
        x = torch.randn(4, 3, device=d)
        lin = torch.nn.Linear(3, 2).to(d)
        y = lin(x)
        y.sum().backward()
        w = torch.zeros(3)                      # a CPU tensor
        w64 = w.double()                        # float64 on the CPU is fine
        y.detach().cpu().double()               # ... also after a copy to the CPU
        host = y.detach().cpu()
        assert dev.tagged(x) and dev.tagged(y) and dev.tagged(lin.weight) and dev.tagged(lin.weight.grad)
        assert not dev.tagged(w) and not dev.tagged(w64) and not dev.tagged(host)
        assert dev.violations == []
        checks = [
            lambda: torch.zeros(2, dtype=torch.float64, device=d),       # created there
            lambda: w64.to(d),                                            # moved there
            lambda: y.double(),                                           # computed there
            lambda: torch.as_tensor(y.sum(), dtype=torch.float64),        # converted there
            lambda: y.detach().numpy(),                                   # read without .cpu()
            lambda: y + torch.ones(2),                                    # mixed with a CPU tensor
            lambda: torch.randn(2, device=d, generator=torch.Generator()),  # CPU generator
        ]
        for i, check in enumerate(checks):
            n = len(dev.violations)
            check()
            assert len(dev.violations) > n, f"check {i} was not caught"
        n = len(dev.violations)
        torch.tensor(np.ones(3), dtype=torch.float32, device=d)  # float64 source, float32 on the device: fine
        y * torch.tensor(2.0, dtype=torch.float64)               # a CPU scalar tensor: fine (stays float32)
        assert len(dev.violations) == n


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ops.device, "mps_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(ops.device, "mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")          # mps before cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")         # cuda before mps
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit, match="--device gpu: not a device name"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(ops.device, "mps_available", lambda: False)
    with pytest.raises(SystemExit, match="--device mps: MPS"):
        resolve_device("mps")


# ----------------------------------------------------------------------------------------------
# Every script's device path, run through its command line with --device mps (the stand-in)


def no_violations(dev):
    assert dev.violations == [], "on a real device these would fail:\n" + "\n".join(dict.fromkeys(dev.violations))


@pytest.mark.filterwarnings("ignore:fewer images than")  # 4 images: FID is only run, not judged
def test_stylegan2_train_generate_and_latent_explore_on_the_device(monkeypatch, tmp_path):
    sg2, lx = load_script("03_stylegan2_ada"), load_script("04_latent_explore")
    data = make_images(tmp_path / "data", 4, 16)
    run = str(tmp_path / "run")
    with StandInDevice(monkeypatch) as dev:
        sg2.main(["train", "--data", data, "--out", run, "--size", "16", "--channel-max", "16",
                  "--style-dim", "16", "--n-mlp", "2", "--batch", "2", "--device", STAND_IN,
                  "--num-workers", "0", "--no-progress", "--n-sample", "2", "--log-every", "1",
                  "--iter", "1", "--augment", "ada", "--ada-interval", "1", "--ada-target", "-1",
                  "--fid-every", "1", "--fid-n", "4", "--inception", "random"])
        no_violations(dev)
        ckpt = os.path.join(run, "checkpoints", "000001.pt")
        sg2.main(["generate", "--ckpt", ckpt, "--seeds", "0-1", "--truncation", "0.7", "--noise-mode", "random",
                  "--out", str(tmp_path / "gen"), "--device", STAND_IN])
        dirs = str(tmp_path / "dirs.pt")
        lx.main(["ganspace", "--ckpt", ckpt, "--out", dirs, "--samples", "256", "--components", "4",
                 "--device", STAND_IN])
        lx.main(["sefa", "--ckpt", ckpt, "--out", str(tmp_path / "sefa.pt"), "--device", STAND_IN])
        lx.main(["edit", "--ckpt", ckpt, "--dirs", dirs, "--index", "1", "--degrees=-2:2:3", "--seed", "3",
                 "--out", str(tmp_path / "edit"), "--device", STAND_IN])
        lx.main(["mix", "--ckpt", ckpt, "--rows", "0-1", "--cols", "2-3", "--out", str(tmp_path / "mix.png"),
                 "--device", STAND_IN])
        no_violations(dev)
    # the run really happened on the stand-in: ADA moved p (target -1: every real logit counts as
    # overfitting), a checkpoint and FID were written
    assert os.path.isfile(os.path.join(run, "fid.csv")) and len(os.listdir(tmp_path / "gen")) == 2
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["ada_state"]["p"] > 0 and state["ada_state"]["rt"] is not None


def test_stylegan_v1_train_generate_and_mix_on_the_device(monkeypatch, tmp_path):
    sg1 = load_script("02_stylegan_freezed")
    data = make_images(tmp_path / "data", 4, 16)
    run = str(tmp_path / "run")
    with StandInDevice(monkeypatch) as dev:
        sg1.main(["train", "--data", data, "--out", run, "--size", "16", "--batch", "2", "--channel-max", "8",
                  "--code-dim", "8", "--init-size", "16", "--iter", "2", "--fid-every", "0",
                  "--sample-every", "1", "--log-every", "1", "--quiet", "--device", STAND_IN])
        no_violations(dev)
        ckpt = run  # the run folder: its newest checkpoint
        sg1.main(["generate", "--ckpt", ckpt, "--size", "16", "--seeds", "1-2", "--truncation", "0.7",
                  "--out", str(tmp_path / "gen"), "--device", STAND_IN])
        sg1.main(["mix", "--ckpt", ckpt, "--size", "16", "--rows", "1", "--cols", "2-3",
                  "--out", str(tmp_path / "mix.png"), "--device", STAND_IN])
        no_violations(dev)
    assert len(os.listdir(tmp_path / "gen")) == 2 and os.path.isfile(tmp_path / "mix.png")


def test_ugatit_train_test_and_chain_on_the_device(monkeypatch, tmp_path):
    sg2, ug = load_script("03_stylegan2_ada"), load_script("05_ugatit")
    for domain, seed in (("trainA", 1), ("trainB", 2), ("testA", 3)):
        make_images(tmp_path / "data" / domain, 2, 40, seed)
    run = str(tmp_path / "run")
    g = sg2.Generator(16, style_dim=16, n_mlp=2, channel_multiplier=1, channel_max=16)
    face = str(tmp_path / "face.pt")
    sg2.save_checkpoint(face, {"g_ema": g.state_dict(), "args": {"size": 16, "style_dim": 16, "n_mlp": 2,
                                                                  "channel_multiplier": 1, "channel_max": 16}})
    with StandInDevice(monkeypatch) as dev:
        ug.main(["train", "--data", str(tmp_path / "data"), "--out", run, "--img-size", "64", "--ch", "4",
                 "--n-res", "1", "--batch", "2", "--iter", "2", "--sample-every", "1", "--save-every", "1",
                 "--amp", "bf16", "--quiet", "--device", STAND_IN])
        no_violations(dev)
        ckpt = run  # the run folder: its newest checkpoint
        ug.main(["test", "--ckpt", ckpt, "--input", str(tmp_path / "data" / "testA"), "--out",
                 str(tmp_path / "test"), "--device", STAND_IN])
        ug.main(["chain", "--ugatit", ckpt, "--stylegan", face, "--seeds", "1", "2", "--walk", "2",
                 "--out", str(tmp_path / "chain"), "--device", STAND_IN])
        no_violations(dev)
    assert len(os.listdir(tmp_path / "test")) == 2 and os.path.isfile(tmp_path / "chain" / "walk.gif")


@pytest.mark.filterwarnings("ignore:fewer images than")
def test_carn_upscaling_and_the_fid_command_on_the_device(monkeypatch, tmp_path, capsys):
    prep = load_script("01_prepare_data")
    fid = pytest.importorskip("ops.fid")
    weights = str(tmp_path / "carn.pt")
    torch.save({"1." + k: v.half() for k, v in prep.CARNV2().state_dict().items()}, weights)  # released layout
    a, b = make_images(tmp_path / "a", 3, 16, 1), make_images(tmp_path / "b", 3, 16, 2)
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (12, 12, 3), dtype=np.uint8))
    with StandInDevice(monkeypatch) as dev:
        model = prep.load_carn(weights, prep.pick_device(STAND_IN))
        out = prep.carn_upscale(model, img, 24, tile=0)
        fid.main([a, b, "--inception", "random", "--dims", "64", "--kid", "--kid-subset-size", "3",
                  "--num-workers", "0", "--device", STAND_IN])
        no_violations(dev)
    assert out.size == (24, 24) and "FID:" in capsys.readouterr().out
