import json
from pathlib import Path

import pytest

from nlp_cli import sweep
from nlp_cli.errors import UsageError

GRID = """
name: tiny
datasets: [{feats}]
model: tiny-shapes
noise: [{{sym: 0.4}}, {{type: pair, rate: 0.2}}]
methods:
  - ce
  - {{name: DSPT, loss: dsoftmax}}
  - {{name: NLPrompt, loss: nlprompt}}
seeds: [1, 2]
train: {{epochs: 3, batch_size: 8}}
"""


@pytest.fixture
def grid_file(tmp_path):
    feats = tmp_path / "feats.safetensors"
    feats.write_bytes(b"stand-in: the fake runner never reads it")
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(feats=feats))
    return path


class FakeStages(sweep.Stages):
    """Stands in for the library stages: records each call (stage, inputs, options, outputs)
    and writes the files it names; evaluation returns made-up accuracies."""

    def __init__(self):
        self.calls: list[tuple] = []

    def _write(self, out, text):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)

    def make_labelset(self, features, opts, out):
        self.calls.append(("corrupt", features, opts, out))
        self._write(out, repr(opts))

    def make_partition(self, labels, opts, out):
        self.calls.append(("purify", labels, opts, out))
        self._write(out, repr(opts))

    def train_prompts(self, inputs, opts):
        self.calls.append(("train", inputs, opts, opts.outs))
        for out in opts.outs:
            self._write(out, repr(opts))

    def evaluate(self, prompt, features, device, untrained=None):
        self.calls.append(("eval", prompt, features, untrained))
        if untrained is not None:
            return {"acc1": 0.05 + 0.01 * untrained}
        acc = 0.25 if prompt is None else 0.5 + 0.01 * len(self.calls)
        return {"acc1": acc, "last5_mean_acc": acc - 0.01}


def test_grid_cells_and_method_defaults(grid_file):
    grid = sweep.load_grid(grid_file)
    assert len(grid.cells()) == 2 * 3 * 2
    nlprompt = grid.methods[2]
    assert (nlprompt.loss, nlprompt.purify) == ("nlprompt", "ot")
    assert grid.methods[0].purify is None
    assert [n.slug for n in grid.noise] == ["sym40", "pair20"]


def test_sweep_runs_every_stage_once_and_reruns_nothing(grid_file, monkeypatch):
    grid = sweep.load_grid(grid_file)
    stages = FakeStages()
    first = sweep.run_sweep(grid, stages=stages)
    by_stage = {s: sum(c[0] == s for c in stages.calls) for s in ("corrupt", "purify", "train")}
    # one label set per cell, made by the stage (which finds it cached when methods share it)
    assert by_stage == {"corrupt": 12, "purify": 4, "train": 12}
    assert len({c[3] for c in stages.calls if c[0] == "corrupt"}) == 4
    assert first.ran == 12 and len(first.records) == 12
    assert first.zero_shot == {"feats": 0.25}
    assert first.untrained == {"feats": pytest.approx([0.06, 0.07])}  # one per seed
    train = next(c for c in stages.calls if c[0] == "train" and c[2].losses == ["dsoftmax"])
    assert train[2].settings["epochs"] == 3 and train[2].settings["batch_size"] == 8
    nlp_train = next(c for c in stages.calls if c[0] == "train" and c[2].losses == ["nlprompt"])
    assert nlp_train[1][0].name.endswith("-ot.safetensors")

    stages.calls.clear()
    again = sweep.run_sweep(grid, stages=stages)
    assert stages.calls == [] and again.skipped == 12 and again.records == first.records


def test_changed_options_rerun_the_cells(grid_file):
    grid = sweep.load_grid(grid_file)
    stages = FakeStages()
    sweep.run_sweep(grid, stages=stages)
    grid.train = {**grid.train, "epochs": 4}
    stages.calls.clear()
    again = sweep.run_sweep(grid, stages=stages)
    assert again.ran == 12 and sum(c[0] == "train" for c in stages.calls) == 12


def test_ranks_share_the_cells_without_overlap(grid_file, monkeypatch):
    grid = sweep.load_grid(grid_file)
    seen = []
    for rank in (0, 1, 2):
        monkeypatch.setattr(sweep, "_barrier", lambda: None)
        stages = FakeStages()
        sweep.run_sweep(grid, stages=stages, rank=rank, world=3)
        seen += [c[3][0] for c in stages.calls if c[0] == "train"]
    assert len(seen) == 12 and len(set(seen)) == 12


