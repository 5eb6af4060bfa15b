"""demo.py's knobs on the model it just trained: the naming rule on sheet numbers built by hand (so the
right answer is known), and name_demo_knobs end to end on the shipped source model (real command lines)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, load_script

demo = load_script("demo")


def half(change, y, spread=0.1, box=None, n=16):
    """One half-sweep's numbers: a change centred at height y, its map one blob (or a given box)."""
    m = np.zeros((n, n))
    if box is None:
        r = min(n - 1, int(y * n))
        m[r, 6:10] = 1.0
    else:
        y0, y1, x0, x1 = (int(round(v * n)) for v in box)
        m[y0:y1, x0:x1] = 1.0
    return {"change": change, "centroid": [0.5, y], "thirds": {}, "spread": spread, "map": m.tolist()}


def row(index, zone, minus, plus, move=0.0):
    return {"index": index, "zone": zone, "layers": [0, 3] if zone == "coarse" else [4, 7], "word": "eyes",
            "shift_x": {"px": 2.0, "share": move}, "roll": {"degrees": 0.0, "share": 0.0},
            "sides": {"minus": minus, "plus": plus}}


def test_the_rule_names_tilt_hair_and_mouth_where_the_numbers_put_them():
    mouth_box = demo.MOUTH_BOX
    rows = [row(0, "coarse", half(0.30, 0.5), half(0.30, 0.5), move=0.6),      # moves sideways: tilt
            row(1, "coarse", half(0.40, 0.25), half(0.35, 0.55)),              # strong, high on the minus side
            row(2, "coarse", half(0.50, 0.45), half(0.20, 0.5, spread=0.5)),   # strongest, but lower than 1
            row(3, "middle", half(0.05, 0.6, box=mouth_box), half(0.05, 0.3)),  # small, all of it at the mouth
            row(4, "coarse", half(0.06, 0.6, box=mouth_box), half(0.01, 0.5))]  # at the mouth, but coarse
    picks = demo.pick_demo_knobs(rows)
    assert [(n, r["index"], flip) for n, r, flip, _ in picks] == [("tilt", 0, False), ("hair", 1, True),
                                                                  ("mouth", 3, True)]
    assert "60%" in picks[0][3] and "100%" in picks[2][3]
    # no sideways move and no mouth: the rest are named after their zone, not after a claim
    rows = [row(0, "coarse", half(0.30, 0.5), half(0.30, 0.5), move=0.1),
            row(1, "coarse", half(0.40, 0.3), half(0.1, 0.5)),
            row(2, "middle", half(0.20, 0.6, box=(0.55, 0.7, 0.0, 0.2)), half(0.25, 0.65, box=(0.6, 0.75, 0.8, 1.0)))]
    picks = demo.pick_demo_knobs(rows)
    assert [(n, r["index"]) for n, r, _, _ in picks] == [("hair", 1), ("coarse 0", 0), ("middle 2", 2)]
    assert all("no row fits the rule for tilt or mouth" in why for *_, why in picks[1:])


def test_box_share_counts_the_cells_of_the_box():
    m = np.arange(256, dtype=float).reshape(16, 16)
    want = m[8:13, 4:12].sum() / m.sum()                     # y 0.5-0.8 (rows 8-12), x 0.25-0.75 (cols 4-11)
    assert demo.box_share(m.tolist(), (0.5, 0.8, 0.25, 0.75)) == pytest.approx(want)


def test_name_demo_knobs_on_the_shipped_source_model(tmp_path):
    ckpt = os.path.join(ROOT, "demo_models", "stylegan2_source_32px.pt")
    out = tmp_path / "knobs"
    got = demo.name_demo_knobs(ckpt, str(out), str(tmp_path / "log.txt"), count=3, seeds="0")
    lib = json.load(open(got["library"]))
    names = [k["name"] for k in lib["knobs"]]
    assert len(names) == 3 and sorted(got["edits"]) == sorted(names) and len(got["reasons"]) == 3
    d = torch.load(got["sefa"], weights_only=True)
    zones = {z["name"]: z["layers"] for z in json.load(open(got["sheet_json"]))["zones"]}
    for knob, reason in zip(lib["knobs"], got["reasons"]):
        i, sign = knob["source"]["index"], knob["source"]["sign"]
        assert i < 3 and reason.startswith(f"{knob['name']} = direction {i}")
        np.testing.assert_allclose(knob["vector"], sign * d["directions"][i].numpy(), atol=1e-7)
        assert knob["layers"] in zones.values() and knob["sigma"] == pytest.approx(float(d["stdev"][i]), rel=1e-6)
        grid = Image.open(got["edits"][knob["name"]])
        assert grid.size == (7 * 34 + 2, 34 + 2)            # the knob's range in 7 steps, one seed, 32 px cells
    assert Image.open(got["meme"]).size == (256, 256) and Image.open(got["sheet"]).width >= 128 * 4
