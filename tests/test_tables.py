import csv
import io
import statistics

import pytest

from nlp_cli import tables


def _records():
    out = []
    accs = {
        ("ce", "sym", 0.8): [0.50, 0.54, 0.52],
        ("dsoftmax", "sym", 0.8): [0.70, 0.72, 0.71],
        ("ce", "pair", 0.4): [0.60, 0.62, 0.61],
        ("dsoftmax", "pair", 0.4): [0.75, 0.73, 0.77],
        ("ce", "sym", 0.4): [0.80, 0.82, 0.84],
    }
    for (method, noise, rate), values in accs.items():
        for seed, acc in enumerate(values, start=1):
            out.append(
                dict(dataset="shapes", method=method, noise=noise, rate=rate, seed=seed, acc=acc)
            )
    return out, accs


def test_cells_are_mean_and_sample_std_over_seeds():
    records, accs = _records()
    (table,) = tables.build_tables(records)
    for (method, noise, rate), values in accs.items():
        cell = table.cells[(method, (noise, rate))]
        assert cell.mean == pytest.approx(statistics.mean(values))
        assert cell.std == pytest.approx(statistics.stdev(values))


def test_table_shape_rows_methods_columns_settings_in_paper_order():
    records, _ = _records()
    (table,) = tables.build_tables(records, methods=["dsoftmax", "ce"], zero_shot={"shapes": 0.40})
    assert table.headers() == ["Method", "Sym 40%", "Sym 80%", "Pair 40%"]
    rows = table.rows()
    assert [r[0] for r in rows] == ["Zero-shot CLIP", "dsoftmax", "ce"]
    assert rows[0][1:] == ["40.00"] * 3
    assert rows[1][1] == "–"  # dsoftmax never ran at sym 40%
    assert rows[2][2] == f"52.00 ± {100 * statistics.stdev([0.50, 0.54, 0.52]):.2f}"
    md = table.markdown()
    assert md.splitlines()[2] == "| Method | Sym 40% | Sym 80% | Pair 40% |"
    assert md.count("\n| ") == 4  # header + three method rows


def test_average_table_needs_every_dataset():
    rec = [
        dict(dataset="a", method="ce", noise="sym", rate=0.8, seed=1, acc=0.5),
        dict(dataset="b", method="ce", noise="sym", rate=0.8, seed=1, acc=0.7),
        dict(dataset="a", method="mae", noise="sym", rate=0.8, seed=1, acc=0.6),
    ]
    *_, avg = tables.build_tables(rec)
    assert avg.title.startswith("Average over 2")
    assert avg.cells[("ce", ("sym", 0.8))].mean == pytest.approx(0.6)
    assert ("mae", ("sym", 0.8)) not in avg.cells


def test_csv_round_trips_the_numbers():
    records, accs = _records()
    text = tables.to_csv(tables.build_tables(records))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(accs)
    row = next(r for r in rows if r["method"] == "dsoftmax" and r["noise"] == "pair")
    assert float(row["mean"]) == pytest.approx(75.0)
    assert int(row["n_seeds"]) == 3


@pytest.mark.parametrize(
    "noise, rate, label",
    [
        ("sym", 0.4, "Sym 40%"),
        ("pair", 0.2, "Pair 20%"),
        ("none", 0.0, "Clean"),
        ("idn", 0.3, "IDN 30%"),
        ("sym", 0.125, "Sym 12.5%"),
    ],
)
def test_setting_labels(noise, rate, label):
    assert tables.setting_label(noise, rate) == label
