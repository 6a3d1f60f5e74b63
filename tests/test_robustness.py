"""Nothing silently wrong, nothing lost (issue 22): each case with its fault made real.

Changed data under a finished workdir, re-runs with another config, a PNG whose chunks
check but whose compressed stream is broken, 16-bit greyscale, a truncated checkpoint,
a second process in the same workdir, a full disk (a small tmpfs), and the ordinary
mistakes that must read as one line.
"""

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.tiny_model import registered, tiny_config
from train import checkpoint as C
from train import data as D
from train import evaluate as E
from train import loop
from train import workdir as W
from train.errors import CheckpointError, ImageError, WorkdirBusy, WorkdirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def train_log(caplog):
    """caplog for the project's logger (``train``, which does not propagate to the root)."""
    logger = logging.getLogger("train")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture(scope="module")
def tiny():
    with registered() as name:
        yield name


def write_folder(root, n_per_class=24, seed=0, start=0):
    """Synthetic cells as PNG files in ``root/<class>/``."""
    src = D.synthetic_source(4 * n_per_class, seed=seed)
    counts = {0: 0, 1: 0}
    for i in range(len(src)):
        label = int(src.labels[i])
        if counts[label] >= n_per_class:
            continue
        d = root / D.SYNTHETIC_CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(src.image(i)).save(d / f"S{i % 6}_IMG_{start + i:04d}.png")
        counts[label] += 1
    return root


@pytest.fixture(scope="module")
def folder_run(tiny, tmp_path_factory):
    """A finished tiny run on an image folder: (workdir, data folder, config, report)."""
    base = tmp_path_factory.mktemp("folder_run")
    data = write_folder(base / "images")
    config = tiny_config(**{"data.source": f"folder:{data}", "data.group_regex": "",
                            "checkpoint_every_steps": 2})
    workdir = str(base / "run")
    report = loop.train_and_evaluate(config, workdir)
    return workdir, data, config, report


def copy_run(folder_run, tmp_path):
    """A copy of the finished run and its data (so that a test may damage them)."""
    workdir, data, config, report = folder_run
    new_data, new_run = tmp_path / "images", tmp_path / "run"
    shutil.copytree(data, new_data)
    shutil.copytree(workdir, new_run, symlinks=True)
    config = tiny_config(**{"data.source": f"folder:{new_data}", "data.group_regex": "",
                            "checkpoint_every_steps": 2})
    # the copied config, splits and results name the original folder: point them here
    for path in new_run.glob("*.json"):
        path.write_text(path.read_text().replace(str(data), str(new_data)))
    return str(new_run), new_data, config, report


def snapshot(workdir):
    """Every file of a workdir (but the log and the lock) with its bytes."""
    out = {}
    for dirpath, _, files in os.walk(workdir):
        for f in files:
            if f in (W.LOG_NAME, W.LOCK_NAME):
                continue
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, workdir)] = fh.read()
    return out


# --------------------------------------------------------------------------- 1: changed data


def test_1_evaluate_refuses_changed_data_and_rederives_when_asked(folder_run, tmp_path):
    workdir, data, config, report = copy_run(folder_run, tmp_path)
    saved = (tmp_path / "run" / "eval_test.json").read_text()
    write_folder(data, n_per_class=1, seed=5, start=900)  # one more image in each class
    with pytest.raises(WorkdirError, match=r"2 file\(s\) added") as err:
        E.evaluate(workdir)
    assert "--rederive" in str(err.value) and "S" in str(err.value)
    assert (tmp_path / "run" / "eval_test.json").read_text() == saved  # not overwritten
    again = E.evaluate(workdir, rederive=True)  # the test split found again by file name
    assert again["num_examples"] == report["num_examples"]
    assert again["confusion_matrix"] == report["confusion_matrix"]
    assert "re-derived by file name" in again["data"]


def test_1_evaluate_refuses_a_renamed_file_and_a_foreign_splits_json(folder_run, tmp_path):
    workdir, data, config, _ = copy_run(folder_run, tmp_path)
    split = json.loads((tmp_path / "run" / "splits.json").read_text())
    victim = data / split["files"]["test"][0]
    victim.rename(victim.with_name("ZZ_renamed.png"))
    with pytest.raises(WorkdirError, match="gone"):
        E.evaluate(workdir)
    with pytest.raises(WorkdirError, match="gone"):
        E.evaluate(workdir, rederive=True)  # a test file is missing: nothing to re-derive
    victim.with_name("ZZ_renamed.png").rename(victim)
    split["info"]["seed"] = 99  # splits.json of another run
    (tmp_path / "run" / "splits.json").write_text(json.dumps(split))
    with pytest.raises(WorkdirError, match="do not belong to the same run"):
        E.evaluate(workdir)


