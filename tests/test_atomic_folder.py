"""``checkpoint.atomic_folder``: the one way an output folder is written (export, simulate, deploy):
complete or as it was, never half."""
from __future__ import annotations

import os
import stat

import pytest

from stft_neuro.checkpoint import atomic_folder


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("fault", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_folder_as_it_was(tmp_path, fault):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(type(fault)):
        with atomic_folder(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise fault
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"] and (out / "old.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_a_finished_write_replaces_the_folder_with_the_umasks_modes(tmp_path):
    out = tmp_path / "sub" / "out"
    out.parent.mkdir()
    out.mkdir()
    (out / "old.txt").write_text("old")
    mask = os.umask(0o022)
    try:
        with atomic_folder(out) as tmp:
            assert not (tmp / "old.txt").exists()
            (tmp / "inner").mkdir()
            (tmp / "inner" / "new.txt").write_text("new")
    finally:
        os.umask(mask)
    assert sorted(p.name for p in out.rglob("*")) == ["inner", "new.txt"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "inner" / "new.txt").stat().st_mode) == 0o644
    assert _leftovers(out.parent) == []
