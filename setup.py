from setuptools import find_packages, setup

setup(
    name="buildbot_furl",
    version="0.1.0",
    description="FURL-secured worker connections for Buildbot build farms (Foolscap)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="GPL-2.0-only",
    python_requires=">=3.11",
    packages=find_packages(include=["buildbot_furl", "buildbot_furl.*"]),
    install_requires=[
        "foolscap>=24.9.0",
        "twisted>=24.11",
        "pyopenssl>=24",
        "click>=8.1",
        "msgpack>=1.0",
        "prometheus-client>=0.26",
        "magic-wormhole>=0.24,<1",
        "magic-wormhole-mailbox-server>=0.8,<1",
        "buildbot-worker>=4.0,<5",
    ],
    extras_require={
        "buildbot": ["buildbot>=4.0,<5"],
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
        "Programming Language :: Python :: 3.11",
        "Topic :: Software Development :: Build Tools",
    ],
)
