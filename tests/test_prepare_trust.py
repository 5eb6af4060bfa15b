"""01_prepare_data.py with hostile or unlucky input: --overwrite never deletes what the run reads
or what it did not write, oversized page headers, box files in another encoding, and the mark
page server under malformed requests.

References: the bytes of the input files before and after a run, byte-level PNG headers written
here, the cp949 codec, and raw sockets for the server.
"""
import csv
import http.client
import json
import os
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import load_script

prep = load_script("01_prepare_data")


def noise_page(path, w=60, h=40, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def write_boxes(path, rows, encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(["filename", "x0", "y0", "x1", "y1", "label"])
        w.writerows(rows)
    return str(path)


def snapshot(folder):
    return {os.path.relpath(os.path.join(r, f), folder): open(os.path.join(r, f), "rb").read()
            for r, _, files in os.walk(folder) for f in files}


# ------------------------------------------------------------------ --out and --overwrite
@pytest.mark.parametrize("where", ["is", "lies inside", "contains"])
def test_out_folder_related_to_the_pages_folder_is_refused(tmp_path, where):
    """The reported loss: --out = --pages with pages named like crops, --overwrite: both pages gone."""
    pages = tmp_path / "pages"
    pages.mkdir()
    noise_page(pages / "00000.png")
    noise_page(pages / "00001.png", seed=1)
    boxes = write_boxes(tmp_path / "boxes.csv", [["00000.png", 0, 0, 8, 8, ""], ["00001.png", 0, 0, 8, 8, ""]])
    out = {"is": pages, "lies inside": pages / "crops", "contains": tmp_path}[where]
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as e:
        prep.main(["--pages", str(pages), "--boxes", boxes, "--out", str(out), "--overwrite", "--size", "8"])
    assert f"--out {out} {where} the pages folder {pages}" in str(e.value)
    assert snapshot(tmp_path) == before  # nothing written, nothing removed


def test_box_file_with_the_name_of_an_output_file_is_refused(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    noise_page(pages / "p.png")
    out = tmp_path / "out"
    out.mkdir()
    boxes = write_boxes(out / "index.csv", [["p.png", 0, 0, 8, 8, ""]])
    with pytest.raises(SystemExit, match=r"the box file .*index\.csv has the name of a file this script writes"):
        prep.main(["--pages", str(pages), "--boxes", boxes, "--out", str(out), "--overwrite", "--size", "8"])
    assert "p.png" in open(boxes).read()


def test_overwrite_removes_only_what_the_index_lists(tmp_path, capsys):
    pages = tmp_path / "pages"
    pages.mkdir()
    noise_page(pages / "p.png")
    boxes = write_boxes(tmp_path / "boxes.csv", [["p.png", 0, 0, 8, 8, ""], ["p.png", 8, 8, 16, 16, ""]])
    out = tmp_path / "out"
    args = ["--pages", str(pages), "--boxes", boxes, "--out", str(out), "--size", "8"]
    prep.main(args)
    assert sorted(r["file"] for r in csv.DictReader(open(out / "index.csv"))) == ["00000.png", "00001.png"]
    mine = {"00007.png": b"my own numbered file", "notes.txt": b"mine",
            os.path.join("overview", "mine.txt"): b"mine too"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    write_boxes(boxes, [["p.png", 0, 0, 8, 8, ""]])  # the new run writes one crop
    prep.main(args + ["--overwrite"])
    for name, data in mine.items():
        assert (out / name).read_bytes() == data  # not written by 01: kept
    assert not (out / "00001.png").exists()  # written by the first run, listed in its index
    assert [r["file"] for r in csv.DictReader(open(out / "index.csv"))] == ["00000.png"]
    assert "00007.png" in capsys.readouterr().err  # said why it is still there


# ------------------------------------------------------------------ pages
def png_header_only(width, height, rows=5):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x00" * (width * 3) for _ in range(rows))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30000, 10000])  # over twice PIL's limit (an error there), and over it
def test_page_declaring_a_huge_size_is_skipped_with_a_warning(tmp_path, capsys, side):
    pages = tmp_path / "pages"
    pages.mkdir()
    noise_page(pages / "p.png")
    (pages / "huge.png").write_bytes(png_header_only(side, side))
    boxes = write_boxes(tmp_path / "boxes.csv", [["huge.png", 0, 0, 8, 8, ""], ["p.png", 0, 0, 8, 8, ""]])
    out = tmp_path / "out"
    prep.main(["--pages", str(pages), "--boxes", boxes, "--out", str(out), "--size", "8"])
    err = [line for line in capsys.readouterr().err.splitlines() if "huge.png" in line]
    assert len(err) == 1 and err[0].startswith("warning:") and "skipped" in err[0]
    assert "DecompressionBombError" in err[0] and f"{side * side} pixels" in err[0]
    assert [r["page"] for r in csv.DictReader(open(out / "index.csv"))] == ["p.png"]


# ------------------------------------------------------------------ box file encodings
def test_cp949_box_file_with_a_korean_label_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prep.locale, "getpreferredencoding", lambda do_setlocale=True: "UTF-8")
    pages = tmp_path / "pages"
    pages.mkdir()
    noise_page(pages / "p.png")
    boxes = write_boxes(tmp_path / "boxes.csv", [["p.png", 0, 0, 8, 8, "말년 얼굴"]], encoding="cp949")
    with pytest.raises(UnicodeDecodeError):
        open(boxes, encoding="utf-8").read()  # really not UTF-8
    out = tmp_path / "out"
    prep.main(["--pages", str(pages), "--boxes", boxes, "--out", str(out), "--size", "8"])
    assert [r["label"] for r in csv.DictReader(open(out / "index.csv", encoding="utf-8"))] == ["말년 얼굴"]
    assert "not UTF-8; read it as cp949" in capsys.readouterr().err


def test_box_file_in_no_known_encoding_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(prep.locale, "getpreferredencoding", lambda do_setlocale=True: "UTF-8")
    pages = tmp_path / "pages"
    pages.mkdir()
    noise_page(pages / "p.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_bytes(b"filename,x0,y0,x1,y1,label\np.png,0,0,8,8,\x80\x80\n")  # 0x80: invalid in both
    with pytest.raises(SystemExit) as e:
        prep.main(["--pages", str(pages), "--boxes", str(boxes), "--out", str(tmp_path / "o")])
    msg = str(e.value)
    assert "\n" not in msg and "boxes.csv: not UTF-8 text" in msg and "save it as UTF-8" in msg


def test_labels_that_a_spreadsheet_would_run_are_written_as_text(tmp_path):
    boxes = str(tmp_path / "boxes.csv")
    labels = ["=HYPERLINK(\"http://x\",\"y\")", "+1", "-1", "@SUM(A1)", "'=already", "'90s", "plain"]
    prep.write_boxes(boxes, [prep.Box("p.png", 0, 0, 8, 8, label=t) for t in labels])
    cells = [r["label"] for r in csv.DictReader(open(boxes))]
    assert all(not c.startswith(("=", "+", "-", "@")) for c in cells)
    assert cells[0] == "'=HYPERLINK(\"http://x\",\"y\")" and cells[5] == "'90s" and cells[6] == "plain"
    assert [b.label for b in prep.read_boxes(boxes)] == labels  # read back unchanged


# ------------------------------------------------------------------ mark server
@pytest.fixture
def site(tmp_path, monkeypatch):
    default_timeout = prep.MarkHandler.timeout
    monkeypatch.setattr(prep.MarkHandler, "timeout", 1)  # the default, shortened for the test
    pages = tmp_path / "pages"
    pages.mkdir()
    Image.new("RGB", (120, 80), (200, 10, 10)).save(pages / "a.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("filename,x0,y0,x1,y1,label\n")
    server = prep.make_mark_server(str(pages), str(boxes), port=0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield {"port": server.server_address[1], "boxes": boxes, "default_timeout": default_timeout}
    server.shutdown()
    server.server_close()


def request(site, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", site["port"], timeout=10)
    headers = {"Host": f"127.0.0.1:{site['port']}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def test_a_stalled_request_body_times_out_and_the_server_answers_on(site):
    assert site["default_timeout"] is not None and 0 < site["default_timeout"] <= 60
    s = socket.create_connection(("127.0.0.1", site["port"]), timeout=10)
    s.sendall(b"PUT /api/boxes?page=a.png HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"boxes\": []")  # 12 of the 1000 bytes announced
    t0 = time.time()
    assert s.recv(4096) == b""  # closed by the server after its timeout, not left hanging
    assert time.time() - t0 < 8
    s.close()
    assert request(site, "GET", "/api/pages")[0] == 200


def test_deeply_nested_json_is_a_400(site):
    status, body = request(site, "PUT", "/api/boxes?page=a.png", b"[" * 200000 + b"]" * 200000)
    assert status == 400 and b"nested too deeply" in body


def test_a_page_that_cannot_be_opened_is_an_error_response(site, monkeypatch):
    real_open = open

    def failing_open(path, *a, **k):
        if str(path).endswith("a.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(prep, "open", failing_open, raising=False)
    status, body = request(site, "GET", "/page/a.png")
    assert status == 500 and json.loads(body)["error"] == "page 'a.png' cannot be read (Permission denied)"


def test_mark_labels_are_saved_as_text_not_formulas(site):
    label = "=cmd|' /C calc'!A0"
    status, _ = request(site, "PUT", "/api/boxes?page=a.png",
                        json.dumps({"boxes": [{"x0": 1, "y0": 1, "x1": 9, "y1": 9, "label": label}]}).encode())
    assert status == 200
    assert open(site["boxes"]).read().splitlines()[1].endswith(",'" + label)
    status, body = request(site, "GET", "/api/boxes?page=a.png")
    assert json.loads(body)["boxes"][0]["label"] == label
