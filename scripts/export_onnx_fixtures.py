#!/usr/bin/env python3
"""Export small random-weight CNNs to ONNX with the real exporters, as test
fixtures for runner's ONNX executor (`tests/onnx_exports.rs`).

Per model NAME this writes
- `tests/data/onnx/NAME.onnx`: the exported graph, weights inside;
- `tests/data/onnx/NAME.expected.safetensors`: `input` (the exact f32 tensor
  fed to the graph, in the graph's own layout: 2 images) and `output`
  (onnxruntime's f32 output for it), with metadata `output_name` (the graph
  value compared), `layout` (`nchw` / `nhwc`), `framework`, `opset`, `source`.

The models are real architectures from keras.applications, torchvision and
timm, at reduced width, depth or input size, or truncated, so that all
committed files stay within a few MB. Weights are random, with BatchNorm
statistics randomised too (fresh ones are the identity and would hide a
wrong fold). Everything is seeded: a rerun writes the same tensors.

TensorFlow and tf2onnx pin numpy / protobuf versions that torch does not
like, so the two halves run in separate virtualenvs:

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu tf2onnx onnxruntime safetensors
    /tmp/tfenv/bin/python scripts/export_onnx_fixtures.py keras

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch torchvision timm onnx onnxruntime safetensors numpy
    /tmp/torchenv/bin/python scripts/export_onnx_fixtures.py torch

    # either env: rewrite tests/data/onnx/README.md from the files present
    python scripts/export_onnx_fixtures.py readme

Versions used for the committed files: tensorflow-cpu 2.21.0, keras 3.15.1,
tf2onnx 1.17.0, torch / torchvision / timm as printed in README.md, onnx
1.23.2, onnxruntime 1.32.0.
"""

import argparse
import collections
import json
import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "onnx")
SEED = 2017
BATCH = 2


# ---------------------------------------------------------------------------
# Shared: reference run, fixture file, op histogram
# ---------------------------------------------------------------------------


def image_batch(layout, size, seed=SEED):
    """`BATCH` images of `size` px, values in [-1, 1] (preprocessed range)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(BATCH, size, size, 3)).astype(np.float32)
    return x if layout == "nhwc" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def op_histogram(model):
    """Op type -> count over the main graph, with attribute detail where the
    executor has two code paths (Clip's bound form, pool flags, Conv groups)."""
    import onnx

    hist = collections.Counter()
    for n in model.graph.node:
        hist[n.op_type] += 1
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Clip":
            hist["Clip(attr bounds)" if "min" in attrs or "max" in attrs else "Clip(input bounds)"] += 1
        if n.op_type == "Conv" and attrs.get("group", 1) > 1:
            hist["Conv(group>1)"] += 1
        if n.op_type in ("Conv", "MaxPool", "AveragePool"):
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b""):
                hist[f"{n.op_type}(auto_pad={attrs['auto_pad'].decode()})"] += 1
            pads = attrs.get("pads")
            if pads and (pads[0] != pads[2] or pads[1] != pads[3]):
                hist[f"{n.op_type}(asymmetric pads)"] += 1
        if n.op_type in ("MaxPool", "AveragePool"):
            if attrs.get("ceil_mode", 0):
                hist[f"{n.op_type}(ceil_mode)"] += 1
            if n.op_type == "AveragePool" and attrs.get("count_include_pad", 0) and any(attrs.get("pads", [])):
                hist["AveragePool(count_include_pad)"] += 1
    return hist


