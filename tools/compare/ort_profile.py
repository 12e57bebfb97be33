"""onnxruntime's per-op profile of one ONNX backbone, in the shape of runner's
`RUNNER_PROFILE=1` table, so the two can be read side by side.

Usage: python tools/compare/ort_profile.py MODEL.onnx [--batch 8] [--threads 2] [--runs 3]
Random normal input in the model's layout; one warm-up run, then --runs
profiled runs. onnxruntime's profiler times every kernel it launches
(`enable_profiling`); the kernels are grouped by op type and, for
convolutions, by kernel size, stride and group count (depthwise when the
groups equal the channels), after the graph optimiser's fusions (so a
`FusedConv` carries its activation). Prints one markdown table: share of the
kernels' time, milliseconds per image, and GFLOP/s where the op's work is
known (convolutions and matrix products, 2 FLOPs per multiply-add).
"""
import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort


def conv_label(node):
    """"conv 3x3/2", "depthwise 5x5", "conv 1x1" for a convolution kernel event."""
    args = node.get("args", {})
    kh = kw = None
    stride = ""
    dw = False
    ins = args.get("input_type_shape", [])
    outs = args.get("output_type_shape", [])
    if len(ins) >= 2:
        w = list(ins[1].values())[0]
        x = list(ins[0].values())[0]
        if len(w) == 4:
            kh, kw = w[2], w[3]
            # NCHWc weights are reordered, but keep (out, in/group, kh, kw) first.
            dw = w[1] == 1 and len(x) >= 2 and x[1] > 1
        elif len(w) == 6:  # NCHWc-blocked weights: (O/b, I/b, kh, kw, b, b)
            kh, kw = w[2], w[3]
    if outs and ins:
        x = list(ins[0].values())[0]
        y = list(outs[0].values())[0]
        if len(x) >= 4 and len(y) >= 4 and y[2] and x[2] and round(x[2] / y[2]) >= 2:
            stride = f"/{round(x[2] / y[2])}"
    name = "depthwise" if dw else "conv"
    return f"{name} {kh}x{kw}{stride}" if kh else name


def flops(node):
    """2 x multiply-adds of a Conv / FusedConv / NchwcConv / MatMul / Gemm kernel, when the shapes say."""
    args = node.get("args", {})
    ins = [list(d.values())[0] for d in args.get("input_type_shape", [])]
    outs = [list(d.values())[0] for d in args.get("output_type_shape", [])]
    op = args.get("op_name", "")
    if not ins or not outs:
        return 0
    y = outs[0]
    if "Conv" in op and len(ins) >= 2:
        w = ins[1]
        if len(w) == 4:
            per_out = w[1] * w[2] * w[3]
            return 2 * int(np.prod(y)) * per_out
        if len(w) == 6:  # (O/b, I/b, kh, kw, bi, bo)
            per_out = w[1] * w[4] * w[2] * w[3]
            return 2 * int(np.prod(y)) * per_out
    if op in ("MatMul", "Gemm", "FusedMatMul") and len(ins) >= 2:
        k = ins[0][-1]
        return 2 * int(np.prod(y)) * k
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [a.batch if not isinstance(d, int) else d for d in inp.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(1 + a.runs):
            sess.run(None, {inp.name: x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)

    # Kernel events of the profiled runs (the first run is the warm-up).
    runs = [e for e in events if e.get("name") == "model_run"]
    skip_until = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    kernels = [e for e in events
               if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= skip_until]
    total = collections.Counter()
    work = collections.Counter()
    for e in kernels:
        op = e["args"].get("op_name", "?")
        label = conv_label(e) if "Conv" in op else op
        if "Conv" in op and op != "Conv":
            label = f"{label} ({op})"
        total[label] += e["dur"]
        work[label] += flops(e)
    all_us = sum(total.values())
    images = a.batch * a.runs
    print(f"onnxruntime {ort.__version__}: {os.path.basename(a.model)}, batch {a.batch}, "
          f"{a.threads} threads, {a.runs} runs: {all_us / 1e3 / images:.2f} ms of kernels per image\n")
    print("| op | share | ms / image | GFLOP/s |")
    print("|---|---|---|---|")
    for label, us in total.most_common():
        gf = f"{work[label] / (us * 1e3):.0f}" if work[label] else "-"
        print(f"| {label} | {100 * us / all_us:.1f}% | {us / 1e3 / images:.3f} | {gf} |")


if __name__ == "__main__":
    main()
