"""Data in S3-compatible object storage, against a real server: moto's standalone S3 server on
127.0.0.1, with authentication on (a user, its key and a policy, made through moto's IAM), started
for this module and stopped after it.

Every format is read from `s3://` in parts as from local files (the same rows, the same shards
on 1 to 4 ranks, held or streamed), a rank fetches only its own byte ranges, a 2-rank run from S3
ends with the weights of the same run on local files and writes no credential into its run
folder, `hvdl data convert/inspect` and `hvdl encode --out` work on s3 paths, and bad input is one
line and status 2 within seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_ranks import ROWS, datasets  # noqa: F401  (a fixture: the rows in every format)

from cluster import cannot_start
from hvdl.data.chunks import Piece
from hvdl.data.formats import open_source, ranges, store
from hvdl.data.formats.base import Spec
from procs import ROOT, check_job, free_port, job_env, run_job

pytestmark = pytest.mark.slow

BUCKET = "lab"


class Server:
    """The running S3 server: its endpoint, a user's credentials and an uploader."""

    def __init__(self, endpoint: str, key: str, secret: str, client) -> None:
        self.endpoint, self.key, self.secret, self.client = endpoint, key, secret, client

    def env(self, **changes: str) -> dict[str, str]:
        """The AWS variables a process reads them from (and nothing else names them)."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", **changes}

    def put_tree(self, folder: Path, prefix: str) -> str:
        """Upload every file under `folder` to s3://lab/<prefix>/...; the URL of the prefix."""
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.client.upload_file(str(path), BUCKET,
                                        f"{prefix}/{path.relative_to(folder).as_posix()}")
        return f"s3://{BUCKET}/{prefix}"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    try:
        import boto3
        import moto  # noqa: F401  (the server below is moto's)
    except ImportError as err:
        cannot_start("the S3 server", f"moto is not installed ({err}); pip install "
                     "'moto[server]>=5.1'")
    port, log = free_port(), tmp_path_factory.mktemp("moto") / "server.log"
    # The first three requests (user, key, policy) are let through; every later one is checked.
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    cannot_start("the S3 server", f"moto did not start: {log.read_text()[-500:]}")
                time.sleep(0.2)
        anyone = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                      aws_secret_access_key="setup")
        iam = boto3.client("iam", **anyone)
        iam.create_user(UserName="trainer")
        made = iam.create_access_key(UserName="trainer")["AccessKey"]
        iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key, secret = made["AccessKeyId"], made["SecretAccessKey"]
        client = boto3.client("s3", **{**anyone, "aws_access_key_id": key,
                                       "aws_secret_access_key": secret})
        client.create_bucket(Bucket=BUCKET)
        yield Server(endpoint, key, secret, client)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3, monkeypatch):
    """This process set up as a user's would be, with a fresh client."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store.filesystem.cache_clear()
    ranges.opened.cache_clear()
    yield s3
    store.filesystem.cache_clear()
    ranges.opened.cache_clear()


def read_all(source, rows: int = 9):
    if source.splits:
        source.set_counts([source.count(i) for i in range(len(source.splits))])
    xs, ys = [], []
    for f, n in enumerate(source.file_rows):
        for start in range(0, n, rows):
            x, y = source.read(Piece(f, start, min(n, start + rows)))
            xs.append(x)
            ys.append(y)
    return np.concatenate(xs), (None if ys[0] is None else np.concatenate(ys))


def local_folder(datasets) -> Path:  # noqa: F811
    return Path(datasets["npy"][1]).parent


def as_s3(options: list[str], folder: Path, url: str) -> list[str]:
    return [o.replace(str(folder), url) for o in options]


def test_every_format_reads_from_s3_the_rows_it_reads_from_disk(s3_env, datasets):  # noqa: F811
    """Test that npy, idx (raw and gzip), hdf5, csv, parquet and images give the same rows and
    labels from s3:// as from the same files on disk, read in parts."""
    folder = local_folder(datasets)
    url = s3_env.put_tree(folder, "same")
    for name in ("npy", "idx", "hdf5", "csv", "parquet", "images"):
        options = dict(zip(datasets[name][::2], datasets[name][1::2]))
        spec = Spec(path=options["--data.path"], label=options["--data.label"],
                    features=tuple(filter(None, [options.get("--data.features")])))
        remote = Spec(path=spec.path.replace(str(folder), url),
                      label=spec.label.replace(str(folder), url), features=spec.features)
        here, there = open_source(spec, split_mb=0.0001), open_source(remote, split_mb=0.0001)
        (x0, y0), (x1, y1) = read_all(here), read_all(there)
        assert str(there.listing[0]).startswith(url) and there.rows == here.rows == ROWS, name
        np.testing.assert_array_equal(x1, x0, err_msg=name)
        np.testing.assert_array_equal(y1, y0, err_msg=name)


