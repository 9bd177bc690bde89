"""Fine-tuning a pretrained RBM stack by backprop: the DBN classifier and the deep autoencoder.

Called by hvdl/trainers/rbm.py after greedy pretraining. The DBN gets a softmax layer on top,
trained alone for `rbm.top_epochs` if asked (stage `finetune_top`), then the whole net
(`finetune`); the deep autoencoder is unrolled with tied initial weights and fine-tuned on
cross-entropy, its test error recorded after every epoch, with 30-component PCA as the
baseline. Both train through loop.fit (SGD, Adam, or the minibatch L-BFGS of hvdl/loop/lbfgs.py)
on batches of `rbm.finetune_batch_size`, and keep their weights in stages/<name>.pt.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hvdl import checkpoint, loop, metrics
from hvdl.config import Config
from hvdl.data.shard import Shard, Shards
from hvdl.dist import Context
from hvdl.models import rbm as rbm_models
from hvdl.models.pca import fit_pca, squared_error
from hvdl.models.rbm import RBM
from hvdl.runlog import RunLog


def finetune_classifier(rbms: list[RBM], shards: Shards, config: Config, ctx: Context,
                        run: RunLog, state: dict[str, Any] | None, names: Any = None,
                        done: dict[str, Any] | None = None) -> dict[str, Any]:
    """Softmax on top of the pretrained stack, trained alone for `rbm.top_epochs` if asked, then
    the whole net fine-tuned by backprop on the training shard, evaluated on the test shard;
    `names` are the classes' (the data's labels), `done` the weights of the stages before,
    which checkpoints carry."""
    classes = config.layers[-1]
    generator = torch.Generator().manual_seed(config.seed + 1)
    model = rbm_models.classifier(rbms, classes, generator=generator).to(ctx.device)
    done = dict(done or {})

    def stage(name: str, epochs: int) -> loop.Stage:
        return loop.Stage(
            name=name, model=model, loss=F.cross_entropy, epochs=epochs,
            lr=config.rbm.finetune_lr, carry=lambda: done,
            evaluate=None if shards.test is None else
            lambda: metrics.evaluate_classifier(model, shards.test.scan(), names or classes,
                                                name=f"{name}.eval"))

    if config.rbm.top_epochs:
        def train_top() -> None:
            lower = [p for layer in model[:-1] for p in layer.parameters()]
            for p in lower:
                p.requires_grad_(False)
            loop.fit(stage("finetune_top", config.rbm.top_epochs), shards, config, ctx, run,
                     state=state)
            for p in lower:
                p.requires_grad_(True)

        loop.once("finetune_top", model, state, run, config, train_top, kept=lambda: None)
        done["finetune_top"] = model.state_dict()
    final = loop.fit(stage("finetune", config.rbm.finetune_epochs), shards, config, ctx, run,
                     state=state)
    checkpoint.save_stage(run, "finetune", model, config)
    test = final.get("test", {})
    for line in classification_report(test):
        run.print(line)
    return {"test": test}


def classification_report(test: dict[str, Any]) -> list[str]:
    """Test error, per-class precision / recall / F1 and the confusion matrix, as text."""
    if not test:
        return []
    names = [str(c) for c in test.get("classes", range(len(test["f1"])))]
    width = max(5, *map(len, names))
    lines = [f"test error {100 * test['error']:.2f}% ({test['count']} examples), "
             f"macro F1 {test['macro_f1']:.4f}", f"{'class':>{width}} precision recall     f1"]
    for c, p, r, f in zip(names, test["precision"], test["recall"], test["f1"]):
        lines.append(f"{c:>{width}} {p:9.4f} {r:6.4f} {f:6.4f}")
    lines.append("confusion matrix (rows: true class, columns: predicted):")
    lines += [" ".join(f"{v:5d}" for v in row) for row in test["confusion"]]
    return lines


@torch.no_grad()
def test_reconstruction(model: rbm_models.DeepAutoencoder, test: Shard) -> dict[str, float]:
    """The per-epoch test figure of fine-tuning: average squared error per test image."""
    return {"squared_error": squared_error(model.reconstruct, (x for x, _ in test.scan()),
                                           "finetune.eval.sq")}


def finetune_autoencoder(rbms: list[RBM], shards: Shards, config: Config, ctx: Context,
                         run: RunLog, state: dict[str, Any] | None,
                         done: dict[str, Any] | None = None) -> dict[str, Any]:
    """Unroll the stack, fine-tune on cross-entropy, compare with PCA of the same code size;
    without test data, the figures are the training set's."""
    model = rbm_models.unroll(rbms)

    def held() -> Shard:  # read when evaluating: elastic training deals the shards again
        return shards.test or shards.train

    before = test_reconstruction(model, held())["squared_error"]
    run.print(f"unrolled autoencoder before fine-tuning: test squared error {before:.3f}")
    stage = loop.Stage(name="finetune", model=model, loss=rbm_models.reconstruction_loss,
                       epochs=config.rbm.finetune_epochs, lr=config.rbm.finetune_lr,
                       evaluate=lambda: test_reconstruction(model, held()),
                       carry=lambda: dict(done or {}))
    final = loop.fit(stage, shards, config, ctx, run, state=state)
    train_shard, test_shard = shards.train, held()
    checkpoint.save_stage(run, "finetune", model, config)
    # The last epoch's evaluation is the final figure (none when there are no epochs).
    after = (final.get("test") or test_reconstruction(model, test_shard))["squared_error"]
    pca = fit_pca((x for x, _ in train_shard.scan()), n_components=config.layers[-1])
    baseline = squared_error(pca.reconstruct, (x for x, _ in test_shard.scan()), "pca.sq")
    figures = {"squared_error": after, "squared_error_before_finetune": before,
               "pca_squared_error": baseline}
    run.scalars(figures, final.get("epoch", 0), prefix="test/")
    run.print(f"average squared test reconstruction error per image: autoencoder {after:.3f}, "
              f"PCA ({config.layers[-1]} components) {baseline:.3f}")
    return figures

