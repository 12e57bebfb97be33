"""runner vs onnxruntime: CPU feature extraction, side by side, as ratios.

For each backbone, thread count and batch size, runs `runner`'s forward
pass (benches/extract_rate.rs) and onnxruntime's
(tools/compare/ort_images_per_s.py) on the same decoded images, one process
at a time and alternating which goes first, for --rounds rounds. Prints a
markdown table of median images/s and the median of the per-round ratios
runner / onnxruntime (the machines are shared and noisy: only the ratio of
neighbouring runs means much), and writes every raw measurement as JSON
lines to --out.

Usage (from the repository root, with a venv from tools/compare/setup_venv.sh):
    python tools/compare/side_by_side.py [--rounds 3] [--seconds 8]
        [--batch 1 8 32] [--threads 1 2] [--models ...]
        [--torch-python VENV/bin/python]
    python tools/compare/side_by_side.py --quick
        # 1 round of 2 s, 2 threads, batch 8, the three shared backbones:
        # ~1 minute, before every commit that touches the kernels

Backbones: the three of the shared weights (xception, inception_v3,
efficientnet_lite0: runner's native networks) and two ONNX graphs of the
families the ONNX tests cover at full size (vit_small_patch14_dinov2 with
`pool = "cls+mean"`, convnext_atto: runner's ONNX executor).

`--torch-python` adds PyTorch eager (tools/compare/torch_images_per_s.py, timm's
twins of the three networks) as a second peer, run with that interpreter
(a venv with torch and timm: `pip install torch timm numpy pillow`); it
also exports the two timm graphs (tools/compare/export_timm_onnx.py) into
--onnx-dir when they are missing.

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
# name: weights in ../shared/models (None: an ONNX graph run by runner's
# executor), ONNX file (None: NAME.onnx in --onnx-dir), input size,
# preprocessing, runner's extra arguments for an ONNX graph.
MODELS = {
    "xception": ("xception_imagenet_notop.safetensors", None, 299, "inception", []),
    "inception_v3": ("inception_v3_nsfwjs_notop.safetensors", None, 299, "inception", []),
    "efficientnet_lite0": ("efficientnet_lite0_imagenet.safetensors",
                           os.path.join(SHARED, "models", "efficientnet_lite0_imagenet.onnx"),
                           224, "efficientnet_lite", []),
    "vit_small_patch14_dinov2": (None, None, 224, "imagenet", ["--pool", "cls+mean"]),
    "convnext_atto": (None, None, 224, "imagenet", []),
}
SHARED_BACKBONES = ["xception", "inception_v3", "efficientnet_lite0"]
TIMM = ["vit_small_patch14_dinov2", "convnext_atto"]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


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
        if preprocess == "inception":
            x = x / 127.5 - 1.0
        elif preprocess == "efficientnet_lite":
            x = (x - 127.0) / 128.0
        else:  # imagenet
            x = (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        xs.append(x if nhwc else x.transpose(2, 0, 1))
    return np.stack(xs)


def measure(cmd):
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--quick", action="store_true",
                    help="1 round of 2 s, 2 threads, batch 8, the three shared backbones")
    ap.add_argument("--images", default=os.path.join(SHARED, "data", "woof-dev", "train"))
    ap.add_argument("--onnx-dir", default=os.path.join(ROOT, "tools", "compare", "onnx"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tools", "compare", "results", "side_by_side.jsonl"))
    ap.add_argument("--torch-python", help="python of a venv with torch + timm: adds PyTorch eager")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.seconds, a.threads, a.batch = 1, 2.0, [2], [8]
        a.models = [m for m in a.models if m in SHARED_BACKBONES] or SHARED_BACKBONES

    import onnx  # noqa: F401  (fail early if the venv lacks it)
    import onnxruntime as ort
    binary = runner_binary()
    onnx_of = {m: MODELS[m][1] or os.path.join(a.onnx_dir, m + ".onnx") for m in a.models}
    missing = [m for m in a.models if not os.path.exists(onnx_of[m])]
    if any(m in SHARED_BACKBONES for m in missing):
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "compare", "export_onnx.py"), a.onnx_dir],
                       check=True)
    timm_missing = [m for m in missing if m in TIMM]
    if timm_missing:
        if not a.torch_python:
            sys.exit(f"{', '.join(timm_missing)}: not in {a.onnx_dir}; pass --torch-python (a venv with "
                     "torch, timm, onnx, onnxscript) to export them, or leave them out with --models")
        subprocess.run([a.torch_python, os.path.join(ROOT, "tools", "compare", "export_timm_onnx.py"),
                        a.onnx_dir, *timm_missing], check=True)
    paths = sorted(os.path.join(a.images, f) for f in os.listdir(a.images) if f.endswith(".jpg"))
    tmp = tempfile.mkdtemp(prefix="side_by_side")
    inputs = {}
    for m in a.models:
        _, _, size, pre, _ = MODELS[m]
        shape = ort.InferenceSession(onnx_of[m], providers=["CPUExecutionProvider"]).get_inputs()[0].shape
        for b in a.batch:
            npy = os.path.join(tmp, f"{m}.{b}.npy")
            np.save(npy, onnx_batch(paths[:b], size, pre, nhwc=shape[-1] == 3))
            npy_nchw = os.path.join(tmp, f"{m}.{b}.nchw.npy")
            np.save(npy_nchw, onnx_batch(paths[:b], size, pre, nhwc=False))
            inputs[m, b] = (npy, npy_nchw)

    results = {}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as log:
        for r in range(a.rounds):
            for m in a.models:
                weights, _, size, pre, extra = MODELS[m]
                if weights:
                    ours_model = [m, os.path.join(SHARED, "models", weights)]
                else:
                    ours_model = ["onnx", onnx_of[m]]
                    extra = ["--input-size", str(size), "--preprocess", pre, *extra]
                for t in a.threads:
                    for b in a.batch:
                        npy, npy_nchw = inputs[m, b]
                        ours = [binary, *ours_model, a.images, "--batch", str(b),
                                "--seconds", str(a.seconds), "--threads", str(t), *extra]
                        theirs = [sys.executable, os.path.join(ROOT, "tools", "compare", "ort_images_per_s.py"),
                                  onnx_of[m], "--input", npy, "--threads", str(t), "--seconds", str(a.seconds)]
                        order = [("runner", ours), ("onnxruntime", theirs)]
                        if a.torch_python and m in SHARED_BACKBONES:
                            order.append(("pytorch", [a.torch_python,
                                                      os.path.join(ROOT, "tools", "compare", "torch_images_per_s.py"),
                                                      m, "--input", npy_nchw, "--threads", str(t),
                                                      "--seconds", str(a.seconds)]))
                        if r % 2:
                            order.reverse()
                        got = {name: measure(cmd) for name, cmd in order}
                        results.setdefault((m, t, b), []).append(got)
                        rec = {"round": r, "model": m, "threads": t, "batch": b, **got,
                               "ratio": got["runner"] / got["onnxruntime"]}
                        if "pytorch" in got:
                            rec["ratio_pytorch"] = got["runner"] / got["pytorch"]
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                        print(json.dumps(rec), file=sys.stderr)

    print(f"\n{a.rounds} alternating round(s) of {a.seconds:g} s each, onnxruntime {ort.__version__}\n")
    torch_cols = bool(a.torch_python)
    head = "| backbone | threads | batch | runner images/s | onnxruntime images/s | runner / onnxruntime |"
    if torch_cols:
        head += " PyTorch images/s | runner / PyTorch |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for (m, t, b), rs in results.items():
        med = lambda k: statistics.median(x[k] for x in rs)  # noqa: E731
        ratio = statistics.median(x["runner"] / x["onnxruntime"] for x in rs)
        line = f"| {m} | {t} | {b} | {med('runner'):.2f} | {med('onnxruntime'):.2f} | {ratio:.2f}x |"
        if torch_cols:
            if all("pytorch" in x for x in rs):
                rt = statistics.median(x["runner"] / x["pytorch"] for x in rs)
                line += f" {med('pytorch'):.2f} | {rt:.2f}x |"
            else:
                line += " - | - |"
        print(line)


if __name__ == "__main__":
    main()
