"""hvdl: data-parallel deep learning with Horovod."""
