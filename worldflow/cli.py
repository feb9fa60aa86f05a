"""The `worldflow` command: parse Hydra overrides, call the library, print one JSON line.

    worldflow COMMAND [key=value ...]
    worldflow COMMAND --help        # the command's fields and their defaults

Each command is a function `run(cfg) -> dict` in its own module with a dataclass
schema; this file only dispatches, parses and prints. A bad override or bad input (a
ValueError such as `WorldFlowError`, or a missing file) ends with one line on stderr
naming the argument, and exit status 2, not a traceback; `WORLDFLOW_DEBUG=1` re-raises.
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
    "score": ("worldflow.score", "ScoreConfig", "run"),
    "bench": ("worldflow.bench", "BenchConfig", "run"),
    "imagine": ("worldflow.agents.imagine", "ImagineConfig", "run"),
    "demo": ("worldflow.demo", "DemoConfig", "run"),
}
HELP = ("-h", "--help")


def parse(schema: type, overrides: list[str], name: str):
    """Hydra's override grammar over a dataclass schema -> an instance of that dataclass."""
    from hydra import compose, initialize
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name=name, node=schema)
    with initialize(version_base=None, config_path=None):
        cfg = compose(config_name=name, overrides=overrides)
    return OmegaConf.to_object(cfg)


def _message(err: BaseException) -> str:
    """The error's text; Hydra's composition errors carry the reason in their cause."""
    if isinstance(err, (ValueError, FileNotFoundError)) or err.__cause__ is None:
        return str(err)
    return f"{err}: {err.__cause__}"


def describe(command: str, module, schema: type) -> str:
    """The command's module summary and its fields with their defaults, as YAML."""
    from omegaconf import OmegaConf

    summary = (module.__doc__ or "").strip().split("\n\n")[0]
    fields = OmegaConf.to_yaml(OmegaConf.structured(schema)).rstrip()
    return f"usage: worldflow {command} [key=value ...]\n\n{summary}\n\nfields (defaults):\n{fields}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    available = [c for c in COMMANDS if importlib.util.find_spec(COMMANDS[c][0]) is not None]
    if not argv or argv[0] in HELP or argv[0] not in available:
        print(f"usage: worldflow {{{','.join(available)}}} [key=value ...]", file=sys.stderr)
        return 0 if argv and argv[0] in HELP else 2
    module_name, schema_name, run_name = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    schema = getattr(module, schema_name)
    if any(a in HELP for a in argv[1:]):
        print(describe(argv[0], module, schema))
        return 0
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = parse(schema, argv[1:], f"worldflow_{argv[0]}")
        summary = getattr(module, run_name)(cfg)
    except (HydraException, OmegaConfBaseException, ValueError, FileNotFoundError) as err:
        if os.environ.get("WORLDFLOW_DEBUG"):
            raise
        message = " ".join(_message(err).split())
        print(f"worldflow {argv[0]}: error: {message} (see `worldflow {argv[0]} --help`)", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, also under torchrun
        print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
