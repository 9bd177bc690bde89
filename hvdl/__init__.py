"""hvdl: data-parallel deep learning with Horovod.

    import hvdl
    result = hvdl.fit("dbn_small", data="table.csv")    # hvdl/api.py: fit, evaluate, encode, load

Importing hvdl loads nothing else; the API is loaded on first use.
"""

__all__ = ["encode", "evaluate", "fit", "load"]


def __getattr__(name: str):  # PEP 562: `hvdl.fit` imports hvdl.api (and torch) on first use
    if name in __all__:
        from hvdl import api

        return getattr(api, name)
    raise AttributeError(f"module 'hvdl' has no attribute {name!r}")
