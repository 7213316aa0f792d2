"""What both CLIs share: one-line errors, never a traceback; exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from buildbot_furl.cli.exits import Exit, code_for
from buildbot_furl.display import printable, without_furls
from buildbot_furl.errors import ConfigError, FurlError


class Failed(click.ClickException):
    """An error printed as one line: ``PROG: error: MESSAGE``."""

    def __init__(self, message: str, exit_code: int = Exit.ERROR) -> None:
        super().__init__(message)
        self.exit_code = int(exit_code)
        ctx = click.get_current_context(silent=True)
        self.prog = (ctx.find_root().info_name if ctx else None) or "furl"

    def show(self, file: Any = None) -> None:
        # the message may carry a peer's text (a worker's error): no escapes;
        # and what the user typed, maybe a FURL where a name or a path belongs
        text = printable(without_furls(self.format_message()))
        click.echo(f"{self.prog}: error: {text}", err=True)


def guarded(exit_code: int = Exit.ERROR) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn our errors and OS errors into one clean line and an exit code."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Failed:
                raise
            except ConfigError as e:
                # a bad file or value is the same mistake whatever the command:
                # always exit 1 (not the command's "could not reach" code)
                raise Failed(str(e), Exit.ERROR) from None
            except FurlError as e:
                raise Failed(str(e), code_for(e, exit_code)) from None
            except PermissionError as e:
                raise Failed(f"permission denied: {e.filename}") from None
            except OSError as e:
                where = f": {e.filename}" if e.filename else ""
                raise Failed(f"{e.strerror or e}{where}") from None
            except KeyboardInterrupt:
                click.echo("interrupted", err=True)
                sys.exit(Exit.INTERRUPTED)

        return wrapper

    return deco


def run_main(group: click.Group, prog: str, args: list[str] | None = None) -> None:
    """Run a click group on ``args`` (default: the command line); a bad
    command line exits with Exit.USAGE (64), so that 2 keeps its one meaning
    (the request could not be made).  Tests pass ``args`` to run a command
    in-process, exactly as its console script would."""
    try:
        rv = group.main(args=args, prog_name=prog, standalone_mode=False)
    except click.ClickException as e:
        # click echoes what was typed ("unexpected extra argument (...)", "'...'
        # is not a valid float"): a FURL pasted in the wrong place is cut short
        e.message = without_furls(e.message)
        e.show()
        sys.exit(Exit.USAGE if isinstance(e, click.UsageError) else e.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(Exit.ERROR)
    sys.exit(rv if isinstance(rv, int) else 0)


def dir_option(cls: type, *decls: str, envvar: str | None = None,
               help: str = "") -> Callable[[Any], Any]:  # noqa: A002 - click's name
    """A directory option that may be given to the group or to a command
    (``furl-master -d DIR run ...`` or ``furl-master run -d DIR ...``); it
    lands in the ``basedir`` of the command line's ``cls`` object."""

    def store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        obj = ctx.ensure_object(cls)
        if value is not None:
            obj.basedir = value

    return click.option(*decls, envvar=envvar, default=None, expose_value=False,
                        callback=store, type=click.Path(file_okay=False), help=help)


def note(message: str) -> None:
    """Human text: always stderr, so stdout stays machine-readable."""
    click.echo(message, err=True)
