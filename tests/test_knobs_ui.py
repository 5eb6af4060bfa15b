"""04_latent_explore.py ui: the page's pictures, per-session state (two sessions at once), the shared
things built once, and headless Chromium finding, moving and naming knobs on the real page.

References: the edited image written out by hand and enlarged with PIL, a counter inside a slowed-down
builder, the files on disk, and what the browser's canvas reads back from the page's image."""
import base64
import json
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script
from test_knobs import _by_hand, sg2_checkpoint

lx = load_script("04_latent_explore")

requires_gradio = pytest.mark.skipif(
    __import__("importlib").util.find_spec("gradio") is None,
    reason="gradio is an optional extra (pip install -r requirements-ui.txt)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return sg2_checkpoint(tmp_path_factory.mktemp("g") / "g.pt")


def make_app(ckpt, folder, names=("hair", "mouth"), n_sliders=3):
    """An ExplorerApp on the 16 px generator with SeFa directions and a library of `names` (directions 0, 1, ..)."""
    e = lx.load_explorer(ckpt)
    dirs = str(folder / "sefa.pt")
    if not os.path.exists(dirs):
        lx.main(["sefa", "--ckpt", ckpt, "--out", dirs])
    lib = folder / "knobs.json"
    for i, name in enumerate(names):
        lx.main(["name", "--dirs", dirs, "--index", str(i), "--name", name, "--layers", "0-3", "--library", str(lib)])
    return lx.ExplorerApp(e, torch.load(dirs, weights_only=True), str(lib), "sefa.pt", n_sliders=n_sliders)


def knobs_of(path):
    return {k["name"]: k for k in json.load(open(path))["knobs"]}


# ---- without a browser -----------------------------------------------------------------------------------

def test_view_is_the_knobbed_picture_enlarged_with_lanczos(ckpt, tmp_path):
    app = make_app(ckpt, tmp_path)
    library, _ = app.open_library("knobs.json")
    knobs = knobs_of(tmp_path / "knobs.json")
    got = app.view(None, library, 4, 0.7, "", "", 0, 0.0, "0-5", 2.0, -1.0, 0.0)
    want = Image.fromarray(_by_hand(app.explorer, 4, [(knobs["hair"], 2.0), (knobs["mouth"], -1.0)], 0.7))
    assert got.size == (256, 256)                            # 16 px drawn x16
    assert np.array_equal(np.asarray(got), np.asarray(want.resize((256, 256), Image.LANCZOS)))
    # the direction being tried adds on top, on its own layers, in sigma
    tried = app.view(None, library, 4, 0.7, "", "", 2, 1.5, "4-5", 0.0, 0.0, 0.0)
    d = app.dirs_file
    knob = {"vector": d["directions"][2].tolist(), "sigma": float(d["stdev"][2]), "layers": [4, 5]}
    want = Image.fromarray(_by_hand(app.explorer, 4, [(knob, 1.5)], 0.7)).resize((256, 256), Image.LANCZOS)
    assert np.abs(np.asarray(tried, float) - np.asarray(want, float)).max() <= 1


def test_projection_tools_are_built_once_while_two_sessions_ask(ckpt, tmp_path, monkeypatch):
    app = make_app(ckpt, tmp_path, ())
    built = []
    make = lx.make_distance

    def slow_make(*args, **kwargs):
        built.append(threading.get_ident())
        time.sleep(0.3)                                      # both sessions arrive while it is being built
        return make(*args, **kwargs)
    monkeypatch.setattr(lx, "make_distance", slow_make)
    start, got = threading.Barrier(2), []

    def session():
        start.wait()
        got.append(app.projection_tools())
    threads = [threading.Thread(target=session) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and got[0][0] is got[1][0] and got[0][1] is got[1][1]


def test_each_session_rotates_its_own_gifs(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(lx.GifFolder, "MAX_GIFS", 3)
    app = make_app(ckpt, tmp_path)
    library, _ = app.open_library("knobs.json")
    args = (library, "hair", 1, 0.7, "TOP", "", 0, 0.0, "0-5", 0.0, 0.0, 0.0)
    b, b_first = app.gif(None, None, *args)
    a = None
    for _ in range(lx.GifFolder.MAX_GIFS + 2):               # session A makes more than it keeps
        a, path = app.gif(a, None, *args)
    assert a.path != b.path and os.path.dirname(b_first) == b.path
    assert os.path.exists(b_first)                           # A's rotation never touches B's GIF
    assert len(os.listdir(a.path)) == lx.GifFolder.MAX_GIFS and os.path.exists(path)
    gif = Image.open(path)
    assert gif.n_frames == lx.UI_GIF_FRAMES and gif.size == (256, 256)
    a.close()
    assert not os.path.exists(a.path) and os.path.exists(b_first)


def test_naming_from_the_page_merges_with_what_another_session_saved(ckpt, tmp_path):
    app = make_app(ckpt, tmp_path, ("hair",))
    mine, _ = app.open_library("knobs.json")
    theirs, _ = app.open_library("knobs.json")
    theirs, _ = app.name_direction(theirs, 3, "smile", "4-5")
    mine, text = app.name_direction(mine, 2, "tilt", "0-1")
    assert [k["name"] for k in mine["lib"]["knobs"]] == ["hair", "smile", "tilt"] and "3 knob(s)" in text
    assert set(knobs_of(tmp_path / "knobs.json")) == {"hair", "smile", "tilt"}
    before = (tmp_path / "knobs.json").read_bytes()
    for args, message in (((2, "tilt", "0-1"), "already has a knob"), ((2, "x", "0-9"), "outside the generator"),
                          ((99, "x", "0-1"), "outside 0.."), ((2, "", "0-1"), "needs a name")):
        with pytest.raises(lx.ExploreError, match=message):
            app.name_direction(mine, *args)
    with pytest.raises(lx.ExploreError, match="no folders"):
        app.open_library("../elsewhere.json")                # a shared page writes nowhere else
    assert (tmp_path / "knobs.json").read_bytes() == before


def test_ui_refuses_a_library_of_another_generator_before_it_starts(ckpt, tmp_path):
    other = sg2_checkpoint(tmp_path / "other.pt", seed=9)
    make_app(other, tmp_path)
    before = (tmp_path / "knobs.json").read_bytes()
    with pytest.raises(SystemExit, match="library of another generator") as err:
        lx.main(["ui", "--ckpt", ckpt, "--library", str(tmp_path / "knobs.json")])
    assert "\n" not in str(err.value) and (tmp_path / "knobs.json").read_bytes() == before


def test_ui_project_then_the_knobs_edit_the_projection(ckpt, tmp_path):
    app = make_app(ckpt, tmp_path)
    library, _ = app.open_library("knobs.json")
    e = app.explorer
    img = lx.to_pil(e.synthesize(lx.styles_for(e, lx.seed_w(e, 9)))[0])
    calls = []
    latent, recon, text = lx.ui_project(app, img, 6, True, lambda i, n: calls.append((i, n)))
    assert calls == [(i, 6) for i in range(1, 7)] and "PSNR" in text
    view = app.picture(latent, library, 0, 1.0, [], [0.0, 0.0, 0.0])
    assert np.array_equal(np.asarray(view), np.asarray(recon))
    knob = knobs_of(tmp_path / "knobs.json")["mouth"]
    edited = app.picture(latent, library, 0, 1.0, [], [0.0, 2.0, 0.0])
    ws = latent["ws"].clone()
    ws[:, 0:4] += 2.0 * knob["sigma"] * torch.tensor(knob["vector"])
    assert np.array_equal(np.asarray(edited), np.asarray(lx.to_pil(e.synthesize(ws, noises=latent["noises"])[0])))


# ---- gradio: two sessions at once ------------------------------------------------------------------------

def _launch(app):
    demo = lx.build_ui(app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


def _pixels(result):
    return np.asarray(Image.open(result if isinstance(result, str) else result["path"]).convert("RGB"), float)


@requires_gradio
def test_two_sessions_keep_their_own_library_latent_and_saves(ckpt, tmp_path):
    client_mod = pytest.importorskip("gradio_client", reason="gradio_client comes with gradio")
    app = make_app(ckpt, tmp_path)
    demo, url = _launch(app)
    try:
        a, b = (client_mod.Client(url, verbose=False) for _ in range(2))
        knob0 = (3, 0.7, "", "", 0, 0.0, "0-5", 2.0, 0.0, 0.0)     # seed 3, slider 0 at +2 sigma
        plain = _pixels(b.predict(3, 0.7, "", "", 0, 0.0, "0-5", 0.0, 0.0, 0.0, api_name="/render"))
        a.predict("new.json", 0.0, 0.0, 0.0, api_name="/load_library")      # A: another (empty) library
        b.predict("knobs.json", 0.0, 0.0, 0.0, api_name="/load_library")
        a_img, b_img = (_pixels(c.predict(*knob0, api_name="/render")) for c in (a, b))
        assert np.array_equal(a_img, plain)                  # A's library has no knob 0: nothing moves
        assert not np.array_equal(b_img, plain)              # B's slider 0 is 'hair'
        assert b_img.shape == (256, 256, 3)
        # A projects an image; B still sees its seed
        target = tmp_path / "me.png"
        lx.to_pil(app.explorer.synthesize(lx.styles_for(app.explorer, lx.seed_w(app.explorer, 11)))[0]).save(target)
        assert "PSNR" in a.predict(client_mod.handle_file(str(target)), 10, True, api_name="/project")
        args = (3, 1.0, "", "", 0, 0.0, "0-5", 0.0, 0.0, 0.0)
        assert not np.array_equal(_pixels(a.predict(*args, api_name="/render")),
                                  _pixels(b.predict(*args, api_name="/render")))
        # both name a knob at the same moment: both kept, in both files' reads
        b.predict("new.json", 0.0, 0.0, 0.0, api_name="/load_library")
        start, out = threading.Barrier(2), {}

        def name(client, key, index):
            start.wait()
            out[key] = client.predict(index, key, "0-3", 0.0, 0.0, 0.0, api_name="/name_direction")
        threads = [threading.Thread(target=name, args=(c, k, i)) for c, k, i in ((a, "left", 2), (b, "right", 3))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(knobs_of(tmp_path / "new.json")) == {"left", "right"}
        assert set(knobs_of(tmp_path / "knobs.json")) == {"hair", "mouth"}
        gif = a.predict("left", 3, 0.7, "ME", "", 0, 0.0, "0-5", 0.0, 0.0, 0.0, api_name="/gif")
        gif = Image.open(gif if isinstance(gif, str) else gif["path"])
        assert gif.n_frames == lx.UI_GIF_FRAMES and gif.size == (256, 256)
    finally:
        demo.close()


# ---- headless Chromium -----------------------------------------------------------------------------------

PIXELS = """const i = document.querySelector('#view img'); if (!i || !i.complete || !i.naturalWidth) return null;
const c = document.createElement('canvas'); c.width = i.naturalWidth; c.height = i.naturalHeight;
const x = c.getContext('2d'); x.drawImage(i, 0, 0); const d = x.getImageData(0, 0, c.width, c.height).data;
let h = 0; for (let k = 0; k < d.length; k += 3) h = (h * 31 + d[k]) % 1000000007; return [c.width, h];"""


def slider_css(name):
    """The range input gradio draws for a slider labelled `name`."""
    return f"input[type=range][aria-label='range slider for {name}']"


def slider(name):
    return f'document.querySelector("{slider_css(name)}")'


@requires_gradio
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian packages chromium and chromium-driver")
def test_browser_moves_a_knob_by_name_names_a_direction_and_finds_it_after_a_reload(ckpt, tmp_path):
    from test_mark import WebDriver
    app = make_app(ckpt, tmp_path)
    demo, url = _launch(app)
    driver = WebDriver(tmp_path / "profile")

    def element(css):
        return next(iter(driver.s("POST", "/element", {"using": "css selector", "value": css}).values()))

    def type_into(css, text):
        el = element(css)
        driver.s("POST", f"/element/{el}/clear", {})
        driver.s("POST", f"/element/{el}/value", {"text": text})
    try:
        driver.s("POST", "/url", {"url": url})
        driver.wait(f"return {slider('mouth')} !== null", 60)           # the library's knobs, by name
        width, before = driver.wait(f"return (() => {{{PIXELS}}})()", 30)
        assert width >= 256
        driver.s("POST", f"/element/{element(slider_css('mouth'))}/value",
                 {"text": "\ue014" * 10})                               # ArrowRight x10: +1 sigma
        driver.wait(f"const v = (() => {{{PIXELS}}})(); return v !== null && v[1] !== {before};", 30)
        assert float(driver.js(f"return {slider('mouth')}.value")) == pytest.approx(1.0)
        type_into("#direction-index input", "\ue003\ue003\ue0033")    # direction 3
        type_into("#layer-range textarea, #layer-range input", "4-5")
        type_into("#knob-name textarea, #knob-name input", "smile")
        driver.s("POST", f"/element/{element('#name-button')}/click", {})
        status = driver.wait("const t = document.querySelector('#status').innerText; "
                             "return t.includes('saved') || t.includes('error') ? t : null", 30)
        assert "saved 'smile'" in status, status
        smile = knobs_of(tmp_path / "knobs.json")["smile"]
        assert smile["source"]["index"] == 3 and smile["layers"] == [4, 5]
        driver.s("POST", "/refresh", {})                                # the page again, the saved library
        driver.wait(f"return {slider('smile')} !== null", 60)
        shot = tmp_path / "ui.png"
        shot.write_bytes(base64.b64decode(driver.s("GET", "/screenshot")))
        assert np.asarray(Image.open(shot).convert("L")).std() > 5    # not a blank page
    finally:
        driver.close()
        demo.close()
