"""Public data sources (train/public.py) on local fixtures: a small NIH-layout zip and a
BCCD-layout repository archive written here, served by a real HTTP server on localhost.

Checked: download, verification and the atomic cache (a corrupt, short or interrupted
download is never kept or used), the offline error, reading the zip with its file names
into a patient-disjoint split, the BCCD folder verified by its git tree id (git itself is
the reference), and the tfds wrapper's warning and offline error.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import logging
import os
import shutil
import subprocess
import threading
import zipfile

import cloudpickle
import numpy as np
import pytest
from PIL import Image

from train import data as D
from train import public as P
from train import splits as S
from train.detection import data as DD

SLIDES = ("C33P1thinF", "C48P9thinF", "C100P61ThinF", "C1_thinF", "C2NThinF", "C3NThinF")


def _png(seed: int, size: int = 20) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def nih_zip(path, *, per_slide: int = 3) -> dict[str, list[str]]:
    """A cell_images.zip in NIH's layout (and its stray Thumbs.db); returns the file names."""
    names: dict[str, list[str]] = {"Parasitized": [], "Uninfected": []}
    with zipfile.ZipFile(path, "w") as z:
        for s, slide in enumerate(SLIDES):
            for i in range(per_slide):
                for c, cls in enumerate(names):
                    name = f"{slide}_IMG_2015061{s}_1{i}{c}_cell_{i}.png"
                    z.writestr(f"cell_images/{cls}/{name}", _png(100 * s + 10 * i + c))
                    names[cls].append(name)
        z.writestr("cell_images/Parasitized/Thumbs.db", b"not an image")
    return names


