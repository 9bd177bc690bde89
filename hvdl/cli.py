"""The `hvdl` command: `hvdl train|eval|encode|data|bench|report|fetch ...`, each a module's `main`,
and the option listings every command's `--help` prints, generated from hvdl/config.py.

    hvdl --help                               # the commands
    hvdl train --help                         # every option: section, default, allowed, meaning
    hvdl train --model dbn_small --print-config   # the resolved config, nothing run
    hvdl train --model lenet5 --epochs 3      # same as python -m hvdl.train ...
    hvdl fetch mnist --data-dir data
    hvdl data inspect train.csv --label y     # same as python -m hvdl.data.convert inspect ...
    hvdl bench --ranks 1 2
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
import typing
from typing import Any

COMMANDS = {  # command: (module, what it does)
    "train": ("hvdl.train", "train a model from a recipe, data-parallel"),
    "eval": ("hvdl.evaluate", "evaluate a checkpoint on its test split or other data"),
    "encode": ("hvdl.encode", "write a hidden layer's codes of a dataset, in parts"),
    "data": ("hvdl.data.convert", "inspect a dataset, or convert it to another format"),
    "bench": ("hvdl.bench.suite", "measure hvdl against plain PyTorch and DDP"),
    "report": ("hvdl.report", "summarise run folders as Markdown"),
    "fetch": ("hvdl.fetch", "download a dataset, checking its MD5 sums"),
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("hvdl")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hvdl COMMAND [OPTIONS]   (hvdl COMMAND --help for its options)", "",
             "commands:"]
    lines += [f"  {name:{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "  --version  print hvdl's version", "  --help     this list"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv and argv[0] == "--version":
        print(f"hvdl {version()}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = repr(argv[0]) if argv else "nothing"
        print(f"hvdl: error: unknown command {given}; allowed: {', '.join(COMMANDS)} "
              "(hvdl --help lists them)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


# --- option listings, from the config dataclasses --------------------------------------------

def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of the dataclass `cls`: the one ending its line, else
    the comment lines just above it."""
    comments, above = {}, []
    for line in inspect.getsourcelines(cls)[0]:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        field = re.match(r"(\w+)\s*:", text)
        if field:
            tail = line.partition("  # ")[2].strip()
            comments[field.group(1)] = tail or " ".join(above)
        above = []
    return comments


def allowed(kind: Any) -> str:
    """What a field's annotation allows, in words."""
    from hvdl.config_rules import AtLeast, describe

    base = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind
    if typing.get_origin(base) is typing.Literal:
        return "one of " + ", ".join(shown(v) for v in typing.get_args(base))
    words = describe(base)
    for rule in getattr(kind, "__metadata__", ()):
        if isinstance(rule, AtLeast):
            words += f" {'>' if rule.strict else '>='} {rule.bound:g}"
    return words


def shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if value == "" else str(value)


def options_help(sections: list[str], config: Any = None, recipe: str = "") -> str:
    """Every option of the config `sections` ("" is the top level) with its default, what it
    allows and its comment; where `config` (a resolved recipe) sets another value, that too."""
    from hvdl.config import SECTIONS, Config

    defaults = Config()
    blocks = []
    for section in sections:
        cls = SECTIONS[section] if section else Config
        comments = field_comments(cls)
        hints = typing.get_type_hints(cls, include_extras=True)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines = [f"[{section}] {doc}" if section else f"general: {doc}"]
        for field in dataclasses.fields(cls):
            if field.name in SECTIONS or field.name == "recipe":
                continue
            key = f"{section}.{field.name}" if section else field.name
            default = getattr(getattr(defaults, section) if section else defaults, field.name)
            text = f"  --{key}  default {shown(default)}"
            if config is not None:
                value = getattr(getattr(config, section) if section else config, field.name)
                if value != default:
                    text += f" ({recipe}: {shown(value)})"
            lines.append(f"{text};  {allowed(hints[field.name])}")
            lines += textwrap.wrap(comments.get(field.name, ""), width=99,
                                   initial_indent=" " * 6, subsequent_indent=" " * 6)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def overrides_epilog() -> str:
    """What `hvdl eval --help` and `hvdl encode --help` add after their own options: the config
    fields that choose other data or another engine for a checkpoint."""
    return ("Any other --KEY VALUE (hvdl train --help lists them) overrides the checkpoint's "
            "config;\nthese choose the data to read and the engine:\n\n"
            + options_help(["data", "dist"]))
