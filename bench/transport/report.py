"""What a run reports: the JSON record, the machine facts, the three tables."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
from typing import Any

from bench.transport.metrics import METRICS, Samples
from bench.transport.sides import TRANSPORTS


def build(profile_name: str, profile: dict[str, int], runs: int, keys: list[str],
          samples: Samples, load_before: float) -> dict[str, Any]:
    """The run's record, as written by ``--json`` (the caller adds wall_seconds)."""
    return {
        "profile": profile_name,
        "runs": runs,
        "transports": keys,
        "sizes_mib": {k: profile[k] for k in ("stream", "upload", "download")},
        "commands": {k: profile[k] for k in ("stat", "true")},
        "machine": machine(),
        "loadavg_1min": {"before": round(load_before, 2),
                         "after": round(os.getloadavg()[0], 2)},
        "results": {m: {k: {"runs": v, "median": _median(v)} for k, v in per.items()}
                    for m, per in samples.values.items()},
        "cpu_ms_per_unit": {m: {k: {who: _median(v) for who, v in w.items()}
                                for k, w in per.items()} for m, per in samples.cpu.items()},
    }


def _median(v: list[float]) -> float | None:
    v = [x for x in v if x == x]  # drop NaN (a process already gone)
    return statistics.median(v) if v else None


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def machine() -> dict[str, Any]:
    """The hardware and the versions of everything measured."""
    import buildbot
    import buildbot_worker
    import foolscap
    import msgpack
    import OpenSSL
    import twisted

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "foolscap": foolscap.__version__,
        "buildbot": buildbot.version,
        "buildbot_worker": buildbot_worker.version,
        "pyopenssl": OpenSSL.__version__,
        "openssl": OpenSSL.SSL.SSLeay_version(OpenSSL.SSL.SSLEAY_VERSION).decode(),
        "msgpack": ".".join(map(str, msgpack.version)),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


# -- the tables (markdown) --------------------------------------------------


def tables(report: dict[str, Any]) -> str:
    """Ratios, then absolute values, then CPU cost."""
    return "\n".join(ratio_table(report) + median_table(report) + cpu_table(report))


def ratio_table(report: dict[str, Any]) -> list[str]:
    """FURL's median over each other transport's (nothing without FURL)."""
    keys, res = report["transports"], report["results"]
    others = [k for k in keys if k != "furl"]
    if "furl" not in keys or not others:
        return []
    out = ["Ratios of medians, FURL / other:\n",
           _row(["metric"] + [f"FURL/{TRANSPORTS[k]}" for k in others]), _rule(others)]
    for m in METRICS:
        sense = ">1: FURL faster" if m.higher else "<1: FURL faster"
        out.append(_row([f"{_label(report, m.key, m.label)}, {m.unit} ({sense})"]
                        + [_ratio(res[m.key]["furl"]["median"], res[m.key][k]["median"])
                           for k in others]))
    return out + [""]


def median_table(report: dict[str, Any]) -> list[str]:
    """Each transport's median [min-max]."""
    keys, res = report["transports"], report["results"]
    out = [f"Medians of {report['runs']} runs [min-max]:\n",
           _row(["metric"] + [TRANSPORTS[k] for k in keys]), _rule(keys)]
    for m in METRICS:
        cells = [_spread(m.fmt, res[m.key][k]["median"], res[m.key][k]["runs"])
                 for k in keys]
        better = "higher" if m.higher else "lower"
        out.append(_row([f"{_label(report, m.key, m.label)}, {m.unit} ({better} is better)"]
                        + cells))
    return out + [""]


def cpu_table(report: dict[str, Any]) -> list[str]:
    """Worker + master CPU milliseconds per MiB or per command."""
    keys = report["transports"]
    out = ["CPU, worker process + master process (ms per MiB, or per command):\n",
           _row(["metric"] + [TRANSPORTS[k] for k in keys]), _rule(keys)]
    for m in METRICS:
        if not m.cpu:
            continue
        cells = []
        for k in keys:
            c = report["cpu_ms_per_unit"][m.key][k]
            cells.append("n/a" if c["worker"] is None
                         else f"{c['worker']:.1f} + {c['master']:.1f}")
        out.append(_row([m.label] + cells))
    return out


def _spread(fmt: str, median: float | None, runs: list[float]) -> str:
    """``median [min-max]``, or just the median of one run."""
    if median is None:
        return "n/a"
    if len(runs) < 2:
        return fmt.format(median)
    return f"{fmt.format(median)} [{fmt.format(min(runs))}-{fmt.format(max(runs))}]"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def _label(report: dict[str, Any], key: str, label: str) -> str:
    if key in report["sizes_mib"]:
        return f"{label} ({report['sizes_mib'][key]} MiB)"
    if key in report["commands"]:
        return f"{label} (median of {report['commands'][key]})"
    return label


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _rule(columns: list[str]) -> str:
    return "|" + "---|" * (1 + len(columns))
