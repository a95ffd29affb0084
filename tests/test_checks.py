"""The reproduction checks of the notebooks (`mbkit.study.checks`): the tolerance rule, the parameter match,
the scratch folder for explored parameters, and a deliberate regression that the checks must catch."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from mbkit import data as mbd
from mbkit.balancers.metabalance import MetaBalance
from mbkit.study import checks, notebook
from mbkit.study.notebook import output_dirs
from mbkit.study.stats import select_relax_factor
from mbkit.study.tables import median_diagnostics
from mbkit.train import TrainConfig, fit


def table(means: list[float], std: float = 0.005, n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"method": [f"m{i}" for i in range(len(means))], "ndcg@10_mean": means,
                         "ndcg@10_std": [std] * len(means), "n_seeds": [n] * len(means)})


def test_band_is_four_pooled_standard_errors_plus_the_floor():
    out = checks.bands(table([0.10, 0.20]), table([0.10, 0.20]), ["method"], ["ndcg@10"])
    expected = 4 * 0.005 * math.sqrt(2 / 3) + checks.FLOOR
    assert out["band"].tolist() == pytest.approx([expected, expected])
    assert out["ok"].all()
    assert "within their bands" in checks.raise_failures(out, "means")


def test_a_shift_beyond_the_band_fails_with_metric_values_and_band():
    committed = table([0.10, 0.20])
    shifted = table([0.10, 0.20 + 0.02])
    with pytest.raises(checks.ReproductionError) as err:
        checks.raise_failures(checks.bands(shifted, committed, ["method"], ["ndcg@10"]), "test means")
    text = str(err.value)
    assert "1 of 2 test means" in text and "method=m1" in text and "metric=ndcg@10" in text
    assert "0.2000 -> 0.2200" in text and "> 0.0" in text


def test_a_shift_inside_the_band_passes():
    committed = table([0.10, 0.20])
    assert checks.bands(table([0.10 + 0.009, 0.20 - 0.009]), committed, ["method"], ["ndcg@10"])["ok"].all()


def test_rows_on_one_side_only_are_an_error():
    with pytest.raises(checks.ReproductionError, match="one side only"):
        checks.bands(table([0.1, 0.2, 0.3]), table([0.1, 0.2]), ["method"], ["ndcg@10"])


def test_relative_bands():
    a = pd.DataFrame({"pv": [2.0, 0.5]}, index=["t1", "t2"])
    assert checks.relative_bands(a * 1.2, a, rel=0.25)["ok"].all()
    out = checks.relative_bands(a.assign(pv=[2.0, 1.8]), a, rel=0.25)
    assert out["ok"].tolist() == [True, False]


def test_only_records_with_the_same_parameters_are_compared(monkeypatch):
    record = {"params": {"data": "synthetic", "epochs": 2, "seeds": [0, 1, 2], "device": "cpu"}}
    monkeypatch.setattr(checks, "committed_record", lambda name: record)
    calls = []
    same = {"data": "synthetic", "epochs": 2, "seeds": [0, 1, 2], "device": "cuda"}  # the device is not compared
    assert checks.against_committed("x", same, lambda c: calls.append(c) or "compared") == "compared"
    line = checks.against_committed("x", {**same, "epochs": 1}, lambda c: calls.append(c) or "compared")
    assert line.startswith("not compared: parameters differ") and "epochs=1 (committed 2)" in line
    assert len(calls) == 1
    monkeypatch.setattr(checks, "committed_record", lambda name: None)
    assert checks.against_committed("x", same, lambda c: "compared").startswith("not compared: no committed")


def test_explored_parameters_write_to_a_scratch_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("MBKIT_OUTPUT_ROOT", raising=False)
    monkeypatch.setattr(notebook, "committed_record", lambda name, results_dir=None: {"params": {"epochs": 2}})
    monkeypatch.chdir(tmp_path)
    same = output_dirs("../figures", "../results", notebook="03_relax_factor", params={"epochs": 2})
    assert [str(p) for p in same] == ["../figures", "../results"]
    explored = output_dirs("../figures", "../results", notebook="03_relax_factor", params={"epochs": 1})
    assert all("build/explore/03_relax_factor-" in str(p) for p in explored)
    assert [p.name for p in explored] == ["figures", "results"]
    assert "parameters differ from the committed results (epochs)" in capsys.readouterr().out
    monkeypatch.setenv("MBKIT_OUTPUT_ROOT", str(tmp_path / "root"))
    assert output_dirs("../results", notebook="03_relax_factor", params={"epochs": 1}) == [tmp_path / "root" / "results"]


def test_outputs_are_compared_with_the_record_in_their_own_folder(monkeypatch, tmp_path):
    """`make decision` writes into results/decision/: its parameters are compared with the record there, so
    its first run (no record yet) and its re-runs write in place, and other parameters still go to scratch."""
    monkeypatch.delenv("MBKIT_OUTPUT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "decision"
    assert output_dirs("figs", folder, notebook="03_relax_factor", params={"epochs": 1}, record_dir=folder)[1] == folder
    (folder / "03_relax_factor.json").write_text('{"params": {"epochs": 1}}')
    assert output_dirs(folder, notebook="03_relax_factor", params={"epochs": 1}, record_dir=folder) == [folder]
    explored = output_dirs(folder, notebook="03_relax_factor", params={"epochs": 2}, record_dir=folder)
    assert "build/explore/03_relax_factor-" in str(explored[0])


def summary(rows: dict[float, tuple[float, float]], n: int = 3) -> pd.DataFrame:
    idx = pd.MultiIndex.from_tuples([("both", r) for r in rows], names=["strategy", "relax_factor"])
    return pd.DataFrame({"ndcg@10_mean": [m for m, _ in rows.values()], "ndcg@10_std": [s for _, s in rows.values()],
                         "n_seeds": n}, index=idx)


def test_selection_excludes_the_reference_and_prefers_the_paper_default_on_a_flat_sweep():
    flat = summary({0.0: (0.140, 0.005), 0.3: (0.127, 0.005), 0.5: (0.126, 0.005), 0.7: (0.125, 0.005)})
    sel = select_relax_factor(flat)
    assert sel.relax_factor == 0.7 and sel.best == ("both", 0.3)
    assert ("both", 0.0) not in sel.near_best
    assert sel.margin == pytest.approx(0.001)


def test_selection_takes_a_clear_winner():
    clear = summary({0.0: (0.120, 0.002), 0.3: (0.140, 0.002), 0.7: (0.120, 0.002), 0.9: (0.121, 0.002)})
    assert select_relax_factor(clear).relax_factor == 0.3


def test_selection_is_stable_under_float_noise_on_a_flat_sweep():
    rng = torch.Generator().manual_seed(0)
    base = {0.0: 0.126, 0.3: 0.127, 0.5: 0.1255, 0.7: 0.1262, 0.9: 0.1250, 1.0: 0.1249}
    for _ in range(50):
        noisy = {r: (m + 2e-4 * float(torch.randn(1, generator=rng)), 0.005) for r, m in base.items()}
        assert select_relax_factor(summary(noisy)).relax_factor == 0.7


# A deliberate regression: MetaBalance scaling the wrong way (m_k / m_0 instead of m_0 / m_k, Eq. 6).
def _wrong_way(monkeypatch) -> None:
    advance = MetaBalance._advance

    def broken(self, grads):
        out = advance(self, grads)
        r = self.relax_factor
        self.last_weights = [torch.where(mask, r * m / m[0] + (1 - r), torch.ones_like(m))
                             for mask, m in zip(out[1], self.moving_averages)]
        return out

    monkeypatch.setattr(MetaBalance, "_advance", broken)


@pytest.mark.slow
def test_notebook_02_check_catches_metabalance_scaling_the_wrong_way(monkeypatch):
    """Notebook 02's run with the committed parameters, MetaBalance broken, fails the band that
    tests/test_results.py applies to notebook 02's record (with the correct MetaBalance, that run is the
    notebook itself, whose record passes it in `make test`)."""
    committed = checks.committed_record("02_gradient_imbalance")
    p = committed["params"]
    _, data = mbd.DataConfig(data=p["data"], target=p["target"], filter_mode=p["filter_mode"],
                             split_seed=p["split_seed"]).load(device="cpu")
    config = TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], mode=p["mode"], device="cpu",
                         seed=p["seed"], balancer="metabalance", balancer_kwargs={"relax_factor": p["relax_factor"]},
                         diagnostics_every=p["diagnostics_every"], progress=False)
    _wrong_way(monkeypatch)
    res = fit(data, config)
    weights = median_diagnostics(res.diagnostics, "weight", data.target)
    with pytest.raises(checks.ReproductionError, match=r"median weights lie outside their band") as err:
        checks.raise_failures(checks.relative_bands(weights, pd.DataFrame(committed["median_weight_metabalance"]),
                                                    rel=0.25), "median weights")
    assert "column=pv" in str(err.value)


def test_default_params_file_equals_the_notebooks_own_defaults():
    # nbval runs the committed notebooks with their parameters cell; `make reproduce` with default.yaml.
    # Both must describe the same run, or tests/test_results.py would compare records of different runs.
    papermill = pytest.importorskip("papermill")
    from mbkit.provenance import ROOT
    from mbkit.study.reproduce import load_params, notebooks

    params = load_params(ROOT / "notebooks" / "params" / "default.yaml")
    for nb in notebooks():
        declared = papermill.inspect_notebook(str(nb))
        for name, value in params[nb.stem].items():
            if name in checks.NOT_COMPARED:  # where and how it runs, not what it computes
                continue
            default = eval(declared[name]["default"], {})  # the cell holds literals only
            assert default == value, f"{nb.name}: parameter {name} is {default!r} in the notebook, {value!r} in default.yaml"


def test_relative_bands_fail_on_missing_rows_or_columns():
    a = pd.DataFrame({"pv": [2.0, 0.5], "cart": [1.0, 1.0]}, index=["t1", "t2"])
    with pytest.raises(checks.ReproductionError, match="rows"):
        checks.relative_bands(a.loc[["t1"], ["pv"]], a, rel=0.25)


def test_a_noisier_regression_does_not_widen_its_own_band():
    committed = table([0.10, 0.20], std=0.005)
    noisy = table([0.10, 0.23], std=0.05)
    assert not checks.bands(noisy, committed, ["method"], ["ndcg@10"])["ok"].all()


def test_a_record_made_before_a_parameter_existed_had_its_default(monkeypatch):
    """Notebook 01 gained min_user_items (default 10, what it did before): a record without it still matches."""
    record = {"params": {"data": "synthetic", "target": "buy", "filter_mode": "once", "split_seed": 0}}
    now = {**record["params"], "min_user_items": 10, "min_item_users": 10, "split": "project"}
    assert checks.params_differ(now, record, "01_data_filtering") == {}
    changed = checks.params_differ({**now, "min_user_items": 0}, record, "01_data_filtering")
    assert changed == {"min_user_items": (0, 10)}
    assert "min_user_items" in checks.params_differ(now, record)  # without the notebook there is no default to use
