"""examples/systemd: the unit files parse, carry their hardening, and pass
``systemd-analyze verify`` (when the tool is installed)."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildbot_furl.testing.procs import ROOT

UNITS = ROOT / "examples" / "systemd"
MASTER = UNITS / "furl-master.service"
WORKER = UNITS / "furl-worker@.service"
VENV_BIN = "/opt/furl/venv/bin/"  # where the shipped units expect furl-master/furl-worker

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (the unit files are only checked by parsing them)")


# --- parsing, independent of systemd ---

def read_unit(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",),
                                   comment_prefixes=("#", ";"), empty_lines_in_values=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    cp.read_string(text)
    return cp


COMMON = {
    "Type": "simple",
    "Restart": "on-failure",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
}

MASTER_EXPECTED = {
    **COMMON,
    "User": "furl",
    "Group": "furl",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "UMask": "0077",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/srv/furl-master",
    "ProtectHome": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
}

WORKER_EXPECTED = {
    **COMMON,
    "User": "furl-worker",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WorkingDirectory": "/srv/furl-workers/%i",
    "KillMode": "control-group",
    "UMask": "0022",
    "ProtectSystem": "full",
}


def unit_problems(text: str, expected: dict[str, str], argv: list[str]) -> list[str]:
    """What is missing or wrong in a unit's text, as readable lines."""
    try:
        unit = read_unit(text)
    except configparser.Error as e:
        return [f"does not parse: {e}"]
    problems = []
    for section in ("Unit", "Service", "Install"):
        if not unit.has_section(section):
            problems.append(f"no [{section}] section")
    if problems:
        return problems
    svc = unit["Service"]
    for key, value in expected.items():
        if svc.get(key) != value:
            problems.append(f"[Service] {key}={svc.get(key)!r}, expected {value!r}")
    exec_start = svc.get("ExecStart", "").split()
    if exec_start[:len(argv)] != argv:
        problems.append(f"ExecStart={' '.join(exec_start)!r} does not start with {' '.join(argv)!r}")
    if "--nodaemon" not in exec_start:
        problems.append("ExecStart lacks --nodaemon (systemd must supervise the process itself)")
    if not re.fullmatch(r"\d+(\.\d+)?s?", svc.get("RestartSec", "")):
        problems.append(f"RestartSec={svc.get('RestartSec')!r}, expected a number of seconds")
    if int(svc.get("LimitNOFILE", "1024").split(":")[0]) < 65536:
        problems.append("LimitNOFILE below 65536: idle connections exhaust 1024 descriptors")
    if unit["Install"].get("WantedBy") != "multi-user.target":
        problems.append("[Install] WantedBy is not multi-user.target")
    # cffi's ffi.callback() (pyOpenSSL's verify and info callbacks) needs W+X memory:
    # with MemoryDenyWriteExecute every TLS connection fails.
    if svc.get("MemoryDenyWriteExecute", "no") not in ("no", "false", "0", "off"):
        problems.append("MemoryDenyWriteExecute is set: it breaks pyOpenSSL's cffi callbacks")
    return problems


def test_master_unit_settings() -> None:
    text = MASTER.read_text(encoding="utf-8")
    assert unit_problems(text, MASTER_EXPECTED,
                         [VENV_BIN + "furl-master", "start", "-d", "/srv/furl-master"]) == []
    svc = read_unit(text)["Service"]
    assert set(svc["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_worker_unit_settings() -> None:
    text = WORKER.read_text(encoding="utf-8")
    assert unit_problems(text, WORKER_EXPECTED,
                         [VENV_BIN + "furl-worker", "start", "/srv/furl-workers/%i"]) == []
    svc = read_unit(text)["Service"]
    args = svc["ExecStart"].split()
    assert args[args.index("--wait") + 1] == "0"  # keep retrying when the master is down at boot
    assert int(svc["TimeoutStopSec"].rstrip("s")) >= 30  # time for a build command to be interrupted


def test_settings_check_catches_a_broken_unit() -> None:
    text = MASTER.read_text(encoding="utf-8")
    broken = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes").replace(" --nodaemon", "")
    problems = unit_problems(broken, MASTER_EXPECTED,
                             [VENV_BIN + "furl-master", "start", "-d", "/srv/furl-master"])
    assert any("NoNewPrivileges" in p for p in problems)
    assert any("--nodaemon" in p for p in problems)


# --- systemd-analyze verify ---

def _executable(name: str) -> str:
    """An existing executable to stand in for /opt/furl/venv/bin/NAME (verify
    checks that ExecStart's program exists): this venv's script if installed."""
    for cand in (Path(sys.executable).parent / name, shutil.which(name), shutil.which("true"),
                 "/bin/true"):
        # a path systemd would split or expand (spaces, %, $) is no use here
        if cand and os.access(cand, os.X_OK) and re.fullmatch(r"[\w./+-]+", str(cand)):
            return str(cand)
    raise AssertionError("no executable to stand in for " + name)


def _installable(text: str) -> str:
    return re.sub(re.escape(VENV_BIN) + r"(furl-master|furl-worker)\b",
                  lambda m: _executable(m.group(1)), text)


def verify(unit: Path) -> list[str]:
    """Run systemd-analyze verify on one unit file; the lines of its output that
    concern this unit (warnings, errors), plus its exit status if non-zero.

    Lines about other units (the host's own, pulled in as dependencies) are
    left out: only lines naming this unit's file are kept."""
    assert SYSTEMD_ANALYZE is not None
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_LOG_COLOR": "0",
           "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
    p = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, env=env, timeout=120,
                       stdin=subprocess.DEVNULL)
    names = {unit.name}
    if "@" in unit.name:  # an instance: its template's name too
        names.add(re.sub(r"@[^.]*\.", "@.", unit.name))
    lines = [line for line in (p.stdout + p.stderr).splitlines()
             if any(n in line for n in names)]
    if p.returncode != 0:
        lines.append(f"systemd-analyze verify exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return lines


def install_copies(tmp_path: Path, master_text: str, worker_text: str) -> tuple[Path, Path]:
    """The units as an admin would install them, in tmp_path: the master, the
    worker template, and an instance of it (furl-worker@test.service)."""
    master = tmp_path / "furl-master.service"
    master.write_text(_installable(master_text), encoding="utf-8")
    worker = _installable(worker_text)
    (tmp_path / "furl-worker@.service").write_text(worker, encoding="utf-8")
    instance = tmp_path / "furl-worker@test.service"
    instance.write_text(worker, encoding="utf-8")
    return master, instance


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    master, instance = install_copies(tmp_path, MASTER.read_text(encoding="utf-8"),
                                      WORKER.read_text(encoding="utf-8"))
    assert verify(master) == []
    assert verify(instance) == []
    assert verify(tmp_path / "furl-worker@.service") == []


@needs_systemd_analyze
@pytest.mark.parametrize("which", ["master", "worker"])
def test_verify_reports_a_broken_unit(tmp_path: Path, which: str) -> None:
    master_text = MASTER.read_text(encoding="utf-8")
    worker_text = WORKER.read_text(encoding="utf-8")
    if which == "master":
        master_text = master_text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    else:
        worker_text = worker_text.replace("ProtectSystem=full", "ProtectSystem=fulll")
    master, instance = install_copies(tmp_path, master_text, worker_text)
    problems = verify(master if which == "master" else instance)
    assert problems, "systemd-analyze verify found nothing wrong in a broken unit"
    assert any(("NoNewPrivilege" if which == "master" else "fulll") in p for p in problems)
