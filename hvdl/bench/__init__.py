"""The benchmark: hvdl against a plain PyTorch loop and DistributedDataParallel.

    python -m hvdl.bench --models lenet5 --ranks 1 2      # the suite: hvdl/bench/suite.py

suite.py runs jobs through launch.py (each one `python -m hvdl.bench.worker` under the right
launcher) and summarises them with report.py; worker.py times the plain and DDP loops of
plain.py, hvdl_side.py the same networks through hvdl; measure.py is their shared timing.
"""
