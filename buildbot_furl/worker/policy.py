"""What a worker allows its master, whatever the master asks: the policy file.

``DIR/furl-worker.policy`` is optional.  Without it the worker does what
its master asks, like any Buildbot worker.  With it, every command the
master starts is checked first, and a refused one never starts: the
master gets :class:`~buildbot_furl.errors.PolicyRefused`.  An example::

    [commands]
    # programs the master may run: names found in the worker's own PATH, or
    # absolute paths; "any" (the default) or "none" (file transfers only)
    allow = make, git, /usr/bin/python3

    [paths]
    # where the master may read and write, for commands and transfers:
    # directories, absolute or relative to the worker's directory
    # (default: the worker's directory; "any" for no limit)
    allow = ., /srv/cache

    [limits]
    max_upload = 100M      # worker -> master, per transfer
    max_download = 1G      # master -> worker, per transfer
    max_commands = 2       # at once

    [environment]
    # variables the master may set for a command ("any" or "none"; * and ?)
    allow = CC, CFLAGS, LANG, LC_*
    # the worker's own variables the master may see (Buildbot's worker info);
    # default: as "allow"
    disclose = PATH, LANG

The file is the admin's, not the master's: it must belong to the worker's
user (or root) and not be readable or writable by group or others (0600);
with a policy in force the worker's own files (this one, its FURL, state
and log) cannot be written, removed or replaced by the master.  It is read
again when it changes; a file that cannot be used (bad syntax, unsafe mode)
refuses everything until it is fixed, and a removed one stays in force
until the worker restarts.  See docs/security.md.
"""

from __future__ import annotations

import configparser
import dataclasses
import fnmatch
import os
import re
import shutil
import shlex
import stat
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from buildbot_furl.errors import ConfigError, PolicyRefused
from buildbot_furl.layout import WORKER_FILES
from buildbot_furl.protocol import GET_COMMAND, PUT_COMMAND
from buildbot_furl.sizes import parse_bytes, show_bytes

log = Logger()

SHELL = "/bin/sh"  # what buildbot-worker runs a command given as one string with
_KEYS = {
    "commands": ("allow",),
    "paths": ("allow",),
    "limits": ("max_upload", "max_download", "max_commands"),
    "environment": ("allow", "disclose"),
}
_ENV_PATTERN = re.compile(r"^[A-Za-z_*?][A-Za-z0-9_*?]*$")
#: Variables that make an allowed program load or run other code: the dynamic
#: loader's, the shells' start-up files, and interpreters' module paths and
#: options.  While [commands] is restricted they are refused unless the
#: policy's [environment] names them (a pattern with more than wildcards), since
#: ``LD_PRELOAD=./evil.so true`` would otherwise run anything as an allowed ``true``.
CODE_LOADING = ("LD_*", "GCONV_PATH", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4",
                "PYTHON*", "PERL5*", "PERLLIB", "PERL_*", "RUBY*", "GEM_*", "NODE_OPTIONS",
                "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS",
                "LUA_*", "TCLLIBPATH", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_EXEC_PATH",
                "GIT_PROXY_COMMAND", "GIT_ASKPASS", "SSH_ASKPASS", "GIT_CONFIG*",
                "GIT_EXTERNAL_DIFF", "MAKEFLAGS", "MFLAGS", "GNUMAKEFLAGS")
_MAGIC = re.compile(r"[*?\[]")


