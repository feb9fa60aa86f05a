"""The `worldflow` command: parse Hydra overrides, call the library, print one JSON line.

    worldflow COMMAND [key=value ...]

Each command is a function `run(cfg) -> dict` in its own module with a dataclass
schema; this file only dispatches, parses and prints.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

# command -> (module, schema class, run function)
COMMANDS = {
    "collect": ("worldflow.data.collect", "CollectConfig", "run"),
    "train": ("worldflow.train", "TrainConfig", "run"),
    "generate": ("worldflow.generate", "GenerateConfig", "run"),
    "demo": ("worldflow.demo", "DemoConfig", "run"),
}


def parse(schema: type, overrides: list[str], name: str):
    """Hydra's override grammar over a dataclass schema -> an instance of that dataclass."""
    from hydra import compose, initialize
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name=name, node=schema)
    with initialize(version_base=None, config_path=None):
        cfg = compose(config_name=name, overrides=overrides)
    return OmegaConf.to_object(cfg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    available = [c for c in COMMANDS if importlib.util.find_spec(COMMANDS[c][0]) is not None]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in available:
        print(f"usage: worldflow {{{','.join(available)}}} [key=value ...]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module_name, schema_name, run_name = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    cfg = parse(getattr(module, schema_name), argv[1:], f"worldflow_{argv[0]}")
    summary = getattr(module, run_name)(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, also under torchrun
        print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
