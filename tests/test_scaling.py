"""hvdl/bench/scaling: the ring allreduce cost fitted to measurements, and the projections made
from it (the measurements themselves: tests/test_multihost.py, a tiny grid of launch/scaling.sh)."""

import json

import pytest

from hvdl.bench.scaling import model, report
from procs import ROOT


def test_the_fit_recovers_the_constants_measurements_were_made_with():
    """Test that α and β come back from times made with them (2-4 ranks, 1 KiB to 64 MiB), and
    that one rank's time is not needed to tell them apart."""
    # the ring: 2(n-1) steps of α, each rank sending and receiving 2(n-1)/n of the buffer
    assert model.ring(4, 1e6, 1e-6, 1e-9) == pytest.approx(6e-6 + 1.5e-3)
    assert model.ring(1, 1e6, 1e-6, 1e-9) == 0
    alpha, beta = 42e-6, 1 / 0.9e9
    points = [(n, s, model.ring(n, s, alpha, beta)) for n in (2, 3, 4) for s in model.SIZES]
    got_alpha, got_beta, error = model.fit(points)
    assert got_alpha == pytest.approx(alpha, rel=1e-6) and got_beta == pytest.approx(beta, rel=1e-6)
    assert error < 1e-9


def test_efficiency_falls_with_ranks_and_rises_with_what_moves_the_point():
    """Test the projection's shape: efficiency falls with ranks, and a larger batch, averaging
    every K steps and fp16 gradients each keep more of it."""
    f = model.Family("x", compute_s=1e-3, grad_bytes=2**20, batch=64)
    link = model.LINKS[0]
    effs = [model.efficiency(f, link, n) for n in model.RANKS]
    assert all(a > b for a, b in zip(effs, effs[1:])) and 0 < effs[-1] < effs[0] < 1
    base = model.efficiency(f, link, 64)
    for how in ({"batch_x": 4}, {"every": 4}, {"fp16": True}):
        assert model.efficiency(f, link, 64, **how) > base, how
    assert model.last_gain(f, link) < model.last_gain(f, link, batch_x=4, every=4, fp16=True)
    tiny = model.Family("y", compute_s=1e-9, grad_bytes=2**30, batch=1)
    assert model.last_gain(tiny, link) is None  # not even 2 ranks keep half


def test_families_come_from_a_benchmark_result():
    """Test that each family's compute is the benchmark's 1-rank median and its gradient the
    model's float32 parameters (LeNet-5: 61,706 parameters, 246,824 bytes)."""
    found = {f.name: f for f in model.families(ROOT / "results" / "bench" / "engines" /
                                               "bench.json")}
    assert set(found) == {"lenet5", "sae", "rbm", "dbn"}
    assert found["lenet5"].grad_bytes == 246_824
    assert all(0.001 < f.compute_s < 0.1 for f in found.values())


def test_report_writes_its_tables_figures_and_plot(tmp_path):
    """Test that `report` on two links' measurements writes the fit of each, the projections
    and the plot."""
    files = []
    for link, alpha, beta, ranks in (("shm", 3e-6, 1 / 5e9, [2]), ("tcp", 40e-6, 1 / 1e9, [2, 4])):
        for n in ranks:
            rows = [{"bytes": s, "median_s": model.ring(n, s, alpha, beta)} for s in model.SIZES]
            files.append(tmp_path / f"{link}-{n}.json")
            files[-1].write_text(json.dumps({"link": link, "engine": "mpi", "ranks": n,
                                             "hosts": [f"h{k}" for k in range(n)],
                                             "rows": rows}))
    assert report.report(type("Args", (), {"measured": [str(f) for f in files],
                                           "bench": ROOT / "results/bench/engines/bench.json",
                                           "out": str(tmp_path / "out")})) == 0
    text = (tmp_path / "out" / "scaling.md").read_text()
    assert "| this machine, shm | 3.0 | 5.00 | 0% | 9 |" in text
    assert "| this machine, tcp | 40.0 | 1.00 | 0% | 18 |" in text
    saved = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert len(saved["links"]) == 2 + len(model.LINKS) and 0.5 < saved["horovod_check"] < 1
    assert (tmp_path / "out" / "scaling.png").stat().st_size > 10_000
