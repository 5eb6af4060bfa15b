"""Hostile NVIDIA-style pickles against 03_stylegan2_ada.py's restricted unpickler.

Each pickle here is written opcode by opcode (or with a custom Pickler) the way an attacker
would; the references are the program's own objects before the load (they must be unchanged
after it) and the byte counts of the files (nothing larger may be asked for).
"""
import io
import os
import pickle
import warnings

import pytest
import torch

from conftest import load_script
from test_stylegan2_models import nv_discriminator_params, nv_generator_params, write_nvidia_pkl

m = load_script("03_stylegan2_ada")


def _snapshot():
    """Everything a pickle could reach through the allowed globals: their attributes and, for
    functions, defaults and code."""
    snap = {}
    for key, obj in m.RestrictedUnpickler.ALLOWED.items():
        attrs = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
        if callable(obj) and hasattr(obj, "__code__"):
            attrs.update(__code__=obj.__code__, __defaults__=obj.__defaults__,
                         __kwdefaults__=obj.__kwdefaults__)
        snap[key] = attrs
    return snap


def _restore(snap):
    for key, attrs in snap.items():
        obj = m.RestrictedUnpickler.ALLOWED[key]
        for name in list(vars(obj)) if hasattr(obj, "__dict__") else []:
            if name not in attrs and not isinstance(obj, type):
                delattr(obj, name)
        for name, value in attrs.items():
            if name.startswith("__") and not name.endswith(("code__", "defaults__")):
                continue
            try:
                setattr(obj, name, value)
            except (AttributeError, TypeError):
                pass


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text):
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


# BUILD with (None, {attr: value}) = setattr(target, attr, value) in pickle's load_build
BUILD_ATTACKS = {
    "class __init__": b"\x80\x02" + _global("torch_utils.persistence", "_reconstruct_persistent_obj")
    + b"N}" + _str("__init__") + _global("builtins", "set") + b"s\x86b.",
    "function __defaults__": b"\x80\x02" + _global("numpy.core.numeric", "_frombuffer")
    + b"N}" + _str("__defaults__") + _str("F") + b"\x85s\x86b.",
    "dict subclass": b"\x80\x02" + _global("dnnlib.util", "EasyDict")
    + b"N}" + _str("get") + _global("builtins", "set") + b"s\x86b.",
}


@pytest.mark.parametrize("attack", list(BUILD_ATTACKS))
def test_build_cannot_change_an_allowed_class_or_function(tmp_path, attack):
    path = tmp_path / "hostile.pkl"
    path.write_bytes(BUILD_ATTACKS[attack])
    before = _snapshot()
    try:
        with pytest.raises(m.CheckpointError, match=r"hostile\.pkl: unsafe .*refusing BUILD"):
            m.load_checkpoint(path)
        assert _snapshot() == before
    finally:
        _restore(before)  # keep the rest of the suite sane even if the check failed


def test_setitem_cannot_reach_an_allowed_object(tmp_path):
    path = tmp_path / "hostile.pkl"
    # SETITEM on the (real) EasyDict placeholder class: cls[key] = value
    path.write_bytes(b"\x80\x02" + _global("dnnlib.util", "EasyDict") + _str("k") + _str("v") + b"s.")
    before = _snapshot()
    with pytest.raises(m.CheckpointError, match="refusing SETITEM"):
        m.load_checkpoint(path)
    assert _snapshot() == before


def _legacy_storage_blob(declared_numel, values):
    """torch.save(storage, legacy format) as plain pickle stores a tensor's storage, with the
    element count in the header set to `declared_numel` (the file holds len(values) floats)."""
    f = io.BytesIO()
    for obj in (0x1950a86a20f9469cfc6c, 1001,
                {"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(obj, f, protocol=2)
    marker = object()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ("storage", torch.FloatStorage, "0", "cpu", declared_numel, None) if obj is marker else None

    P(f, protocol=2).dump(marker)
    pickle.dump(["0"], f, protocol=2)
    f.write(declared_numel.to_bytes(8, "little"))
    f.write(torch.tensor(values, dtype=torch.float32).numpy().tobytes())
    return f.getvalue()


def _tensor_pickle(blob, size, stride):
    """A pickle of _rebuild_tensor_v2(_load_from_bytes(blob), 0, size, stride, False, OrderedDict())."""
    def tup(items):
        return b"(" + b"".join(items) + b"t"

    def ints(values):
        return tup([b"J" + v.to_bytes(4, "little", signed=True) if v < 2 ** 31 else
                    b"\x8a\x08" + v.to_bytes(8, "little", signed=True) for v in values])

    storage = _global("torch.storage", "_load_from_bytes") + b"(B" + len(blob).to_bytes(4, "little") \
        + blob + b"tR"
    return (b"\x80\x03" + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + b"K\x00"
            + ints(size) + ints(stride) + b"\x89" + _global("collections", "OrderedDict") + b")R" + b"tR.")


def test_a_well_formed_storage_pickle_loads(tmp_path):
    """The hand-written format above is the one the loader reads: a correct one gives the tensor."""
    blob = _legacy_storage_blob(3, [1.0, 2.0, 3.0])
    with open(tmp_path / "ok.pkl", "wb") as f:
        f.write(_tensor_pickle(blob, [3], [1]))
    with open(tmp_path / "ok.pkl", "rb") as f:
        t = m.RestrictedUnpickler(f).load()
    assert t.tolist() == [1.0, 2.0, 3.0]
    # and it is the format torch itself writes for a storage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = torch.tensor([1.0, 2.0, 3.0]).storage().__reduce__()[1][0]
    assert m._load_storage_bytes(real).tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("case", ["storage larger than the file", "view larger than the storage",
                                  "bytes larger than the file"])
def test_declared_sizes_are_checked_before_allocating(tmp_path, case):
    path = tmp_path / "big.pkl"
    if case == "storage larger than the file":  # 100 G floats declared, 3 present
        data = _tensor_pickle(_legacy_storage_blob(100 * 2 ** 30, [1.0, 2.0, 3.0]), [3], [1])
        want = r"storage declares 107374182400 x 4 bytes where only 12 are present"
    elif case == "view larger than the storage":  # a [2^20, 2^20] view of 3 floats
        data = _tensor_pickle(_legacy_storage_blob(3, [1.0, 2.0, 3.0]), [2 ** 20, 2 ** 20], [2 ** 20, 1])
        want = r"tensor of size \[1048576, 1048576\] needs 1099511627776 elements, its storage holds 3"
    else:  # BINBYTES8 declaring 1 TB
        data = b"\x80\x04\x8e" + (2 ** 40).to_bytes(8, "little") + b"abc."
        want = r"declares 1099511627776 bytes where only 4 are left"
    path.write_bytes(data)
    assert os.path.getsize(path) < 1000
    with pytest.raises(m.CheckpointError, match=r"big\.pkl: unsafe or unsupported pickle \(" + want):
        m.load_checkpoint(path)


def _nv_pickle(tmp_path, monkeypatch, g_state=None, d_init=None):
    """An NVIDIA-layout pickle whose G_ema state is replaced by `g_state` (allowed objects only)."""
    from test_stylegan2_models import NVPersistent, fake_module

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("never called")

    fake_module(monkeypatch, "torch_utils.persistence", _reconstruct_persistent_obj=_reconstruct_persistent_obj)
    monkeypatch.setattr(NVPersistent, "reconstruct", _reconstruct_persistent_obj, raising=False)
    path = tmp_path / "odd.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": NVPersistent("Generator", g_state)}, f)
    return path


