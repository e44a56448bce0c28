"""TextVQA and TextCaps (textvqa.org): one JSON object with a ``data`` list, OpenImages pictures.

Both use the images of the TextVQA release: train and val images are in ``train_images/``,
test images in ``test_images/``, each named ``<image_id>.jpg`` (as the HF ``textvqa`` loader
resolves them). Image root: the folder holding ``train_images/`` and ``test_images/``.
"""
from __future__ import annotations

import argparse
from typing import Any, Iterator

from .base import Converter, Sample, register
from .fields import answer_list, identifier, most_common, text, with_id


class TextVQAImages(Converter):
    """Sources on the TextVQA release's images: a train and a val file, images by image_id."""

    splits = ("train", "val")
    default_split = "train"

    @staticmethod
    def image_path(raw: dict, image_id: str) -> str:
        # set_name ("train" / "val" / "test") picks the image folder; without one it is a train/val image.
        folder = "test_images" if raw.get("set_name") == "test" else "train_images"
        return f"{folder}/{image_id}.jpg"


@register
class TextVQA(TextVQAImages):
    """TextVQA (TextVQA_0.5.1_train.json / _val.json).

    Entry: question_id, question, image_id, answers (10 annotators), set_name, plus
    image_classes, flickr_original_url, flickr_300k_url, image_width, image_height,
    question_tokens. Answer: the most common of the 10 answers; a tie goes to the one listed first.
    """

    name = "textvqa"
    bench_splits = ("val",)
    file_patterns = ("TextVQA_0.5.1_{split}.json",)

    def convert(self, raw: Any, where: str, args: argparse.Namespace) -> Iterator[Sample]:
        where = with_id(where, raw, "question_id")
        answers = answer_list(raw, "answers", where, keep_empty=True)  # the VQA metric scores against all 10
        yield Sample(id=identifier(raw, "question_id", where),
                     image=self.image_path(raw, identifier(raw, "image_id", where)),
                     question=text(raw, "question", where), answer=most_common([a for a in answers if a]),
                     answers=tuple(answers))


@register
class TextCaps(TextVQAImages):
    """TextCaps (TextCaps_0.1_train.json / _val.json) -> stage-1 caption records.

    Entry: one caption of one image: image_id, caption_id, caption_str, plus reference_strs
    (all captions of that image), image_path, image_name, set_name and the TextVQA image fields.
    Every entry becomes one record (human "<image>", gpt the caption), the form the ``plain``
    stage-1 template trains on. The image path is built from image_id like TextVQA's, not
    taken from ``image_path``: its folder name is not the one the released image zip unpacks to.
    Record id: ``textcaps_<image_id>_<caption_id>`` (caption_id alone is not documented as unique).
    """

    name = "textcaps"
    kind = "caption"
    instruction = ""
    file_patterns = ("TextCaps_0.1_{split}.json",)

    def convert(self, raw: Any, where: str, args: argparse.Namespace) -> Iterator[Sample]:
        where = with_id(where, raw, "image_id")
        image_id = identifier(raw, "image_id", where)
        yield Sample(id=f"{image_id}_{identifier(raw, 'caption_id', where)}", image=self.image_path(raw, image_id),
                     question=None, answer=text(raw, "caption_str", where))
