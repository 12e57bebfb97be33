"""Keras head training for the 2017 recipe: the peer `runner`'s heads are measured against.

Usage: python tools/compare/heads_keras.py FEATURES_DIR [--labels ../shared/data/woof-dev/labels.csv]
                                   [--threads 2] [--repeats 3] [--seed 2017]
Input: FEATURES_DIR as written by `runner extract experiments/xception_inception_flip.toml
--out FEATURES_DIR` ({train,test}_{xception,inception_v3}_{original,hflip}.npy,
train_ids.csv with labels, test_ids.csv). Labels come from train_ids.csv, or from
--labels (an id,breed CSV) when given.
For each view (original, hflip) and each of 5 stratified folds, trains a
Dropout(0.5) + Dense(k, softmax) head on the 4096 concatenated features
(xception then inception_v3) with Adagrad lr 0.01, batch 128, at most 50
epochs, early stopping on val_loss (patience 3, restore best), then predicts
the held-out fold and the test set: 10 heads, as `runner run` does.
The timer covers those 10 heads (model build, fit, predict), not TF import or
data loading; it runs --repeats times and prints one JSON line. epochs_total
counts the epochs the 10 heads ran in the last repeat; oof_log_loss scores its
out-of-fold predictions averaged over both views (runner's "5 folds,
original + hflip" stage), a check that training worked.
"""
import argparse
import csv
import json
import os
import statistics
import time

p = argparse.ArgumentParser()
p.add_argument("features")
p.add_argument("--labels", help="id,label CSV; default: the label column of train_ids.csv")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--repeats", type=int, default=3)
p.add_argument("--seed", type=int, default=2017)
a = p.parse_args()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(a.threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.get_logger().setLevel("ERROR")  # one retracing warning per new model otherwise
import keras  # noqa: E402
import numpy as np  # noqa: E402

BACKBONES, VIEWS, FOLDS = ["xception", "inception_v3"], ["original", "hflip"], 5


def read_csv(name):
    with open(os.path.join(a.features, name), newline="") as f:
        return list(csv.DictReader(f))


def features(split, view):
    return np.concatenate([np.load(os.path.join(a.features, f"{split}_{b}_{view}.npy"))
                           for b in BACKBONES], axis=1).astype(np.float32)


train_rows = read_csv("train_ids.csv")
if a.labels:
    with open(a.labels, newline="") as f:
        by_id = {r[0]: r[1] for r in csv.reader(f)}
    names = [by_id[r["id"]] for r in train_rows]
else:
    names = [r["label"] for r in train_rows]
classes = sorted(set(names))
y = np.array([classes.index(n) for n in names])
x_train = {v: features("train", v) for v in VIEWS}
x_test = {v: features("test", v) for v in VIEWS}

# Stratified 5-fold, as runner's FoldPlan: each class's rows shuffled by the
# seed and dealt round-robin over the folds (assignment differs from runner's).
rng, fold_of, nxt = np.random.default_rng(a.seed), np.zeros(len(y), int), 0
for c in range(len(classes)):
    for r in rng.permutation(np.flatnonzero(y == c)):
        fold_of[r], nxt = nxt % FOLDS, nxt + 1


def head():
    model = keras.Sequential([keras.Input((x_train[VIEWS[0]].shape[1],)),
                              keras.layers.Dropout(0.5),
                              keras.layers.Dense(len(classes), activation="softmax")])
    # runner's optim.rs uses Keras-2 Adagrad: a = 0 initially, a += g^2,
    # p -= lr * g / (sqrt(a) + 1e-7). Keras 3 defaults to a = 0.1 and
    # p -= lr * g / sqrt(a + eps). Accumulator 0 and eps = 1e-14 (sqrt = 1e-7)
    # give the same denominator at a = 0 and one within 1e-7 of it otherwise.
    opt = keras.optimizers.Adagrad(learning_rate=0.01, initial_accumulator_value=0.0,
                                   epsilon=1e-14)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    return model


def train_all():
    oof = {v: np.zeros((len(y), len(classes)), np.float32) for v in VIEWS}
    test, epochs = [], 0
    for v in VIEWS:
        for f in range(FOLDS):
            tr, va = fold_of != f, fold_of == f
            model = head()
            stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3,
                                                 restore_best_weights=True)
            hist = model.fit(x_train[v][tr], y[tr], batch_size=128, epochs=50, verbose=0,
                             validation_data=(x_train[v][va], y[va]), callbacks=[stop])
            epochs += len(hist.history["loss"])
            oof[v][va] = model.predict(x_train[v][va], batch_size=128, verbose=0)
            test.append(model.predict(x_test[v], batch_size=128, verbose=0))
    return oof, test, epochs


def log_loss(probs, labels, eps=1e-15):
    probs = np.clip(probs.astype(np.float64), eps, 1 - eps)
    probs /= probs.sum(axis=1, keepdims=True)
    return float(-np.log(probs[np.arange(len(labels)), labels]).mean())


secs = []
for i in range(a.repeats):
    keras.utils.set_random_seed(a.seed + i)
    start = time.perf_counter()
    oof, test, epochs = train_all()
    secs.append(time.perf_counter() - start)
print(json.dumps({"runtime": f"keras {keras.__version__} (tensorflow {tf.__version__})",
                  "heads": len(test), "threads": a.threads, "epochs_total": epochs,
                  "seconds_median": statistics.median(secs), "seconds_all": secs,
                  "oof_log_loss": log_loss(np.mean([oof[v] for v in VIEWS], axis=0), y)}))
