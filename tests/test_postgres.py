"""Data in PostgreSQL tables, against a real server: Debian's PostgreSQL, initdb'd into a
temporary folder and started on a private port of 127.0.0.1 for this module, stopped after it
(installed with apt-get first where it is missing and this is root).

The ranks read their own parts of a table (its pages) or of a query (by a key column), in one
exported snapshot, and get the shards and the weights of the same rows in a local Parquet file;
the run folder holds no password; bad input is one line and status 2 within seconds.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_data_ranks import CHUNK, ROWS, datasets  # noqa: F401  (a fixture: the rows on disk)

from cluster import cannot_start
from hvdl.data.chunks import Piece
from hvdl.data.formats import open_source
from hvdl.data.formats.base import DataError, Spec
from procs import ROOT, check_job, free_port, run_hvdl, run_job

pytestmark = pytest.mark.slow

PASSWORD = "hvdl-test-pg-secret"


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def as_server_user(command: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the packages' user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Database:
    def __init__(self, url: str) -> None:
        self.url = url

    def connect(self):
        import adbc_driver_postgresql.dbapi as pg

        return pg.connect(self.url.replace("hvdl@", f"hvdl:{PASSWORD}@"), autocommit=True)

    def load(self, name: str, table: pa.Table) -> None:
        """`table` as a new database table `name`, its rows stored (and read) in this order."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.adbc_ingest(name, table, mode="replace")

    def execute(self, sql: str) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql)


