"""Writing results: files and directories appear whole or not at all, with the modes a plain write gives."""

import json
import math
import os
import stat

import pytest

from ltc_fast.app.output import replacing, staged_output_dir, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _plain_modes(tmp_path):
    """The modes open() and mkdir() give here (under this process's umask)."""
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "plain_dir").mkdir()
    return _mode(tmp_path / "plain.txt"), _mode(tmp_path / "plain_dir")


def _leftovers(directory):
    return [p.name for p in directory.iterdir() if ".partial" in p.name]


def test_a_replaced_file_has_the_new_content_and_a_plain_files_mode(tmp_path):
    file_mode, _ = _plain_modes(tmp_path)
    target = tmp_path / "out.txt"
    target.write_text("old")
    os.chmod(target, 0o600)
    with replacing(str(target)) as partial:
        with open(partial, "w") as f:
            f.write("new")
        assert target.read_text() == "old", "the target changes only when the block ends"
    assert target.read_text() == "new"
    assert _mode(target) == file_mode
    assert _leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing(str(target)) as partial:
            with open(partial, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_write_json_writes_null_for_nan_and_nothing_for_an_unserialisable_value(tmp_path):
    target = tmp_path / "report.json"
    write_json(str(target), {"auc": math.nan, "f1": 0.5})
    assert json.loads(target.read_text()) == {"auc": None, "f1": 0.5}
    with pytest.raises(TypeError):
        write_json(str(target), {"f1": 0.25, "model": object()})
    assert json.loads(target.read_text()) == {"auc": None, "f1": 0.5}, "the old report is kept whole"
    assert _leftovers(tmp_path) == []


def test_a_staged_directory_is_published_whole_with_a_plain_directorys_mode(tmp_path):
    _, dir_mode = _plain_modes(tmp_path)
    out = tmp_path / "model"
    with staged_output_dir(str(out)) as staging:
        open(os.path.join(staging, "config.json"), "w").close()
        assert not out.exists()
    assert [p.name for p in out.iterdir()] == ["config.json"] and _mode(out) == dir_mode
    with pytest.raises(RuntimeError):
        with staged_output_dir(str(out), overwrite=True) as staging:
            raise RuntimeError("training failed")
    assert [p.name for p in out.iterdir()] == ["config.json"], "a failed run keeps the old result"
    assert _leftovers(tmp_path) == []
