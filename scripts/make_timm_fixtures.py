#!/usr/bin/env python3
"""Reference features of timm / torchvision backbones on deterministic random
weights, for tests/timm.rs.

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch timm torchvision safetensors numpy
    /tmp/torchenv/bin/python scripts/make_timm_fixtures.py [--out tests/data/timm] [--only resnet18,resnet34]

Models (timm names; input size, batch 2): legacy_xception (299),
inception_v3 (299), resnet18, resnet34, resnet50 (224). The ResNets and
inception_v3 are checked against their torchvision twin (same state-dict
names: conv1.weight, bn1.*, layer1.0.conv1.weight, ..., fc.*) on the same
weights. --only takes a comma-separated list of fixture names (and `tiny`),
so new fixtures can be added without rewriting the committed ones.

Full-size random checkpoints are ~45-100 MB each, so none is stored. Every weight
(and the input) is instead a pure function of its state-dict name and shape,
computed in float64 from a counter-based generator that tests/timm.rs
reimplements bit for bit:

    seed(name) = FNV-1a 64 of the UTF-8 name
    u[i]       = (splitmix64(seed + i) >> 11) * 2**-53        i = 0, 1, ... (row-major)
    rank >= 2 (kernels, fc)       (2u - 1) * sqrt(6 / fan_in), fan_in = prod(shape[1:])
    *.running_mean                (2u - 1) * 0.1
    *.running_var                 0.5 + u
    other rank 1 *.weight (gamma) 0.5 + u
    other rank 1 *.bias (beta)    (2u - 1) * 0.1
    input "input" (N, 3, S, S)    2u - 1
each cast to float32 at the end. BatchNorm running statistics are random, so
folding them into the convolutions is exercised; integer buffers
(num_batches_tracked) keep the model's values.

Written to --out, per model (a few KB each):
    <model>.tensors.txt    every float tensor of the state dict: `name<TAB>d0,d1,...`
    <model>.safetensors    `features` (N, C): the model's pooled forward_features
                           output (f32, CPU) for the generated `input`, and
                           `input_size`, `batch` (i64 scalars) in metadata
and tiny PyTorch checkpoints for the .pth reader (committed, ~7 KB):
    tiny_nested.pth        {"state_dict": {"module.<name>": ...}, "epoch": 3}
    tiny_bare.pt           {"<name>": ...}
    tiny_expected.safetensors  the same tensors, contiguous, unprefixed

With --checkpoints DIR it also writes the full-size random checkpoints as
timm training checkpoints, DIR/<model>.pth = {"state_dict": {"module.<name>":
...}, "epoch": 0} (~45-100 MB each, never committed), for the optional
full-size file test in tests/timm.rs:

    /tmp/torchenv/bin/python scripts/make_timm_fixtures.py --checkpoints /tmp/timm_ckpt
    RUNNER_TIMM_CHECKPOINTS=/tmp/timm_ckpt cargo test --test main timm
"""
import argparse
import math
import os

import numpy as np
import torch
import timm
import torchvision
from safetensors.torch import save_file

M64 = (1 << 64) - 1

# (fixture name, timm model, input size, batch)
MODELS = [
    ("legacy_xception", "legacy_xception", 299, 2),
    ("inception_v3", "inception_v3", 299, 2),
    ("resnet50", "resnet50", 224, 2),
    ("resnet18", "resnet18", 224, 2),
    ("resnet34", "resnet34", 224, 2),
]


def fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def uniform(name: str, n: int) -> np.ndarray:
    """u[i] in [0, 1), float64, for i < n."""
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name)) + np.arange(n, dtype=np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def generate(name: str, shape) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform(name, n)
    if name == "input":
        v = 2.0 * u - 1.0
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        v = (2.0 * u - 1.0) * math.sqrt(6.0 / fan_in)
    elif name.endswith("running_mean"):
        v = (2.0 * u - 1.0) * 0.1
    elif name.endswith("running_var"):
        v = 0.5 + u
    elif name.endswith("weight"):
        v = 0.5 + u
    elif name.endswith("bias"):
        v = (2.0 * u - 1.0) * 0.1
    else:
        raise ValueError(f"no rule for {name} {shape}")
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def randomised_state_dict(model):
    sd = {}
    for k, v in model.state_dict().items():
        sd[k] = generate(k, tuple(v.shape)) if v.is_floating_point() else v.clone()
    return sd


def torchvision_twin(name):
    """The torchvision model with the same state-dict names, if any."""
    if name in ("resnet18", "resnet34", "resnet50"):
        return getattr(torchvision.models, name)()
    if name == "inception_v3":
        return torchvision.models.inception_v3(aux_logits=False, init_weights=False)
    return None


@torch.no_grad()
def make_model(out, fixture, timm_name, size, batch, checkpoints=None):
    model = timm.create_model(timm_name, pretrained=False).eval()
    sd = randomised_state_dict(model)
    model.load_state_dict(sd, strict=True)
    x = generate("input", (batch, 3, size, size))
    feats = model.forward_head(model.forward_features(x), pre_logits=True).float()
    assert feats.shape == (batch, model.num_features), feats.shape
    dead = (feats == 0).float().mean().item()
    print(
        f"{fixture}: features {tuple(feats.shape)}, max |f| {feats.abs().max():.4g}, "
        f"mean {feats.mean():.4g}, zeros {dead:.1%}"
    )
    assert torch.isfinite(feats).all()
    tv = torchvision_twin(fixture)
    if tv is not None:
        tv.eval()
        tv_sd = tv.state_dict()
        missing = [k for k in tv_sd if k not in sd]
        assert not missing, f"torchvision names timm lacks: {missing[:5]}"
        tv.load_state_dict({k: sd[k] for k in tv_sd}, strict=True)
        tv.fc = torch.nn.Identity()
        y = tv(x)
        rel = ((y - feats).abs().max() / feats.abs().max()).item()
        print(f"{fixture}: torchvision twin, same weights: max rel diff vs timm {rel:.2e}")
        assert rel < 1e-5, rel
    if checkpoints:
        path = os.path.join(checkpoints, f"{fixture}.pth")
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 0}, path)
        print(f"{fixture}: wrote {path}")
    with open(os.path.join(out, f"{fixture}.tensors.txt"), "w") as f:
        f.write(f"# float tensors of timm `{timm_name}`'s state dict (timm {timm.__version__}): name<TAB>dims\n")
        for k, v in sd.items():
            if v.is_floating_point():
                f.write(f"{k}\t{','.join(str(d) for d in v.shape)}\n")
    save_file(
        {"features": feats.contiguous()},
        os.path.join(out, f"{fixture}.safetensors"),
        metadata={
            "model": timm_name,
            "input_size": str(size),
            "batch": str(batch),
            "timm": timm.__version__,
            "torch": torch.__version__,
        },
    )


def make_tiny(out):
    g = torch.Generator().manual_seed(2017)
    conv = torch.randn(4, 3, 3, 3, generator=g)
    fc = torch.randn(4, 5, generator=g)
    half = torch.randn(6, generator=g).half()
    tensors = {
        "conv.weight": conv,
        "bn.running_var": torch.rand(4, generator=g) + 0.5,
        # A transposed view: stored with its strides (Fortran order).
        "fc.weight": fc.t(),
        "half": half,
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
    }
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in tensors.items()}, "epoch": 3, "arch": "tiny"},
        os.path.join(out, "tiny_nested.pth"),
    )
    torch.save(tensors, os.path.join(out, "tiny_bare.pt"))
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        os.path.join(out, "tiny_expected.safetensors"),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "timm"))
    p.add_argument("--only", help="comma-separated fixture names (e.g. resnet18,resnet34 or tiny)")
    p.add_argument("--checkpoints", help="also write full-size DIR/<model>.pth (not for committing)")
    a = p.parse_args()
    only = None if a.only is None else {n.strip() for n in a.only.split(",") if n.strip()}
    known = {m[0] for m in MODELS} | {"tiny"}
    if only is not None and not only <= known:
        p.error(f"unknown fixture(s) {sorted(only - known)}; known: {sorted(known)}")
    os.makedirs(a.out, exist_ok=True)
    if a.checkpoints:
        os.makedirs(a.checkpoints, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for fixture, timm_name, size, batch in MODELS:
        if only is None or fixture in only:
            make_model(a.out, fixture, timm_name, size, batch, a.checkpoints)
    if only is None or "tiny" in only:
        make_tiny(a.out)


if __name__ == "__main__":
    main()
