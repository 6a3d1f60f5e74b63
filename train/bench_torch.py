"""The peer most users would pick instead: PyTorch eager on the torchvision architectures
(``scripts.bench --frameworks ours,torch``), timed like ``train.bench.bench_ours``: the
same batch, random data, inference and one SGD step, in the faster of NCHW and
channels_last (the layout is recorded beside the times)."""

from __future__ import annotations

from train.bench import _time  # the same median of timed runs as ours

TORCH_NAMES = {"resnet50": "resnet50", "mobilenetv2": "mobilenet_v2",
               "densenet121": "densenet121", "resnet18": "resnet18", "vgg16": "vgg16",
               "inception_v3": "inception_v3", "alexnet": "alexnet",
               "squeezenet1_1": "squeezenet1_1"}


def bench_torch(name: str, batch: int, warmup: int, repeats: int, modes=("infer", "train"),
                size: int = 224):
    """``(mode, seconds)`` and ``(mode + '_layout', layout)`` of the faster layout."""
    import torch
    import torchvision

    kwargs = {"aux_logits": False, "init_weights": False} if name == "inception_v3" else {}
    for mode in modes:
        best = None
        for layout in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            model = getattr(torchvision.models, TORCH_NAMES[name])(weights=None, **kwargs)
            model = model.to(memory_format=layout)
            x = torch.randn(batch, 3, size, size).to(memory_format=layout)
            y = torch.randint(0, 1000, (batch,))
            if mode == "infer":
                model.eval()

                def run(model=model, x=x):
                    with torch.inference_mode():
                        model(x)
            else:
                model.train()
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
                loss_fn = torch.nn.CrossEntropyLoss()

                def run(model=model, x=x, y=y, opt=opt, loss_fn=loss_fn):
                    opt.zero_grad(set_to_none=True)
                    loss_fn(model(x), y).backward()
                    opt.step()
            seconds = _time(run, warmup, repeats)
            if best is None or seconds < best[0]:
                best = (seconds, "channels_last" if layout is torch.channels_last else "NCHW")
        yield mode, best[0]
        yield f"{mode}_layout", best[1]