def refusal(rule: str, message: str) -> PolicyRefused:
    """PolicyRefused(``message``), made under ``rule`` (a part of the file:
    commands, paths, environment, max_commands, max_upload, max_download;
    or unknown_command, invalid_policy), which the worker's metrics count by."""
    return PolicyRefused(message).under(rule)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one command may move: bytes per transfer, and where from (None: no limit)."""

    upload: int | None = None  # worker -> master
    download: int | None = None  # master -> worker
    #: the directories it may read and write ([paths]), for what it opens while
    #: it runs (its logfiles: buildbot_furl.worker.logfiles)
    paths: tuple[str, ...] | None = None


NO_LIMITS = Limits()


@dataclasses.dataclass(frozen=True)
class Policy:
    """A parsed policy file.  ``None`` in a field means "any"."""

    basedir: str  # the worker's directory, real path
    programs: tuple[str, ...] | None = None  # () means none
    roots: tuple[str, ...] | None = None
    limits: Limits = NO_LIMITS
    max_commands: int | None = None
    environment: tuple[str, ...] | None = None
    disclosed: tuple[str, ...] | None = None  # the worker's variables the master may see

    def summary(self) -> dict[str, Any]:
        """What is in force, for ``furl-worker status --json``."""
        return {"programs": _listed(self.programs), "paths": _listed(self.roots),
                "max_upload": self.limits.upload, "max_download": self.limits.download,
                "max_commands": self.max_commands, "environment": _listed(self.environment),
                "disclosed": _listed(self.disclosed)}

    def disclose(self, environ: dict[str, Any]) -> dict[str, Any]:
        """The part of the worker's environment the master may see."""
        if self.disclosed is None:
            return environ
        return {k: v for k, v in environ.items()
                if any(fnmatch.fnmatchcase(str(k), p) for p in self.disclosed)}

    def one_line(self) -> str:
        """The same, in one line."""
        def size(n: int | None) -> str:
            return "any" if n is None else show_bytes(n)

        s = self.summary()
        return (f"programs: {_words(s['programs'])}; paths: {_words(s['paths'])}; "
                f"upload {size(self.limits.upload)}, download {size(self.limits.download)}, "
                f"commands at once: {self.max_commands or 'any'}; "
                f"environment: {_words(s['environment'])}; "
                f"disclosed: {_words(s['disclosed'])}")

    # -- the checks -----------------------------------------------------------
    def check(self, command: str, args: dict[str, Any], running: int) -> Limits:
        """Refuse (PolicyRefused) what this policy does not allow; the limits
        the command runs under.  May rewrite ``args`` (a shell command's
        program becomes the absolute path that was checked)."""
        if self.max_commands is not None and running >= self.max_commands:
            raise refusal("max_commands", f"the worker already runs {running} command(s), "
                          "the most its policy allows at once")
        checker = _CHECKS.get(command)
        if checker is None:
            raise refusal("unknown_command",
                          f"command {command!r} is not one the worker's policy knows")
        checker(self, args)
        return dataclasses.replace(self.limits, paths=self.roots)

    def _real(self, path: Any, what: str) -> str:
        if not isinstance(path, str) or not path or "\0" in path:
            raise refusal("paths", f"{what}: not a path")
        return os.path.realpath(os.path.join(self.basedir, os.path.expanduser(path)))

    def read(self, path: Any, what: str = "path") -> str:
        """``path`` (absolute or relative to the worker's directory), resolved
        through its symlinks, if the policy lets the master use it."""
        real = self._real(path, what)
        if self.roots is not None and not any(_within(real, root) for root in self.roots):
            raise refusal("paths", f"{what} {path!r} is outside the paths the worker's "
                          "policy allows")
        return real

    def write(self, path: Any, what: str = "path") -> str:
        """As :meth:`read`, and never the worker's own files or directory."""
        real = self.read(path, what)
        if _within(self.basedir, real):
            raise refusal("paths", f"{what} {path!r} is the worker's directory or holds it")
        parent, name = os.path.split(real)
        if parent == self.basedir and any(name == n or name.startswith(n + ".")
                                          for n in WORKER_FILES):
            raise refusal("paths", f"{what} {path!r} is one of the worker's own files")
        return real

    def _glob(self, pattern: Any) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise refusal("paths", "glob: not a pattern")
        parts = pattern.split(os.sep)
        fixed = next((i for i, part in enumerate(parts) if _MAGIC.search(part)), len(parts))
        if ".." in parts[fixed:]:
            raise refusal("paths", f"glob pattern {pattern!r}: '..' after a wildcard")
        prefix = os.sep.join(parts[:fixed])
        if not prefix:  # "/*", "/[e]tc/...": the wildcard is in the first component
            prefix = os.sep if pattern.startswith(os.sep) else "."
        self.read(prefix, "glob pattern")

    def _program(self, args: dict[str, Any], workdir: str) -> None:
        command = args.get("command")
        if self.programs == ():
            raise refusal("commands",
                          "the worker's policy allows no programs (file transfers only)")
        if self.programs is None:
            return
        if isinstance(command, str):
            argv0, listed = SHELL, False
        elif isinstance(command, list | tuple) and command:
            argv0, listed = _plain(command[0]), True
        else:
            raise refusal("commands", "shell: no command")
        if not isinstance(argv0, str) or not argv0:
            raise refusal("commands", "shell: the program is not a string")
        found = _which(argv0, workdir)
        if found is not None and "/" not in argv0 and self.roots is not None and any(
                _within(os.path.realpath(found), root) for root in self.roots):
            # a name found in a directory the master may write: it could have put it there
            raise refusal("commands", f"program {argv0!r} is found in "
                          f"{os.path.dirname(found)!r}, inside the paths the worker's "
                          "policy lets the master write")
        allowed = found is not None and any(
            (entry_path := _which(entry, workdir)) is not None
            and os.path.realpath(entry_path) == os.path.realpath(found)
            for entry in self.programs)
        if not allowed:
            shown = "a command given as one string (run by /bin/sh)" if not listed else \
                f"program {argv0!r}"
            raise refusal("commands", f"{shown} is not one the worker's policy allows")
        if listed and found is not None:
            # run what was checked, whatever PATH the master sets
            args["command"] = [found, *list(command)[1:]]

    def _environment(self, env: Any) -> None:
        if not env:
            return
        if not isinstance(env, dict):
            raise refusal("environment", "shell: the environment is not a mapping")
        refused = sorted(str(k) for k in env if not self._may_set(str(k)))
        if refused:
            shown = ", ".join(refused[:5]) + (" ..." if len(refused) > 5 else "")
            raise refusal("environment",
                          f"the worker's policy does not let the master set {shown}")

    def _may_set(self, name: str) -> bool:
        """May the master set variable ``name`` for a command?"""
        if self.programs is not None and any(fnmatch.fnmatchcase(name, p)
                                             for p in CODE_LOADING):
            # only if the admin named it: "*" or "any" do not count
            return any(fnmatch.fnmatchcase(name, p) and p.strip("*?") != ""
                       for p in self.environment or ())
        return self.environment is None or any(fnmatch.fnmatchcase(name, p)
                                               for p in self.environment)

    def _shell(self, args: dict[str, Any]) -> None:
        workdir = self.read(args.get("workdir"), "workdir")
        self._program(args, workdir)
        self._environment(args.get("env"))
        logfiles = args.get("logfiles") or {}
        if isinstance(logfiles, dict):
            for value in logfiles.values():
                name = value.get("filename") if isinstance(value, dict) else value
                self.read(os.path.join(workdir, name) if isinstance(name, str) else None,
                          "logfile")

    def builder_dirs(self, builddirs: list[str]) -> None:
        """Refuse a builder directory outside the allowed paths (setBuilderList
        creates them; the standalone master's is the worker's directory)."""
        for d in builddirs:
            self.read(d, "builder directory")

    def _upload_file(self, args: dict[str, Any]) -> None:
        real = self.read(args.get("path"))
        if self.limits.upload is not None:
            try:
                size = os.stat(real).st_size
            except OSError:
                return  # buildbot-worker reports a file it cannot open
            if size > self.limits.upload:
                raise refusal("max_upload", f"{args.get('path')!r} is {show_bytes(size)}, "
                              f"more than the worker's policy lets it upload "
                              f"({show_bytes(self.limits.upload)})")


