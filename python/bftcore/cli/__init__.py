"""The `bftcore` command: the click group and `main()`, which maps errors to exit codes.

Conventions kept by every command: `--help` with an example, progress on stderr for anything
longer than a second (bars on a terminal, plain lines in a pipe or log), `--json` on anything that
reports figures (one JSON object on stdout), and exit codes: 0 ok; 2 bad input, with a one-line
reason and no traceback; 3 a measured expectation or verification failed (`--strict` on `demo` and
`toy check`, `--verify` on `export`); 1 only when the pipeline itself broke (a bug: a traceback).

One module per command group; none loads a model itself, each calls one library entry:

    toy.py       toy build, toy check          bftcore.toy
    demo.py      demo                          bftcore.demo
    index.py     score, index, merge, inspect,  bftcore.pipeline, bftcore.index,
                 gradient                      bftcore.gradient
    attack.py    attack                        bftcore.backends.open_target, bftcore.attack
    judge.py     judge                         bftcore.judge
    complete.py  complete                      bftcore.complete.harden
    export.py    export                        bftcore.export
    report.py    report                        bftcore.report
    models.py    models tiny                   bftcore.families
    common.py    consoles, progress, tables, option groups
"""

from __future__ import annotations

import os
import sys

import click

from bftcore import __version__
from bftcore.cli.attack import attack
from bftcore.cli.common import err
from bftcore.cli.complete import complete
from bftcore.cli.demo import demo
from bftcore.cli.export import export_cmd
from bftcore.cli.index import gradient, index_cmd, inspect, merge_cmd, score
from bftcore.cli.judge import judge_cmd
from bftcore.cli.models import models
from bftcore.cli.report import report
from bftcore.cli.toy import toy
from bftcore.errors import BadInput, CheckFailed

__all__ = ["cli", "main"]


def _quiet_libraries() -> None:
    """transformers' own progress bars and notices would drown ours."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="bftcore")
@click.option("--allow-pickle", is_flag=True,
              help="Load models whose weights are pickle files (.bin/.pt): converted once to safetensors "
                   "with torch's weights-only unpickler. Off by default: a pickle can run code.")
def cli(allow_pickle: bool) -> None:
    """Find where an aligned LLM's safety is only shallow, repair it, ship it, re-attack it.

    \b
    Example:
      bftcore demo                  # the whole pipeline on the embedded toy world (CPU)
    """
    _quiet_libraries()
    if allow_pickle:
        from bftcore import models

        models.ALLOW_PICKLE = True


for _command in (toy, demo, score, index_cmd, merge_cmd, inspect, gradient, attack, judge_cmd, complete, export_cmd, report, models):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: maps errors to exit codes with a one-line reason."""
    try:
        rv = cli.main(args=argv, prog_name="bftcore", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        err.print(f"bftcore: error: {' '.join(e.format_message().split())}{hint}",
                  markup=False, highlight=False)
        sys.exit(2)
    except click.ClickException as e:
        err.print(f"bftcore: error: {' '.join(e.format_message().split())}", markup=False)
        sys.exit(e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        err.print("bftcore: aborted")
        sys.exit(130)
    except BadInput as e:
        err.print(f"bftcore: error: {' '.join(str(e).split())}", markup=False, highlight=False)
        sys.exit(2)
    except MemoryError as e:  # pyarrow's ArrowMemoryError too: a limit, reported, never a traceback
        detail = " ".join(str(e).split())[:200]
        err.print(f"bftcore: error: out of memory{f' ({detail})' if detail else ''}; lower --batch-tokens "
                  "or the number of threads (RAYON_NUM_THREADS), or give the job more memory",
                  markup=False, highlight=False)
        sys.exit(2)
    except CheckFailed as e:
        if str(e):
            err.print(f"bftcore: {e}", markup=False, highlight=False)
        sys.exit(3)
    sys.exit(rv if isinstance(rv, int) else 0)