# --------------------------------------------------------------------------- 2, 3: re-runs


def test_2_3_a_rerun_with_another_config_is_refused_and_changes_nothing(folder_run, tmp_path):
    workdir, data, config, report = copy_run(folder_run, tmp_path)
    before = snapshot(workdir)
    for change in ({"model.name": "resnet18"}, {"data.limit": 40}, {"learning_rate": 0.5},
                   {"epochs": 3}, {"seed": 1}):
        with pytest.raises(WorkdirError, match="another config") as err:
            loop.train_and_evaluate(tiny_config(**{**_folder(data), **change}), workdir)
        assert next(iter(change)) in str(err.value) and "--overwrite" in str(err.value)
        assert snapshot(workdir) == before  # config.json, results, checkpoints untouched
    assert not os.path.exists(os.path.join(workdir, "config.prev.json"))
    assert E.evaluate(workdir)["accuracy"] == report["accuracy"]


def _folder(data):
    return {"data.source": f"folder:{data}", "data.group_regex": "", "checkpoint_every_steps": 2}


def test_3_resumable_keys_resume_and_are_logged(folder_run, tmp_path, train_log):
    workdir, data, config, report = copy_run(folder_run, tmp_path)
    rows = open(os.path.join(workdir, "history.jsonl")).read()
    changed = tiny_config(**{**_folder(data), "log_every_steps": 7, "keep_checkpoints": 3})
    again = loop.train_and_evaluate(changed, workdir)
    assert again["accuracy"] == report["accuracy"]
    assert open(os.path.join(workdir, "history.jsonl")).read() == rows  # nothing redone
    assert "resuming with log_every_steps changed" in train_log.text
    assert json.load(open(os.path.join(workdir, "config.json")))["log_every_steps"] == 7


def test_2_overwrite_restores_the_old_run_when_the_new_config_fails(folder_run, tmp_path):
    workdir, data, config, _ = copy_run(folder_run, tmp_path)
    before = snapshot(workdir)
    bad = tiny_config(**{**_folder(data), "policy": "nonsense"})
    with pytest.raises(ValueError, match="unknown policy"):
        loop.train_and_evaluate(bad, workdir, overwrite=True)
    assert snapshot(workdir) == before
    assert not [n for n in os.listdir(workdir) if n.startswith(".replaced-")]


def test_2_a_failed_start_in_a_fresh_workdir_leaves_nothing(tiny, tmp_path):
    bad = tiny_config(policy="finetune:99")
    with pytest.raises(ValueError, match="finetune"):
        loop.train_and_evaluate(bad, str(tmp_path / "fresh"))
    assert sorted(os.listdir(tmp_path / "fresh")) == [W.LOCK_NAME, W.LOG_NAME]


def test_results_are_never_overwritten_silently(tmp_path):
    path = str(tmp_path / "eval_test.json")
    assert W.write_result(path, {"accuracy": 0.667}) is None
    assert W.write_result(path, {"accuracy": 0.667}) is None  # the same: nothing kept
    kept = W.write_result(path, {"accuracy": 1.0})
    assert kept.endswith("eval_test.1.json") and json.load(open(kept))["accuracy"] == 0.667
    assert W.write_result(path, {"accuracy": 0.5}).endswith("eval_test.2.json")
    assert json.load(open(path))["accuracy"] == 0.5


# --------------------------------------------------------------------------- 4, 5: images


def broken_stream_png(path, seed=0):
    """A PNG whose chunk CRCs are all valid but whose zlib stream is corrupt."""
    img = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), np.uint8)
    raw = b"".join(b"\0" + img[y].tobytes() for y in range(32))
    body = bytearray(zlib.compress(raw))
    body[len(body) // 2: len(body) // 2 + 16] = bytes(range(16))  # garbage mid-stream

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(body))
                     + chunk(b"IEND", b""))
    with Image.open(path) as im:
        im.verify()  # the checks that used to pass it: header and CRCs are fine
    return path


