#!/usr/bin/env python3
"""Write Keras-2 `.h5` weight files (the layout `keras.applications` downloads)
from the shared safetensors, for the `.h5` reader's tests.

    pip install h5py numpy safetensors
    python scripts/make_keras_h5.py OUTDIR
        -> OUTDIR/xception_imagenet_notop.h5, OUTDIR/inception_v3_nsfwjs_notop.h5
    python scripts/make_keras_h5.py OUTDIR --small
        -> OUTDIR/xception_small.h5 (f32, fixed-length name strings, plus 150
           layers without weights) and OUTDIR/xception_small_f16.h5 (f16,
           variable-length name strings): a handful of Xception's layers
           (the files committed under tests/data/)

Layout, as Keras 2's `legacy.saving.hdf5_format.save_weights_to_hdf5_group`
writes it with h5py's defaults (superblock 0, old-style symbol-table groups):
- root attributes `layer_names` (byte strings, model order;
  split into `layer_names0`, `layer_names1`, ... past 64512 bytes),
  `backend` and `keras_version` (byte strings);
- one group per layer, created in name order; its attribute `weight_names`
  lists `b"LAYER/VAR:0"` (for a layer without weights: an empty float64 array,
  what `np.asarray([])` gives);
- each weight is the dataset `/<layer>/<weight name>`, and since the weight
  name holds a `/`, h5py makes a nested group: `/block1_conv1/block1_conv1/kernel:0`.
Values are upcast from the shared files' f16 to f32 (exactly), or kept f16
with `--dtype float16`.
"""

import argparse
import os
import re
import sys

import h5py
import numpy as np
from safetensors.numpy import load_file

HDF5_OBJECT_HEADER_LIMIT = 64512  # Keras 2's limit for one attribute

MODELS = {
    "xception_imagenet_notop": "xception_imagenet_notop.safetensors",
    "inception_v3_nsfwjs_notop": "inception_v3_nsfwjs_notop.safetensors",
}

# Keras creates a layer's weights in this order (trainable, then not).
VAR_ORDER = [
    "kernel",
    "depthwise_kernel",
    "pointwise_kernel",
    "bias",
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
]

SMALL_LAYERS = [
    "block1_conv1",
    "block1_conv1_bn",
    "block2_sepconv1",
    "block2_sepconv1_bn",
    "conv2d_1",
    "batch_normalization_1",
]

# Xception's residual 1x1 convolutions (unnamed in Keras) belong to these blocks.
XCEPTION_RESIDUAL_BLOCK = {1: 2, 2: 3, 3: 4, 4: 13}


def layer_key(name):
    """Keras' layer creation order, as far as the names tell it."""
    m = re.fullmatch(r"block(\d+)_(conv|sepconv)(\d+)(_bn)?", name)
    if m:  # Xception: block, then the residual branch, then conv, then its BN
        return (int(m.group(1)), 1, int(m.group(3)), bool(m.group(4)), name)
    m = re.fullmatch(r"(conv2d|batch_normalization)_(\d+)", name)
    if m:
        n = int(m.group(2))
        block = XCEPTION_RESIDUAL_BLOCK.get(n, 0) if n <= 4 else 0
        # Xception: the residual conv2d_k/batch_normalization_k open block k.
        # InceptionV3: conv2d_k then batch_normalization_k, k = 1..94.
        return (block, 0, n, m.group(1) == "batch_normalization", name)
    return (10**6, 0, 0, False, name)


def save_attribute(obj, name, data, vlen):
    """Keras 2's `save_attributes_to_hdf5_group`: chunks past 64512 bytes.

    Keras passes a list of bytes: h5py 2 (the `keras.applications` downloads)
    stored it as fixed-length strings, h5py 3 stores variable-length strings.
    """
    data_npy = np.asarray(data)
    num_chunks = 1
    chunks = np.array_split(data_npy, num_chunks)
    while any(c.nbytes > HDF5_OBJECT_HEADER_LIMIT for c in chunks):
        num_chunks += 1
        chunks = np.array_split(data_npy, num_chunks)
    if num_chunks > 1:
        for i, c in enumerate(chunks):
            obj.attrs["%s%d" % (name, i)] = c
    elif vlen or not data:
        obj.attrs[name] = data
    else:
        obj.attrs[name] = data_npy  # dtype S<max length>: fixed-length


def write_h5(path, tensors, layers, dtype, vlen, extra_layers=()):
    by_layer = {}
    for key, value in tensors.items():
        layer, var = key.split("/", 1)
        by_layer.setdefault(layer, {})[var] = value
    if layers is None:
        layers = sorted(by_layer, key=layer_key)
    missing = [l for l in layers if l not in by_layer]
    if missing:
        sys.exit("layers not in the safetensors: %s" % ", ".join(missing))
    # Real files also list the layers without weights (input, activations).
    model_layers = ["input_1"] + list(layers) + list(extra_layers) + ["avg_pool"]
    with h5py.File(path, "w") as f:
        save_attribute(f, "layer_names", [l.encode("utf8") for l in model_layers], vlen)
        f.attrs["backend"] = b"tensorflow" if vlen else np.bytes_(b"tensorflow")
        f.attrs["keras_version"] = b"2.2.4" if vlen else np.bytes_(b"2.2.4")
        for layer in sorted(model_layers):
            g = f.create_group(layer)
            variables = by_layer.get(layer, {})
            vars_sorted = sorted(variables, key=lambda v: (VAR_ORDER.index(v), v))
            names = [("%s/%s:0" % (layer, v)).encode("utf8") for v in vars_sorted]
            save_attribute(g, "weight_names", names, vlen)
            for name, var in zip(names, vars_sorted):
                val = variables[var].astype(dtype)
                dset = g.create_dataset(name, val.shape, dtype=val.dtype)
                if not val.shape:
                    dset[()] = val
                else:
                    dset[:] = val
    print("wrote %s (%d layers, %.1f MB)" % (path, len(layers), os.path.getsize(path) / 1e6))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir")
    p.add_argument(
        "--models",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "models"),
        help="folder of the shared safetensors (default ../shared/models)",
    )
    p.add_argument("--small", action="store_true", help="only a handful of Xception layers (test data)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument(
        "--vlen-strings",
        action="store_true",
        help="name lists as variable-length strings (Keras 2 on h5py 3) instead of "
        "fixed-length ones (the keras.applications downloads)",
    )
    args = p.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    if args.small:
        tensors = load_file(os.path.join(args.models, MODELS["xception_imagenet_notop"]))
        # 150 layers without weights, as a real model has: the root group then
        # needs a two-level B-tree, as in the full files.
        extra = ["activation_%d" % i for i in range(1, 151)]
        write_h5(os.path.join(args.outdir, "xception_small.h5"), tensors, SMALL_LAYERS, np.float32, False, extra)
        small_f16 = SMALL_LAYERS[:2]
        write_h5(os.path.join(args.outdir, "xception_small_f16.h5"), tensors, small_f16, np.float16, True)
        return
    for stem, file in MODELS.items():
        tensors = load_file(os.path.join(args.models, file))
        write_h5(os.path.join(args.outdir, stem + ".h5"), tensors, None, np.dtype(args.dtype), args.vlen_strings)


if __name__ == "__main__":
    main()
