"""Tests for `01_prepare_data.py mark`: the HTTP API, and the page driven in headless Chromium."""
import base64
import csv
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from PIL import Image

from conftest import load_script

prep = load_script("01_prepare_data")


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture
def site(tmp_path):
    """pages/ with a.png (120x80), sub/b.jpg (60x50); boxes.csv with one box on a.png; a secret outside."""
    pages = tmp_path / "pages"
    (pages / "sub").mkdir(parents=True)
    Image.new("RGB", (120, 80), (200, 10, 10)).save(pages / "a.png")
    Image.new("RGB", (60, 50), (10, 200, 10)).save(pages / "sub" / "b.jpg")
    (pages / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("filename,x0,y0,x1,y1,label\na.png,10,10,40,40,first\n")
    server = prep.make_mark_server(str(pages), str(boxes), port=0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield {"server": server, "port": server.server_address[1], "pages": pages, "boxes": boxes, "tmp": tmp_path}
    server.shutdown()
    server.server_close()


def request(site, method, path, body=None, headers=None):
    """Raw HTTP (no client-side path normalisation). Returns (status, bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", site["port"], timeout=10)
    h = {"Host": f"127.0.0.1:{site['port']}"}
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def csv_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ API
def test_index_page_is_served(site):
    status, body = request(site, "GET", "/")
    assert status == 200 and b"<script>" in body and b"/api/boxes" in body


def test_list_pages_with_counts_and_sizes(site):
    status, body = request(site, "GET", "/api/pages")
    pages = json.loads(body)["pages"]
    assert status == 200
    assert [p["name"] for p in pages] == ["a.png", "sub/b.jpg"]            # notes.txt is not a page
    assert pages[0]["boxes"] == 1 and pages[1]["boxes"] == 0
    assert (pages[0]["width"], pages[0]["height"]) == (120, 80)
    assert (pages[1]["width"], pages[1]["height"]) == (60, 50)


def test_page_image_served_byte_for_byte(site):
    status, body = request(site, "GET", "/page/sub/b.jpg")
    assert status == 200 and body == (site["pages"] / "sub" / "b.jpg").read_bytes()
    status, body = request(site, "GET", "/page/sub%2Fb.jpg")                # encodeURIComponent form
    assert status == 200 and body == (site["pages"] / "sub" / "b.jpg").read_bytes()


def test_get_and_put_boxes_round_trip_to_csv(site):
    status, body = request(site, "GET", "/api/boxes?page=a.png")
    assert json.loads(body)["boxes"] == [{"x0": 10, "y0": 10, "x1": 40, "y1": 40, "label": "first"}]
    new = [{"x0": 0, "y0": 0, "x1": 60, "y1": 50, "label": "whole, \"quoted\""},
           {"x0": 5.4, "y0": 6.6, "x1": 20, "y1": 30}]
    status, body = request(site, "PUT", "/api/boxes?page=sub%2Fb.jpg", {"boxes": new})
    assert status == 200
    assert json.loads(body)["boxes"][1] == {"x0": 5, "y0": 7, "x1": 20, "y1": 30, "label": ""}
    rows = csv_rows(site["boxes"])
    assert [(r["filename"], r["x0"], r["y0"], r["x1"], r["y1"], r["label"]) for r in rows] == [
        ("a.png", "10", "10", "40", "40", "first"),
        ("sub/b.jpg", "0", "0", "60", "50", 'whole, "quoted"'),
        ("sub/b.jpg", "5", "7", "20", "30", "")]
    # the CSV is the one `prepare` reads
    out = site["tmp"] / "out"
    prep.main(["--pages", str(site["pages"]), "--boxes", str(site["boxes"]), "--out", str(out), "--size", "16"])
    assert sorted(p for p in os.listdir(out) if p.endswith(".png") and p[0].isdigit()) == \
        ["00000.png", "00001.png", "00002.png"]
    # deleting all boxes of a page keeps the other pages' boxes
    request(site, "PUT", "/api/boxes?page=a.png", {"boxes": []})
    assert [r["filename"] for r in csv_rows(site["boxes"])] == ["sub/b.jpg", "sub/b.jpg"]


def test_reopening_shows_saved_boxes(site):
    request(site, "PUT", "/api/boxes?page=a.png", {"boxes": [{"x0": 1, "y0": 2, "x1": 3, "y1": 4, "label": "z"}]})
    again = prep.make_mark_server(str(site["pages"]), str(site["boxes"]), port=0)
    try:
        assert again.state.get_boxes("a.png") == [{"x0": 1, "y0": 2, "x1": 3, "y1": 4, "label": "z"}]
    finally:
        again.server_close()


@pytest.mark.parametrize("path", ["/page/../secret.png", "/page/%2e%2e/secret.png", "/page/sub/../../secret.png",
                                  "/page//etc/passwd", "/page/%2Fetc%2Fpasswd", "/page/..%5Csecret.png",
                                  "/api/boxes?page=../secret.png", "/api/boxes?page=%2Fetc%2Fhosts",
                                  "/page/notes.txt"])
def test_traversal_and_non_images_refused(site, path):
    status, body = request(site, "GET", path)
    assert status == 403 and "refused" in json.loads(body)["error"]


def test_symlink_out_of_pages_refused(site):
    link = site["pages"] / "link.png"
    try:
        os.symlink(site["tmp"] / "secret.png", link)
    except OSError:
        pytest.skip("symlinks not available on this file system")
    status, body = request(site, "GET", "/page/link.png")
    assert status == 403 and b"outside" in body


def test_put_traversal_refused_and_csv_untouched(site):
    before = site["boxes"].read_bytes()
    status, _ = request(site, "PUT", "/api/boxes?page=../secret.png", {"boxes": []})
    assert status == 403 and site["boxes"].read_bytes() == before


@pytest.mark.parametrize("body,message", [
    (b"{not json", "not valid JSON"),
    ({"boxes": {"x0": 1}}, "expected {\"boxes\""),
    ({"boxes": [[1, 2, 3, 4]]}, "box 0: expected an object"),
    ({"boxes": [{"x0": "1", "y0": 0, "x1": 5, "y1": 5}]}, "box 0: x0 is '1', not a number"),
    ({"boxes": [{"x0": 0, "y0": 0, "x1": 5, "y1": 5}, {"x0": 0, "y0": True, "x1": 5, "y1": 5}]},
     "box 1: y0 is True"),
    ({"boxes": [{"x0": 5, "y0": 0, "x1": 5, "y1": 5}]}, "zero area"),
    ({"boxes": [{"x0": 100, "y0": 0, "x1": 121, "y1": 5}]}, "outside the page (120x80)"),
    ({"boxes": [{"x0": 0, "y0": 0, "x1": 5, "y1": 5, "label": "two\nlines"}]}, "label must be text"),
    ({"boxes": [{"x0": 0, "y0": 0, "x1": 5, "y1": 5, "label": 7}]}, "label must be text"),
])
def test_malformed_updates_refused(site, body, message):
    before = site["boxes"].read_bytes()
    headers = {"Content-Type": "application/json"} if isinstance(body, bytes) else None
    status, data = request(site, "PUT", "/api/boxes?page=a.png", body, headers)
    assert status == 400 and message in json.loads(data)["error"]
    assert site["boxes"].read_bytes() == before


def test_wrong_content_type_and_host_refused(site):
    status, _ = request(site, "PUT", "/api/boxes?page=a.png", b'{"boxes": []}', {"Content-Type": "text/plain"})
    assert status == 415
    status, data = request(site, "GET", "/api/pages", headers={"Host": "evil.example:80"})
    assert status == 403 and b"loopback" in data


def test_save_is_atomic_when_the_write_fails(site, monkeypatch):
    before = site["boxes"].read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(prep.os, "replace", failing_replace)
    status, data = request(site, "PUT", "/api/boxes?page=a.png",
                           {"boxes": [{"x0": 0, "y0": 0, "x1": 9, "y1": 9}]})
    monkeypatch.undo()
    assert status == 500 and b"could not save" in data
    assert site["boxes"].read_bytes() == before                             # old file intact
    assert sorted(os.listdir(site["tmp"])) == ["boxes.csv", "pages", "secret.png"]   # no temp left
    status, data = request(site, "GET", "/api/boxes?page=a.png")            # memory matches disk
    assert json.loads(data)["boxes"][0]["label"] == "first"


def test_mark_subcommand_parses_and_missing_pages_is_an_error(tmp_path):
    args = prep.build_parser().parse_args(["mark", "--pages", "p", "--boxes", "b.csv"])
    assert args.func is prep.mark and args.host == "127.0.0.1"
    with pytest.raises(SystemExit, match="pages folder not found"):
        prep.main(["mark", "--pages", str(tmp_path / "nope"), "--boxes", str(tmp_path / "b.csv"), "--port", "0"])


# ------------------------------------------------------------------ headless Chromium end to end
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
requires_chromium = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                       reason="needs Debian packages chromium and chromium-driver")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few W3C WebDriver calls this test needs, over plain HTTP."""

    def __init__(self, profile_dir):
        self.port = _free_port()
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                if self.call("GET", "/status")["ready"]:
                    break
            except OSError:
                time.sleep(0.1)
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=900,700", f"--user-data-dir={profile_dir}"]}}
        self.sid = self.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["value"]

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.sid}{path}", body)

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait(self, script, timeout=15):
        end = time.time() + timeout
        while time.time() < end:
            value = self.js(script)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for: {script}")

    def drag(self, x0, y0, x1, y1):
        self.s("POST", "/actions", {"actions": [{"type": "pointer", "id": "mouse",
                                                 "parameters": {"pointerType": "mouse"}, "actions": [
            {"type": "pointerMove", "origin": "viewport", "x": int(x0), "y": int(y0), "duration": 0},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerMove", "origin": "viewport", "x": int((x0 + x1) / 2), "y": int((y0 + y1) / 2),
             "duration": 50},
            {"type": "pointerMove", "origin": "viewport", "x": int(x1), "y": int(y1), "duration": 50},
            {"type": "pointerUp", "button": 0}]}]})
        self.s("DELETE", "/actions")

    def key(self, value):
        self.s("POST", "/actions", {"actions": [{"type": "key", "id": "kb", "actions": [
            {"type": "keyDown", "value": value}, {"type": "keyUp", "value": value}]}]})
        self.s("DELETE", "/actions")

    def close(self):
        try:
            self.s("DELETE", "")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _wait_rows(path, n, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        rows = csv_rows(path)
        if len(rows) == n:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"{path} has {len(csv_rows(path))} rows, expected {n}")


