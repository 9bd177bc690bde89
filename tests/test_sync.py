"""Synchronisation modes (hvdl/loop/sync.py) in real 2-rank Horovod jobs (horovodrun, and the
Horovod engine under mpirun, which spares each job horovodrun's seconds of start-up), and the
GPU-path switches."""

import json

import pytest
import torch
from test_train import TINY, final_weights

from hvdl import config as configlib
from procs import check_job, train_here


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    """The figures of tests/jobs/sync_modes.py run on 2 ranks (Gloo)."""
    out = tmp_path_factory.mktemp("sync") / "modes.json"
    check_job(2, ["tests/jobs/sync_modes.py", str(out)], "gloo")
    report = json.loads(out.read_text())
    assert report["size"] == 2
    return report["modes"]


@pytest.mark.slow
def test_fused_allreduce_gives_the_weights_of_horovods_distributed_optimizer(modes):
    """Test that one flat allreduce per step equals hvd.DistributedOptimizer (SGD, momentum)."""
    assert modes["moved"] > 1e-3  # the steps changed the weights
    assert modes["fused"]["max_diff"] <= 1e-6
    assert modes["fused_fp16"]["max_diff"] <= 1e-6  # fp16 compression, both ways


@pytest.mark.slow
def test_parameter_averaging_every_step_equals_gradient_averaging(modes):
    """Test that parameter averaging with K = 1 gives gradient averaging's weights (SGD)."""
    assert modes["average_k1"]["max_diff"] <= 1e-6
    assert modes["average_k1_momentum"]["max_diff"] <= 1e-6  # momentum buffers averaged too


@pytest.mark.slow
def test_parameter_averaging_every_k_steps_differs_but_ends_on_one_model(modes):
    """Test that K = 3 is a different algorithm, and that settle() leaves the ranks identical."""
    assert modes["average_k3"]["max_diff"] > 1e-5
    assert all(m["ranks_agree"] for m in modes.values() if isinstance(m, dict))


@pytest.mark.slow
def test_backward_passes_per_step_averages_the_minibatches_before_one_update(modes):
    """Test that 2 passes per step equal one step on the two minibatches joined."""
    assert modes["two_passes"]["max_diff"] <= 1e-6


@pytest.mark.slow
def test_training_with_parameter_averaging_k1_matches_the_default(tmp_path):
    """Test that hvdl.train with --perf.sync average --perf.sync_every 1 matches allreduce."""
    common = [*TINY, "--dist.backend", "horovod", "--optimizer", "sgd", "--momentum", "0",
              "--lr", "0.05", "--lr_scaling", "none", "--schedule", "constant",
              "--warmup_epochs", "0"]
    weights = {}
    for name, extra in (("allreduce", []),
                        ("average", ["--perf.sync", "average", "--perf.sync_every", "1"])):
        check_job(2, ["-m", "hvdl.train", *common, *extra, "--results_dir",
                      str(tmp_path / name)], "mpirun")
        weights[name] = final_weights(tmp_path / name)
    for key, w in weights["allreduce"].items():
        torch.testing.assert_close(weights["average"][key], w, rtol=0, atol=1e-6, msg=key)
    # The flag reaches the optimizer: averaging every 4 steps ends elsewhere.
    check_job(2, ["-m", "hvdl.train", *common, "--perf.sync", "average", "--perf.sync_every",
                  "4", "--results_dir", str(tmp_path / "every4")], "mpirun")
    every4 = final_weights(tmp_path / "every4")
    assert any((every4[k] - w).abs().max() > 1e-4 for k, w in weights["allreduce"].items())


@pytest.mark.slow
def test_timeline_flag_writes_horovods_timeline_into_the_run_folder(tmp_path):
    """Test that --perf.timeline leaves rank 0's Horovod timeline in the run folder."""
    check_job(2, ["-m", "hvdl.train", *TINY, "--dist.backend", "horovod", "--perf.timeline",
                  "--results_dir", str(tmp_path)], "mpirun")
    (run_dir,) = list(tmp_path.iterdir())
    text = (run_dir / "horovod_timeline.json").read_text()
    assert text.startswith("[") and "ALLREDUCE" in text