def test_4_a_png_with_a_broken_stream_is_skipped_counted_and_named(tmp_path, train_log):
    data = write_folder(tmp_path / "images", n_per_class=4)
    bad = broken_stream_png(data / "uninfected" / "S1_IMG_9999.png")
    src = D.folder_source(str(data))
    assert len(src) == 8 and src.skipped == 1
    assert "uninfected/S1_IMG_9999.png" in train_log.text and "skipped 1" in train_log.text
    with pytest.raises(ImageError, match="S1_IMG_9999.png"):
        D.decode_file(str(bad))


def test_5_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    img = D.decode_file(str(tmp_path / "ramp16.png"))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() == 255
    assert abs(img.mean() - 127.5) < 1.0  # was 254.4: everything clipped to white
    np.testing.assert_allclose(img[..., 0], ramp / 257.0, atol=0.51)
    # tfds arrays of 16-bit samples the same way (no uint8 wrap-around)
    np.testing.assert_array_equal(D._rgb(ramp[..., None]), img)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "I",
                                  "I;16B", "F", "RGBa", "La"])
def test_5_every_pil_mode_converts_to_rgb(mode):
    grey = np.tile(np.linspace(0, 255, 16).round().astype(np.uint8), (16, 1))
    im = Image.fromarray(grey).convert("RGB")
    if mode == "I":
        im = Image.fromarray(grey.astype(np.uint16) * 257).convert(mode)
    elif mode == "I;16B":  # big-endian 16-bit samples (PIL's convert to it clips)
        im = Image.frombytes(mode, (16, 16), (grey.astype(">u2") * 257).tobytes())
    elif mode == "F":
        im = Image.fromarray(grey.astype(np.float32) / 255.0, mode="F")
    else:
        im = im.convert("RGBA" if mode in ("RGBa", "La") else mode)
        if mode in ("RGBa", "La"):
            im = im.convert(mode)
    out = D.to_rgb(im)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    if mode not in ("1", "P", "PA", "CMYK", "YCbCr"):  # lossless greys: the same ramp back
        np.testing.assert_allclose(out[..., 1], grey, atol=1)


# --------------------------------------------------------------------------- 6: checkpoints


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_6_a_truncated_latest_checkpoint_falls_back_and_resumes(folder_run, tmp_path,
                                                                 train_log):
    workdir, data, config, report = copy_run(folder_run, tmp_path)
    last = os.path.join(workdir, "checkpoints", "last")
    steps = C.Checkpoints.steps(last)
    assert len(steps) == 2
    # the final checkpoint's data files cut in half, as a crash or a full disk leaves them
    state = os.path.join(last, str(steps[-1]), "state")
    for d, _, files in os.walk(state):
        for f in files:
            if os.path.getsize(os.path.join(d, f)) > 100:
                _truncate(os.path.join(d, f))
    C.restore_variables(last)  # evaluation's reader: the step before
    assert f"checkpoint {os.path.join(last, str(steps[-1]))} is unreadable" in train_log.text
    train_log.clear()
    again = loop.train_and_evaluate(config, workdir)  # resumes from the step before
    assert "trying the one before" in train_log.text and "resumed from step" in train_log.text
    moved = os.listdir(os.path.join(workdir, "checkpoints", "unreadable"))
    assert moved == [f"last-{steps[-1]}"]  # kept aside, not deleted
    assert C.Checkpoints.steps(last)[-1] == steps[-1]  # the lost steps were redone
    # ... exactly: the same result, so eval_test.json was rewritten with the same contents
    assert again["confusion_matrix"] == report["confusion_matrix"]
    assert not os.path.exists(os.path.join(workdir, "eval_test.1.json"))


def test_6_truncated_metadata_is_named(folder_run, tmp_path):
    workdir, *_ = copy_run(folder_run, tmp_path)
    last = os.path.join(workdir, "checkpoints", "last")
    for step in C.Checkpoints.steps(last):
        _truncate(os.path.join(last, str(step), "meta", "metadata"))
    ckpt = C.Checkpoints(workdir)
    target = {"params": C.restore_variables(os.path.join(workdir, "checkpoints", "best"))}
    with pytest.raises(CheckpointError, match=r"meta/metadata is not valid JSON"):
        ckpt.restore(target)
    ckpt.close()


# --------------------------------------------------------------------------- 7: the lock