def test_tables_written_in_paper_shape(grid_file):
    grid = sweep.load_grid(grid_file)
    result = sweep.run_sweep(grid, stages=FakeStages())
    paths = sweep.write_tables(result, grid, plot=False)
    md = paths["markdown"].read_text()
    assert "| Method | Sym 40% | Pair 20% |" in md
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["Untrained context", "Zero-shot CLIP", "ce", "DSPT", "NLPrompt"]
    assert "±" in md  # two seeds per cell
    assert paths["csv"].read_text().count("\n") == 1 + 2 * 5


def test_last_epoch_metric_reads_acc1():
    cell = sweep.Cell("d", sweep.Noise("sym", 0.8), sweep.Method("ce", "ce"), 1)
    metrics = {"acc1": 0.6, "last5_mean_acc": 0.55}
    assert sweep.record(cell, metrics, "last5")["acc"] == 0.55
    assert sweep.record(cell, metrics, "final")["acc"] == 0.6


@pytest.mark.parametrize(
    "text, message",
    [
        ("datasets: [x]\nmodel: m\nmethods: [cee]", "did you mean"),
        ("datasets: [x]\nmodel: m\nmethods: [ce]\nnoise: [{sym: 1.2}]", "outside"),
        ("datasets: [x]\nmodel: m\nmethods: [ce]\nnoise: [{gauss: 0.2}]", "unknown"),
        ("datasets: [x]\nmodel: m\nmethods: [ce]\nepochs: 3", "unknown key"),
        ("datasets: [x]\nmodel: m\nmethods: [ce]\ntrain: {protocl: dspt}", "did you mean"),
        ("datasets: [x]\nmodel: m\nmethods: [{loss: ce, trian: {}}]", "unknown key 'trian'"),
        ("datasets: [x]\nmodel: m\nmethods: [ce, ce]", "named 'ce'"),
        ("datasets: [x]\nmodel: m\nmethods: [ce]\nseeds: [1.7]", "whole numbers"),
        ("datasets: [x]\nmodel: m\nmethods: [ce]\nseeds: [1, 1]", "listed twice"),
        ("datasets: [x]\nmethods: [ce]", "`model` is required"),
        ("datasets: [x\n", "not valid YAML"),
    ],
)
def test_bad_grids_are_one_line_usage_errors(tmp_path, text, message):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as info:
        sweep.load_grid(path)
    assert "\n" not in str(info.value)


def test_cli_dry_run_lists_cells(cli, grid_file):
    r = cli("sweep", grid_file, "--dry-run", "--json")
    assert r.code == 0
    assert len(json.loads(r.stdout)["cells"]) == 12
    assert r.stderr.count("pending") == 12


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_example_grids_are_valid(path):
    grid = sweep.load_grid(path)
    assert grid.cells()
    assert len({c.slug for c in grid.cells()}) == len(grid.cells())


