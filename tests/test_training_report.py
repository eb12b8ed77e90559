"""Run-directory plots (relaxrl/training_report.py) and the observed return they compare Q with."""
from __future__ import annotations

import json

import pytest

from actors.loop import mean_return_to_go
from relaxrl.training_report import PANELS, _env_input_dim, _q_ylim, plot_run, points


@pytest.mark.parametrize("rewards, gamma, expected", [
    ([-1.0, -1.0], 0.5, (-1.5 + -1.0) / 2),          # G_0 = -1 + 0.5·(-1), G_1 = -1
    ([-2.0, 0.0, 4.0], 1.0, (2.0 + 4.0 + 4.0) / 3),  # undiscounted: plain sums to the end
    ([3.0], 0.95, 3.0),
    ([], 0.95, 0.0),
])
def test_mean_return_to_go(rewards, gamma, expected):
    assert mean_return_to_go(rewards, gamma) == pytest.approx(expected)


def test_q_panel_range_ignores_the_early_spike_and_gate_off_is_read_from_the_config(tmp_path):
    rows = [{"t_total": 10 * k, "charts/q_value": (-500.0 if k == 0 else -float(k % 7)),
             "actors/episode_return": -3.0, "actors/action_scale": 1.0} for k in range(50)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "config.toml").write_text("[env]\nenv_input_dim = 0\n")
    lo, hi = _q_ylim(rows, ["charts/q_value", "actors/episode_return"])
    assert -8.0 < lo < -6.0 and 0.0 <= hi < 1.0  # the -500 at the start is outside the range
    assert _env_input_dim(tmp_path) == 0
    (tmp_path / "config.toml").write_text("[env]\nenv_input_dim = 2\n")
    assert _env_input_dim(tmp_path) == 2
    paths = plot_run(tmp_path)
    assert [p.name for p in paths] == [f"{name}.png" for name, _, _ in PANELS]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_live_eval_panel_plots_the_eval_rows_only(tmp_path):
    rows = [{"t_total": 100 * k, "updates": 5 * k, "losses/critic": 1.0} for k in range(1, 13)]
    rows[3].update({"eval/success": 0.0, "eval/force_calls_vs_bfgs": None})  # nothing solved by both yet: null
    rows[7].update({"eval/success": 0.5, "eval/force_calls_vs_bfgs": 1.25})
    rows[11].update({"eval/success": 0.75, "eval/force_calls_vs_bfgs": 0.9})
    assert points(rows, "eval/success") == [(400, 0.0), (800, 0.5), (1200, 0.75)]
    assert points(rows, "eval/force_calls_vs_bfgs") == [(800, 1.25), (1200, 0.9)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with_data = plot_run(tmp_path)[-1]
    assert with_data.name == "live_eval.png" and with_data.stat().st_size > 1000
    drawn = with_data.read_bytes()
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps({k: v for k, v in r.items() if not k.startswith("eval/")})
                                                      for r in rows) + "\n")
    assert plot_run(tmp_path)[-1].read_bytes() != drawn  # without eval rows: the "no data yet" panel
