"""PyTorch eager images/s for the timm twin of one backbone: the second peer
of tools/compare/side_by_side.py (`--torch-python`).

Usage: python tools/compare/torch_images_per_s.py ARCH --input X.npy --threads 2 --seconds 10
ARCH: xception (timm `legacy_xception`), inception_v3 (`inception_v3`),
efficientnet_lite0 (`tf_efficientnet_lite0`, TF "same" padding as the
shared weights). Random weights: the speed of a dense network does not
depend on them. `num_classes=0` gives the pooled features, as runner
extracts them. Input: a preprocessed NCHW batch; one warm-up run, then as
many batches as fit in --seconds under `torch.inference_mode()`; prints one
JSON line.
"""
import argparse
import json
import time

import numpy as np
import timm
import torch

TIMM = {
    "xception": "legacy_xception",
    "inception_v3": "inception_v3",
    "efficientnet_lite0": "tf_efficientnet_lite0",
}

p = argparse.ArgumentParser()
p.add_argument("arch", choices=list(TIMM))
p.add_argument("--input", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seconds", type=float, default=10.0)
a = p.parse_args()

torch.set_num_threads(a.threads)
torch.set_num_interop_threads(1)
model = timm.create_model(TIMM[a.arch], pretrained=False, num_classes=0).eval()
x = torch.from_numpy(np.load(a.input).astype(np.float32))
with torch.inference_mode():
    model(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < a.seconds:
        model(x)
        n += 1
    secs = time.perf_counter() - start
print(json.dumps({"runtime": f"pytorch {torch.__version__} eager (timm {timm.__version__})",
                  "model": TIMM[a.arch], "batch": x.shape[0], "threads": a.threads,
                  "images_per_s": n * x.shape[0] / secs}))
