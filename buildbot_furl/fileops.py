"""File checks shared by both ends of a standalone put/get.

The master runs this module on the worker with the worker's own
interpreter (``python -m buildbot_furl.fileops ...``, through the shell
command), so the worker's bytes are hashed where they lie; the admin's
side calls the same functions locally.  Each subcommand prints one line.

    sha256 PATH                       the file's sha256
    commit PART FINAL SHA256          rename PART to FINAL if its sha256 matches
    manifest DIR                      a digest of the tree (names, types, contents)
    unpack TAR DEST DIGEST            extract TAR into a new DEST (tar 'data'
                                      filter); keep it only if its manifest matches
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(root: str) -> str:
    """One digest for a directory tree: every entry's relative path and type,
    file contents, and symlink targets; modes and times are left out."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        entries = sorted(dirnames + filenames)
        for name in entries:
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(path):
                line = f"L {rel} {os.readlink(path)}"
            elif os.path.isdir(path):
                line = f"D {rel}"
            elif os.path.isfile(path):
                line = f"F {rel} {sha256_file(path)}"
            else:
                line = f"O {rel}"
            h.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def commit(part: str, final: str, expect: str) -> str:
    digest = sha256_file(part)
    if digest == expect:
        os.replace(part, final)
    else:
        os.unlink(part)
    return digest


def extract(tar_path: str, dest: str) -> None:
    """Unpack a tar archive (plain, gz or bz2) into ``dest``, confined to it.

    Every member is checked against tarfile's ``data`` filter before
    anything is written (raising tarfile.FilterError for ``..``, escaping
    links, devices ...), then extracted with that filter again.
    """
    with tarfile.open(tar_path, "r:*") as tf:
        for member in tf:
            tarfile.data_filter(member, dest)
    with tarfile.open(tar_path, "r:*") as tf:
        tf.extractall(dest, filter="data")


def unpack(tar_path: str, dest: str, expect: str) -> str:
    """Extract into a temporary sibling of ``dest``; rename when it matches."""
    if os.path.lexists(dest):
        os.unlink(tar_path)
        raise SystemExit(f"{dest} already exists")
    tmp = f"{dest}.furl-part"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        extract(tar_path, tmp)
        digest = manifest(tmp)
        if digest == expect:
            os.rename(tmp, dest)
        return digest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.unlink(tar_path)


def main(argv: list[str]) -> int:
    ops = {"sha256": (sha256_file, 1), "commit": (commit, 3), "manifest": (manifest, 1),
           "unpack": (unpack, 3)}
    if not argv or argv[0] not in ops or len(argv) - 1 != ops[argv[0]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    fn, _ = ops[argv[0]]
    try:
        print(fn(*argv[1:]))
    except (OSError, tarfile.TarError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