@requires_chromium
def test_browser_draws_moves_and_deletes_boxes(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    Image.new("RGB", (1200, 800), (250, 250, 250)).save(pages / "p1.png")   # shown scaled down
    Image.new("RGB", (300, 200), (200, 200, 250)).save(pages / "p2.png")
    boxes = tmp_path / "boxes.csv"
    server = prep.make_mark_server(str(pages), str(boxes), port=0)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    driver = WebDriver(tmp_path / "profile")
    try:
        driver.s("POST", "/url", {"url": f"http://127.0.0.1:{server.server_address[1]}/"})
        left, top, scale = driver.wait(
            "const i = document.getElementById('img'); if (!i.complete || !i.naturalWidth || "
            "!i.src.endsWith('p1.png')) return null; const r = i.getBoundingClientRect();"
            "return [r.left, r.top, i.clientWidth / i.naturalWidth];")
        assert scale < 1                                                    # scaled to the window
        px = lambda x, y: (left + x * scale, top + y * scale)              # noqa: E731  page -> viewport

        driver.drag(*px(100, 80), *px(500, 400))                           # draw
        row = _wait_rows(boxes, 1)[0]
        tol = 2 / scale + 1
        assert row["filename"] == "p1.png"
        for k, v in zip(("x0", "y0", "x1", "y1"), (100, 80, 500, 400)):
            assert abs(int(row[k]) - v) <= tol, (k, row)

        driver.drag(*px(300, 240), *px(400, 300))                          # move by (+100, +60)
        end = time.time() + 10
        while time.time() < end and int(csv_rows(boxes)[0]["x0"]) < 150:
            time.sleep(0.1)
        moved = csv_rows(boxes)[0]
        assert abs(int(moved["x0"]) - 200) <= tol and abs(int(moved["y0"]) - 140) <= tol
        assert int(moved["x1"]) - int(moved["x0"]) == int(row["x1"]) - int(row["x0"])

        driver.key("s")                                                     # square lock on
        driver.drag(*px(700, 100), *px(900, 400))
        rows = _wait_rows(boxes, 2)
        sq = rows[1]
        assert int(sq["x1"]) - int(sq["x0"]) == int(sq["y1"]) - int(sq["y0"])
        assert abs(int(sq["x1"]) - int(sq["x0"]) - 300) <= tol

        shot = tmp_path / "mark_screenshot.png"
        shot.write_bytes(base64.b64decode(driver.s("GET", "/screenshot")))
        assert Image.open(shot).size[0] > 0

        driver.key("\ue017")                                                # Delete the selected box
        assert len(_wait_rows(boxes, 1)) == 1

        driver.s("POST", "/refresh", {})                                       # reopening shows saved boxes
        driver.wait("return document.getElementById('img').complete && "
                    "document.querySelectorAll('.box').length === 1")
        driver.key("n")                                                     # next page
        driver.wait("return document.getElementById('img').src.endsWith('p2.png') && "
                    "document.querySelectorAll('.box').length === 0")
    finally:
        driver.close()
        server.shutdown()
        server.server_close()
