"""Files written whole: a full disk leaves the previous file as it was and says where and how much."""

import errno

import pytest

from ftsweep import artifacts
from ftsweep.errors import DiskFullError


def test_a_write_that_fills_the_disk_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    report = tmp_path / "report.md"
    artifacts.write_text(report, "the previous report\n")

    def half_then_full(f):
        f.write("half a rep")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as err:
        artifacts.atomic_write(report, half_then_full, need_bytes=3 * 2**20)
    assert str(err.value).startswith(f"No space left on device writing {report} (needs about 3.0 MB, ")
    assert str(err.value).endswith(" MB free there)")
    assert report.read_text() == "the previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_other_write_errors_pass_through_unchanged(tmp_path):
    def denied(f):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        artifacts.atomic_write(tmp_path / "x.json", denied)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_found_under_a_librarys_own_cleanup_error():
    """MLflow, failing to mark a model FAILED on a full store, raises its own error with the OSError as context."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/src.bin", None, "/store/model.safetensors")
        except OSError:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full")  # noqa: B904  (__context__ only, as a library's own cleanup leaves it)
    except RuntimeError as exc:
        found = artifacts.no_space(exc, "/elsewhere")
    assert found is not None and "writing /store/model.safetensors" in str(found)
    assert artifacts.no_space(RuntimeError("database or disk is full"), "/store/mlflow.db") is not None
    assert artifacts.no_space(ValueError("bad value"), "/x") is None


def test_tensor_bytes_counts_every_tensor_of_a_nested_state():
    import torch

    state = {
        "model": {"w": torch.zeros(4, 4)},
        "optimizer": {"state": [{"m": torch.zeros(8, dtype=torch.float16)}]},
        "step": 3,
    }
    assert artifacts.tensor_bytes(state) == 4 * 4 * 4 + 8 * 2