HOLDER = """
import sys, time
from train import workdir as W
lock = W.Lock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_7_a_second_process_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path,
                                                                          train_log):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusy, match=f"pid {holder.pid} on"):
            loop.train_and_evaluate(tiny_config(), workdir)
        assert os.listdir(workdir) == [W.LOCK_NAME]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without releasing: its record is stale and is taken over
    assert json.load(open(os.path.join(workdir, W.LOCK_NAME)))["pid"] == holder.pid
    with W.Lock(workdir):
        assert json.load(open(os.path.join(workdir, W.LOCK_NAME)))["pid"] == os.getpid()
    assert f"stale lock of pid {holder.pid}" in train_log.text


def test_7_pid_file_lock_where_flock_is_missing(tmp_path, monkeypatch):
    import fcntl

    def no_flock(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)  # as on a file system without flock
    workdir, path = str(tmp_path), os.path.join(str(tmp_path), W.LOCK_NAME)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(path, "w") as f:
            json.dump({"pid": alive.pid, "host": os.uname().nodename}, f)
        with pytest.raises(WorkdirBusy, match=f"pid {alive.pid}"):
            W.Lock(workdir).acquire()
    finally:
        alive.kill()
        alive.wait()
    with W.Lock(workdir):  # its process is gone: the lock is stale and taken over
        assert json.load(open(path))["pid"] == os.getpid()
    assert not os.path.exists(path)


# --------------------------------------------------------------------------- 10: smaller


def test_10_a_policy_that_trains_nothing_is_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="matches no parameter"):
        loop.train_and_evaluate(tiny_config(policy="regex:zzz"), str(tmp_path))


def test_10_nan_before_any_checkpoint_says_there_is_none(tiny, tmp_path):
    config = tiny_config(learning_rate=1e30, optimizer="sgd", schedule="constant",
                         warmup_steps=4, checkpoint_every_steps=50, weight_decay=0.0)
    with pytest.raises(loop.NonFiniteLossError, match="no checkpoint had been saved") as err:
        loop.train_and_evaluate(config, str(tmp_path))
    assert "step None" not in str(err.value)


def test_10_model_arguments_are_checked():
    import zoo

    with pytest.raises(ValueError, match="num_classes=None"):
        zoo.create("resnet18", num_classes=0)
    for name, alpha in (("mobilenet", 2.0), ("mobilenetv2", 2.0), ("mobilenet", 0.0),
                        ("mobilenetv2", -1.0)):
        with pytest.raises(ValueError, match="alpha"):
            zoo.create(name, alpha=alpha)
    model = zoo.create("resnet18", num_classes=3)
    with pytest.raises(ValueError, match=r"channel axis") as err:
        model.init(__import__("jax").random.PRNGKey(0), np.zeros((2, 32, 32), np.float32))
    assert "batch axis" not in str(err.value)
    with pytest.raises(ValueError, match=r"batch axis"):
        model.init(__import__("jax").random.PRNGKey(0), np.zeros((32, 32, 3), np.float32))


# --------------------------------------------------------------------------- 8, 9: one line

TINY = ["--config", "train/configs/synthetic.py", "--config.model.name=tiny_test_net",
        "--config.data.synthetic_size=96", "--config.data.image_size=16",
        "--config.batch_size=8", "--config.epochs=2", "--config.checkpoint_every_steps=3",
        "--config.progress=false", "--config.data.workers=1"]


def script(name, *args, preexec_fn=None):
    """``scripts.<name>`` as its users run it, with the tiny net registered."""
    code = ("import sys; from tests.tiny_model import register; register(); "
            f"from scripts import {name} as m; sys.argv = [{name!r}] + sys.argv[1:]; m.run()")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=600, preexec_fn=preexec_fn)


def one_line_error(proc, *words):
    """Exit status 2, no traceback, and the last line of stderr is the error, naming ``words``."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), last
    return last


def test_9_a_misspelt_config_key_is_one_line(tmp_path):
    one_line_error(script("train", *TINY, "--config.batchsize=3", "--workdir", tmp_path),
                   "'batchsize'", "batch_size")
    assert not os.path.exists(tmp_path / "config.json")