def test_sweep_runs_the_real_stages(tmp_path, features, cli):
    grid = tmp_path / "real.yaml"
    grid.write_text(
        f"datasets: [{features}]\nmodel: unused-for-feature-files\nnoise: [{{sym: 0.4}}]\n"
        "methods: [ce, {name: NLPrompt, loss: nlprompt}]\nseeds: [1]\n"
        "train: {epochs: 2, batch_size: 16}\n"
    )
    r = cli("sweep", grid, "--out", tmp_path / "sw", "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["finished"], summary["ran"]) == (2, 2)
    results = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert {rec["method"] for rec in results["records"]} == {"ce", "NLPrompt"}
    assert all(0.0 <= rec["acc"] <= 1.0 for rec in results["records"])
    assert 0.0 <= results["zero_shot"]["feats"] <= 1.0
    assert "| Zero-shot CLIP |" in Path(summary["markdown"]).read_text()
    again = json.loads(cli("sweep", grid, "--out", tmp_path / "sw", "--json").stdout)
    assert (again["ran"], again["skipped"]) == (0, 2)


def test_batched_sweep_equals_cell_by_cell(tmp_path, features):
    import torch

    from nlp_cli import artifacts

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identity needs one thread (tests/test_multirun.py)
    grid = tmp_path / "g.yaml"
    grid.write_text(
        f"datasets: [{features}]\nmodel: unused\nnoise: [{{sym: 0.4}}, {{pair: 0.2}}]\n"
        "methods: [ce, {name: DSPT, loss: dsoftmax}]\nseeds: [1, 2]\n"
        "train: {epochs: 2, batch_size: 16, n_ctx: 4}\n"
    )
    calls: list[list] = []

    class Counting(sweep.Stages):
        def train_prompts(self, inputs, opts):
            calls.append(inputs)
            return super().train_prompts(inputs, opts)

    g = sweep.load_grid(grid)
    g.out = tmp_path / "batched"
    batched = sweep.run_sweep(g, stages=Counting(), batch=True)
    assert len(calls) == 1
    g.out = tmp_path / "single"
    single = sweep.run_sweep(g, batch=False)
    assert batched.records == single.records and len(single.records) == 8
    for cell in g.cells():
        a = artifacts.load(tmp_path / "batched" / "prompts" / f"{cell.slug}.safetensors")
        b = artifacts.load(tmp_path / "single" / "prompts" / f"{cell.slug}.safetensors")
        assert torch.equal(a.tensors["ctx"], b.tensors["ctx"])
        assert a.meta["history"] == b.meta["history"]
    torch.set_num_threads(threads)


def test_batched_cells_keep_their_losses_knobs(tmp_path, grid_file):
    """A per-loss knob in the grid reaches that loss's runs when cells are trained together."""
    text = grid_file.read_text().replace(
        "train: {epochs: 3, batch_size: 8}", "train: {epochs: 3, batch_size: 8, knob: [gce.q=0.3]}"
    )
    grid_file.write_text(text.replace("  - ce\n", "  - ce\n  - gce\n"))
    grid = sweep.load_grid(grid_file)
    stages = FakeStages()
    sweep.run_sweep(grid, stages=stages, batch=True)
    trains = [c[2] for c in stages.calls if c[0] == "train"]
    with_gce = [o for o in trains if "gce" in o.losses]
    assert with_gce and all(o.loss_knobs == {"gce": {"q": "0.3"}} for o in with_gce)
    assert all(o.loss_knobs == {} for o in trains if "gce" not in o.losses)


def test_presets_are_the_example_grids(cli):
    from nlp_cli import sweep as sw

    names = sw.presets()
    assert set(names) == {
        "dspt-table1",
        "dspt-table2",
        "dspt-table3",
        "dspt-table4",
        "nlprompt-16shot",
        "logitclip-tau",
        "shapes",
    }
    for table in (1, 2, 3, 4):
        assert names[f"dspt-table{table}"].startswith(f"DSPT Table {table}: ")
    r = cli("sweep", "--list-presets", "--json")
    assert r.code == 0 and json.loads(r.stdout)["presets"] == names
    listed = dict(line.split(None, 1) for line in r.stderr.strip().splitlines())
    assert listed == names  # one line per preset: its name and its description
    r = cli("sweep", "--preset", "dspt-table1", "--dry-run", "--json")
    assert r.code == 0 and len(json.loads(r.stdout)["cells"]) == 9 * 6 * 6 * 3
    bad = cli("sweep", "--preset", "dspt-tabel1", "--dry-run")
    assert bad.code == 2 and "did you mean 'dspt-table1'" in bad.stderr


def test_ctrl_c_in_a_sweep_is_one_line_and_the_rerun_resumes(cli, features, tmp_path, monkeypatch):
    """Ctrl-C inside a cell: `error: interrupted`, exit 130; the cell's training options ask
    to resume, so a rerun continues its checkpoint instead of starting at epoch 1."""
    grid = tmp_path / "g.yaml"
    grid.write_text(
        f"datasets: [{features}]\nmodel: unused\nnoise: [{{sym: 0.4}}]\nmethods: [ce]\n"
        "seeds: [1]\ntrain: {epochs: 2, batch_size: 16}\n"
    )

    def interrupted(self, inputs, opts):
        assert opts.resume  # what makes the rerun continue the checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep.Stages, "train_prompts", interrupted)
    r = cli("sweep", grid, "--out", tmp_path / "sw")
    assert r.code == 130 and r.stderr.strip().splitlines()[-1] == "error: interrupted"


def test_the_papers_numbers_print_beside_ours(grid_file):
    text = grid_file.read_text() + "paper:\n  DSPT: {sym 0.4: 80.0}\n  ce: {pair 0.2: 60.0}\n"
    grid_file.write_text(text)
    grid = sweep.load_grid(grid_file)
    assert grid.paper == {"DSPT": {("sym", 0.4): 80.0}, "ce": {("pair", 0.2): 60.0}}
    result = sweep.run_sweep(grid, stages=FakeStages())
    md = sweep.write_tables(result, grid, plot=False)["markdown"].read_text()
    assert "the paper's numbers beside ours" in md
    row = next(line for line in md.splitlines() if line.startswith("| DSPT | Sym 40% | 80.00"))
    ours = float(row.split("|")[4])
    assert row.split("|")[5].strip() == f"{ours - 80.0:+.2f}"
    grid_file.write_text(grid_file.read_text().replace("DSPT: {sym", "DSTP: {sym"))
    with pytest.raises(UsageError, match="did you mean 'DSPT'"):
        sweep.load_grid(grid_file)


def _two_dataset_grid(tmp_path, paper: str) -> Path:
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"stand-in for " + name.encode())
    path = tmp_path / "two.yaml"
    path.write_text(
        f"datasets: [{tmp_path / 'alpha.safetensors'}, {tmp_path / 'beta.safetensors'}]\n"
        "model: tiny-shapes\nnoise: [{sym: 0.4}, {pair: 0.2}]\n"
        "methods: [ce, {name: DSPT, loss: dsoftmax}]\nseeds: [1]\n" + paper
    )
    return path


