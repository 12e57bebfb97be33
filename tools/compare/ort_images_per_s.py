"""onnxruntime images/s for one ONNX backbone: the peer `runner` is measured against.

Usage: python tools/compare/ort_images_per_s.py MODEL.onnx --batch 8 --threads 2 --seconds 10 [--input X.npy]
Input: `--input` (a preprocessed batch in the model's layout, as
tools/compare/side_by_side.py writes it), else random normal data in the model's
layout (NHWC 299 for the Keras exports, NCHW 224 for EfficientNet-Lite0);
one warm-up run, then as many batches as fit in --seconds; prints one JSON
line.
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seconds", type=float, default=10.0)
p.add_argument("--input", help="a preprocessed batch (.npy) instead of random data")
a = p.parse_args()

opts = ort.SessionOptions()
opts.intra_op_num_threads = a.threads
opts.inter_op_num_threads = 1
opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
shape = [a.batch if not isinstance(d, int) else d for d in inp.shape]
if a.input:
    x = np.load(a.input).astype(np.float32)
    a.batch = x.shape[0]
else:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
sess.run(None, {inp.name: x})
n, start = 0, time.perf_counter()
while time.perf_counter() - start < a.seconds:
    sess.run(None, {inp.name: x})
    n += 1
secs = time.perf_counter() - start
print(json.dumps({"runtime": "onnxruntime " + ort.__version__, "model": a.model, "batch": a.batch,
                  "threads": a.threads, "images_per_s": n * a.batch / secs}))