def write_fixture(name, onnx_path, x, layout, framework, source):
    """Runs `x` through onnxruntime (no graph optimisations: the reference is
    the graph as exported) and writes NAME.expected.safetensors."""
    import onnx
    import onnxruntime as ort
    from safetensors.numpy import save_file

    model = onnx.load(onnx_path)
    onnx.checker.check_model(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    outs = sess.get_outputs()
    if len(outs) != 1:
        sys.exit(f"{name}: expected one graph output, got {[o.name for o in outs]}")
    (y,) = sess.run(None, {inp.name: x})
    y = np.ascontiguousarray(y.astype(np.float32))
    save_file(
        {"input": np.ascontiguousarray(x), "output": y},
        os.path.join(OUT, f"{name}.expected.safetensors"),
        metadata={
            "output_name": outs[0].name,
            "layout": layout,
            "framework": framework,
            "opset": str(opset),
            "source": source,
        },
    )
    hist = op_histogram(model)
    size = os.path.getsize(onnx_path)
    print(f"{name}: opset {opset}, {layout}, input {list(x.shape)} -> output {list(y.shape)}, "
          f"{size / 1024:.0f} KiB, max|out| {np.abs(y).max():.3g}")
    print("    " + ", ".join(f"{k} {v}" for k, v in sorted(hist.items())))
    return y


def check_export(name, y, framework_y, framework):
    """The export itself must be faithful, or the fixture tests nothing."""
    err = np.abs(y - framework_y).max() / np.abs(framework_y).max()
    print(f"    onnxruntime vs {framework}: max rel err {err:.2e}")
    if err > 1e-4:
        sys.exit(f"{name}: the ONNX export disagrees with {framework} ({err:.2e})")


# ---------------------------------------------------------------------------
# Keras (TensorFlow backend) via tf2onnx: NHWC inputs
# ---------------------------------------------------------------------------


def keras_models():
    import keras

    def consumer(model, tensor, kind):
        """The layer of class `kind` that reads `tensor`."""
        for layer in model.layers:
            if isinstance(layer, kind) and any(n.input_tensors and n.input_tensors[0] is tensor
                                               for n in layer._inbound_nodes):
                return layer
        sys.exit(f"no {kind.__name__} reads {tensor}")

    def pooled(model, tensor):
        return keras.Model(model.input, keras.layers.GlobalAveragePooling2D()(tensor))

    def mobilenet_v2():
        # Through block 9 (of 16): ZeroPadding2D before the strided
        # depthwise convolutions, ReLU6, residual Adds; ~50k parameters.
        m = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(64, 64, 3),
                                           include_top=False, pooling="avg")
        return pooled(m, m.get_layer("block_9_add").output), 64

    def xception():
        # Entry flow through the first residual Add: separable convolutions,
        # "same" max pooling, the strided 1x1 shortcut; ~56k parameters.
        m = keras.applications.Xception(weights=None, input_shape=(72, 72, 3), include_top=False)
        # Then a Dense softmax classifier: MatMul, Add, Softmax.
        adds = [layer for layer in m.layers if isinstance(layer, keras.layers.Add)]
        features = keras.layers.GlobalAveragePooling2D()(adds[0].output)
        return keras.Model(m.input, keras.layers.Dense(10, activation="softmax")(features)), 72

    def inception_v3():
        # The stem and mixed0's pooling branch: valid / same convolutions
        # with BatchNorm(scale=False), valid max pools, and the 3x3 "same"
        # average pool, whose padding TF excludes from the mean.
        m = keras.applications.InceptionV3(weights=None, input_shape=(75, 75, 3), include_top=False)
        avg = [layer for layer in m.layers if isinstance(layer, keras.layers.AveragePooling2D)][0]
        conv = consumer(m, avg.output, keras.layers.Conv2D)
        bn = consumer(m, conv.output, keras.layers.BatchNormalization)
        act = consumer(m, bn.output, keras.layers.Activation)
        return pooled(m, act.output), 75

    return [
        ("keras_mobilenet_v2", mobilenet_v2, 10,
         "keras.applications.MobileNetV2(alpha=0.35, 64 px) through block_9_add + GlobalAveragePooling2D"),
        ("keras_xception", xception, 13,
         "keras.applications.Xception(72 px) through the first residual add + GlobalAveragePooling2D + Dense(10, softmax)"),
        ("keras_inception_v3", inception_v3, 15,
         "keras.applications.InceptionV3(75 px): stem + mixed0's average-pool branch + GlobalAveragePooling2D; "
         "exported for any size (symbolic H, W)"),
    ]


