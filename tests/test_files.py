"""publish_folder: a folder appears whole or not at all, and a failure leaves nothing behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from eraser_dist.files import publish_folder


def tree(path):
    """Every entry under ``path`` → its text ('dir' for folders)."""
    return {str(p.relative_to(path)): "dir" if p.is_dir() else p.read_text()
            for p in sorted(path.rglob("*"))}


def writer(version: str, fail: bool = False):
    """A ``write`` that fills a folder with two files and a subfolder, then raises if told."""
    def write(folder):
        (folder / "a.txt").write_text(f"a {version}")
        (folder / "sub").mkdir()
        (folder / "sub" / "b.txt").write_text(f"b {version}")
        if fail:
            raise RuntimeError("the write failed")
    return write


@pytest.fixture
def old(tmp_path):
    """An already published folder ``out`` in an otherwise empty folder."""
    publish_folder(tmp_path / "out", writer("old"))
    return tmp_path / "out"


def test_the_folder_appears_whole(tmp_path):
    target = tmp_path / "deeper" / "out"
    seen_during_write = []

    def write(folder):
        seen_during_write.append(target.exists())
        writer("new")(folder)

    assert publish_folder(target, write) == target
    assert seen_during_write == [False]
    assert tree(target) == {"a.txt": "a new", "sub": "dir", "sub/b.txt": "b new"}
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert os.listdir(target.parent) == ["out"]  # no temporary folder left


def test_a_failing_write_leaves_neither_target_nor_temporary_folder(tmp_path):
    with pytest.raises(RuntimeError, match="the write failed"):
        publish_folder(tmp_path / "out", writer("new", fail=True))
    assert os.listdir(tmp_path) == []


def test_a_failing_write_leaves_the_old_folder_when_overwriting(old):
    before = tree(old)
    with pytest.raises(RuntimeError, match="the write failed"):
        publish_folder(old, writer("new", fail=True), overwrite=True)
    assert tree(old) == before
    assert os.listdir(old.parent) == ["out"]


def test_overwrite_replaces_and_leaves_no_leftovers(old):
    (old / "stale.txt").write_text("only in the old folder")
    publish_folder(old, writer("new"), overwrite=True)
    assert tree(old) == {"a.txt": "a new", "sub": "dir", "sub/b.txt": "b new"}
    assert os.listdir(old.parent) == ["out"]


def test_a_failed_rename_puts_the_old_folder_back(old, monkeypatch):
    before = tree(old)
    replace = os.replace

    def replace_but_not_the_new_folder(source, destination):
        if Path(source).name.startswith(".out.tmp-"):
            raise OSError("the rename failed")
        replace(source, destination)

    monkeypatch.setattr(os, "replace", replace_but_not_the_new_folder)
    with pytest.raises(OSError, match="the rename failed"):
        publish_folder(old, writer("new"), overwrite=True)
    monkeypatch.undo()
    assert tree(old) == before
    assert os.listdir(old.parent) == ["out"]


def test_an_existing_target_is_refused_without_overwrite(old):
    before = tree(old)
    calls = []
    with pytest.raises(FileExistsError, match="will not replace an existing folder"):
        publish_folder(old, calls.append)
    assert calls == [] and tree(old) == before
    assert os.listdir(old.parent) == ["out"]