def _paper_rows(md: str, title: str) -> dict[tuple[str, str], tuple[float, float, float]]:
    """The rows of one paper-beside-ours block: (method, setting) → (paper, ours, difference)."""
    block = md.split(f"**{title}: the paper's numbers beside ours**")[1].split("\n\n**")[0]
    rows = {}
    for line in block.splitlines():
        parts = [p.strip() for p in line.split("|")[1:-1]]
        if len(parts) == 5 and parts[2][:1].isdigit():
            rows[(parts[0], parts[1])] = tuple(float(p) for p in parts[2:])
    return rows


def test_paper_numbers_per_dataset_print_beside_that_datasets_table(tmp_path):
    """A `paper:` entry keyed by dataset goes beside that dataset's table; the flat form beside
    the average; each difference is ours − paper from the same table's cell."""
    path = _two_dataset_grid(
        tmp_path,
        "paper:\n  DSPT: {sym 0.4: 70.0, alpha: {sym 0.4: 91.5, pair 0.2: 88.0}}\n"
        "  ce: {beta: {pair 0.2: 40.25}}\n",
    )
    grid = sweep.load_grid(path)
    assert grid.paper == {"DSPT": {("sym", 0.4): 70.0}}
    assert grid.paper_datasets == {
        "alpha": {"DSPT": {("sym", 0.4): 91.5, ("pair", 0.2): 88.0}},
        "beta": {"ce": {("pair", 0.2): 40.25}},
    }
    result = sweep.run_sweep(grid, stages=FakeStages())
    md = sweep.write_tables(result, grid, plot=False)["markdown"].read_text()
    ours = {(r["dataset"], r["method"], r["noise"]): 100 * r["acc"] for r in result.records}
    alpha = _paper_rows(md, "alpha")
    assert set(alpha) == {("DSPT", "Sym 40%"), ("DSPT", "Pair 20%")}
    paper, mine, diff = alpha[("DSPT", "Pair 20%")]
    assert paper == 88.0 and mine == pytest.approx(ours[("alpha", "DSPT", "pair")], abs=5e-3)
    assert diff == pytest.approx(mine - paper, abs=1e-9)
    assert set(_paper_rows(md, "beta")) == {("ce", "Pair 20%")}
    average = _paper_rows(md, "Average over 2 datasets")
    mean = (ours[("alpha", "DSPT", "sym")] + ours[("beta", "DSPT", "sym")]) / 2
    assert average[("DSPT", "Sym 40%")][:2] == pytest.approx((70.0, mean), abs=5e-3)


