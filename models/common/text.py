"""Prompt templates and the text classifier (one embedding per prompt name) built from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The 80 "OpenAI ImageNet" templates, in CLIP's order (taken from open_clip's copy).
IMAGENET_TEMPLATES: tuple[str, ...] = tuple(t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES)

#: MaskCLIP's prompt engineering: the 80 ImageNet templates plus five scene templates
#: (chongzhou96/MaskCLIP tools/maskclip_utils/prompt_engineering.py).
MASKCLIP_TEMPLATES: tuple[str, ...] = IMAGENET_TEMPLATES + (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

#: The single template of the released Cat-Seg-family configs (RSKT-Seg, Cat-Seg, GSNet, OVRS).
RSKTSEG_TEMPLATES: tuple[str, ...] = ("A photo of a {} in the scene",)

#: The 14 ViLD templates SAN averages over (MendelXu/SAN san/model/clip_utils/utils.py, "vild").
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "maskclip": MASKCLIP_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
    "rsktseg": RSKTSEG_TEMPLATES,
    "vild": VILD_TEMPLATES,
    "single": ("a photo of a {}.",),  # MaskCLIP's --no-prompt-eng setting
}


class TextClassifier(NamedTuple):
    """One L2-normalised embedding per prompt name, and the class each row belongs to."""

    embeddings: Tensor  # (N, D), N = total number of names over all classes
    class_index: Tensor  # (N,) int64, non-decreasing, values 0..K-1
    num_classes: int


def get_tokenizer(arch: str | dict[str, Any]) -> Callable[[list[str]], Tensor]:
    """open_clip's tokenizer for a model name, or CLIP's BPE tokenizer for a config dict."""
    if isinstance(arch, str):
        return open_clip.get_tokenizer(arch)
    return open_clip.SimpleTokenizer(context_length=arch["text_cfg"]["context_length"])


def build_text_classifier(
    clip_model: nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    classes: Sequence[Sequence[str]],
    templates: Sequence[str],
    batch_size: int = 256,
) -> TextClassifier:
    """Embed every name of every class with the template ensemble.

    Per name: encode each filled-in template, L2-normalise, average, L2-normalise again.
    Synonyms stay separate rows so that a model can take the max over them.
    """
    if not classes or any(not names for names in classes):
        raise ValueError("every class needs at least one prompt name")
    if not templates or any("{}" not in template for template in templates):
        raise ValueError("every template must contain '{}'")
    names = [name for class_names in classes for name in class_names]
    prompts = [template.format(name) for name in names for template in templates]
    device = next(clip_model.parameters()).device
    with torch.no_grad():
        embedded = torch.cat(
            [
                clip_model.encode_text(tokenizer(prompts[start : start + batch_size]).to(device))
                for start in range(0, len(prompts), batch_size)
            ]
        )
    per_name = F.normalize(embedded.float(), dim=-1).reshape(len(names), len(templates), -1)
    class_index = torch.repeat_interleave(
        torch.arange(len(classes)), torch.tensor([len(class_names) for class_names in classes])
    )
    return TextClassifier(
        F.normalize(per_name.mean(dim=1), dim=-1), class_index.to(device), len(classes)
    )


def max_over_synonyms(scores: Tensor, class_index: Tensor, num_classes: int) -> Tensor:
    """Reduce per-name scores (B, N, ...) to per-class scores (B, K, ...) by the max."""
    shape = (scores.shape[0], num_classes, *scores.shape[2:])
    index = class_index.view(1, -1, *[1] * (scores.dim() - 2)).expand_as(scores)
    return scores.new_full(shape, float("-inf")).scatter_reduce(1, index, scores, "amax")


class NameEmbeddings(nn.Module):
    """A network part holding a ``TextClassifier``: the L2-normalised name embeddings
    (``text_embeddings``, N x D) and their classes (``class_index``), as non-persistent buffers
    that follow the module's device."""

    def __init__(self) -> None:
        super().__init__()
        self.num_names = self.num_classes = 0
        self.register_buffer("text_embeddings", torch.empty(0), persistent=False)
        self.register_buffer("class_index", torch.empty(0, dtype=torch.long), persistent=False)

    def set_classifier(self, classifier: TextClassifier) -> None:
        """Score against ``classifier``'s names from now on."""
        device = self.text_embeddings.device
        self.text_embeddings = F.normalize(classifier.embeddings.float(), dim=-1).to(device)
        self.class_index = classifier.class_index.to(device)
        self.num_names = classifier.embeddings.shape[0]
        self.num_classes = classifier.num_classes
