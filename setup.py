from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def supported() -> tuple[list[str], dict[str, list[str]]]:
    """supported-versions.txt, what CI proves: the Pythons, and each package's
    versions over its lines (floors and classifiers come from here)."""
    pythons: list[str] = []
    tested: dict[str, list[str]] = {}
    for line in (HERE / "supported-versions.txt").read_text().splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["python"]:
            pythons.append(words[1])
        else:
            for name, version in zip(words[::2], words[1::2]):
                tested.setdefault(name, []).append(version)
    return pythons, tested


def key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def floor(versions: list[str]) -> str:
    return f">={min(versions, key=key)}"


def span(versions: list[str]) -> str:
    """>=the lowest tested version, <the next major after the highest."""
    return f"{floor(versions)},<{key(max(versions, key=key))[0] + 1}"


PYTHONS, TESTED = supported()

setup(
    name="buildbot_furl",
    version="0.1.0",
    description="FURL-secured worker connections for Buildbot build farms (Foolscap)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="GPL-2.0-only",
    python_requires=floor(PYTHONS),
    packages=find_packages(include=["buildbot_furl", "buildbot_furl.*"]),
    install_requires=[
        "foolscap>=24.9.0",
        # calendar versions: no upper bound to guess
        "twisted" + floor(TESTED["twisted"]),
        "pyopenssl>=24",
        "click>=8.1",
        "msgpack>=1.0",
        "prometheus-client>=0.26",
        "magic-wormhole>=0.24,<1",
        "magic-wormhole-mailbox-server>=0.8,<1",
        "buildbot-worker" + span(TESTED["buildbot-worker"]),
    ],
    extras_require={
        "buildbot": ["buildbot" + span(TESTED["buildbot"])],
    },
    entry_points={
        "console_scripts": [
            "furl-master=buildbot_furl.cli.master:main",
            "furl-worker=buildbot_furl.cli.worker:main",
        ],
        "buildbot.worker": [
            "FurlWorker = buildbot_furl.buildbot:FurlWorker",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        *(f"Programming Language :: Python :: {v}" for v in PYTHONS),
        "Programming Language :: Python :: 3 :: Only",
        "Topic :: Software Development :: Build Tools",
    ],
)
