"""Runs an ONNX graph written by `runner export` in onnxruntime and compares
its probabilities with a CSV of `runner predict` (a submission's layout).

    python check_onnxruntime.py MODEL.onnx INPUT.npy N,C,... PREDICT.csv TOLERANCE

INPUT.npy holds the input row-major (one row per image); the shape given
restores its dimensions. Exits 1, printing the largest difference, when any
probability differs by more than TOLERANCE.
"""
import csv
import sys

import numpy as np
import onnxruntime as ort

model, inputs, shape, expected_csv, tolerance = sys.argv[1:6]
x = np.load(inputs).astype(np.float32).reshape([int(d) for d in shape.split(",")])
options = ort.SessionOptions()
# No graph rewrites: the graph as written is what is checked.
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
(got,) = session.run(["probabilities"], {session.get_inputs()[0].name: x})
with open(expected_csv, newline="") as f:
    rows = list(csv.reader(f))[1:]
expected = np.array([[float(v) for v in r[1:]] for r in rows])
diff = float(np.abs(got.astype(np.float64) - expected).max())
print(f"{model}: onnxruntime {ort.__version__} vs runner predict: max difference {diff:.2e} over {got.shape}")
sys.exit(0 if diff <= float(tolerance) else 1)
