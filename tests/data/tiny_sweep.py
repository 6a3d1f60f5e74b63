"""Two tiny rows for the sweep tests: real zoo models on 128 synthetic cells at 32 px."""

from train.configs import synthetic

ROWS = ("squeezenet1_1", "resnet18")


def get_config(row: str = ""):
    """``tiny_sweep:<row>``: the synthetic recipe with model ``row``, small and short."""
    if row not in ROWS:
        raise ValueError(f"tiny_sweep rows: {', '.join(ROWS)} (got {row!r})")
    c = synthetic.get_config()
    c.model.name = row
    c.head.kind = "mlp" if row.startswith("squeezenet") else "reference"
    c.data.synthetic_size = 128
    c.data.image_size = 32
    c.batch_size = 8
    c.epochs = 2
    c.warmup_steps = 0
    c.checkpoint_every_steps = 2
    c.progress = False
    return c
