"""Hand prompts: CoOp's per-dataset templates, CLIP's ImageNet ensemble, ctx-init word counting.

Strings as read in the reference code (transcribed, SPEC §4):

* `CUSTOM_TEMPLATES`: `KaiyangZhou/CoOp: trainers/zsclip.py`, keyed there by CoOp's dataset
  class names (`DATASET.NAME` in `configs/datasets/<name>.yaml`); here by our catalog names,
  which are those config files' stems (`configs/datasets/oxford_pets.yaml` names `OxfordPets`).
* `ENSEMBLE`: the 80 templates of `openai/CLIP: notebooks/Prompt_Engineering_for_ImageNet.ipynb`
  (the notebook prints "80 templates"); CoOp's `trainers/imagenet_templates.py`
  (`IMAGENET_TEMPLATES`) holds the same list in the same order. `ENSEMBLE_SELECT` is the
  notebook's 7-template forward selection (CoOp's `IMAGENET_TEMPLATES_SELECT`), which CoOp's
  `ZeroshotCLIP2` uses plus the dataset's own template for every dataset but ImageNet.
* Class names are formatted as CoOp does, `template.format(classname.replace("_", " "))`.
"""

from __future__ import annotations

from nlp_cli.errors import UsageError

DEFAULT_TEMPLATE = "a photo of a {}."

# CoOp's DATASET.NAME → our catalog name (the stem of CoOp's configs/datasets/*.yaml).
COOP_DATASET_NAMES: dict[str, str] = {
    "OxfordPets": "oxford_pets",
    "OxfordFlowers": "oxford_flowers",
    "FGVCAircraft": "fgvc_aircraft",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "StanfordCars": "stanford_cars",
    "Food101": "food101",
    "SUN397": "sun397",
    "Caltech101": "caltech101",
    "UCF101": "ucf101",
    "ImageNet": "imagenet",
    "ImageNetSketch": "imagenet_sketch",
    "ImageNetV2": "imagenetv2",
    "ImageNetA": "imagenet_a",
    "ImageNetR": "imagenet_r",
}

CUSTOM_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}

ENSEMBLE: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

ENSEMBLE_SELECT: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def template_for(dataset: str | None) -> str:
    """CoOp's hand template for a dataset (our name or CoOp's), else "a photo of a {}."."""
    if dataset is None:
        return DEFAULT_TEMPLATE
    return CUSTOM_TEMPLATES.get(COOP_DATASET_NAMES.get(dataset, dataset), DEFAULT_TEMPLATE)


def check_template(template: str) -> str:
    """The template itself, if it holds exactly one "{}" and no other brace; else UsageError."""
    if not isinstance(template, str):
        raise UsageError(f"a template must be text, not {type(template).__name__}")
    slots = template.count("{}")
    if slots != 1:
        raise UsageError(
            f'template {template!r} must contain exactly one "{{}}" for the class name, '
            f"found {slots}"
        )
    if "{" in template.replace("{}", "") or "}" in template.replace("{}", ""):
        raise UsageError(f'template {template!r} has a brace outside its "{{}}"')
    return template


def render(template: str, classname: str) -> str:
    """One prompt: the class name (underscores as spaces, as CoOp does) put into the template."""
    return check_template(template).format(classname.replace("_", " "))


def ctx_init_words(text: str) -> tuple[str, int]:
    """CoOp's ctx-init words and context length: underscores to spaces, one token per word.

    CoOp's PromptLearner (`trainers/coop.py`; NLPrompt's `trainers/nlprompt.py` is the same)
    does `ctx_init.replace("_", " ")` and `n_ctx = len(ctx_init.split(" "))`, then takes the
    embeddings of tokens 1 … n_ctx of the tokenised text: the count assumes every word is one
    BPE token. Empty words (leading, trailing or repeated spaces) would count as context tokens
    there and pull in end-of-text or padding embeddings, so they are refused here; for every
    accepted text the count is CoOp's.
    """
    normalised = text.replace("_", " ")
    if not normalised.strip():
        raise UsageError("ctx-init text is empty: give words such as 'a photo of a'")
    if normalised != " ".join(normalised.split()):
        raise UsageError(
            f"ctx-init text {text!r} has empty words (leading, trailing or repeated spaces, "
            "or other whitespace): CoOp would count each as a context token"
        )
    return normalised, len(normalised.split(" "))
