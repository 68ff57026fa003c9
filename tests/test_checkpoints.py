"""Loading checkpoints: exported float16 weights, clear errors for bad files, the committed MNIST models."""
import os

import pytest
import torch

from cmedu.checkpoints import (WEIGHTS_FORMAT, export_weights, generate, load_checkpoint, load_model, resolve,
                               sampling_start, stored_taus)
from cmedu.cli import main
from cmedu.parameterization import ConsistencyModel, EDMDenoiser
from cmedu.sampling import START_GRID

TOY = ["--preset", "tiny", "--batch-size", "32", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def gmm_cd(tmp_path_factory):
    out = tmp_path_factory.mktemp("gmm-cd")
    assert main(["train", "--data", "gmm", "--method", "cd", "--out", str(out), "--steps", "3", *TOY]) == 0
    return out


def test_export_keeps_ema_in_float16_and_loads_back(gmm_cd, tmp_path):
    state = load_checkpoint(gmm_cd)
    out = tmp_path / "cd.pt"
    export_weights(state, out, taus={"2": [0.5]}, train_command="python -m cmedu train ...")
    exported = load_checkpoint(out)
    assert exported["format"] == WEIGHTS_FORMAT and "opt" not in exported and "model" not in exported
    assert all(v.dtype == torch.float16 for v in exported["ema"].values() if v.is_floating_point())
    assert stored_taus(exported, 2) == [0.5] and stored_taus(exported, 3) is None
    model, _ = load_model(out)
    full, _ = load_model(gmm_cd)
    x, t = torch.randn(8, 2), torch.full((8,), 1.0)
    assert torch.allclose(model(x, t), full(x, t), atol=2e-2)  # float16 rounding only
    with pytest.raises(ValueError, match="no 'model' weights"):
        load_model(out, weights="model")


def test_export_command_chooses_tau(gmm_cd, tmp_path, capsys):
    out = tmp_path / "cd.pt"
    assert main(["export", "--ckpt", str(gmm_cd), "--out", str(out), "--tau-n", "200", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "two steps from 80, tau:" in text and "-> tau =" in text and "chosen: one step from" in text
    state = load_checkpoint(out)
    tau, start, start2 = stored_taus(state, 2)[0], sampling_start(state, 1), sampling_start(state, 2)
    record = state["record"]
    assert min(record["start_scores"].values()) == record["start_scores"][start]
    assert set(record["start_scores"]) == set(START_GRID)
    assert tau < start2 and sampling_start(state, 3) == 80
    # the two-step pair is the best of the taus from T and from the one-step start
    assert set(record["two_step_scores"]) == {"80.0", str(start)}
    assert record["tau_scores"] == record["two_step_scores"][str(start2)]
    assert record["tau_scores"][tau] == min(min(v.values()) for v in record["two_step_scores"].values())
    # generate starts where export chose: the same samples as by hand from start * z
    model, _ = load_model(out)
    x = generate(model, state, 5, 1, seed=3)
    assert torch.equal(x, model(torch.randn(5, 2, generator=torch.Generator().manual_seed(3)) * start,
                                torch.full((5,), start)))
    # ... unless told where to start: start=T is Alg. 1's own one step
    x_T = generate(model, state, 5, 1, seed=3, start=80.0)
    assert torch.equal(x_T, model(torch.randn(5, 2, generator=torch.Generator().manual_seed(3)) * 80.0,
                                  torch.full((5,), 80.0)))
    # --start-grid 80 keeps Alg. 1's start at T
    assert main(["export", "--ckpt", str(gmm_cd), "--out", str(out), "--tau-n", "50", "--start-grid", "80",
                 "--threads", "1"]) == 0
    first = load_checkpoint(out)
    assert sampling_start(first, 1) == sampling_start(first, 2) == 80.0
    # an exported file can be exported again: the same weights, the searches made again, its history kept
    again = tmp_path / "again.pt"
    assert main(["export", "--ckpt", str(out), "--out", str(again), "--tau-n", "50", "--threads", "1"]) == 0
    second = load_checkpoint(again)
    assert all(torch.equal(first["ema"][k], second["ema"][k]) for k in first["ema"]) and second["step"] == first["step"]
    assert second["record"]["train_command"] == first["record"]["train_command"] is not None
    assert "--start-grid 80" in second["record"]["first_export_command"]
    assert set(second["record"]["start_scores"]) == set(START_GRID)


@pytest.mark.parametrize("content", [b"garbage, not a checkpoint", b"", None])
def test_bad_files_give_a_clear_error(tmp_path, gmm_cd, content, capsys):
    bad = tmp_path / "bad.pt"
    if content is None:  # a truncated checkpoint
        data = (gmm_cd / "checkpoint.pt").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(content)
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    assert main(["sample", "--ckpt", str(bad), "--n", "2", "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "Traceback" not in err


def test_a_pickle_that_is_not_a_checkpoint(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a cmedu checkpoint"):
        load_checkpoint(other)


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="cmedu train"):
        load_checkpoint(tmp_path / "nothing.pt")


COMMITTED = ["gpu/mnist_edm.pt", "gpu/mnist_cd.pt", "gpu/mnist_ect.pt", "gpu/mnist_ict.pt", "gpu/mnist_ct.pt"]


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_mnist_checkpoints_load_and_sample(name):
    path = resolve(name)
    assert path.is_file() and os.path.getsize(path) <= 16 * 2**20
    model, state = load_model(name)
    assert isinstance(model, EDMDenoiser if "edm" in name else ConsistencyModel)
    assert state["record"]["train_command"].startswith("python -m cmedu train --data mnist")
    if "edm" not in name:
        assert stored_taus(state, 2) is not None  # two-step sampling uses the chosen tau
    x = generate(model, state, 4, 1 if "edm" not in name else 3)
    assert x.shape == (4, 1, 28, 28) and x.abs().max() <= 1


def test_eval_on_a_committed_checkpoint(capsys):
    assert main(["eval", "--ckpt", "gpu/mnist_cd.pt", "--nfe", "1", "2", "--n", "50", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "NFE 1: FD-MNIST" in out and "NFE 2: FD-MNIST" in out