@pytest.mark.parametrize("state, says", [
    ({"_parameters": [1, 2]}, "'list' object has no attribute 'items'"),
    ({"_parameters": {"w": 3}}, "w is a int, not a tensor"),
    ({"_modules": {"synthesis": 7}}, "unexpected submodule type at synthesis"),
    ({"_parameters": {}, "_non_persistent_buffers_set": 5}, "'int' object is not iterable"),
])
def test_allowed_objects_in_the_wrong_places_give_one_line(tmp_path, monkeypatch, capsys, state, says):
    path = _nv_pickle(tmp_path, monkeypatch, state)
    with pytest.raises(m.CheckpointError) as e:
        m.load_checkpoint(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and says in text and "\n" not in text
    # and from the command line: one line, exit status 1, no traceback
    with pytest.raises(SystemExit) as e:
        m.main(["generate", "--ckpt", str(path), "--seeds", "0", "--out", str(tmp_path / "o")])
    assert says in str(e.value.code) and "\n" not in str(e.value.code)
    assert "Traceback" not in capsys.readouterr().err


def test_nvidia_mbstd_group_is_read_and_used_for_training(tmp_path, monkeypatch):
    """A paper256-style pickle (D built with epilogue_kwargs.mbstd_group_size = 8, stored by NVlabs'
    persistence in _init_kwargs) fine-tunes with group 8, not rosinality's 4."""
    torch.manual_seed(2)
    size, c = 32, 16
    path = tmp_path / "paper256-like.pkl"
    write_nvidia_pkl(path, monkeypatch, nv_generator_params(size, c, 16, 2), nv_discriminator_params(size, c),
                     mbstd_group=8)
    assert m.load_checkpoint(path)["args"]["mbstd_group"] == 8

    groups = []
    real_d = m.Discriminator

    class Recording(real_d):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            groups.append(self.mbstd_group)

    monkeypatch.setattr(m, "Discriminator", Recording)
    data = tmp_path / "data"
    data.mkdir()
    rng = torch.Generator().manual_seed(0)
    from PIL import Image
    for i in range(8):
        Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=rng, dtype=torch.uint8).numpy()).save(
            data / f"{i}.png")
    import argparse
    parser = argparse.ArgumentParser()
    m.add_train_args(parser)
    out = tmp_path / "run"
    cfg = m.train(parser.parse_args([
        "--data", str(data), "--out", str(out), "--ckpt", str(path), "--iter", "1", "--batch", "8",
        "--device", "cpu", "--num-workers", "0", "--no-progress", "--n-sample", "4", "--fid-every", "0"]))
    assert cfg.mbstd_group == 8 and groups == [8]
    saved = torch.load(out / "checkpoints" / "000001.pt", map_location="cpu", weights_only=True)
    assert saved["args"]["mbstd_group"] == 8  # a --resume keeps it


def test_numpy_array_larger_than_its_bytes_is_refused(tmp_path):
    """numpy's own pickle layout (_reconstruct, then BUILD with shape and raw bytes) declaring
    10^6 x 10^6 floats with 12 bytes behind them: refused, nothing that size is allocated."""
    import numpy as np

    class HugeArray:
        def __reduce__(self):
            return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, (10 ** 6, 10 ** 6), np.dtype("<f4"), False, b"\0" * 12))

    path = tmp_path / "array.pkl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core is numpy._core in numpy 2
        path.write_bytes(pickle.dumps(HugeArray(), protocol=2))
    with pytest.raises(m.CheckpointError, match=r"array\.pkl: .*(does not match|too big)") as e:
        m.load_checkpoint(path)
    assert "\n" not in str(e.value)
