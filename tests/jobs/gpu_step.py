"""Fused-gradient training steps on the GPU with CUDA's sync debugger set to raise.

    python tests/jobs/gpu_step.py

Data, model and optimizer live on the GPU; a step (bf16 autocast forward, backward, hvdl's fused
optimizer at one rank) must queue its work without waiting for the device. Exits non-zero if
any operation synchronises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvdl import config as configlib
from hvdl import dist
from hvdl.loop import sync
from hvdl.models.cnn import LeNet5


def main() -> None:
    ctx = dist.init(threads=1)
    config = configlib.build({"perf.bf16": True})
    model = LeNet5().to(ctx.device)
    optimizer = sync.wrap(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                          model, config)
    x = torch.randn(256, 1, 28, 28, device=ctx.device)
    y = torch.randint(0, 10, (256,), device=ctx.device)
    total = torch.zeros((), device=ctx.device)
    for step in range(4):
        if step == 1:  # the first step allocates optimizer state; check the steady state
            torch.cuda.set_sync_debug_mode("error")
        optimizer.zero_grad()
        with torch.autocast("cuda", torch.bfloat16, enabled=config.perf.bf16):
            loss = F.cross_entropy(model(x[step * 64:(step + 1) * 64]),
                                   y[step * 64:(step + 1) * 64])
        loss.backward()
        optimizer.step()
        total += loss.detach()
    torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(total).item()
    dist.shutdown()


if __name__ == "__main__":
    main()
