import numpy as np

from quantsense.visualization.plots import _block_grid, frontier_plot, sensitivity_bars, sensitivity_heatmap


def _rows():
    rows = []
    for block in range(3):
        for sub in ("attn.q", "mlp.up"):
            for bits in (8, 4):
                kl = 10.0 ** (-bits + block)
                rows.append({"unit": f"model.layers.{block}.{sub}", "bits": bits, "view": "only", "kl_mean": kl,
                             "kl_ci_low": kl * 0.9, "kl_ci_high": kl * 1.1, "drop": 0.1 * block,
                             "drop_ci_low": -0.1, "drop_ci_high": 0.3})
    return rows


def test_block_grid_places_each_unit():
    blocks, subs, grids = _block_grid(_rows(), "kl_mean")
    assert blocks == [0, 1, 2] and subs == ["attn.q", "mlp.up"]
    assert grids[4][2, 1] == 10.0 ** (-4 + 2)
    assert not np.isnan(grids[8]).any()
    assert _block_grid([{"unit": "block 0", "bits": 4, "kl_mean": 1.0}], "kl_mean") is None


def test_plots_write_png_files(tmp_path):
    rows = _rows()
    for path in (sensitivity_heatmap(rows, tmp_path / "h.png"), sensitivity_bars(rows, tmp_path / "b.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plans = [{"plan": f"p{i}", "kind": kind, "avg_bits": 3 + i, "accuracy": 80 + i, "drop": 5 - i, "drop_ci_low": 4 - i,
              "drop_ci_high": 6 - i, "kl_mean": 0.1 / (i + 1)} for i, kind in enumerate(["allocated", "allocated", "uniform", "hand"])]
    assert frontier_plot(plans, tmp_path / "f.png").stat().st_size > 1000
