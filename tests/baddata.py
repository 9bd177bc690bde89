"""Bad data, one case each, for tests/test_cli.py (exit 2, one line, nothing left) and
results/bad_input.md. Each case writes its data into a scratch folder and returns the options
that train on it; the words are what the one-line message must hold."""

import numpy as np

# Options every case starts from: a family that takes unlabelled flat rows of any width.
DEFAULTS = ["--model", "rbm_mnist", "--layers", "0,8", "--batch_size", "1"]

DATA_CASES = {  # case: (the data, written into a scratch folder, and the options; the words)
    "missing column": (lambda t: csv(t, "a,b,y\n1,2,0\n3,4,1\n") + ["--data.label", "z"],
                       "data.label: column 'z' is not in"),
    "non-numeric cell": (lambda t: csv(t, "a,b,y\n1,2,0\n3,x4,1\n") + ["--data.label", "y"],
                         "line 3 column 'b': 'x4' is not a number"),
    "ragged row": (lambda t: csv(t, "a,b,y\n1,2,0\n3,1\n") + ["--data.label", "y"],
                   "line 3: a ragged row of 2 fields, the header has 3"),
    "quoted field over lines": (lambda t: csv(t, 'a,b,y\n1,2,"x\ny"\n') + ["--data.label", "y"],
                                "a quoted field spans lines"),
    "NaN features": (lambda t: npy(t, np.array([[1.0, np.nan], [np.inf, 2.0], [3.0, 4.0]])),
                     "2 NaN, infinite or missing feature values in the training data, the "
                     "first at"),
    "empty CSV cell": (lambda t: csv(t, "a,b,y\n1,,0\n3,4,1\n") + ["--data.label", "y"],
                       "1 NaN, infinite or missing feature values in the training data, the "
                       "first at"),
    "labels of another length": (lambda t: npy(t, np.ones((4, 2)), np.ones(3)),
                                 "features and labels of different lengths"),
    "shape of the wrong size": (lambda t: npy(t, np.ones((4, 6))) + ["--data.shape", "2,2"],
                                "'data.shape' is [2, 2], 4 values, but the examples have 6"),
    "empty file": (lambda t: raw(t, "e.npy", b""), "the file is empty"),
    "truncated file": (lambda t: truncated_npy(t), "not a complete NumPy .npy file"),
    "unreadable file": (lambda t: raw(t, "u.parquet", b"PAR1 not really"),
                        "not a complete Parquet file"),
    "glob matching nothing": (lambda t: ["--data.path", str(t / "*.csv")],
                              "the glob matches no file"),
    "schemas that differ": (lambda t: two_csvs(t, "a,b\n1,2\n", "a,c\n1,2\n") +
                            ["--data.path", str(t / "*.csv")], "files whose schemas differ"),
    "labels a family needs": (lambda t: npy(t, np.ones((4, 2))) + ["--model", "dbn_small",
                                                                    "--layers", "0,4,0"],
                              "needs labels and the data has none"),
    "unknown test label": (lambda t: two_csvs(t, "a,y\n1,0\n2,1\n", "a,y\n1,0\n2,7\n") +
                           ["--data.path", str(t / "1.csv"), "--data.test_path",
                            str(t / "2.csv"), "--data.label", "y", "--model", "dbn_small",
                            "--layers", "0,4,0"], "label '7' at"),
    "HDF5 key that does not exist": (lambda t: hdf5(t) + ["--data.features", "pixels"],
                                     "d.h5 has no dataset 'pixels' (it holds x, y); allowed: "
                                     "one of those"),
    "full-batch shard over the budget": (
        lambda t: npy(t, np.ones((400, 4))) + ["--model", "sae_mnist", "--layers", "0,3",
                                               "--data.budget_mb", "0.001", "--train_size", "0"],
        "family 'sae' with optimizer 'lbfgs' trains on the whole shard at once, and a shard of "
        "0.006 MiB is over the budget of 0.001 MiB"),
    "pixel scaling of data already in [0, 1]": (
        lambda t: npy(t, np.linspace(0, 1, 24).reshape(8, 3)),
        "data.scale is unit (values / 255, for 0-255 pixels), but the training values already "
        "lie in [0, 1]; allowed: --data.scale none"),
    "Bernoulli units on real values": (
        lambda t: npy(t, np.linspace(-2, 3, 24).reshape(8, 3)) + [
            "--data.scale", "none", "--rbm.visible", "bernoulli"],
        "rbm.visible is bernoulli (probabilities in [0, 1]), but the scaled training values "
        "span [-2, 3]; allowed: --rbm.visible gaussian (or auto)"),
    "sigmoid reconstruction of real values": (
        lambda t: npy(t, np.linspace(-2, 3, 24).reshape(8, 3)) + [
            "--data.scale", "none", "--model", "sae_mnist", "--train_size", "0"],
        "family sae reconstructs its input with sigmoid units, in [0, 1], but the scaled "
        "training values span [-2, 3]; allowed: --data.scale minmax"),
}


def two_csvs(tmp_path, first, second):
    (tmp_path / "1.csv").write_text(first)
    (tmp_path / "2.csv").write_text(second)
    return []


def csv(tmp_path, text, name="d.csv"):
    (tmp_path / name).write_text(text)
    return ["--data.path", str(tmp_path / name)]


def npy(tmp_path, x, y=None):
    np.save(tmp_path / "x.npy", x)
    opts = ["--data.path", str(tmp_path / "x.npy")]
    if y is not None:
        np.save(tmp_path / "y.npy", y)
        opts += ["--data.label", str(tmp_path / "y.npy")]
    return opts


def hdf5(tmp_path):
    import h5py

    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = np.ones((4, 2)), np.zeros(4)
    return ["--data.path", str(tmp_path / "d.h5")]


def raw(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    return ["--data.path", str(tmp_path / name)]


def truncated_npy(tmp_path):
    np.save(tmp_path / "t.npy", np.ones((100, 10)))
    data = (tmp_path / "t.npy").read_bytes()
    return raw(tmp_path, "t.npy", data[:len(data) // 2])
