"""A fresh classifier head starts near chance on real-scale features, so a frozen-backbone
head can train: every zoo classifier whose head is a convolution (MobileNet v1's 1x1
``conv_preds``, SqueezeNet's) gets its reference's small init, not the backbone's He
fan-out init (std sqrt(2 / num_classes): 1.0 for two classes)."""

import jax
import numpy as np
import pytest

import zoo


@pytest.mark.parametrize("name,kwargs", [
    ("mobilenet", {"alpha": 0.25}),
    pytest.param("squeezenet1_1", {}, marks=pytest.mark.slow),  # its own init: a guard
])
def test_a_fresh_head_starts_near_chance(name, kwargs):
    if name not in zoo.list_models():
        pytest.skip(f"{name} is not in the zoo")
    model = zoo.create(name, num_classes=2, **kwargs)
    size = max(zoo.spec(name).min_size, 32)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, size, size, 3)))
    kernel = np.asarray(variables["params"]["head"]["kernel"])
    fan_in = kernel.size // kernel.shape[-1]
    # pooled ReLU6 features of a real backbone average ~1 (MobileNet v1 on malaria cells:
    # 1.26): logits then stay within a few units of each other
    logits = np.ones((1, fan_in)) @ kernel.reshape(fan_in, -1)
    assert kernel.std() < 0.2 and np.abs(logits).max() < 10, (kernel.std(), logits)