def test_config_accepts_the_sync_modes_and_rejects_others():
    """Test that perf.grad_sync and perf.sync take their listed values only."""
    config = configlib.load("lenet5", ["--perf.sync", "average", "--perf.sync_every", "4",
                                       "--perf.grad_sync", "hooks"])
    assert (config.perf.sync, config.perf.sync_every, config.perf.grad_sync) == \
        ("average", 4, "hooks")
    with pytest.raises(configlib.ConfigError, match="perf.grad_sync"):
        configlib.load("lenet5", ["--perf.grad_sync", "ring"])
    with pytest.raises(configlib.ConfigError, match="perf.sync_every"):
        configlib.load("lenet5", ["--perf.sync_every", "0"])


@pytest.mark.slow
def test_bf16_autocast_trains_on_cpu(tmp_path):
    """Test that --perf.bf16 trains LeNet-5 on CPU to a finite cost, and differently from float32
    (so the autocast took effect)."""
    for name, extra in (("bf16", ["--perf.bf16"]), ("fp32", [])):
        train_here(["-m", "hvdl.train", *TINY, *extra, "--results_dir", str(tmp_path / name)])
    (run_dir,) = list((tmp_path / "bf16").iterdir())
    history = json.loads((run_dir / "metrics.json").read_text())["train"]
    assert history and all(torch.isfinite(torch.tensor(e["train_cost"])) for e in history)
    bf16, fp32 = final_weights(tmp_path / "bf16"), final_weights(tmp_path / "fp32")
    assert any(not torch.equal(bf16[k], fp32[k]) for k in fp32)


@pytest.mark.slow  # inductor compiles C++: about 20 s on the 2-core CPU
def test_compile_trains_and_keeps_checkpoint_keys(tmp_path):
    """Test that --perf.compile compiles the model (inductor writes its kernels) and trains,
    checkpointing under the uncompiled parameter names."""
    cache = tmp_path / "inductor"
    check_job(1, ["-m", "hvdl.train", *TINY, "--perf.compile", "--results_dir",
                  str(tmp_path / "runs")], "python", timeout=900,
              TORCHINDUCTOR_CACHE_DIR=str(cache))
    weights = final_weights(tmp_path / "runs")
    assert "features.0.weight" in weights and not any("_orig_mod" in k for k in weights)
    assert any(p.suffix in (".py", ".so", ".cpp") for p in cache.rglob("*")), "nothing compiled"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_training_step_does_not_synchronise_host_and_gpu():
    """Test that a fused-gradient step (bf16 autocast) on the GPU makes no host-device sync."""
    check_job(1, ["tests/jobs/gpu_step.py"], "python")


@pytest.mark.slow
def test_fusion_threshold_and_cycle_time_reach_horovod(tmp_path):
    """Test that perf.fusion_threshold_mb and perf.cycle_time_ms are in the ranks' environment
    as Horovod starts (HOROVOD_FUSION_THRESHOLD, HOROVOD_CYCLE_TIME), as the run records."""
    check_job(2, ["-m", "hvdl.train", *TINY, "--dist.backend", "horovod",
                  "--perf.fusion_threshold_mb", "7", "--perf.cycle_time_ms", "0.5",
                  "--results_dir", str(tmp_path)], "mpirun")
    (run_dir,) = list(tmp_path.iterdir())
    knobs = json.loads((run_dir / "metadata.json").read_text())["horovod"]
    assert knobs["HOROVOD_FUSION_THRESHOLD"] == str(7 * 1024 * 1024)
    assert knobs["HOROVOD_CYCLE_TIME"] == "0.5"