_Check = Callable[[Policy, dict[str, Any]], None]


def _reads(key: str, what: str = "path") -> _Check:
    def check(policy: Policy, args: dict[str, Any]) -> None:
        policy.read(args.get(key), what)
    return check


def _writes(key: str, what: str = "path") -> _Check:
    def check(policy: Policy, args: dict[str, Any]) -> None:
        value = args.get(key)
        for path in value if isinstance(value, list | tuple) and value else [value]:
            policy.write(path, what)
    return check


def _both(*checks: _Check) -> _Check:
    def check(policy: Policy, args: dict[str, Any]) -> None:
        for c in checks:
            c(policy, args)
    return check


_CHECKS: dict[str, _Check] = {
    "shell": Policy._shell,
    "uploadFile": Policy._upload_file,
    "upload_file": Policy._upload_file,
    "uploadDirectory": _reads("path"),
    "upload_directory": _reads("path"),
    "downloadFile": _writes("path"),
    "download_file": _writes("path"),
    "mkdir": _writes("paths", "mkdir"),
    "rmdir": _writes("paths", "rmdir"),
    "rmfile": _writes("path", "rmfile"),
    "cpdir": _both(_reads("from_path", "cpdir from"), _writes("to_path", "cpdir to")),
    "stat": _reads("path", "stat"),
    "listdir": _reads("path", "listdir"),
    "glob": lambda policy, args: policy._glob(args.get("path")),
    PUT_COMMAND: _writes("path"),
    GET_COMMAND: _reads("path"),
}


