"""Property-based fuzzing of the environment: any one of the writes a training run makes
(weights, training state, metrics, pictures, config) fails with a full disk, a read-only
folder, a permission or an I/O error. The command ends with one line that names the error,
every file left loads, and the run can be continued (a training state was saved) or started
again under the same name (nothing of value was saved)."""

import errno
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runs import train_args
from torch_vae import load_model
from torch_vae.cli import main
from torch_vae.training.state import load_train_state

ERRORS = [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO, errno.EDQUOT]


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(nth=st.integers(1, 14), code=st.sampled_from(ERRORS))
def test_a_failing_write_ends_in_one_line_and_damages_nothing(
    data, tmp_path_factory, capsys, nth, code
):
    run = tmp_path_factory.mktemp("env") / "run"
    real, calls = os.replace, []

    def failing_replace(src, dst, *a, **k):  # every file is renamed into place: fail one
        calls.append(dst)
        if len(calls) == nth:
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *a, **k)

    capsys.readouterr()
    os.replace = failing_replace
    try:
        rc = main(train_args(run, data, 2))
    finally:
        os.replace = real
    err = capsys.readouterr().err.strip().splitlines()
    if len(calls) < nth:  # the run made fewer writes than that: nothing failed
        assert rc == 0
        return
    assert rc == 1 and len(err) == 1 and os.strerror(code) in err[0], err
    if (run / "ckpt.pt").exists():  # an epoch was saved: it loads, and the run continues
        load_train_state(run)
        load_model(run)
        args = ["train", "--resume", str(run), "--data_dir", str(data), "--quiet"]
        assert main(args) in (0, 1)  # 1: already finished (the failure was after the end)
    elif run.exists() and list(run.rglob("*.safetensors")):  # weights, no state: they load
        for weights in run.rglob("*.safetensors"):
            load_model(weights)
    else:  # nothing of value was saved: the folder is gone and the name free for a new run
        assert not run.exists()
        assert main(train_args(run, data, 1)) == 0