CASES = {
    "unknown policy": (["train", *TINY, "--config.policy=bogus"], ["unknown policy 'bogus'"]),
    "finetune:99": (["train", *TINY, "--config.policy=finetune:99"], ["finetune_groups=99"]),
    "regex matching nothing": (["train", *TINY, "--config.policy=regex:zzz"],
                               ["matches no parameter"]),
    "batch larger than the split": (["train", *TINY, "--config.batch_size=500"],
                                    ["batch_size=500"]),
    "missing folder": (["train", *TINY, "--config.data.source=folder:/no/such/folder"],
                       ["/no/such/folder", "does not exist"]),
    "unknown tfds name": (["train", *TINY, "--config.data.source=tfds:malria",
                           "--config.data.download=false"], ["'malria'", "malaria"]),
    "evaluate a missing workdir": (["evaluate", "--workdir", "/no/such/run"],
                                   ["/no/such/run does not exist"]),
    "convert a missing file": (["convert", "--model", "resnet18", "--input", "/no/such.h5",
                                "--output", "OUT"], ["/no/such.h5"]),
    "convert with a wrong option": (["convert", "--model", "resnet18", "--set", "alpha=2",
                                     "--output", "OUT"], ["unknown option", "alpha"]),
    "draw an unknown model": (["draw", "--model", "resnet1", "--out", "OUT.svg"],
                              ["resnet1", "resnet18"]),
}


@pytest.mark.slow  # a subprocess each (~5 s)
@pytest.mark.parametrize("case", list(CASES))
def test_9_ordinary_mistakes_are_one_line(case, tmp_path):
    (name, *args), words = CASES[case]
    args = [str(tmp_path / "out") if a == "OUT" else
            str(tmp_path / "out.svg") if a == "OUT.svg" else a for a in args]
    if name == "train":
        args += ["--workdir", str(tmp_path / "run")]
    one_line_error(script(name, *args), *words)
    if name == "train":  # nothing of a run was kept
        assert not os.path.exists(tmp_path / "run" / "config.json")
        assert not os.path.exists(tmp_path / "run" / "splits.json")


@pytest.mark.slow
def test_9_verbose_shows_the_traceback(tmp_path):
    proc = script("train", *TINY, "--config.policy=bogus", "--workdir", tmp_path, "--verbose")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    assert "unknown policy 'bogus'" in proc.stderr


@pytest.mark.slow
def test_9_predict_names_each_bad_file_and_goes_on(folder_run, tmp_path):
    workdir, data, *_ = folder_run
    good = sorted((data / "uninfected").iterdir())[0]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    broken = broken_stream_png(tmp_path / "broken.png")
    files = [good, truncated, empty, tmp_path / "missing.png", broken, tmp_path]
    proc = script("predict", "--workdir", workdir, *files)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith(f"{good}\t")  # the good one, predicted
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    for bad in files[1:]:
        assert any(str(bad) in line for line in errors), (bad, errors)
    assert errors[-1] == "error: 5 of 6 file(s) could not be read"


@pytest.mark.slow
def test_2_9_cli_rerun_with_another_config_and_a_busy_workdir(folder_run, tmp_path):
    workdir, data, *_ = folder_run
    args = [*TINY, f"--config.data.source=folder:{data}", "--config.data.group_regex=",
            "--workdir", workdir]
    before = snapshot(workdir)
    one_line_error(script("train", *args, "--config.learning_rate=0.1"), "another config",
                   "learning_rate 0.002 -> 0.1", "--overwrite")
    assert snapshot(workdir) == before
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_line_error(script("train", *args), f"pid {holder.pid}", "another --workdir")
    finally:
        holder.kill()
        holder.wait()


def _tmpfs_works() -> bool:
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                          capture_output=True).returncode == 0 if shutil.which("unshare") \
        else False