@pytest.fixture(scope="module")
def postgres():
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError as err:
        cannot_start("PostgreSQL", f"the ADBC driver is not installed ({err}); pip install "
                     "'.[sql]'")
    bin_dir = postgres_bin()
    if bin_dir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install "
                       "-y -qq postgresql >/dev/null", shell=True, check=False, timeout=900)
        bin_dir = postgres_bin()
    if bin_dir is None:
        cannot_start("PostgreSQL", "no initdb under /usr/lib/postgresql (apt-get install "
                     "postgresql)")
    # Its own folder under /tmp: pytest's are root's alone, and the server runs as postgres
    folder = Path(tempfile.mkdtemp(prefix="hvdl-postgres-"))
    (folder / "pw").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "pw", "postgres")
    port, data = free_port(), folder / "data"
    made = subprocess.run(as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "hvdl",
                                          "--auth=scram-sha-256", f"--pwfile={folder / 'pw'}"]),
                          capture_output=True, text=True)
    if made.returncode:
        cannot_start("PostgreSQL", f"initdb failed: {made.stderr[-500:]}")
    ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    started = subprocess.run(as_server_user(
        [*ctl, "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "-l",
         str(folder / "log"), "-w", "start"]), capture_output=True, text=True)
    if started.returncode:
        cannot_start("PostgreSQL", f"the server did not start: {started.stderr[-500:]}")
    try:
        yield Database(f"postgresql://hvdl@127.0.0.1:{port}/postgres")
    finally:
        subprocess.run(as_server_user([*ctl, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def password(monkeypatch):
    """The password where a user gives it: PGPASSWORD (libpq reads it), never the URL."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)


@pytest.fixture(scope="module")
def table(postgres, datasets):  # noqa: F811
    """The rows of test_data_ranks' datasets as table `rows` (in file order), with a key, and
    padding that spreads them over several pages (so over several splits)."""
    rows = pq.read_table(Path(datasets["parquet"][1]))
    postgres.load("rows", rows.append_column("k", pa.array(np.arange(ROWS) * 3 + 10))
                  .append_column("pad", pa.array(["-" * 600] * ROWS)))
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_relation_size('rows') / 8192")
        assert cur.fetchone()[0] >= 5
    return rows


def sql_options(postgres, *more: str) -> list[str]:
    return ["--data.format", "sql", "--data.path", postgres.url, "--data.label", "cls",
            "--data.features", "id,b,c,d", *more, *CHUNK]


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_ranks_read_disjoint_covering_parts_of_a_table_as_of_the_same_rows_on_disk(
        tmp_path, postgres, table, datasets, size):  # noqa: F811
    """Test that N real ranks reading the table by its pages, by a key column, through a query,
    and streamed, hold disjoint shards covering it with equal steps: the shards and labels of the
    same rows read from Parquet."""
    spec = {
        "disk": datasets["parquet"],
        "pages": sql_options(postgres, "--data.table", "rows"),
        "key": sql_options(postgres, "--data.table", "rows", "--data.key", "k"),
        "query": sql_options(postgres, "--data.query", "SELECT * FROM rows WHERE id >= 0",
                             "--data.key", "k"),
        "stream": sql_options(postgres, "--data.table", "rows", "--data.memory", "stream"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    check_job(size, [str(ROOT / "tests" / "jobs" / "data_shards.py"), str(tmp_path / "spec.json"),
                     str(tmp_path / "out")], "mpirun", timeout=300)
    found = {name: [json.loads((tmp_path / "out" / f"{name}-rank{r}.json").read_text())
                    for r in range(size)] for name in spec}
    disk = found["disk"]
    together = sorted(i for r in disk for i in r["train"])
    assert together == list(range(ROWS))
    assert max(len(r["train"]) for r in disk) - min(len(r["train"]) for r in disk) <= 1
    assert not found["stream"][0]["held"]
    for name in spec:
        assert [r["train"] for r in found[name]] == [r["train"] for r in disk], name
        assert [r["labels"] for r in found[name]] == [r["labels"] for r in disk], name
        assert [r["steps"] for r in found[name]] == [r["steps"] for r in disk], name


def test_every_rank_reads_the_snapshot_rank_0_exported(postgres, table):
    """Test that rows written after rank 0 exported its snapshot reach no rank that imported it,
    while a new read sees them."""
    spec = Spec(format="sql", path=postgres.url, table="rows", label="cls",
                features=("id", "b", "c", "d"))
    first, second = open_source(spec, split_mb=0.001), open_source(spec, split_mb=0.001)
    state = first.export_state()
    first.import_state(state)
    postgres.execute("INSERT INTO rows (id, b, c, d, cls, k, pad) VALUES (999, 1, 2, 3, 'ant', 1, "
                     "'')")
    try:
        second.import_state(state)
        late = open_source(spec, split_mb=0.001)
        late.import_state(late.export_state())
        for source in (first, second, late):
            source.set_counts([source.count(i) for i in range(len(source.splits))])
        assert first.rows == second.rows == ROWS and late.rows == ROWS + 1
        x, _ = second.read(Piece(0, 0, ROWS))
        assert 999 not in x[:, 0]
    finally:
        postgres.execute("DELETE FROM rows WHERE id = 999")
        for source in (first, second):
            source.close()


def test_two_ranks_train_on_a_table_to_the_weights_of_local_parquet_keeping_no_password(
        tmp_path, postgres, table, datasets):  # noqa: F811
    """Test that a 2-rank RBM run on the table ends with the weights, bit for bit, of the run on
    the same rows in Parquet (ctid order is the order they were written in, the chunk rule
    depends on rows and features alone), and that its run folder holds no password."""
    common = ["-m", "hvdl.train", "--model", "rbm_mnist", "--layers", "0,6",
              "--rbm.pretrain_epochs", "2", "--batch_size", "5"]
    check_job(2, [*common, *datasets["parquet"], "--results_dir", str(tmp_path / "disk")],
              "mpirun")
    out = check_job(2, [*common, *sql_options(postgres, "--data.table", "rows"),
                        "--results_dir", str(tmp_path / "sql")], "mpirun")
    assert f"hvdl: data: sql {postgres.url} (table rows)" in out
    weights = [torch.load(next((tmp_path / d).iterdir()) / "stages" / "pretrain1.pt",
                          weights_only=True)["model"] for d in ("disk", "sql")]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    files = [p for p in next((tmp_path / "sql").iterdir()).rglob("*") if p.is_file()]
    assert len(files) > 3 and all(PASSWORD.encode() not in p.read_bytes() for p in files)


def test_inspect_reads_a_table(postgres, table):
    """Test that `hvdl data inspect` counts a table's rows and classes."""
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "hvdl", "data",
                           "inspect", postgres.url, "--table", "rows", "--label", "cls",
                           "--features", "id,b,c,d"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "format: sql" in proc.stdout and f"rows: {ROWS}" in proc.stdout
    assert "label: cls: 3 classes" in proc.stdout


BAD = {  # case: (data.path's change, options, environment, the words of the one line)
    "server unreachable": ("127.0.0.1:{closed}", ["--data.table", "rows"], {},
                           "cannot reach the database server"),
    "wrong password": ("", ["--data.table", "rows"], {"PGPASSWORD": "wrong"},
                       "the server refused the login"),
    "password in the URL": ("hvdl:" + PASSWORD + "@", ["--data.table", "rows"], {},
                            "a password in the URL is refused"),
    "missing table": ("", ["--data.table", "nope"], {}, "data.table 'nope' does not exist"),
    "missing column": ("", ["--data.table", "rows", "--data.label", "zz"], {},
                       "data.label: column 'zz' is not in"),
    "text feature column": ("", ["--data.table", "words"], {},
                            "feature column 'w' holds string"),
    "NULL feature values": ("", ["--data.table", "holes"], {},
                            "1 NaN, infinite or missing feature values in the training data"),
    "query without rows": ("", ["--data.query", "SELECT * FROM rows WHERE id < 0", "--data.key",
                                "k", "--data.features", "id,b"], {}, "query returns no rows"),
    "query without a key": ("", ["--data.query", "SELECT * FROM rows"], {},
                            "data.query is read in parts by an integer key column"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_database_input_is_one_line_and_status_2_within_seconds(tmp_path, postgres, table,
                                                                    case, capfd):
    """Test each database failure: one line, status 2, within 30 s, no run folder, no password
    in what is printed."""
    postgres.load("words", pa.table({"a": [1.0, 2.0], "w": ["x", "y"]}))
    postgres.load("holes", pa.table({"a": [1.0, None, 3.0, 4.0], "b": [1.0, 2.0, 3.0, 4.0]}))
    change, options, env, words = BAD[case]
    url = postgres.url
    if change.startswith("127.0.0.1"):
        url = url.replace(url.split("@")[1].split("/")[0], change.format(closed=free_port()))
    elif change:
        url = url.replace("hvdl@", change)
    started = time.monotonic()
    status, out, err = run_hvdl(["train", "--model", "rbm_mnist", "--layers", "0,4",
                                 "--data.scale", "none", "--batch_size", "1", "--data.format",
                                 "sql", "--data.path", url, *options, "--results_dir",
                                 str(tmp_path / "runs")], capfd, **env)
    took = time.monotonic() - started
    assert status == 2, err[-2000:]
    (line,) = err.strip().splitlines()
    assert line.startswith("hvdl: error: ") and words in line, line
    assert PASSWORD not in out + err
    assert took < 30, took
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_url_with_a_password_is_refused_before_connecting():
    """Test that the password never reaches a message, even when the URL carries one."""
    with pytest.raises(DataError, match="a password in the URL is refused") as caught:
        open_source(Spec(format="sql", path="postgresql://u:topsecret@127.0.0.1:1/db",
                         table="t"))
    assert "topsecret" not in str(caught.value)


def test_encode_writes_the_codes_back_as_a_table_that_joins_to_the_rows(tmp_path, postgres,
                                                                        table):
    """Test that `hvdl encode --out postgresql://... --table` on 2 ranks inserts one row of
    codes per source row, keyed by data.key (by ctid without one), equal to the model's codes
    of that row; a second encode into the table is refused."""
    from hvdl.families import load_trained

    check_job(1, ["-m", "hvdl.train", "--model", "rbm_mnist", "--layers", "0,3",
                  "--rbm.pretrain_epochs", "1", "--batch_size", "5",
                  *sql_options(postgres, "--data.table", "rows", "--data.key", "k"),
                  "--results_dir", str(tmp_path / "runs")], launcher="python")
    stage = next((tmp_path / "runs").iterdir()) / "stages" / "pretrain1.pt"
    for name, extra in (("codes_by_key", []), ("codes_by_ctid", ["--data.key", ""])):
        check_job(2, ["-m", "hvdl.encode", "--checkpoint", str(stage), "--out", postgres.url,
                      "--table", name, *extra], "mpirun")
    again = run_job(1, ["-m", "hvdl.encode", "--checkpoint", str(stage), "--out", postgres.url,
                        "--table", "codes_by_key"], launcher="python", timeout=120)
    assert again.returncode == 2 and "table codes_by_key exists" in again.stderr
    trained = load_trained(stage)
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT r.id, r.b, r.c, r.d, c.f0, c.f1, c.f2, c.label FROM rows r JOIN "
                    "codes_by_key c USING (k) ORDER BY r.id")
        joined = cur.fetchall()
        cur.execute("SELECT r.id, c.f0 FROM rows r JOIN codes_by_ctid c ON r.ctid = "
                    "c.source_ctid::tid ORDER BY r.id")
        by_ctid = cur.fetchall()
    assert len(joined) == len(by_ctid) == ROWS
    x = torch.tensor([row[:4] for row in joined], dtype=torch.float32) / 255  # data.scale unit
    with torch.no_grad():
        want = trained.family.encoder(trained.model, 1)(x).numpy()
    np.testing.assert_allclose(np.array([row[4:7] for row in joined]), want, rtol=1e-5)
    assert [row[1] for row in by_ctid] == [row[4] for row in joined]
    assert {row[7] for row in joined} == {"ant", "bee", "cat"}