class Server:
    """``http.server`` on localhost in a thread, serving one folder; counts GET requests.
    ``short`` names files sent with a Content-Length twice their length (then the
    connection closes: an interrupted download)."""

    def __init__(self, root):
        self.requests, self.short = [], set()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                name = self.path.lstrip("/")
                if name in outer.short:
                    data = open(os.path.join(root, name), "rb").read()
                    self.send_response(200)
                    self.send_header("Content-Length", str(2 * len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = Server(root)
    yield root, server
    server.close()


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _leftovers(folder) -> list[str]:
    return sorted(p for p in os.listdir(folder) if p.endswith(".part")) if os.path.isdir(
        folder) else []


# ------------------------------------------------------------------------ download


def test_download_is_verified_cached_and_reused(served, tmp_path):
    root, server = served
    nih_zip(root / "cell_images.zip")
    file = P.PublicFile(server.url("cell_images.zip"), "cell_images.zip",
                        _sha(root / "cell_images.zip"), os.path.getsize(root / "cell_images.zip"))
    cache = tmp_path / "cache"
    path = P.fetch(file, cache=cache)
    assert path == cache / "cell_images.zip" and _sha(path) == file.sha256
    assert (cache / "cell_images.zip.verified").exists() and _leftovers(cache) == []
    server.close()  # offline from now on: the cached copy is used, not downloaded again
    assert P.fetch(file, cache=cache) == path and len(server.requests) == 1


def test_checksum_mismatch_keeps_nothing(served, tmp_path):
    root, server = served
    nih_zip(root / "cell_images.zip")
    file = P.PublicFile(server.url("cell_images.zip"), "cell_images.zip", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(P.DataUnavailableError, match="was not kept"):
        P.fetch(file, cache=cache)
    assert os.listdir(cache) == []


def test_interrupted_download_is_never_used(served, tmp_path):
    root, server = served
    nih_zip(root / "cell_images.zip")
    good = P.PublicFile(server.url("cell_images.zip"), "cell_images.zip",
                        _sha(root / "cell_images.zip"))
    server.short.add("cell_images.zip")
    cache = tmp_path / "cache"
    with pytest.raises(P.DataUnavailableError, match="interrupted download"):
        P.fetch(good, cache=cache)
    assert os.listdir(cache) == []  # no destination, no .part
    # a .part a killed process left behind is not the file: without the server, no file
    (cache / ".cell_images.zip.abc.part").write_bytes((root / "cell_images.zip").read_bytes())
    server.short.clear()
    dest = P.fetch(good, cache=cache)  # downloads again, from the start
    assert _sha(dest) == good.sha256 and len(server.requests) == 2


def test_offline_error_names_the_url_and_where_to_put_the_file(tmp_path):
    port = _closed_port()
    file = P.PublicFile(f"http://127.0.0.1:{port}/cell_images.zip", "cell_images.zip", "ab" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(P.DataUnavailableError) as err:
        P.fetch(file, cache=cache)
    msg = str(err.value)
    assert file.url in msg and str(cache / "cell_images.zip") in msg and "\n" not in msg
    assert _leftovers(cache) == []


def test_a_corrupt_cached_file_is_refused(served, tmp_path):
    root, server = served
    nih_zip(root / "cell_images.zip")
    file = P.PublicFile(server.url("cell_images.zip"), "cell_images.zip",
                        _sha(root / "cell_images.zip"))
    path = P.fetch(file, cache=tmp_path)
    with open(path, "r+b") as f:  # same size, other bytes: the note's stamp no longer fits
        f.seek(100)
        f.write(b"\0" * 8)
    with pytest.raises(P.DataUnavailableError, match="Delete it"):
        P.fetch(file, cache=tmp_path)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- malaria


def test_malaria_zip_has_file_names_and_splits_by_patient(served, tmp_path):
    root, server = served
    names = nih_zip(root / "cell_images.zip")
    file = P.PublicFile(server.url("cell_images.zip"), "cell_images.zip",
                        _sha(root / "cell_images.zip"))
    src = P.malaria_source(file=file, cache=tmp_path)
    assert src.spec == "malaria" and src.class_names == ("parasitized", "uninfected")
    assert len(src) == sum(map(len, names.values()))  # Thumbs.db is not an image
    assert src.keys[0].startswith("Parasitized/") and src.keys[-1].startswith("Uninfected/")
    k = src.keys.index("Uninfected/" + names["Uninfected"][4])
    with zipfile.ZipFile(root / "cell_images.zip") as z:
        want = D.decode(z.read("cell_images/" + src.keys[k]))
    np.testing.assert_array_equal(src.image(k), want)
    assert src.labels[k] == 1
    groups = S.group_keys(src.keys, r"^(.+?)_IMG")
    parts = S.make_splits(src.labels, (0.5, 0.25, 0.25), seed=0, groups=groups)
    slides = [{groups[i] for i in idx} for idx in parts.values()]
    assert all(s for s in slides) and not (slides[0] & slides[1] or slides[0] & slides[2]
                                           or slides[1] & slides[2])


def test_malaria_local_copies_through_open_source(tmp_path):
    nih_zip(tmp_path / "copy.zip")
    src = D.open_source(f"malaria:{tmp_path / 'copy.zip'}")
    assert len(src) == 2 * 3 * len(SLIDES) and src.keys[0].startswith("Parasitized/")
    src.image(0)  # an open zip handle, then a copy for a worker process
    clone = cloudpickle.loads(cloudpickle.dumps(src))
    np.testing.assert_array_equal(clone.image(5), src.image(5))
    with zipfile.ZipFile(tmp_path / "copy.zip") as z:
        z.extractall(tmp_path / "unzipped")
    folder = D.open_source(f"malaria:{tmp_path / 'unzipped'}")
    assert folder.class_names == ("parasitized", "uninfected") and folder.keys == src.keys
    with pytest.raises(FileNotFoundError, match="no such zip or folder"):
        D.open_source(f"malaria:{tmp_path / 'missing.zip'}")


def test_malaria_recipes_default_to_the_patient_split_and_imagenet():
    from train.configs import malaria, malaria_scratch

    for recipe in (malaria, malaria_scratch):
        c = recipe.get_config()
        assert c.data.source == "malaria" and c.data.group_regex == r"^(.+?)_IMG"
        t = recipe.get_config("tfds")
        assert t.data.source == "tfds:malaria" and t.data.group_regex == ""
    assert malaria.get_config().init == "imagenet"
    with pytest.raises(ValueError, match="malaria recipe argument"):
        malaria.get_config("kaggle")


# ---------------------------------------------------------------------------- BCCD


def _bccd_repo(tmp_path, *, extra: bytes = b""):
    """A BCCD_Dataset-like repository folder (BCCD/ in VOC layout, plus other files)."""
    repo = tmp_path / "BCCD_Dataset-1234"
    voc = repo / "BCCD"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    ids = [f"BloodImage_{i:05d}" for i in range(6)]
    for i, key in enumerate(ids):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(voc / "JPEGImages" /
                                                                      f"{key}.jpg")
        (voc / "Annotations" / f"{key}.xml").write_text(
            f"<annotation><filename>{key}.jpg</filename><size><width>64</width>"
            "<height>48</height><depth>3</depth></size><object><name>WBC</name><difficult>0"
            "</difficult><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>30</xmax><ymax>40</ymax>"
            "</bndbox></object><object><name>RBC</name><bndbox><xmin>31</xmin><ymin>2</ymin>"
            "<xmax>60</xmax><ymax>20</ymax></bndbox></object></annotation>" + extra.decode())
    for split, part in (("train", ids[:3]), ("val", ids[3:5]), ("test", ids[5:])):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(part) + "\n")
    (repo / "README.md").write_text("not part of the data\n")
    return repo


def _zip_folder(folder, dest):
    with zipfile.ZipFile(dest, "w") as z:
        for dirpath, _, files in os.walk(folder):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, os.path.relpath(full, folder.parent))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git as the tree-id reference")
def test_git_tree_id_is_what_git_says(tmp_path):
    repo = _bccd_repo(tmp_path)
    run = functools.partial(subprocess.run, cwd=repo, check=True, capture_output=True,
                            text=True)
    run(["git", "init", "-q"])
    run(["git", "add", "BCCD"])
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"])
    want = run(["git", "rev-parse", "HEAD:BCCD"]).stdout.strip()
    assert P.git_tree_id(repo / "BCCD") == want


def test_bccd_download_is_verified_by_its_tree_and_has_its_own_splits(served, tmp_path):
    root, server = served
    repo = _bccd_repo(tmp_path)
    _zip_folder(repo, root / "bccd.zip")
    tree = P.git_tree_id(repo / "BCCD")
    file = P.PublicFile(server.url("bccd.zip"), "bccd.zip")
    cache = tmp_path / "cache"
    folder = P.bccd_folder(file=file, tree=tree, cache=cache)
    assert os.path.exists(os.path.join(folder, ".verified"))
    assert not os.path.exists(os.path.join(folder, "README.md"))  # only BCCD/ is extracted
    sizes = {s: len(DD.voc_folder_source(folder, s, class_names=P.BCCD_CLASSES))
             for s in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 2, "test": 1}
    ex = DD.voc_folder_source(folder, "test", class_names=P.BCCD_CLASSES).example(0)
    assert ex["image"].shape == (48, 64, 3) and list(ex["classes"]) == [1, 0]
    server.close()  # verified once: no network needed any more
    assert P.bccd_folder(file=file, tree=tree, cache=cache) == folder


def test_bccd_with_other_content_is_refused_and_not_kept(served, tmp_path):
    root, server = served
    good = P.git_tree_id(_bccd_repo(tmp_path / "a") / "BCCD")
    _zip_folder(_bccd_repo(tmp_path / "b", extra=b"<!-- edited -->"), root / "bccd.zip")
    file = P.PublicFile(server.url("bccd.zip"), "bccd.zip")
    cache = tmp_path / "cache"
    with pytest.raises(P.DataUnavailableError, match="not kept"):
        P.bccd_folder(file=file, tree=good, cache=cache)
    assert os.listdir(cache) == []  # neither the archive nor a half-made folder


def test_bccd_local_folder_and_detection_source_spec(tmp_path):
    repo = _bccd_repo(tmp_path)
    src = DD.open_detection_source(f"bccd:{repo}", split="val")
    assert len(src) == 2 and src.class_names == P.BCCD_CLASSES
    with pytest.raises(ValueError, match="'bccd'"):
        DD.open_detection_source("bcd")


# ---------------------------------------------------------------------------- tfds


def test_tfds_malaria_warns_that_its_split_leaks_patients(caplog):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4), caplog.at_level(logging.WARNING):
        src = D.open_source("tfds:malaria")
    assert len(src) == 4 and src.keys is None
    assert any("cannot be patient-disjoint" in r.getMessage() for r in caplog.records)


def test_tfds_offline_unprepared_says_so(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(P.DataUnavailableError) as err:
        D.open_source("tfds:malaria", tfds_data_dir=str(tmp_path), download=False)
    msg = str(err.value)
    assert "not prepared" in msg and str(tmp_path) in msg and "data.source=malaria" in msg
