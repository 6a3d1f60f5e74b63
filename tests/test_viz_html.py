"""The interactive HTML view: its embedded graph, self-containment, and a real headless
browser (Chromium, driven over the DevTools protocol on a pipe: no extra packages)."""

from __future__ import annotations

import base64
import fcntl
import functools
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import viz
from tests.cli import run_script
from tests.test_viz import TINY_SHAPE, Mismatch, Tiny

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome",
            "google-chrome-stable")


@functools.cache
def traced(name: str) -> viz.Graph:
    return viz.trace(name)


def embedded(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="zoo-graph">(.*?)</script>', text, re.S)
    assert m, "no embedded graph"
    return json.loads(m.group(1))


def test_embedded_graph_is_the_traced_graph():
    g = traced("densenet121")
    page = viz.to_html(g, viz.trainable_fn("finetune:1", "densenet121"), depth=1)
    data = embedded(page)
    assert [n["id"] for n in data["nodes"]] == list(g.nodes)
    assert [(a, b, tuple(s)) for a, b, s in data["edges"]] == [
        (e.src, e.dst, e.shape) for e in g.edges]
    assert [m["path"] for m in data["modules"]] == ["/".join(p) for p in g.clusters()]
    node = next(n for n in data["nodes"] if n["id"] == "stage1/transition/avg_pool")
    assert node["kind"] == "op" and node["shapes"] == [[1, 28, 28, 128]]
    conv = next(n for n in data["nodes"] if n["id"] == "stage1/transition/conv")
    assert conv["params"] == g.nodes["stage1/transition/conv"].params > 0
    assert conv["flops"] == g.nodes["stage1/transition/conv"].flops > 0
    stage = next(m for m in data["modules"] if m["path"] == "stage1")
    assert stage["params"] == g.modules[("stage1",)].params
    assert stage["state"] == g.modules[("stage1",)].state > 0  # batch statistics
    assert stage["flops"] == sum(n.flops for n in g.nodes.values() if n.path[0] == "stage1")
    # finetune:1 trains the head only: the stem is frozen, the classifier trains
    status = {n["id"]: n["status"] for n in data["nodes"]}
    assert status["stem/conv"] == "frozen" and status["head"] == "trainable"
    assert data["depth"] == 1 and data["policy"] is True and data["error"] is None
    assert "every layer, expanded to depth 1" in data["caption"]
    assert "trainable (green)" in data["caption"]


def test_page_is_self_contained():
    page = viz.to_html(viz.trace(Tiny(), TINY_SHAPE))
    assert re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page) is None
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert "@import" not in page and "fetch(" not in page


def test_draw_html_writes_a_page_and_displays_inline(tmp_path):
    h = viz.draw(Tiny(), input_shape=TINY_SHAPE, depth=1, format="html", out=tmp_path / "t")
    assert isinstance(h, viz.HTML) and (tmp_path / "t.html").read_text() == h.text
    # every layer is in the page, whatever the depth it starts expanded to
    assert {n["id"] for n in embedded(h.text)["nodes"]} >= {"block1/conv", "block2/add"}
    frame = h._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and "&lt;script" in frame
    assert "zoo-graph" in frame


def test_partial_page_names_the_error(tmp_path):
    with pytest.raises(viz.TraceError, match="in block"):
        viz.draw(Mismatch(), input_shape=TINY_SHAPE, out=tmp_path / "bad.html")
    data = embedded((tmp_path / "bad.html").read_text())
    assert data["error"]["path"] == "block" and "incompatible" in data["error"]["message"]
    assert data["nodes"][-1]["kind"] == "error"


def test_cli_html(tmp_path):
    run_script("draw", "--model", "squeezenet1_1", "--format", "html", "--depth", "1",
               "--out", tmp_path / "sq.html")
    data = embedded((tmp_path / "sq.html").read_text())
    assert data["name"] == "squeezenet1_1" and data["depth"] == 1


# ---- a real browser -------------------------------------------------------------------