def randomize_keras(model, rng):
    """Random BatchNorm statistics and affine (kernels keep Keras's init)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            new = []
            for v in layer.weights:
                n = v.shape[0]
                if "variance" in v.path:
                    new.append(rng.uniform(0.5, 2.0, n))
                elif "gamma" in v.path:
                    new.append(rng.uniform(0.5, 1.5, n))
                else:  # beta, moving_mean
                    new.append(rng.normal(0.0, 0.2, n))
            layer.set_weights([w.astype(np.float32) for w in new])


def export_keras(only):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf
    import tf2onnx

    for name, build, opset, source in keras_models():
        if only and name not in only:
            continue
        keras.utils.set_random_seed(SEED)
        model, size = build()
        randomize_keras(model, np.random.default_rng(SEED))
        # Height and width left symbolic for one model: tf2onnx cannot
        # compute "same" padding then and writes auto_pad = SAME_UPPER.
        side = None if "any size" in source else size
        spec = [tf.TensorSpec((None, side, side, 3), tf.float32, name="input")]
        fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
        path = os.path.join(OUT, f"{name}.onnx")
        tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset, output_path=path)
        x = image_batch("nhwc", size)
        y = write_fixture(name, path, x, "nhwc",
                          f"keras {keras.__version__} / tf2onnx {tf2onnx.__version__}", source)
        check_export(name, y, np.asarray(model(x, training=False)), "Keras")


# ---------------------------------------------------------------------------
# PyTorch via torch.onnx.export (TorchScript exporter): NCHW inputs
# ---------------------------------------------------------------------------


def torch_models():
    import timm
    import torch
    import torchvision
    from torch import nn

    class Pooled(nn.Module):
        """A feature map averaged over H, W (exports as ReduceMean)."""

        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            y = self.body(x)
            if isinstance(y, (list, tuple)):
                (y,) = y
            return y.mean((2, 3))

    class Softmax(nn.Module):
        """Class probabilities: at opset < 13, ONNX Softmax flattens from `axis`."""

        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return torch.softmax(self.body(x), dim=1)

    def mobilenet_v2():
        # torchvision's class with a shortened block list: ReLU6 (Clip),
        # depthwise convolutions, residual Adds, adaptive pool + Linear,
        # then Softmax.
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2], [6, 64, 2, 2], [6, 96, 1, 1]]
        return Softmax(torchvision.models.MobileNetV2(num_classes=10, width_mult=0.35,
                                                      inverted_residual_setting=setting)), 48

    def mobilenet_v3_small():
        # Hardswish / Hardsigmoid, squeeze-excitation (GlobalAveragePool,
        # Conv with bias, Mul), the two-layer classifier.
        # The classifier's hidden layer cut from 1024 to 128 units.
        from torchvision.models import mobilenetv3

        setting, _ = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25, reduced_tail=True)
        return mobilenetv3.MobileNetV3(setting, last_channel=128, num_classes=10), 48

    def resnet10t():
        # timm's deep-tiered stem, max pool with padding, average-pool
        # downsampling with ceil_mode (count_include_pad=False), basic blocks.
        # At 56 px the ceil_mode pool sees an odd (7 x 7) input.
        return timm.create_model("resnet10t", pretrained=False, num_classes=10,
                                 channels=(8, 16, 32, 64), stem_width=8), 56

    def inception_v3():
        # torchvision's Inception3 with every convolution at 1/16 width
        # (InceptionA-E, the 1x7 / 7x1 and 1x3 / 3x1 convolutions, count_include_pad
        # average pools, Concat), as a whole network with its classifier.
        from torchvision.models import inception as tvi

        def narrow(c):
            return c if c == 3 else c // 16

        class Conv(tvi.BasicConv2d):
            def __init__(self, cin, cout, **kw):
                super().__init__(narrow(cin), narrow(cout), **kw)

        def block(cls):
            # Channel counts pass through unchanged: `Conv` narrows them all.
            return lambda *args, **kw: cls(*args, conv_block=Conv, **kw)

        blocks = [Conv, block(tvi.InceptionA), block(tvi.InceptionB), block(tvi.InceptionC),
                  block(tvi.InceptionD), block(tvi.InceptionE), tvi.InceptionAux]
        m = tvi.Inception3(num_classes=10, aux_logits=False, transform_input=False,
                           inception_blocks=blocks, init_weights=False)
        m.fc = nn.Linear(2048 // 16, 10)
        return m, 75

    def xception():
        # timm's legacy Xception through block 2: separable convolutions
        # (depthwise + pointwise), max pools with padding, the strided 1x1
        # shortcut; pooled by a ReduceMean.
        body = timm.create_model("legacy_xception", pretrained=False, features_only=True,
                                 out_indices=(1,))
        return Pooled(body), 48

    def efficientnet_b0():
        # timm's tf_efficientnet_b0 at quarter width and a third of the depth,
        # through stage 4 (stride 16), pooled: TF "same" padding as a runtime
        # Pad subgraph (Shape, Gather, Slice, Ceil, Cast, ConstantOfShape,
        # ...), SiLU (Sigmoid * x), squeeze-excitation, 5x5 kernels.
        from timm.models import efficientnet as ef

        body = ef._gen_efficientnet("tf_efficientnet_b0", channel_multiplier=0.25,
                                    depth_multiplier=0.34, pretrained=False, bn_eps=1e-3,
                                    pad_type="same", features_only=True, out_indices=(3,))
        return Pooled(body), 56

    return [
        ("torch_mobilenet_v2", mobilenet_v2, 11,
         "torchvision MobileNetV2(width_mult=0.35, 5 stages, num_classes=10) + softmax"),
        ("torch_mobilenet_v3_small", mobilenet_v3_small, 17,
         "torchvision mobilenet_v3_small(width_mult=0.25, reduced_tail=True, last_channel=128, num_classes=10)"),
        ("timm_resnet10t", resnet10t, 13,
         "timm resnet10t(channels=(8, 16, 32, 64), stem_width=8, num_classes=10)"),
        ("torch_inception_v3", inception_v3, 13,
         "torchvision Inception3 with every convolution at 1/16 width, num_classes=10; BatchNorm kept"),
        ("timm_xception", xception, 11,
         "timm legacy_xception features_only out_indices=(1,), mean over H, W"),
        ("timm_tf_efficientnet_b0", efficientnet_b0, 17,
         "timm tf_efficientnet_b0(channel_multiplier=0.25, depth_multiplier=0.34) features_only out_indices=(3,), mean over H, W"),
    ]


def randomize_torch(model, gen):
    """Random BatchNorm statistics and affine (kernels keep the module's init)."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.2)


def export_torch(only):
    import timm
    import torch
    import torchvision

    for name, build, opset, source in torch_models():
        if only and name not in only:
            continue
        # In eval mode the exporter folds each BatchNorm into its Conv;
        # PRESERVE (with the model still in eval) keeps one model's
        # BatchNormalization nodes, for the executor's own fold.
        training = torch.onnx.TrainingMode.PRESERVE if "BatchNorm kept" in source else torch.onnx.TrainingMode.EVAL
        torch.manual_seed(SEED)
        model, size = build()
        model.eval()
        randomize_torch(model, torch.Generator().manual_seed(SEED))
        x = image_batch("nchw", size)
        path = os.path.join(OUT, f"{name}.onnx")
        torch.onnx.export(model, (torch.from_numpy(x),), path, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          training=training, dynamo=False)
        y = write_fixture(name, path, x, "nchw",
                          f"torch {torch.__version__} / torchvision {torchvision.__version__} / timm {timm.__version__}",
                          source)
        with torch.no_grad():
            check_export(name, y, model(torch.from_numpy(x)).numpy(), "PyTorch")


# ---------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------


def write_readme():
    import onnx
    from safetensors import safe_open

    rows = []
    for f in sorted(os.listdir(OUT)):
        if not f.endswith(".onnx"):
            continue
        name = f[:-5]
        model = onnx.load(os.path.join(OUT, f))
        with safe_open(os.path.join(OUT, f"{name}.expected.safetensors"), "np") as s:
            meta = s.metadata()
            shape = list(s.get_tensor("input").shape)
            out_shape = list(s.get_tensor("output").shape)
        hist = op_histogram(model)
        ops = ", ".join(f"{k} {v}" for k, v in sorted(hist.items()))
        size = os.path.getsize(os.path.join(OUT, f)) + os.path.getsize(
            os.path.join(OUT, f"{name}.expected.safetensors"))
        rows.append((name, meta, shape, out_shape, size, ops))
    total = sum(r[4] for r in rows)
    lines = [
        "# ONNX export fixtures",
        "",
        "Small random-weight CNNs exported by the real exporters (Keras 3 via",
        "tf2onnx, PyTorch's TorchScript `torch.onnx.export`), each with the",
        "input it was run on and onnxruntime's output (`NAME.expected.safetensors`:",
        "`input`, `output`; metadata `output_name`, `layout`, `framework`, `opset`,",
        "`source`). `tests/onnx_exports.rs` runs every `.onnx` here through",
        "runner's executor and compares. Regenerate with",
        "`scripts/export_onnx_fixtures.py` (see its docstring for the two",
        "virtualenvs); a rerun with the same package versions writes the same",
        "tensors. Before writing, the script checks onnxruntime's output against",
        "the framework's own (Keras, PyTorch eager) to 1e-4, so a fixture never",
        "enshrines an exporter bug.",
        "",
        f"{len(rows)} models, {total / 1024:.0f} KiB in all.",
        "",
        "| model | exporter | opset | layout | input | output | size (onnx + expected) | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, meta, shape, out_shape, size, _ in rows:
        lines.append(f"| `{name}` | {meta['framework']} | {meta['opset']} | {meta['layout']} | "
                     f"{shape} | {out_shape} | {size / 1024:.0f} KiB | {meta['source']} |")
    lines += ["", "Ops per model (node counts; parenthesised entries are subsets with",
              "that attribute form):", ""]
    for name, _, _, _, _, ops in rows:
        lines.append(f"- `{name}`: {ops}")
    lines.append("")
    with open(os.path.join(OUT, "README.md"), "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote README.md: {len(rows)} models, {total / 1024:.0f} KiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["keras", "torch", "readme"])
    ap.add_argument("--only", nargs="*", help="model names to (re)export")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if args.what == "keras":
        export_keras(args.only)
    elif args.what == "torch":
        export_torch(args.only)
    else:
        write_readme()


if __name__ == "__main__":
    main()