def _within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _plain(arg: Any) -> Any:
    """An argument as it runs (Buildbot sends secrets as ("obfuscated", real, shown))."""
    if isinstance(arg, list | tuple) and len(arg) == 3 and arg[0] == "obfuscated":
        return arg[1]
    return arg


def _which(program: str, workdir: str) -> str | None:
    """Where ``program`` is: a path (relative to ``workdir``), or a name in
    the worker's own PATH (not the one the master may set)."""
    if "/" in program:
        path = os.path.join(workdir, program)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    # only absolute entries: an empty one or "." would mean whatever directory
    # the worker happens to be in
    search = os.pathsep.join(p for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
                             if os.path.isabs(p))
    found = shutil.which(program, path=search)
    return None if found is None else os.path.abspath(found)


def _listed(value: tuple[str, ...] | None) -> list[str] | str:
    if value is None:
        return "any"
    return list(value) if value else "none"


def _words(value: list[str] | str) -> str:
    return value if isinstance(value, str) else ", ".join(value)


# -- reading ------------------------------------------------------------------------------


def _items(raw: str) -> list[str]:
    return [item.strip() for line in raw.splitlines() for item in line.split(",")
            if item.strip()]


def _any_none(items: list[str], where: str) -> tuple[str, ...] | None:
    words = [i.lower() for i in items]
    if words == ["any"]:
        return None
    if words == ["none"]:
        return ()
    if "any" in words or "none" in words:
        raise ConfigError(f"{where}: 'any' and 'none' stand alone")
    if not items:
        raise ConfigError(f"{where}: empty (write 'none' for nothing)")
    return tuple(items)


def parse_policy(text: str, basedir: str, origin: str = "policy") -> Policy:
    """A Policy from the text of a policy file; ConfigError saying where it is wrong."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"),
                                       default_section="\0no-defaults")
    try:
        parser.read_string(text, source=origin)
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(f"{origin}, line {e.lineno}: a setting before any [section]") from None
    except configparser.ParsingError as e:
        lineno, line = e.errors[0]
        raise ConfigError(f"{origin}, line {lineno}: cannot read {line} "
                          "(write: name = value)") from None
    except configparser.Error as e:
        raise ConfigError(f"{origin}: {' '.join(str(e).split())}") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ConfigError(f"{origin}, line {line}: a NUL byte (is this a text file?)")
    base = os.path.realpath(basedir)
    fields: dict[str, Any] = {}
    for section in parser.sections():
        known = _KEYS.get(section)
        if known is None:
            raise ConfigError(f"{origin}: unknown section [{section}] (known: "
                              f"{', '.join('[' + k + ']' for k in _KEYS)})")
        for key, raw in parser.items(section):
            where = f"{origin}: [{section}] {key}"
            if key not in known:
                raise ConfigError(f"{where}: unknown setting (known: {', '.join(known)})")
            fields[f"{section}.{key}"] = (raw, where)

    def listed(name: str) -> tuple[tuple[str, ...] | None, str] | None:
        if name not in fields:
            return None
        raw, where = fields[name]
        return _any_none(_items(raw), where), where

    programs = None
    if (got := listed("commands.allow")) is not None:
        programs, where = got
        for p in programs or ():
            if "/" in p and not os.path.isabs(p):
                raise ConfigError(f"{where}: {p!r}: give a program's name or its absolute path")
    roots: tuple[str, ...] | None = (base,)
    if (got := listed("paths.allow")) is not None:
        chosen, where = got
        if chosen == ():
            raise ConfigError(f"{where}: 'none' would leave the master nowhere to build; "
                              "give directories, or leave the setting out for the "
                              "worker's directory")
        roots = None if chosen is None else tuple(
            os.path.realpath(os.path.join(base, os.path.expanduser(p))) for p in chosen)
    def variables(name: str) -> tuple[tuple[str, ...] | None, str] | None:
        got = listed(name)
        for pattern in (got[0] or ()) if got is not None else ():
            if not _ENV_PATTERN.match(pattern):
                raise ConfigError(f"{got[1]}: {pattern!r} is not a variable name or pattern")
        return got

    environment = None
    if (got := variables("environment.allow")) is not None:
        environment, where = got
    disclosed = environment
    if (got := variables("environment.disclose")) is not None:
        disclosed, where = got
    sizes: dict[str, int | None] = {}
    for key in ("max_upload", "max_download"):
        raw, where = fields.get(f"limits.{key}", (None, ""))
        try:
            sizes[key] = None if raw is None else parse_bytes(raw.strip())
        except ConfigError:
            raise ConfigError(f"{where}: {raw.strip()!r} is not a size (give bytes, or a "
                              "number with k, M or G)") from None
    max_commands = None
    if "limits.max_commands" in fields:
        raw, where = fields["limits.max_commands"]
        if not raw.strip().isdigit() or int(raw) < 1:
            raise ConfigError(f"{where}: give a whole number, 1 or more")
        max_commands = int(raw)
    return Policy(base, programs, roots, Limits(sizes["max_upload"], sizes["max_download"]),
                  max_commands, environment, disclosed)


def read_policy(path: str, basedir: str) -> Policy:
    """Read and check a policy file (its owner and mode too)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file")
        if st.st_uid not in (os.geteuid(), 0):
            raise ConfigError(f"{path} belongs to another user (uid {st.st_uid}); it must be "
                              "the worker's user's or root's")
        if st.st_mode & 0o077:
            raise ConfigError(f"{path} is accessible by group or others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); fix it with: "
                              f"chmod 600 {shlex.quote(path)}")
        if st.st_size > 1 << 20:
            raise ConfigError(f"{path} is larger than a policy file can be (1 MiB)")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(1 << 20)
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    return parse_policy(text, basedir, path)


