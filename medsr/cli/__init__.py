"""The `medsr` command: argparse subcommands that parse, call one function and map errors.

One module per subcommand (its parser and its command function), shared option groups in
`medsr.cli.options`. Exit codes: 0 success, 1 a known error (`MedsrError`, one line on stderr),
2 usage error, 130 interrupted. Heavy imports happen inside the commands so that `medsr --help`
is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medsr.cli.batch import batch_command, batch_parser
from medsr.cli.evaluate import compare_command, compare_parser, evaluate_command, evaluate_parser
from medsr.cli.info import info_command, info_parser
from medsr.cli.options import Parser
from medsr.cli.train import train_command, train_parser
from medsr.cli.upsample import upsample_command, upsample_parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="medsr", description="Medical volumetric super-resolution.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in (
        upsample_parser,
        train_parser,
        batch_parser,
        evaluate_parser,
        compare_parser,
        info_parser,
    ):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from medsr._version import __version__

        print(f"medsr {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.captureWarnings(True)
    from medsr.errors import MedsrError

    handlers = {
        "batch": batch_command,
        "upsample": upsample_command,
        "train": train_command,
        "evaluate": evaluate_command,
        "compare": compare_command,
        "info": info_command,
    }
    from tqdm.contrib.logging import logging_redirect_tqdm

    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            print(f"medsr: error: --threads must be >= 1, got {threads}", file=sys.stderr)
            return 1
        import torch

        torch.set_num_threads(threads)

    try:
        with logging_redirect_tqdm():  # log lines never break a progress bar
            return handlers[args.command](args)
    except MedsrError as error:
        print(f"medsr: error: {' '.join(str(error).split())}", file=sys.stderr)  # one line
        return 1
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("medsr: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
