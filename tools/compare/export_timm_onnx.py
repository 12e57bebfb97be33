"""Export full-size timm backbones to ONNX for speed comparisons with
onnxruntime, and as the files `experiments/dinov2_vits14.toml` expects.

Pretrained weights are downloaded from the Hugging Face hub when it can be
reached (`--pretrained`); otherwise the weights are random, which measures
speed just as well (scores are then near chance). The graph holds the
model's `forward_features`: tokens `(N, T, C)` for the transformers (pool
them with the spec's `pool` key), the last feature map for CNNs.

Usage:
    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch timm onnx onnxscript onnxruntime
    /tmp/torchenv/bin/python tools/compare/export_timm_onnx.py OUT_DIR [MODEL...] [--pretrained]

MODEL: a timm name; default: vit_small_patch14_dinov2 convnext_atto. Each
is written as OUT_DIR/MODEL.onnx with a symbolic batch axis, at timm's
input size (DINOv2 at 224 px, its usual feature-extraction size, not
518), and checked against PyTorch in onnxruntime.
"""
import argparse
import os
import sys

import numpy as np
import torch
import timm
from torch import nn

SIZES = {"vit_small_patch14_dinov2": 224}


class Features(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body.forward_features(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("models", nargs="*", default=["vit_small_patch14_dinov2", "convnext_atto"])
    ap.add_argument("--pretrained", action="store_true")
    ap.add_argument("--opset", type=int, default=17)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    import onnxruntime as ort

    for name in a.models:
        kw = {"img_size": SIZES[name]} if name in SIZES else {}
        torch.manual_seed(0)
        model = Features(timm.create_model(name, pretrained=a.pretrained, **kw)).eval()
        size = SIZES.get(name) or model.body.pretrained_cfg["input_size"][-1]
        x = torch.randn(2, 3, size, size)
        path = os.path.join(a.out, f"{name}.onnx")
        torch.onnx.export(model, (x,), path, opset_version=a.opset, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          dynamo=False)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"input": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        err = float(np.abs(y - want).max() / np.abs(want).max())
        cfg = model.body.pretrained_cfg
        print(f"{path}: input {size} px, output {list(y.shape)}, onnxruntime vs PyTorch {err:.1e}; "
              f"timm config: mean {cfg.get('mean')}, std {cfg.get('std')}, "
              f"interpolation {cfg.get('interpolation')}, crop_pct {cfg.get('crop_pct')}")
        if err > 1e-4:
            sys.exit(f"{name}: the export disagrees with PyTorch")


if __name__ == "__main__":
    main()
