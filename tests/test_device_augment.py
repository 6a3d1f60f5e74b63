"""The augmentation inside the jitted step (data.augment.device): each transform is the host's
transform, exactly or to PIL's rounding; the loader hands the device seeds instead of
augmented images; training runs with it and lowers for accelerators."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny_model import registered, tiny_config
from train import data as D
from train import device_augment as A
from train import loop
from train.pipeline import Augment, Loader, augment_seeds, resize

SEEDS = jnp.arange(24, dtype=jnp.uint32)
apply = jax.jit(A.apply, static_argnames="aug")  # Augment is a frozen (hashable) dataclass


def _images(n=24, size=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_quarter_turns_and_flips_are_exact_and_all_happen():
    imgs = _images()
    for aug, candidates in (
        (Augment(rotate90=True), lambda im: [np.rot90(im, k) for k in range(4)]),
        (Augment(hflip=True, vflip=True),
         lambda im: [im, im[:, ::-1], im[::-1], im[::-1, ::-1]]),
    ):
        out = np.asarray(apply(jnp.asarray(imgs), SEEDS, aug))
        seen = set()
        for o, im in zip(out, imgs, strict=True):
            match = [k for k, c in enumerate(candidates(im)) if np.array_equal(o, c)]
            assert match, "not one of the transform's outcomes"
            seen.add(match[0])
        assert seen == {0, 1, 2, 3}


def test_the_random_crop_is_the_hosts_crop_and_resize():
    size, aug = 32, Augment(crop_scale=0.3)
    img = np.asarray(resize(D.synthetic_cell(True, 0, 3, 64), size))
    for seed in range(6):
        key = jax.random.split(jax.random.key(np.uint32(seed)))[0]
        rows, cols = np.asarray(A._geometry(key, size, aug)[0])
        m = size // 2  # rows[m] = top + (m + 0.5) * h / size - 0.5 (edges are clamped)
        step_r, step_c = rows[m + 1, m] - rows[m, m], cols[m, m + 1] - cols[m, m]
        h, w = round(step_r * size), round(step_c * size)
        top = round(rows[m, m] - (m + 0.5) * step_r + 0.5)
        left = round(cols[m, m] - (m + 0.5) * step_c + 0.5)
        assert 0 <= top <= size - h and 0 <= left <= size - w and h * w >= 0.3 * size**2 - size
        host = resize(np.ascontiguousarray(img[top:top + h, left:left + w]), size)
        dev = np.asarray(apply(jnp.asarray(img[None]), jnp.asarray([seed], jnp.uint32), aug))
        assert np.abs(dev[0] - host.astype(np.float32)).max() <= 1.0 + 1e-3  # PIL rounds to 8 bits


def test_rotation_keeps_the_centre_and_fills_corners_black():
    img = np.full((24, 20, 20, 3), 200, np.uint8)
    out = np.asarray(apply(jnp.asarray(img), SEEDS, Augment(rotation=45.0)))
    assert np.allclose(out[:, 8:12, 8:12], 200)
    corners = out[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).any(axis=(1, 2)).sum() >= 12  # most angles are far enough from 0


def test_colour_factors_stay_in_their_ranges():
    imgs = _images()
    out = np.asarray(apply(jnp.asarray(imgs), SEEDS, Augment(brightness=0.2)))
    unclipped = (out < 255) & (imgs > 0)
    ratio = out[unclipped] / imgs[unclipped]
    assert ratio.min() >= 0.8 - 1e-4 and ratio.max() <= 1.2 + 1e-4 and ratio.std() > 0.01
    grey = np.full((24, 4, 4, 3), 100, np.uint8)  # saturation leaves grey alone
    np.testing.assert_allclose(np.asarray(apply(jnp.asarray(grey), SEEDS,
                                                  Augment(saturation=0.5))), 100, atol=1e-3)


def test_the_loader_hands_seeds_not_augmented_images():
    src = D.synthetic_source(40, seed=0)
    aug = Augment(hflip=True, rotation=10.0, brightness=0.1, device=True)
    on_dev = Loader(src, np.arange(40), batch_size=8, image_size=16, train=True, augment=aug,
                    seed=5)
    plain = Loader(src, np.arange(40), batch_size=8, image_size=16, train=True, seed=5)
    order = on_dev.order(1)
    for k, (a, b) in enumerate(zip(on_dev.epoch(1), plain.epoch(1), strict=True)):
        np.testing.assert_array_equal(a["image"], b["image"])  # resized, not augmented
        assert a["augment_seed"].dtype == np.uint32
        np.testing.assert_array_equal(a["augment_seed"],
                                      augment_seeds(5, 1, order[8 * k : 8 * k + 8]))
    assert "augment_seed" not in b
    assert not Augment(device=True).active and Augment(hflip=True, device=True).active


@pytest.fixture(scope="module")
def tiny():
    with registered() as name:
        yield name


def test_training_with_the_device_augmentation(tiny, tmp_path):
    config = tiny_config(**{"data.augment.device": True, "data.augment.rotation": 15.0,
                            "data.augment.brightness": 0.2, "epochs": 1})
    a = loop.train_and_evaluate(config, str(tmp_path / "a"))
    b = loop.train_and_evaluate(config, str(tmp_path / "b"))
    assert a["accuracy"] == b["accuracy"] and a["loss"] == b["loss"]  # deterministic


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_the_device_augmentation_lowers_for_accelerators(platform):
    aug = dataclasses.replace(Augment(hflip=True, rotate90=True, rotation=10.0,
                                      crop_scale=0.5, contrast=0.2, saturation=0.2),
                              device=True)
    f = jax.jit(lambda x, s: A.apply(x, s, aug))
    text = f.trace(jax.ShapeDtypeStruct((8, 64, 64, 3), jnp.uint8),
                   jax.ShapeDtypeStruct((8,), jnp.uint32)).lower(
        lowering_platforms=(platform,)).as_text()
    assert "custom_call" not in text


def test_device_on_with_nothing_to_augment_trains_plainly(tiny, tmp_path):
    from train.pipeline import Augment as Aug

    off = {f"data.augment.{f}": Aug.__dataclass_fields__[f].default
           for f in Aug.__dataclass_fields__ if f != "device"}
    config = tiny_config(**{"data.augment.device": True, "epochs": 1, **off})
    report = loop.train_and_evaluate(config, str(tmp_path))  # no 'augment_seed' asked for
    assert 0.0 <= report["accuracy"] <= 1.0
