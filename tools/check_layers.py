#!/usr/bin/env python3
"""Check the import layering of the installed package with import-linter (contracts in pyproject.toml).

The repository keeps ``sim/``, ``hw_targets/`` and ``converters/`` at the top level and installs
them inside the ``stft_neuro`` namespace (``[tool.setuptools.package-dir]``). import-linter (grimp)
reads a package from one directory tree, so this script first lays the package out as it is
installed -- a copy of ``stft_neuro/`` with the mapped folders placed inside it -- in a temporary
directory, then runs ``lint-imports`` on that copy with the contracts of ``pyproject.toml``.

Usage: ``python tools/check_layers.py [--inject MODULE:IMPORT]`` (exit status of lint-imports).
``--inject`` appends an import line to one module of the copy (for the test that proves the
contracts can fail).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_layout(dest: Path) -> Path:
    """Copy the package as installed (``package-dir`` mapping applied) into ``dest``; return it."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = cfg["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        target = dest.joinpath(*package.split("."))
        shutil.copytree(ROOT / folder, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inject", metavar="MODULE:IMPORT",
                    help="e.g. stft_neuro.hw_targets.loihi2.plan:stft_neuro.sim.reference")
    args = ap.parse_args(argv)
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        print("check_layers: import-linter is not installed (pip install import-linter)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="stft-layers-") as tmp:
        layout = build_layout(Path(tmp) / "src")
        if args.inject:
            module, imported = args.inject.split(":")
            path = layout.joinpath(*module.split(".")).with_suffix(".py")
            path.write_text(path.read_text() + f"\nimport {imported}  # injected\n")
        shutil.copy(ROOT / "pyproject.toml", Path(tmp) / "pyproject.toml")
        # grimp finds ``stft_neuro`` through the path: the copy comes first.
        env = dict(os.environ, PYTHONPATH=str(layout))
        proc = subprocess.run([str(lint), "--no-cache"], cwd=tmp, env=env)
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
