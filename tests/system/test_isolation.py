"""The daemons run isolated from where they are started, and never dump core.

A master that may only transfer files can write ``msgpack.py`` into the worker
directory; the worker's admin then runs ``cd DIR && furl-worker start``.  Without
isolation the daemon would import that file (the starting directory comes first on
``sys.path``) and run it with the worker's rights.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from buildbot_furl.testing.farm import Farm
from buildbot_furl.testing.procs import child_env

PLANT = """\
import os
open(os.environ["PLANTED_MARK"], "w").write("imported")
raise ImportError("planted")
"""


def _start_in(cwd: Path, argv: list[str], mark: Path) -> subprocess.CompletedProcess[str]:
    """``argv`` through the installed console script (as an admin types it:
    the script itself never has its directory on ``sys.path``)."""
    script = Path(sys.executable).parent / argv[0]
    return subprocess.run([str(script), *argv[1:]], cwd=cwd, capture_output=True,
                          text=True, env=child_env({"PLANTED_MARK": str(mark)}), timeout=90,
                          stdin=subprocess.DEVNULL)


def _core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4]
    raise AssertionError("no core limit line")


def test_daemons_do_not_import_from_their_starting_directory(farm: Farm, tmp_path: Path
                                                              ) -> None:
    furl = farm.create_worker("w1")
    mark = tmp_path / "planted-ran"
    # The master, started from a directory holding a planted module.
    mcwd = tmp_path / "master-cwd"
    mcwd.mkdir()
    (mcwd / "msgpack.py").write_text(PLANT)
    p = _start_in(mcwd, ["furl-master", "start", "-d", str(farm.mdir)], mark)
    farm.procs.track_pidfile(farm.mdir / "furl-master.pid")
    assert p.returncode == 0, p.stderr
    # The worker, started from inside its own directory, where a master could
    # have put the module with a transfer.
    wdir = farm.wdir("w1")
    wdir.mkdir()
    (wdir / "msgpack.py").write_text(PLANT)
    furl_file = tmp_path / "w1.furl"
    furl_file.write_text(furl + "\n")
    furl_file.chmod(0o600)
    p = _start_in(wdir, ["furl-worker", "start", ".", "--furl-file",
                         str(furl_file)], mark)
    farm.procs.track_pidfile(wdir / "furl-worker.pid")
    assert p.returncode == 0, p.stderr
    assert farm.wait_for(lambda: farm.workers()["w1"]["connected"], 30)
    assert not mark.exists(), "a module from the starting directory was imported"
    # Both daemons hold secrets: no core files of them.
    for pidfile in (farm.mdir / "furl-master.pid", wdir / "furl-worker.pid"):
        assert _core_limit(int(pidfile.read_text())) == "0"


def test_forbid_core_dumps_clears_the_dumpable_flag() -> None:
    code = ("import ctypes; from buildbot_furl.daemon import forbid_core_dumps; "
            "libc = ctypes.CDLL(None); before = libc.prctl(3, 0, 0, 0, 0); "
            "forbid_core_dumps(); print(before, libc.prctl(3, 0, 0, 0, 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(), check=True).stdout.split()
    assert out == ["1", "0"]


def test_daemon_environ_drops_relative_python_path_entries() -> None:
    from buildbot_furl.daemon import daemon_environ

    env = daemon_environ({"PYTHONPATH": ":/opt/lib:.:rel", "HOME": "/root"})
    assert env == {"PYTHONPATH": "/opt/lib", "HOME": "/root"}
    assert "PYTHONPATH" not in daemon_environ({"PYTHONPATH": ":"})
