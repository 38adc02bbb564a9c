"""The presets against the reference code, as transcribed in nlp_cli.schedule.REFERENCE_CONFIGS
(itself tested against torch's schedulers stepped as Dassl steps them, tests/test_schedule.py)."""

import pytest
import torch
from conftest import make_sym_labelset

from nlp_cli import clip_model, schedule, templates
from nlp_cli import train as lib

# preset field → reference key
FIELDS = {
    "epochs": "max_epoch",
    "lr": "lr",
    "batch_size": "batch_size",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "warmup_epochs": "warmup_epochs",
    "warmup_lr": "warmup_lr",
    "warmup_recount": "recount",
    "n_ctx": "n_ctx",
    "csc": "csc",
    "class_token_position": "class_token_position",
}


@pytest.mark.parametrize(
    "protocol, reference",
    [("coop", "coop/vit_b16_ep50"), ("dspt", "coop/vit_b16_ep50"), ("nlprompt", "nlprompt/rn50")],
)
def test_presets_match_the_reference_configs(protocol, reference):
    cfg = lib.make_config(protocol, loss="nlprompt" if protocol == "nlprompt" else "ce")
    ref = schedule.REFERENCE_CONFIGS[reference]
    for ours, theirs in FIELDS.items():
        assert getattr(cfg, ours) == ref[theirs], (ours, getattr(cfg, ours), ref[theirs])
    assert cfg.drop_last
    assert [cfg.lr_at(e) for e in range(cfg.epochs)] == schedule.reference_lr_table(reference)
    if protocol == "nlprompt":
        assert ref["ot_every_epoch"] and cfg.repurify == "epoch" and cfg.loaders == "separate"


def test_warmup_recount_restarts_the_cosine():
    cfg = lib.make_config("coop")
    assert cfg.lr_at(0) == 1e-5 and cfg.lr_at(1) == 0.002
    assert cfg.lr_at(2) == pytest.approx(0.002 * (1 + torch.cos(torch.tensor(torch.pi / 50))) / 2)
    assert cfg.lr_at(49) == pytest.approx(7.8853e-6, rel=1e-4)


def test_nlprompt_preset_is_for_nlprompt_runs_only():
    ce = lib.make_config("nlprompt", loss="ce")
    assert (ce.repurify, ce.loaders, ce.epochs) == ("none", "mixed", 200)


def test_plain_sgd_variant_stays_reachable_by_flags():
    cfg = lib.make_config("dspt", momentum=0.0, weight_decay=0.0, warmup_epochs=0, drop_last=False)
    assert cfg.lr_at(0) == 0.002 and cfg.steps_for(100) == 4


@pytest.mark.parametrize("n, steps", [(100, 3), (96, 3), (31, 1), (32, 1)])
def test_drop_last_as_dassl(n, steps):
    cfg = lib.make_config("coop")
    assert cfg.steps_for(n) == steps == (n // 32 if schedule.drop_last(n, 32) else -(-n // 32))


def test_training_history_follows_the_schedule_and_drops_the_last_batch(features):
    data = lib.load_data(features)
    cfg = lib.make_config("coop", epochs=3, n_ctx=4, batch_size=16)
    seen = []

    def look(epoch, learner):
        seen.append(epoch)

    res = lib.train_prompt(data, cfg, inspect=look)
    assert [h["lr"] for h in res.history] == schedule.lr_table(
        lr=0.002, max_epoch=3, warmup_epochs=1, warmup_lr=1e-5
    )
    assert res.info["n_train"] == len(data.labels)


def test_nlprompt_separate_loaders_clean_batches_then_noisy(features, tmp_path):
    """NLPrompt's run_epoch: every clean batch (CE) before every noisy batch (MAE), each
    loader with drop_last; samples left out of the OT's loader count as noisy."""
    from nlp_cli.methods.nlprompt import NLPrompt

    labels = make_sym_labelset(features, tmp_path / "l.safetensors", rate=0.4)
    data = lib.load_data(labels)
    cfg = lib.make_config("nlprompt", loss="nlprompt", epochs=2, n_ctx=4, batch_size=8)
    model = clip_model.load_for(data.features.meta).model
    runs, *_ = lib._setup([data], [cfg], None, None, None, False, None)
    run = runs[0]
    run.begin_epoch(0)
    NLPrompt().before_epoch(model, [run], 0, 1.0)
    left_out = run.order[run.n - run.n % 8 :]
    assert not run.epoch_clean[left_out].any()
    kinds = [bool(run.epoch_clean[b].all()) for b in run.batches]
    assert all(run.epoch_clean[b].all() or not run.epoch_clean[b].any() for b in run.batches)
    assert kinds == sorted(kinds, reverse=True)  # clean ones first
    assert all(len(b) == 8 for b in run.batches)
    assert len(run.batches) == int(run.epoch_clean.sum()) // 8 + int((~run.epoch_clean).sum()) // 8


def test_hand_prompt_is_the_datasets_coop_template(tiny_clip):
    model = clip_model.load(str(tiny_clip)).model
    names = ["Annual Crop Land", "Forest"]
    got = clip_model.class_prototypes(model, names, "eurosat")
    want = clip_model.hand_prompt_features(model, names, "a centered satellite photo of {}.")
    assert torch.equal(got, want)
    assert templates.template_for("eurosat") == "a centered satellite photo of {}."
    plain = clip_model.class_prototypes(model, names, "my_photos")
    assert torch.equal(plain, clip_model.hand_prompt_features(model, names, "a photo of a {}."))
    ens = clip_model.class_prototypes(model, names, template="ensemble")
    assert torch.allclose(ens.norm(dim=-1), torch.ones(2))


def test_nlprompt_curriculum_budget_reaches_promptot(features, tmp_path, monkeypatch):
    """--curriculum-epochs T: each epoch's PromptOT gets NLPrompt's budget for that epoch."""
    from nlp_cli import purify

    seen = []
    real = purify.promptot

    def spy(*args, **kwargs):
        seen.append((kwargs.get("reg"), kwargs.get("budget")))
        return real(*args, **kwargs)

    monkeypatch.setattr(purify, "promptot", spy)
    labels = make_sym_labelset(features, tmp_path / "l.safetensors", rate=0.4)
    cfg = lib.make_config(
        "nlprompt",
        loss="nlprompt",
        epochs=3,
        n_ctx=4,
        batch_size=8,
        curriculum_epochs=2,
        ot_reg=0.02,
    )
    lib.train_prompt(lib.load_data(labels), cfg)
    want = [purify.curriculum_budget(e, 2, 0.3, "linear") for e in range(3)]
    assert seen == [(0.02, b) for b in want] and want == pytest.approx([0.3, 0.65, 1.0])
    assert "ot_reg" in cfg.options() and "ot_reg" not in lib.make_config("dspt").options()
