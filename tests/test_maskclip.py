"""MaskCLIP: templates, text classifier, the network's scores, and the adapter contract."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from ovrsisbench.errors import UserError
from ovrsisbench.io import file_sha256
from ovrsisbench.models.common.dense_clip import TINY_VIT_CONFIG, DenseCLIP, build_clip
from ovrsisbench.models.common.text import (
    IMAGENET_TEMPLATES,
    MASKCLIP_TEMPLATES,
    RSKTSEG_TEMPLATES,
    TextClassifier,
    build_text_classifier,
    get_tokenizer,
    max_over_synonyms,
)
from ovrsisbench.models.maskclip import MaskCLIP
from ovrsisbench.registry import create_adapter, find_adapter

VOCABULARY = [["road", "street"], ["building"], ["tree", "forest", "woods"]]
TEMPLATES = ("a photo of a {}.", "there is a {} in the scene.")


@pytest.fixture(scope="module")
def clip() -> DenseCLIP:
    torch.manual_seed(0)
    return DenseCLIP(build_clip(TINY_VIT_CONFIG))


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer(TINY_VIT_CONFIG)


@pytest.fixture(scope="module")
def adapter():
    tiny = create_adapter("maskclip", backbone="tiny")
    tiny.load(None, "cpu")
    tiny.set_vocabulary(VOCABULARY)
    return tiny


# -- templates and text classifier -------------------------------------------------------------
def test_template_sets():
    assert len(IMAGENET_TEMPLATES) == 80
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert len(MASKCLIP_TEMPLATES) == 85
    assert MASKCLIP_TEMPLATES[:80] == IMAGENET_TEMPLATES
    assert MASKCLIP_TEMPLATES[-1] == "this is one {} in the scene."
    assert RSKTSEG_TEMPLATES == ("A photo of a {} in the scene",)


def test_text_classifier_is_the_normalised_template_ensemble(clip, tokenizer):
    classifier = build_text_classifier(clip, tokenizer, VOCABULARY, TEMPLATES, batch_size=3)
    assert classifier.embeddings.shape == (6, 32)
    assert classifier.class_index.tolist() == [0, 0, 1, 2, 2, 2]
    assert classifier.num_classes == 3
    torch.testing.assert_close(classifier.embeddings.norm(dim=-1), torch.ones(6))
    with torch.no_grad():
        rows = clip.encode_text(tokenizer([t.format("building") for t in TEMPLATES]))
    expected = F.normalize(F.normalize(rows, dim=-1).mean(0), dim=0)
    torch.testing.assert_close(classifier.embeddings[2], expected)


def test_text_classifier_refuses_empty_classes_and_bad_templates(clip, tokenizer):
    with pytest.raises(ValueError, match="prompt name"):
        build_text_classifier(clip, tokenizer, [["road"], []], TEMPLATES)
    with pytest.raises(ValueError, match="'{}'"):
        build_text_classifier(clip, tokenizer, [["road"]], ["no slot"])


def test_max_over_synonyms():
    scores = torch.tensor([[1.0, 5.0, 2.0, -1.0, -3.0, 0.5]]).view(1, 6, 1, 1)
    reduced = max_over_synonyms(scores, torch.tensor([0, 0, 1, 2, 2, 2]), 3)
    assert reduced.flatten().tolist() == [5.0, 2.0, 0.5]


# -- network -----------------------------------------------------------------------------------
def test_scores_are_upsampled_cosines_with_synonym_max(clip):
    embeddings = F.normalize(torch.randn(4, 32), dim=-1)
    network = MaskCLIP(clip).eval()
    network.set_classifier(TextClassifier(embeddings, torch.tensor([0, 1, 1, 2]), 3))
    images = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        features = F.normalize(clip.encode_dense(images), dim=1)
        cosine = torch.einsum("bdhw,nd->bnhw", features, embeddings)
        per_class = torch.stack([cosine[:, 0], cosine[:, 1:3].amax(1), cosine[:, 3]], dim=1)
        expected = F.interpolate(per_class, size=(64, 80), mode="bilinear", align_corners=False)
        torch.testing.assert_close(network(images), expected)


def test_scores_of_sizes_off_the_patch_grid_are_cropped(clip):
    network = MaskCLIP(clip).eval()
    network.set_classifier(TextClassifier(torch.eye(32)[:2], torch.tensor([0, 1]), 2))
    with torch.no_grad():
        padded = network(F.pad(torch.zeros(1, 3, 50, 70), (0, 10, 0, 14)))
        assert network(torch.zeros(1, 3, 50, 70)).shape == (1, 2, 50, 70)
        torch.testing.assert_close(network(torch.zeros(1, 3, 50, 70)), padded[..., :50, :70])


def test_network_needs_a_classifier(clip):
    with pytest.raises(RuntimeError, match="classifier"):
        MaskCLIP(clip)(torch.zeros(1, 3, 64, 64))


# -- adapter -----------------------------------------------------------------------------------
def test_registered_as_builtin():
    assert find_adapter("maskclip").origin == "built-in"


@pytest.mark.parametrize("inference", ["slide", "whole"])
@pytest.mark.parametrize("size", [(97, 131), (64, 64), (41, 23)])
def test_predict_returns_scores_at_the_input_size(adapter, inference, size):
    adapter.options["inference"] = inference
    try:
        out = adapter.predict(torch.rand(2, 3, *size))
    finally:
        adapter.options["inference"] = "slide"
    assert out.shape == (2, 3, *size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_predict_is_deterministic_and_seeded(adapter):
    images = torch.rand(1, 3, 70, 90)
    torch.testing.assert_close(adapter.predict(images), adapter.predict(images))
    same = create_adapter("maskclip", backbone="tiny")
    same.load(None, "cpu")
    same.set_vocabulary(VOCABULARY)
    assert same.weights_sha256() == adapter.weights_sha256()
    torch.testing.assert_close(same.predict(images), adapter.predict(images))
    other = create_adapter("maskclip", backbone="tiny", seed=1)
    other.load(None, "cpu")
    assert other.weights_sha256() != adapter.weights_sha256()


def test_vocabulary_change_changes_the_class_count():
    tiny = create_adapter("maskclip", backbone="tiny", long_side=None, window=64, stride=32)
    tiny.set_vocabulary([["water"]])  # before load: kept until the model exists
    tiny.load(None, "cpu")
    assert tiny.predict(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    tiny.set_vocabulary(VOCABULARY)
    assert tiny.predict(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_predict_before_load_is_an_error():
    with pytest.raises(RuntimeError, match="load"):
        create_adapter("maskclip", backbone="tiny").predict(torch.rand(1, 3, 8, 8))


def test_tiny_never_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(open_clip, "download_pretrained", refuse)
    create_adapter("maskclip", backbone="tiny").load(None, "cpu")


def test_offline_default_weights_fail_as_a_user_error(monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(UserError, match="network unreachable"):
        create_adapter("maskclip").load(None, "cpu")


def test_weights_file_loads_and_is_hashed(tmp_path):
    torch.manual_seed(3)
    path = tmp_path / "tiny.pt"
    torch.save(build_clip(TINY_VIT_CONFIG).state_dict(), path)
    tiny = create_adapter("maskclip", backbone="tiny")
    tiny.load(path, "cpu")
    assert tiny.weights_sha256() == file_sha256(path)


def test_weights_with_a_wrong_key_fail_naming_it(tmp_path):
    state = build_clip(TINY_VIT_CONFIG).state_dict()
    state["visual.proj_typo"] = state.pop("visual.proj")
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match="visual.proj_typo"):
        create_adapter("maskclip", backbone="tiny").load(path, "cpu")


def test_meta_build_counts_match_open_clip():
    tiny = create_adapter("maskclip")
    network = tiny.build("meta")
    with torch.device("meta"):
        reference = open_clip.create_model("ViT-B-16", device="meta")
    total = sum(p.numel() for p in network.parameters())
    assert total == sum(p.numel() for p in reference.parameters()) == 149_620_737
    clip_group = tiny.encoder_modules(network)["clip"]
    assert sum(p.numel() for p in clip_group.parameters()) == total  # no head parameters
    assert not any(p.requires_grad for p in network.parameters())  # training-free


def test_numerics_option_sets_the_image_tower_activation():
    mmseg = create_adapter("maskclip", backbone="tiny").build("meta").clip.model
    assert isinstance(mmseg.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert mmseg.visual.ln_post.eps == 1e-6
    assert isinstance(mmseg.transformer.resblocks[0].mlp.gelu, QuickGELU)
    clip = create_adapter("maskclip", backbone="tiny", numerics="clip").build("meta").clip.model
    assert isinstance(clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert clip.visual.ln_post.eps == 1e-5


@pytest.mark.parametrize(
    "options",
    [
        {"backbone": "vit-h"},
        {"inference": "tiles"},
        {"window": 0},
        {"long_side": "448"},
        {"seed": "abc"},
        {"seed": 1.5},
        {"window": 224, "stride": 300},
    ],
)
def test_bad_options_are_user_errors(options):
    with pytest.raises(UserError, match="maskclip option"):
        create_adapter("maskclip", **options)


def test_describe_reports_the_protocol(adapter):
    facts = adapter.describe()
    assert facts["inference"] == "slide"
    assert (facts["window"], facts["stride"], facts["long_side"]) == (224, 112, 448)
    assert (facts["templates"], facts["num_templates"]) == ("maskclip", 85)