@pytest.mark.slow  # two tiny training runs in subprocesses
def test_8_a_full_disk_is_one_line_and_the_run_resumes(tmp_path):
    """A real ENOSPC: the workdir on a 1 MiB tmpfs (a private mount namespace) with 750 KiB
    taken; where unprivileged mounts are not allowed, a file-size limit (EFBIG) instead."""
    code = ("import sys; from tests.tiny_model import register; register(); "
            "from scripts import train as m; sys.argv = ['train'] + sys.argv[1:]; m.run()")
    argv = [sys.executable, "-c", code, *TINY]
    env = {**os.environ, "PYTHONPATH": ROOT}
    mnt = tmp_path / "mnt"
    if _tmpfs_works():
        mnt.mkdir()
        inner = (f"mount -t tmpfs -o size=1024k tmpfs {mnt} && "
                 f"dd if=/dev/zero of={mnt}/filler bs=1k count=750 2>/dev/null && "
                 f"{{ \"$@\" --workdir {mnt}/run 2> {tmp_path}/first.err; "
                 f"echo $? > {tmp_path}/first.rc; ls -R {mnt}/run > {tmp_path}/first.ls; "
                 f"rm {mnt}/filler; \"$@\" --workdir {mnt}/run 2> {tmp_path}/second.err; "
                 f"echo $? > {tmp_path}/second.rc; cp {mnt}/run/eval_test.json {tmp_path}/; }}")
        subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", inner,
                        "sh", *argv], cwd=ROOT, env=env, timeout=900, check=True)
        first = subprocess.CompletedProcess(argv, int((tmp_path / "first.rc").read_text()),
                                            "", (tmp_path / "first.err").read_text())
        assert "checkpoints" in (tmp_path / "first.ls").read_text()  # it got that far
        second_rc = int((tmp_path / "second.rc").read_text())
        second_err = (tmp_path / "second.err").read_text()
    else:
        import resource

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

        run = str(tmp_path / "run")
        first = subprocess.run([*argv, "--workdir", run], cwd=ROOT, env=env, text=True,
                               capture_output=True, timeout=600, preexec_fn=limit)
        again = subprocess.run([*argv, "--workdir", run], cwd=ROOT, env=env, text=True,
                               capture_output=True, timeout=600)
        second_rc, second_err = again.returncode, again.stderr
        shutil.copy(os.path.join(run, "eval_test.json"), tmp_path)
    one_line_error(first, "disk full", "run the same command again")
    assert second_rc == 0, second_err[-3000:]
    assert "resumed from step" in second_err
    assert json.load(open(tmp_path / "eval_test.json"))["num_examples"] > 0


def test_3_a_key_added_since_the_run_started_at_its_default_resumes(tmp_path):
    config = tiny_config()
    old = W.config_json(config)
    del old["data"]["augment"]["hflip"]  # as if written before the key existed
    W.write_json(str(tmp_path / "config.json"), old)
    assert list(W.check_config(config, str(tmp_path))) == ["data.augment.hflip"]
    config.data.augment.hflip = not config.data.augment.hflip  # ... but not at another value
    with pytest.raises(WorkdirError, match=r"data.augment.hflip \(absent\) -> false"):
        W.check_config(config, str(tmp_path))


def test_10_without_dot_the_suggested_command_writes_next_to_out(tiny, tmp_path, monkeypatch):
    import viz

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no Graphviz `dot` on it
    out = tmp_path / "drawings" / "tiny.svg"
    with pytest.raises(viz.GraphvizNotFound) as err:
        viz.draw(tiny, out=out)
    assert f"-o {out}`" in str(err.value)  # not into the current folder
    assert (tmp_path / "drawings" / "tiny.dot").exists()


def test_2_overwrite_replaces_the_run_once_the_new_one_starts(folder_run, tmp_path, train_log):
    workdir, data, config, _ = copy_run(folder_run, tmp_path)
    new = tiny_config(**{**_folder(data), "learning_rate": 0.01, "epochs": 1})
    loop.train_and_evaluate(new, workdir, overwrite=True)
    assert json.load(open(os.path.join(workdir, "config.json")))["learning_rate"] == 0.01
    assert "--overwrite: removed the previous run" in train_log.text
    assert not [n for n in os.listdir(workdir) if n.startswith(".replaced-")]
    rows = [json.loads(r) for r in open(os.path.join(workdir, "history.jsonl"))]
    assert max(r["epoch"] for r in rows) == 1  # the new run's history only


def test_our_errors_are_ours_where_the_packages_are_installed(monkeypatch):
    """In a wheel the packages sit in site-packages: an error raised there is still the
    project's (one line), one raised by another installed library is not."""
    from scripts import cli

    site = os.path.join(os.sep, "venv", "lib", "site-packages")
    monkeypatch.setattr(cli, "ROOT", site)

    def raised_in(path):
        try:
            exec(compile("raise ValueError('bad value: use another')", path, "exec"))
        except ValueError as e:
            return e

    assert cli.explain(raised_in(os.path.join(site, "train", "data.py"))) == \
        "bad value: use another"
    assert cli.explain(raised_in(os.path.join(site, "numpy", "core.py"))) is None


def test_scripts_train_takes_a_recipe_by_name():
    from tests.cli import run_script

    out = run_script("train", "--config", "nosuch", "--workdir", "unused", check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "recipes: bccd_yolo" in out.stderr and "synthetic" in out.stderr
    bad = run_script("train", "--config", "synthetic", "--config.bogus=1", "--workdir",
                     "unused", check=False)
    assert "unknown --config key 'bogus'" in bad.stderr  # the recipe was found and loaded
