"""runner vs onnxruntime: CPU feature extraction, side by side, as ratios.

For each backbone and thread count, runs `runner`'s forward pass
(benches/extract_rate.rs) and onnxruntime's (tools/compare/ort_images_per_s.py) on
the same decoded images, at the same batch size and thread count, one
process at a time and alternating which goes first, for --rounds rounds.
Prints a markdown table of median images/s and the median of the per-round
ratios runner / onnxruntime (the machines are shared and noisy: only the
ratio of neighbouring runs means much), and writes every raw measurement as
JSON lines to --out.

Usage (from the repository root, with a venv from tools/compare/setup_venv.sh):
    python tools/compare/side_by_side.py [--rounds 3] [--seconds 8] [--batch 8]
        [--threads 1 2] [--models xception inception_v3 efficientnet_lite0]
        [--torch-python VENV/bin/python]

`--torch-python` adds PyTorch eager (tools/compare/torch_images_per_s.py, timm's
twins of the three networks) as a second peer, run with that interpreter
(a venv with torch and timm: `pip install torch timm numpy pillow`).

ONNX files: Xception and InceptionV3 are exported from the shared Keras
weights by tools/compare/export_onnx.py into --onnx-dir when missing (needs
tensorflow-cpu and tf2onnx); EfficientNet-Lite0's ships in ../shared/models.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageOps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared")
MODELS = {
    # name: (weights, onnx file (None: in --onnx-dir), input size, preprocess)
    "xception": ("xception_imagenet_notop.safetensors", None, 299, "inception"),
    "inception_v3": ("inception_v3_nsfwjs_notop.safetensors", None, 299, "inception"),
    "efficientnet_lite0": ("efficientnet_lite0_imagenet.safetensors",
                           os.path.join(SHARED, "models", "efficientnet_lite0_imagenet.onnx"),
                           224, "efficientnet_lite"),
}


def runner_binary():
    """Builds benches/extract_rate.rs (release) and returns its path."""
    out = subprocess.run(
        ["cargo", "bench", "--bench", "extract_rate", "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "extract_rate" \
                and msg.get("executable"):
            return msg["executable"]
    sys.exit("cargo did not report the extract_rate executable")


def onnx_batch(paths, size, preprocess, nhwc):
    """The images as runner prepares them: EXIF-rotated RGB, Pillow BOX resize."""
    xs = []
    for p in paths:
        img = ImageOps.exif_transpose(Image.open(p)).convert("RGB").resize((size, size), Image.BOX)
        x = np.asarray(img, dtype=np.float32)
        x = x / 127.5 - 1.0 if preprocess == "inception" else (x - 127.0) / 128.0
        xs.append(x if nhwc else x.transpose(2, 0, 1))
    return np.stack(xs)


def measure(cmd):
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--images", default=os.path.join(SHARED, "data", "woof-dev", "train"))
    ap.add_argument("--onnx-dir", default=os.path.join(ROOT, "tools", "compare", "onnx"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tools", "compare", "results", "side_by_side.jsonl"))
    ap.add_argument("--torch-python", help="python of a venv with torch + timm: adds PyTorch eager")
    a = ap.parse_args()

    import onnx  # noqa: F401  (fail early if the venv lacks it)
    import onnxruntime as ort
    binary = runner_binary()
    if any(MODELS[m][1] is None and not os.path.exists(os.path.join(a.onnx_dir, m + ".onnx"))
           for m in a.models):
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "compare", "export_onnx.py"), a.onnx_dir],
                       check=True)
    paths = sorted(os.path.join(a.images, f) for f in os.listdir(a.images) if f.endswith(".jpg"))
    paths = paths[:a.batch]
    tmp = tempfile.mkdtemp(prefix="side_by_side")
    inputs = {}
    for m in a.models:
        weights, onnx_path, size, pre = MODELS[m]
        onnx_path = onnx_path or os.path.join(a.onnx_dir, m + ".onnx")
        shape = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).get_inputs()[0].shape
        npy = os.path.join(tmp, m + ".npy")
        np.save(npy, onnx_batch(paths, size, pre, nhwc=shape[-1] == 3))
        npy_nchw = os.path.join(tmp, m + ".nchw.npy")
        np.save(npy_nchw, onnx_batch(paths, size, pre, nhwc=False))
        inputs[m] = (os.path.join(SHARED, "models", weights), onnx_path, npy, npy_nchw)

    results = {}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as log:
        for r in range(a.rounds):
            for m in a.models:
                weights, onnx_path, npy, npy_nchw = inputs[m]
                for t in a.threads:
                    ours = [binary, m, weights, a.images, "--batch", str(a.batch),
                            "--seconds", str(a.seconds), "--threads", str(t)]
                    theirs = [sys.executable, os.path.join(ROOT, "tools", "compare", "ort_images_per_s.py"),
                              onnx_path, "--input", npy, "--threads", str(t), "--seconds", str(a.seconds)]
                    order = [("runner", ours), ("onnxruntime", theirs)]
                    if a.torch_python:
                        order.append(("pytorch", [a.torch_python,
                                                  os.path.join(ROOT, "tools", "compare", "torch_images_per_s.py"),
                                                  m, "--input", npy_nchw, "--threads", str(t),
                                                  "--seconds", str(a.seconds)]))
                    if r % 2:
                        order.reverse()
                    got = {name: measure(cmd) for name, cmd in order}
                    results.setdefault((m, t), []).append(got)
                    rec = {"round": r, "model": m, "threads": t, "batch": a.batch, **got,
                           "ratio": got["runner"] / got["onnxruntime"]}
                    if "pytorch" in got:
                        rec["ratio_pytorch"] = got["runner"] / got["pytorch"]
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    print(json.dumps(rec), file=sys.stderr)

    print(f"\nbatch {a.batch}, {a.rounds} alternating rounds of {a.seconds:g} s each, "
          f"onnxruntime {ort.__version__}\n")
    torch_cols = bool(a.torch_python)
    head = "| backbone | threads | runner images/s | onnxruntime images/s | runner / onnxruntime |"
    if torch_cols:
        head += " PyTorch images/s | runner / PyTorch |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for (m, t), rs in results.items():
        med = lambda k: statistics.median(x[k] for x in rs)  # noqa: E731
        ratio = statistics.median(x["runner"] / x["onnxruntime"] for x in rs)
        line = f"| {m} | {t} | {med('runner'):.2f} | {med('onnxruntime'):.2f} | {ratio:.2f}x |"
        if torch_cols:
            rt = statistics.median(x["runner"] / x["pytorch"] for x in rs)
            line += f" {med('pytorch'):.2f} | {rt:.2f}x |"
        print(line)


if __name__ == "__main__":
    main()