def _browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class Chrome:
    """Headless Chromium over ``--remote-debugging-pipe`` (fd 3 commands, fd 4 replies)."""

    def __init__(self, exe: str, profile: Path):
        cmd_r, self.cmd_w = os.pipe()
        self.res_r, res_w = os.pipe()

        def fds():
            a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(res_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", f"--user-data-dir={profile}", "--window-size=1200,800",
             "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(res_w)
        self.buf, self.next_id, self.session = b"", 0, None

    def call(self, method: str, timeout: float = 30, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.res_r], [], [], left)[0]:
                raise TimeoutError(f"no reply to {method} in {timeout}s")
            chunk = os.read(self.res_r, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self.buf += chunk

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for _ in range(100):
            if self.js("document.readyState === 'complete' && !!window.zooViewer"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{url} did not load the viewer")

    def js(self, expr: str):
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"{expr}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.res_r)


@pytest.fixture
def chrome(tmp_path):
    exe = _browser()
    if exe is None:
        pytest.skip("no Chromium on PATH (`make test` installs chromium-headless-shell); "
                    "the page's structure is still tested above")
    c = Chrome(exe, tmp_path / "profile")
    try:
        yield c
    finally:
        c.close()


def _visible(c: Chrome) -> list[str]:
    return c.js("Array.from(document.querySelectorAll('g.node')).map(g => g.dataset.id)")


def test_in_a_browser_expand_search_inspect(chrome, tmp_path):
    viz.draw(traced("densenet121"), spec="densenet121", depth=1, freeze="finetune:1",
             format="html", out=tmp_path / "d.html")
    chrome.open((tmp_path / "d.html").as_uri())
    # depth 1: the stages are collapsed modules, one node each
    top = _visible(chrome)
    assert top[0] == "input" and "m:stage1" in top and "m:stage4" in top
    assert not any(i.startswith("stage1/") for i in top)
    # expand stage1 in place with its + toggle: its blocks and transition appear
    chrome.js("document.querySelector('g.toggle[data-path=\"stage1\"]')"
              ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    shown = _visible(chrome)
    assert "m:stage1" not in shown and "m:stage1/transition" in shown
    assert "m:stage2" in shown and len(shown) > len(top)
    assert chrome.js("!!document.querySelector('g.cluster[data-path=\"stage1\"]')")
    # collapse it again with the cluster's - toggle
    chrome.js("document.querySelector('g.cluster[data-path=\"stage1\"] g.toggle')"
              ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    assert _visible(chrome) == top
    # search a path, pick the result: the node is revealed, selected and detailed
    chrome.js("const s = document.getElementById('search'); s.value = 'transition/avg_pool';"
              "s.dispatchEvent(new Event('input'))")
    found = chrome.js("Array.from(document.querySelectorAll('#results div'))"
                      ".map(d => d.dataset.id)")
    assert found == [f"stage{i}/transition/avg_pool" for i in range(1, 4)]
    chrome.js("document.querySelector('#results div').click()")
    assert "stage1/transition/avg_pool" in _visible(chrome)
    assert chrome.js("document.querySelector('g.node.selected').dataset.id") == \
        "stage1/transition/avg_pool"
    details = chrome.js("Object.fromEntries(Array.from(document.querySelectorAll("
                        "'#details tr')).map(r => [r.dataset.key, r.cells[1].textContent]))")
    assert details["path"] == "stage1/transition/avg_pool" and details["type"] == "avg_pool"
    assert details["output"] == "28×28×128" and "stage1/transition/conv 56×56×128" in \
        details["inputs"]
    # a module's details: parameters, batch statistics, FLOPs, trainable under the policy
    chrome.js("zooViewer.select('stage1/transition/conv')")
    details = chrome.js("Object.fromEntries(Array.from(document.querySelectorAll("
                        "'#details tr')).map(r => [r.dataset.key, r.cells[1].textContent]))")
    conv = traced("densenet121").nodes["stage1/transition/conv"]
    assert details["params"].replace(",", "") == str(conv.params)
    assert details["trains"] == "frozen" and details["FLOPs"].endswith("M")
    # zoom with the wheel changes the scale; a screenshot shows a drawing
    k0 = chrome.js("zooViewer.zoom.k")
    chrome.js("document.getElementById('canvas').dispatchEvent(new WheelEvent('wheel', "
              "{deltaY: -300, clientX: 300, clientY: 300, bubbles: true, cancelable: true}))")
    assert chrome.js("zooViewer.zoom.k") > k0
    png = base64.b64decode(chrome.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "shot.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_in_a_browser_partial_drawing(chrome, tmp_path):
    with pytest.raises(viz.TraceError):
        viz.draw(Mismatch(), input_shape=TINY_SHAPE, out=tmp_path / "bad.html")
    chrome.open((tmp_path / "bad.html").as_uri())
    assert _visible(chrome) == ["input", "stem", "relu", "block/conv", "block/error"]
    assert "incompatible shapes" in chrome.js("document.querySelector('.error').textContent")
