"""The `seedforge` command: run, generate, curate, train, report.

Every subcommand takes `key=value` overrides with dotted keys (generate.rounds=3). Bad input
(config, seed file, data) ends with a one-paragraph error that names the file, line or key, and a
non-zero exit; nothing already committed in the run directory is touched.
"""
from __future__ import annotations

import argparse
import sys

from pipelines.config import ConfigError, load_config

EPILOG = "Overrides are dotted keys: seedforge run configs/demo.yaml generate.rounds=2 output_dir=runs/x"


def _config(args):
    return load_config(args.config, args.overrides)


def cmd_run(args) -> int:
    from pipelines.run import run

    run(_config(args), overwrite=args.overwrite)
    return 0


def cmd_generate(args) -> int:
    from pipelines.run import run

    run(_config(args), overwrite=args.overwrite, stages=["generate"])
    return 0


def cmd_curate(args) -> int:
    from pipelines.curate import curate_command

    curate_command(args.input, args.output, args.overrides)
    return 0


def cmd_train(args) -> int:
    from pipelines.run import run

    run(_config(args), overwrite=args.overwrite, stages=["train"])
    return 0


def cmd_report(args) -> int:
    from pipelines.report import write_report

    print(write_report(args.run_dir))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seedforge", description="Seed tasks to instruction-tuning data and a tuned model, on Ray.",
                                epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name, fn, help_):
        s = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG)
        s.add_argument("config", help="YAML config (see configs/)")
        s.add_argument("overrides", nargs="*", help="key=value overrides, dotted keys")
        s.add_argument("--overwrite", action="store_true", help="delete an existing run directory and start over")
        s.set_defaults(fn=fn)

    with_config("run", cmd_run, "Run the whole pipeline: generate, curate, train.")
    with_config("generate", cmd_generate, "Run only the generation stage (resumable).")
    with_config("train", cmd_train, "Instruction-tune on Parquet shards (data_dir=..., output_dir=...).")
    c = sub.add_parser("curate", help="Filter and deduplicate Parquet shards.",
                       description="Filter and deduplicate any Parquet with instruction/input/output columns.",
                       epilog="Overrides are keys of the curate section: minhash.threshold=0.8 filters.echo=false")
    c.add_argument("--input", required=True, help="folder (or file) of Parquet shards")
    c.add_argument("--output", required=True, help="output folder: data/, rejected/, manifest.json")
    c.add_argument("overrides", nargs="*", help="key=value overrides of the curate section")
    c.set_defaults(fn=cmd_curate)
    r = sub.add_parser("report", help="Write RUN_DIR/report.html with plots.", description="Write RUN_DIR/report.html with plots.")
    r.add_argument("run_dir")
    r.set_defaults(fn=cmd_report)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from pipelines.run import RunError
    from pipelines.io import InputError

    try:
        return args.fn(args)
    except (ConfigError, InputError, RunError, FileNotFoundError) as e:
        print(f"seedforge {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
