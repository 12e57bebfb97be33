"""Export the shared Keras weights to ONNX for the onnxruntime peer.

Builds `keras.applications.Xception` / `InceptionV3` (include_top=False,
pooling='avg', 299x299x3, NHWC) with random init, copies every weight from
the shared safetensors (Keras-2 names; Keras 3 numbers auto-named layers
from 0, the files from 1), checks the Keras model against the fixture's
features, converts with tf2onnx (opset 17, dynamic batch) and checks
onnxruntime against the fixture too. EfficientNet-Lite0's ONNX file ships in
../shared/models already.

Usage: python tools/compare/export_onnx.py OUT_DIR
"""
import os
import re
import sys

import numpy as np
from safetensors.numpy import load_file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "models")
MODELS = {
    "xception": (keras.applications.Xception, "xception_imagenet_notop"),
    "inception_v3": (keras.applications.InceptionV3, "inception_v3_nsfwjs_notop"),
}


def keras2_name(layer_name):
    """Keras 3 auto-names `conv2d`, `conv2d_1`, ...; Keras 2 files `conv2d_1`, `conv2d_2`, ..."""
    m = re.fullmatch(r"(conv2d|batch_normalization)(?:_(\d+))?", layer_name)
    if not m:
        return layer_name
    n = int(m.group(2) or 0) + 1
    return f"{m.group(1)}_{n}"


def build(arch):
    ctor, stem = MODELS[arch]
    keras.backend.clear_session()
    model = ctor(weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3))
    weights = load_file(os.path.join(SHARED, stem + ".safetensors"))
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = keras2_name(layer.name)
        values = []
        for w in layer.weights:
            key = f"{prefix}/{w.name.split('/')[-1]}"
            if key not in weights:
                raise KeyError(f"{arch}: {key} missing (layer {layer.name})")
            values.append(weights[key].astype(np.float32))
            used.add(key)
        layer.set_weights(values)
    unused = set(weights) - used
    if unused:
        raise KeyError(f"{arch}: unused tensors {sorted(unused)[:5]}")
    return model, stem


def check(name, got, want):
    rel = np.abs(got - want).max() / np.abs(want).max()
    print(f"  {name}: max|diff|/max|ref| = {rel:.2e}")
    assert rel < 1e-4, name


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for arch in MODELS:
        model, stem = build(arch)
        fixture = load_file(os.path.join(SHARED, stem + ".fixture.safetensors"))
        x = fixture["input_nhwc"].astype(np.float32)
        print(arch)
        check("keras", model.predict(x, verbose=0), fixture["features"])
        spec = (tf.TensorSpec((None, 299, 299, 3), tf.float32, name="input"),)
        path = os.path.join(out_dir, f"{arch}.onnx")
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=path)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        check("onnxruntime", sess.run(None, {"input": x})[0], fixture["features"])
        print(f"  wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tools/compare/.onnx")