@pytest.mark.parametrize(
    "paper, message",
    [
        ("paper:\n  DSPT: {alpah: {sym 0.4: 1.0}}\n", "did you mean 'alpha'"),
        ("paper:\n  DSPT: {sym 0.8: 74.2}\n", r"'sym 0.8' \(Sym 80%\) is not a noise setting"),
        ("paper:\n  DSPT: {beta: {pair 0.3: 1.0}}\n", "did you mean 'pair 0.2'"),
        ("paper:\n  DSPT: {alpha: {sym 0.4: high}}\n", "is not a percent"),
    ],
)
def test_bad_paper_cells_are_one_line_usage_errors(tmp_path, paper, message):
    with pytest.raises(UsageError, match=message) as info:
        sweep.load_grid(_two_dataset_grid(tmp_path, paper))
    assert "\n" not in str(info.value)


PRESETS = sorted(sweep.presets())


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_validates_and_names_its_source(cli, name):
    """Each bundled grid passes `--dry-run` with one distinct cell per listed combination, is
    the file in examples/ it links to, and its header names the paper's table or figure and the
    reference config it follows."""
    path = sweep.preset_path(name)
    assert path.resolve().parent == (Path(__file__).parents[1] / "examples").resolve()
    grid = sweep.load_grid(path)
    r = cli("sweep", "--preset", name, "--dry-run", "--json")
    assert r.code == 0, r.stderr
    cells = json.loads(r.stdout)["cells"]
    expected = len(grid.sources()) * len(grid.noise) * len(grid.methods) * len(grid.seeds)
    assert len(cells) == len(set(cells)) == expected
    assert r.stderr.count("pending") == expected
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    if name != "shapes":  # the offline world reproduces no paper's table
        text = " ".join(header)
        assert "Paper:" in text and "Reference config:" in text
        assert "arxiv.org/html/" in text


def test_the_papers_numbers_print_beside_ours_on_the_terminal(cli, grid_file, monkeypatch):
    """`nlp sweep` prints the paper-beside-ours block on stderr with the mean over seeds of the
    cells it ran (stand-in stages: made-up accuracies) and ours − paper."""
    grid_file.write_text(
        grid_file.read_text() + "paper:\n  DSPT: {sym 0.4: 80.0, feats: {pair 0.2: 55.5}}\n"
    )
    stages = FakeStages()
    monkeypatch.setattr(sweep, "Stages", lambda **_: stages)
    r = cli("sweep", grid_file, "--out", grid_file.parent / "sw", "--no-plot", "--json")
    assert r.code == 0, r.stderr
    records = json.loads((grid_file.parent / "sw" / "results.json").read_text())["records"]
    assert "**feats: the paper's numbers beside ours**" in r.stderr
    for setting, noise, paper in (("Sym 40%", "sym", 80.0), ("Pair 20%", "pair", 55.5)):
        accs = [100 * x["acc"] for x in records if x["method"] == "DSPT" and x["noise"] == noise]
        assert len(accs) == 2  # one per seed
        mean = sum(accs) / 2
        row = f"| DSPT | {setting} | {paper:.2f} | {mean:.2f} | {mean - paper:+.2f} |"
        assert row in r.stderr


def test_batched_groups_are_written_as_each_finishes(tmp_path, grid_file):
    """Cells trained together are evaluated and written group by group: when the second group
    (other training options) starts, the first group's metrics are already on disk, so an
    interrupted sweep keeps them; a rerun then trains only what is missing."""
    text = grid_file.read_text().replace(
        "  - {name: NLPrompt, loss: nlprompt}",
        "  - {name: UPL, loss: gce, train: {targets: zero-shot}}",
    )
    assert "UPL" in text
    grid_file.write_text(text)
    grid = sweep.load_grid(grid_file)
    seen: list[set[str]] = []

    class Interrupted(FakeStages):
        def train_prompts(self, inputs, opts):
            seen.append({p.parent.name + "/" + p.stem for p in grid.folder().rglob("*.json")})
            if len(seen) == 2:
                raise KeyboardInterrupt  # the sweep dies as the second group starts
            return super().train_prompts(inputs, opts)

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(grid, stages=Interrupted(), batch=True)
    first_group = [c for c in grid.cells() if c.method.name != "UPL"]
    assert seen[0] == set() and len(first_group) == 8
    assert all(
        sweep.cell_done(grid, c, grid_file.parent / "feats.safetensors") for c in first_group
    )
    stages = FakeStages()
    again = sweep.run_sweep(grid, stages=stages, batch=True)
    trained = [c for c in stages.calls if c[0] == "train"]
    assert len(trained) == 1 and trained[0][2].losses == ["gce"] * 4
    assert again.ran == 4 and again.skipped == 8 and len(again.records) == 12
