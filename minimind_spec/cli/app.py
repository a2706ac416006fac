"""The typer application and the helpers every command shares.

Commands are thin: parse options, call one library function, print. A `SpecError` becomes
one line per problem on stderr and exit code 2; library code never exits.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
import typer
from typer.core import TyperOption
from rich.console import Console
from rich.markup import escape

from ..errors import InputError, Problem, Severity, SpecError

_typed_display: Callable[[TyperOption, click.Context], str | None] | None = getattr(TyperOption, "display_type_rich", None)


def _flags_without_a_type(option: TyperOption, ctx: click.Context) -> str | None:
    """Typer shows `<bool>` in the type column of a flag, which takes no value: show nothing there."""
    assert _typed_display is not None
    return None if option.is_flag else _typed_display(option, ctx)


if _typed_display is not None:  # typer versions that show a type column for flags: replace that method
    setattr(TyperOption, "display_type_rich", _flags_without_a_type)

app = typer.Typer(
    name="minimind-spec",
    help="Compile a MiniMind JSON architecture spec: validate it, explain every resolved value, "
    "build the module graph with its true parameter counts, and check the numbers the spec declares.",
    epilog="Start with `minimind-spec build spec/minimind.json`; `minimind-spec COMMAND --help` explains each command. "
    "Exit codes: 0 ok, 1 differences (diff) or stale schema (schema --check), 2 unusable input.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs rewrap to the terminal; `code` shows as code
)

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_USAGE = 2


def print_problems(problems: list[Problem] | tuple[Problem, ...], title: str | None = None) -> None:
    """One line per problem on stderr: `warning /path: message (hint)`."""
    if title and problems:
        err_console.print(title)
    for p in problems:
        style = "red" if p.severity == Severity.ERROR else "yellow"
        err_console.print(f"[{style}]{p.severity}[/{style}] {p}", markup=True)


def fail(error: SpecError) -> NoReturn:
    where = f"{error.source}: " if error.source else ""
    count = len(error.problems)
    err_console.print(f"[red bold]{where}{count} problem{'s' if count != 1 else ''}[/red bold]")
    print_problems(error.problems)
    raise typer.Exit(EXIT_USAGE)


@contextmanager
def spec_errors() -> Iterator[None]:
    """Turn a SpecError raised inside the block into the CLI's error report and exit 2."""
    try:
        yield
    except SpecError as error:
        fail(error)
    except InputError as error:
        err_console.print(f"[red]error[/red] {escape(str(error))}", markup=True)  # paths and log lines may hold [brackets]
        raise typer.Exit(EXIT_USAGE) from None
    except OSError as error:  # an output path that cannot be written: unusable input too
        where = f"{error.filename}: " if error.filename else ""
        err_console.print(f"[red]error[/red] {where}{error.strerror or error}", markup=True)
        raise typer.Exit(EXIT_USAGE) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator form of `spec_errors` for command functions."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with spec_errors():
            return fn(*args, **kwargs)

    return wrapper
