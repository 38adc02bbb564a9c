"""Hand prompts against the strings as read in CoOp's zsclip.py and CLIP's ImageNet notebook."""

from __future__ import annotations

import pytest

from nlp_cli import templates
from nlp_cli.datasets.catalog import CATALOG
from nlp_cli.errors import UsageError

# (our name, CoOp's DATASET.NAME, the template in CoOp's CUSTOM_TEMPLATES)
COOP = [
    ("oxford_pets", "OxfordPets", "a photo of a {}, a type of pet."),
    ("oxford_flowers", "OxfordFlowers", "a photo of a {}, a type of flower."),
    ("fgvc_aircraft", "FGVCAircraft", "a photo of a {}, a type of aircraft."),
    ("dtd", "DescribableTextures", "{} texture."),
    ("eurosat", "EuroSAT", "a centered satellite photo of {}."),
    ("stanford_cars", "StanfordCars", "a photo of a {}."),
    ("food101", "Food101", "a photo of {}, a type of food."),
    ("sun397", "SUN397", "a photo of a {}."),
    ("caltech101", "Caltech101", "a photo of a {}."),
    ("ucf101", "UCF101", "a photo of a person doing {}."),
    ("imagenet", "ImageNet", "a photo of a {}."),
    ("imagenet_sketch", "ImageNetSketch", "a photo of a {}."),
    ("imagenetv2", "ImageNetV2", "a photo of a {}."),
    ("imagenet_a", "ImageNetA", "a photo of a {}."),
    ("imagenet_r", "ImageNetR", "a photo of a {}."),
]


@pytest.mark.parametrize(("ours", "coop", "template"), COOP)
def test_custom_templates_as_in_coop(ours, coop, template):
    assert templates.template_for(ours) == template
    assert templates.template_for(coop) == template
    assert templates.COOP_DATASET_NAMES[coop] == ours


def test_every_coop_dataset_is_mapped_and_catalog_names_agree():
    assert len(templates.CUSTOM_TEMPLATES) == len(COOP) == len(templates.COOP_DATASET_NAMES)
    in_catalog = set(templates.CUSTOM_TEMPLATES) & set(CATALOG)
    assert {"caltech101", "oxford_pets", "eurosat", "dtd", "ucf101"} <= in_catalog


@pytest.mark.parametrize("dataset", [None, "cifar10", "shapes", "my_photos", "eurosat2"])
def test_default_for_unknown(dataset):
    assert templates.template_for(dataset) == "a photo of a {}."


def test_ensemble_as_in_clip_notebook():
    e = templates.ENSEMBLE
    assert len(e) == 80 and len(set(e)) == 80
    assert e[0] == "a bad photo of a {}."
    assert e[35] == "a {} in a video game."
    assert e[39] == "a photo of a {}."
    assert e[-1] == "a tattoo of the {}."
    assert templates.ENSEMBLE_SELECT == (
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    )
    assert set(templates.ENSEMBLE_SELECT) <= set(e)
    for t in (*e, *templates.CUSTOM_TEMPLATES.values()):
        assert templates.check_template(t) == t


def test_render():
    assert templates.render("a centered satellite photo of {}.", "Annual Crop Land") == (
        "a centered satellite photo of Annual Crop Land."
    )
    assert templates.render("{} texture.", "bubbly") == "bubbly texture."
    assert templates.render("a photo of a {}.", "golden_retriever") == (
        "a photo of a golden retriever."
    )
    assert templates.render("a photo of a {}.", "{odd}") == "a photo of a {odd}."


@pytest.mark.parametrize(
    "bad", ["a photo of a class.", "a {} and a {}.", "a {0}.", "a {name} {}.", "a } {}", ""]
)
def test_check_template_refuses(bad):
    with pytest.raises(UsageError):
        templates.check_template(bad)
    with pytest.raises(UsageError):
        templates.render(bad, "cat")


@pytest.mark.parametrize(
    ("text", "words", "n"),
    [
        ("a photo of a", "a photo of a", 4),
        ("a_photo_of_a", "a photo of a", 4),
        ("X", "X", 1),
        ("a centered_satellite photo of", "a centered satellite photo of", 5),
    ],
)
def test_ctx_init_words(text, words, n):
    assert templates.ctx_init_words(text) == (words, n)
    # CoOp's own count, written out for the accepted texts.
    assert len(text.replace("_", " ").split(" ")) == n


@pytest.mark.parametrize("bad", ["", "  ", "_", "a  photo", " a photo", "a photo_", "a\tphoto"])
def test_ctx_init_words_refuses_empty_words(bad):
    with pytest.raises(UsageError):
        templates.ctx_init_words(bad)
