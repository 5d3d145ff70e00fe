"""Rebuild the lava-nc 0.10.0 and lava-dl 0.6.0 wheels so that they install and run on Python 3.11.

Why: Lava is archived upstream; its last wheels declare ``Requires-Python <3.11`` and pin numpy <2,
torch <2.4 and torchvision 0.18, and two source problems stop them on Python 3.11:

1. ``lava/magma/compiler/var_model.py`` gives dataclass fields a ``ByteEncoder()`` instance as
   default. Python 3.11 rejects mutable (unhashable) dataclass defaults at import; the mend is
   ``field(default_factory=ByteEncoder)``, which is what the code meant (one encoder per instance).
2. ``lava/lib/dl/slayer/__init__.py`` always imports ``object_detection``, which needs OpenCV and a
   torchvision that has no CPU build for torch 2.13. Nothing else in slayer or netx needs it; the
   mend makes that import lazy (``slayer.obd`` still works where its dependencies are installed).

What: download the two original wheels (``pip download --no-deps``), rewrite them with the two
mends, drop the stray top-level ``tests`` package both ship (110 MB that would shadow any other
``tests``), and write honest metadata: Python >=3.10, the dependencies the mended code really
needs, and a local version label ``+py311`` so that ``pip list`` shows the wheel is not upstream's.
The RECORD file is regenerated, so ``pip check`` and ``pip install`` see consistent wheels.

Usage: ``python tools/mend_lava.py OUTDIR`` prints the paths of the two mended wheels.
Only the standard library is used: this runs before anything else is installed.
"""
from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

LOCAL_LABEL = "py311"

#: Dependencies of the mended wheels (name, specifier). Upstream's pins on torch <2.4,
#: torchvision, opencv, pytest and unittest2 are dropped: the mended code does not import them
#: (torchvision and opencv only from slayer.object_detection, now lazy; pytest and unittest2 only
#: from the removed ``tests`` package). networkx 3.x passes Lava's own test suites.
REQUIRES = {
    "lava-nc": [
        "asteval>=0.9.31",
        "networkx>=2.8",
        "numpy>=1.24.4,<2.0.0",
        "scikit-learn>=1.5.0,<2.0.0",
        "scipy>=1.10.1,<2.0.0",
    ],
    "lava-dl": [
        "h5py>=3.7.0,<4.0.0",
        f"lava-nc==0.10.0+{LOCAL_LABEL}",
        "matplotlib>=3.5.2,<4.0.0",
        "ninja>=1.10.2.3,<2.0.0.0",
        "numpy>=1.24.4,<2.0.0",
        "scipy>=1.8.1,<2.0.0",
        "torch>=2.0",
    ],
}
VERSIONS = {"lava-nc": "0.10.0", "lava-dl": "0.6.0"}


def _mend_var_model(src: str) -> str:
    """Mend 1: ``x: ByteEncoder = ByteEncoder()`` -> ``field(default_factory=ByteEncoder)``."""
    out, n = re.subn(r"(:\s*ByteEncoder\s*=\s*)ByteEncoder\(\)",
                     r"\1field(default_factory=ByteEncoder)", src)
    if n != 8:
        raise SystemExit(f"mend_lava: expected 8 ByteEncoder defaults in var_model.py, found {n}")
    out, m = re.subn(r"from dataclasses import dataclass, InitVar",
                     "from dataclasses import dataclass, InitVar, field", out)
    if m != 1:
        raise SystemExit("mend_lava: var_model.py no longer imports dataclass as expected")
    return out


def _mend_slayer_init(src: str) -> str:
    """Mend 2: import ``object_detection`` (OpenCV, torchvision) only when ``slayer.obd`` is used."""
    line = "from . import object_detection as obd\n"
    if line not in src:
        raise SystemExit("mend_lava: slayer/__init__.py no longer imports object_detection")
    lazy = (
        "\n\ndef __getattr__(name):\n"
        "    # Mended for Python 3.11 (stft-neuro tools/mend_lava.py): object_detection needs\n"
        "    # OpenCV and torchvision; import it only when slayer.obd is used.\n"
        "    if name == 'obd':\n"
        "        from . import object_detection\n"
        "        return object_detection\n"
        "    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')\n"
    )
    return src.replace(line, "") + lazy


MENDS = {
    "lava/magma/compiler/var_model.py": _mend_var_model,
    "lava/lib/dl/slayer/__init__.py": _mend_slayer_init,
}


def _metadata(original: str, dist: str) -> str:
    """Rewrite METADATA: local version, Requires-Python >=3.10, the honest Requires-Dist list."""
    head, _, body = original.partition("\n\n")
    lines = [ln for ln in head.splitlines()
             if not ln.startswith(("Requires-Dist:", "Requires-Python:", "Version:"))]
    lines.insert(2, f"Version: {VERSIONS[dist]}+{LOCAL_LABEL}")
    lines.append("Requires-Python: >=3.10")
    lines += [f"Requires-Dist: {r}" for r in REQUIRES[dist]]
    return "\n".join(lines) + "\n\n" + body


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def rebuild(wheel: Path, outdir: Path, dist: str) -> Path:
    """Write the mended copy of ``wheel`` into ``outdir`` and return its path."""
    version = VERSIONS[dist]
    stem = dist.replace("-", "_")
    old_info = f"{stem}-{version}.dist-info/"
    new_info = f"{stem}-{version}+{LOCAL_LABEL}.dist-info/"
    target = outdir / f"{stem}-{version}+{LOCAL_LABEL}-py3-none-any.whl"
    partial = target.with_suffix(".part")
    records, mended = [], set()
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            name = item.filename
            if name.startswith("tests/") or name.endswith("/RECORD") or name.endswith("/"):
                continue
            data = zin.read(name)
            if name in MENDS:
                data = MENDS[name](data.decode()).encode()
                mended.add(name)
            if name.startswith(old_info):
                name = new_info + name[len(old_info):]
                if name.endswith("/METADATA"):
                    data = _metadata(data.decode(), dist).encode()
            zout.writestr(name, data)
            records.append(_record_line(name, data))
        records.append(f"{new_info}RECORD,,")
        zout.writestr(new_info + "RECORD", "\n".join(records) + "\n")
    expected = {k for k in MENDS if k.startswith("lava/lib/dl/") == (dist == "lava-dl")}
    if mended != expected:
        partial.unlink()
        raise SystemExit(f"mend_lava: {wheel.name}: mended {sorted(mended)}, expected {sorted(expected)}")
    partial.replace(target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tools/mend_lava.py OUTDIR", file=sys.stderr)
        return 2
    outdir = Path(argv[0])
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{d}=={v}" for d, v in VERSIONS.items()]
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--ignore-requires-python", "--only-binary=:all:", "-d", tmp, *specs],
                       check=True)
        for dist, version in VERSIONS.items():
            wheel = Path(tmp) / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
            print(rebuild(wheel, outdir, dist))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
