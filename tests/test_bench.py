"""The 2-D benchmark: a tiny run writes every sample file and a table with the timing ratio."""
import numpy as np
import pytest

from cmedu import bench, recipes


def test_run_toy_writes_samples_and_table(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "N_SAMPLES", 400)
    monkeypatch.setattr(bench, "CONSISTENCY_TIMES", (0.5, 80.0))
    monkeypatch.setattr(bench, "toy_trainer", lambda method, profile, seed, init=None: recipes.toy_trainer(
        method, profile, seed=seed, init=init, steps=3, batch_size=16, preset="tiny"))
    monkeypatch.setattr(bench, "toy_pretrained_denoiser", lambda profile, seed: recipes.toy_trainer(
        "edm", profile, seed=seed, steps=3, batch_size=16, preset="tiny", net_kw=dict(max_freq=2.0)).ema)
    rows = bench.run_toy("smoke", str(tmp_path), seed=0, nfes=(1, 2))
    names = {(r[0], r[1]) for r in rows}
    assert names == {("teacher", k) for k in (1, 2, 5, 35)} | {(m, k) for m in ("cd", "ct", "ict", "scd", "sct", "meanflow")
                                                                        for k in (1, 2)}
    for name, nfe in names:
        x = np.load(tmp_path / f"{name}_nfe{nfe}.npy")
        assert x.shape == (400, 2) and np.isfinite(x).all()
    assert np.load(tmp_path / "data.npy").shape == (400, 2)
    table = bench.format_table(rows)
    assert "teacher 35-NFE / CD 1-step" in table
    assert len(table.splitlines()) == len(rows) + 3
    # the exact teacher at 35 NFE is far closer to the data than its single Euler step
    sw = {(r[0], r[1]): r[2] for r in rows}
    assert sw[("teacher", 35)] < 0.5 * sw[("teacher", 1)]


def test_help_and_bad_profile(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0
    assert "sliced Wasserstein" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        bench.main(["toy", "--profile", "huge"])
    assert e.value.code == 2