def _signature(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return (-1,)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode,
            st.st_uid)


class PolicyFile:
    """The policy in force, read again whenever its file changes."""

    INVALID = ("the worker's policy file cannot be used, so it refuses every request until "
               "its admin fixes it")

    def __init__(self, path: str, basedir: str) -> None:
        self.path = path
        self.basedir = basedir
        self.policy: Policy | None = None
        self.error: str | None = None  # why the file cannot be used (fail closed)
        self._sig: tuple[int, ...] | None = None
        self._seen = False  # a policy file was there once: its removal changes nothing
        self.refresh()

    def refresh(self) -> None:
        """Read the file again if it changed since the last look."""
        sig = _signature(self.path)
        if sig == self._sig:
            return
        self._sig = sig
        if sig is None:
            if self._seen:
                log.warn("policy file {path} was removed: the policy read last stays in "
                         "force until the worker restarts", path=self.path)
            return
        self._seen = True
        try:
            self.policy = read_policy(self.path, self.basedir)
        except ConfigError as e:
            self.policy, self.error = None, str(e)
            log.error("policy file refused, every request is refused until it is fixed: "
                      "{err}", err=self.error)
            return
        self.error = None
        log.info("policy in force from {path}: {policy}", path=self.path,
                 policy=self.policy.one_line())

    def check(self, command: str, args: dict[str, Any], running: int) -> Limits:
        """See :meth:`Policy.check`; no policy file: everything is allowed."""
        self.refresh()
        if self.error is not None:
            raise refusal("invalid_policy", self.INVALID)
        if self.policy is None:
            return NO_LIMITS
        return self.policy.check(command, args, running)

    def builder_dirs(self, builddirs: list[str]) -> None:
        """See :meth:`Policy.builder_dirs`; no policy file: any.  A broken
        policy allows the worker's directory only (its commands are refused,
        each saying why)."""
        self.refresh()
        if self.error is not None:
            Policy(os.path.realpath(self.basedir),
                   roots=(os.path.realpath(self.basedir),)).builder_dirs(builddirs)
        elif self.policy is not None:
            self.policy.builder_dirs(builddirs)

    def disclose(self, environ: dict[str, Any]) -> dict[str, Any]:
        """See :meth:`Policy.disclose`; no policy file: all of it (Buildbot's
        behaviour); a broken one: none of it (fail closed)."""
        self.refresh()
        if self.error is not None:
            return {}
        return environ if self.policy is None else self.policy.disclose(environ)

    def summary(self) -> dict[str, Any] | None:
        if self.error is not None:
            return {"error": self.error}
        return None if self.policy is None else self.policy.summary()