def test_a_rank_fetches_only_the_byte_ranges_of_its_own_rows(s3_env, tmp_path, monkeypatch):
    """Test that reading rank 1's pieces of an npy and a CSV object fetches about their bytes:
    the header and the rows' ranges, not the object."""
    x = np.arange(4000 * 8, dtype=np.float32).reshape(4000, 8)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "t.csv").write_text("a,b\n" + "".join(f"{i},{i % 7}\n" for i in range(60000)))
    url = s3_env.put_tree(tmp_path, "ranges")
    fetched = []
    readinto = ranges.Ranges.readinto

    def counted(self, buffer):
        n = readinto(self, buffer)
        fetched.append(n)
        return n

    monkeypatch.setattr(ranges.Ranges, "readinto", counted)
    source = open_source(Spec(path=f"{url}/x.npy"))
    fetched.clear()
    mine = [Piece(0, 1000, 1100), Piece(0, 2500, 2600)]
    for piece in mine:
        np.testing.assert_array_equal(source.read(piece)[0], x[piece.start:piece.stop])
    assert sum(fetched) == 200 * 8 * 4, fetched  # exactly its rows
    size = (tmp_path / "t.csv").stat().st_size
    csv = open_source(Spec(path=f"{url}/t.csv"), split_mb=size / 8 / 2**20)
    fetched.clear()
    counts = [csv.count(i) for i in range(len(csv.splits))]
    counted_bytes = sum(fetched)
    csv.set_counts(counts)
    fetched.clear()
    first = counts[0][0]
    np.testing.assert_array_equal(csv.read(Piece(0, first, first + 10))[0][:, 0],
                                  np.arange(first, first + 10))
    # Counting reads each split once (and a buffer past it), not the rest of the object per split
    assert counted_bytes < 1.3 * size, (counted_bytes, size)
    assert sum(fetched) < size / 4, (sum(fetched), size)  # one split (and a buffer past it)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_every_format_in_s3_is_dealt_as_the_files_on_disk_are(tmp_path, s3, datasets,  # noqa: F811
                                                              size):
    """Test that N real ranks reading each format from s3:// (held and streamed) get disjoint
    shards that cover the data with equal steps: the shards and labels of the files on disk."""
    folder = local_folder(datasets)
    url = s3.put_tree(folder, f"dealt{size}")
    names = ("npy", "npy-stream", "idx", "hdf5", "csv", "parquet", "images")
    spec = {"disk": datasets["npy"], "images-disk": datasets["images"],
            **{n: as_s3(datasets[n], folder, url) for n in names}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    check_job(size, [str(ROOT / "tests" / "jobs" / "data_shards.py"), str(tmp_path / "spec.json"),
                     str(tmp_path / "out")], "mpirun", timeout=300, **s3.env())
    found = {name: [json.loads((tmp_path / "out" / f"{name}-rank{r}.json").read_text())
                    for r in range(size)] for name in spec}
    disk = found["disk"]
    together = sorted(i for r in disk for i in r["train"])
    assert together == list(range(ROWS)) and max(len(r["train"]) for r in disk) - min(
        len(r["train"]) for r in disk) <= 1
    assert {r["steps"] for r in disk} == {ROWS // size // 5}
    assert not found["npy-stream"][0]["held"]
    for name in names:  # images are rows in path order (by class folder): their own files'
        disk = found["images-disk" if name == "images" else "disk"]
        assert [r["train"] for r in found[name]] == [r["train"] for r in disk], name
        assert [r["labels"] for r in found[name]] == [r["labels"] for r in disk], name
        assert [r["steps"] for r in found[name]] == [r["steps"] for r in disk], name


def final_weights(results: Path) -> dict[str, torch.Tensor]:
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    return torch.load(run_dir / "stages" / "pretrain1.pt", weights_only=True)["model"]


def test_two_ranks_train_from_s3_to_the_weights_of_local_parquet_and_keep_no_credential(
        tmp_path, s3, datasets):  # noqa: F811
    """Test that a 2-rank RBM run on a Parquet dataset in S3 ends with the weights, bit for bit,
    of the run on the same file on disk (the rows come in the same order: the chunk rule depends
    on the rows and features alone), and that nothing in its run folder holds the key id or the
    secret key."""
    folder = local_folder(datasets)
    url = s3.put_tree(folder, "weights")
    common = ["-m", "hvdl.train", "--model", "rbm_mnist", "--layers", "0,6", "--data.label",
              "cls", "--rbm.pretrain_epochs", "2", "--batch_size", "5", "--data.chunk_mb",
              str(8 * 16 / 2**20)]
    check_job(2, [*common, "--data.path", str(folder / "d.parquet"), "--results_dir",
                  str(tmp_path / "disk")], "mpirun")
    out = check_job(2, [*common, "--data.path", f"{url}/d.parquet", "--results_dir",
                        str(tmp_path / "s3")], "mpirun", **s3.env())
    assert f"hvdl: data: parquet {url}/d.parquet" in out
    disk, remote = final_weights(tmp_path / "disk"), final_weights(tmp_path / "s3")
    assert disk.keys() == remote.keys()
    for key in disk:
        assert torch.equal(disk[key], remote[key]), key
    run_dir = next((tmp_path / "s3").iterdir())
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 3
    for path in files:
        data = path.read_bytes()
        for word in (s3.key, s3.secret):
            assert word.encode() not in data, f"{path} holds a credential"


def test_convert_inspect_and_encode_work_on_s3_paths(tmp_path, s3, datasets):  # noqa: F811
    """Test `hvdl data convert` to and from S3, `inspect` of an object, and `hvdl encode --out`
    to an S3 prefix (a second encode into it refused)."""
    env = job_env(**s3.env())
    folder = local_folder(datasets)

    def hvdl(*args):
        return subprocess.run([sys.executable, "-m", "hvdl", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    url = f"s3://{BUCKET}/converted"
    done = hvdl("data", "convert", str(folder / "d.parquet"), f"{url}/d.npy", "--label", "cls")
    assert done.returncode == 0, done.stderr
    seen = hvdl("data", "inspect", f"{url}/d.npy", "--label", f"{url}/d.labels.npy")
    assert seen.returncode == 0 and f"rows: {ROWS}" in seen.stdout and "3 classes" in seen.stdout
    back = hvdl("data", "convert", f"{url}/d.npy", str(tmp_path / "back.npy"))
    assert back.returncode == 0, back.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"),
                                  np.load(folder / "x.npy").astype(np.uint8))
    check_job(1, ["-m", "hvdl.train", "--model", "rbm_mnist", "--layers", "0,3", "--data.path",
                  f"{url}/d.npy", "--rbm.pretrain_epochs", "1", "--batch_size", "10",
                  "--results_dir", str(tmp_path / "runs")], launcher="python", **s3.env())
    (run_dir,) = (tmp_path / "runs").iterdir()
    codes = f"s3://{BUCKET}/codes"
    for attempt in (0, 1):
        proc = hvdl("encode", "--checkpoint", str(run_dir / "stages" / "pretrain1.pt"), "--out",
                    codes)
        assert proc.returncode == (0, 2)[attempt], proc.stderr
    assert "holds objects already; allowed: a new or empty prefix" in proc.stderr
    listed = s3.client.list_objects_v2(Bucket=BUCKET, Prefix="codes/")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["codes/manifest.json", "codes/part-00000.parquet"]
    manifest = json.loads(s3.client.get_object(Bucket=BUCKET, Key="codes/manifest.json")[
        "Body"].read())
    assert manifest["rows"] == ROWS


BAD = {  # case: (environment changes, data.path, the words of the one line)
    "server unreachable": ({"AWS_ENDPOINT_URL": "http://127.0.0.1:{closed}"}, "weights/x.npy",
                           "the object store cannot be reached"),
    "wrong credentials": ({"AWS_ACCESS_KEY_ID": "AKIANOBODY", "AWS_SECRET_ACCESS_KEY": "wrong"},
                          "weights/x.npy", "access denied by the object store"),
    "missing bucket": ({}, "s3://nobucket/x.npy", "no such bucket 'nobucket'"),
    "missing key": ({}, "weights/none.npy", "no such object or prefix"),
    "glob matching nothing": ({}, "weights/*.tsv", "the glob matches no object"),
    "credentials in the URL": ({}, "s3://AKIAINURL:s3cr3t@lab/weights/x.npy",
                               "s3://lab/weights/x.npy: credentials in the URL are refused"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_s3_input_is_one_line_and_status_2_within_seconds(tmp_path, s3, datasets,  # noqa: F811
                                                             case):
    """Test that each object-store failure ends the run in one line, status 2, within 30 s, and
    leaves no run folder."""
    s3.put_tree(local_folder(datasets), "weights")
    changes, path, words = BAD[case]
    changes = {k: v.format(closed=free_port()) for k, v in changes.items()}
    path = path if path.startswith("s3://") else f"s3://{BUCKET}/{path}"
    started = time.monotonic()
    proc = run_job(1, ["-m", "hvdl.train", "--model", "rbm_mnist", "--layers", "0,4",
                       "--data.path", path, "--results_dir", str(tmp_path / "runs")],
                   launcher="python", timeout=60, **s3.env(**changes))
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("hvdl: error: ") and words in line and "s3cr3t" not in line, line
    assert took < 30, took
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
