"""ROSALIA processor: LISA/LLaVA-v1 conversations, CLIP pixels and SAM pixels for one batch of instructions.

Images are ``HxW`` (grayscale X-ray) or ``HxWx3`` ``uint8`` arrays, or PIL images, in their original frame.
Outputs:

* ``pixel_values`` ``(m, 3, C, C)`` float: CLIP pixels, one row per image (``m`` images);
* ``sam_pixel_values`` ``(m, 3, S, S)`` float: longest side resized to ``S``, SAM mean/std, zero pad bottom/right;
* ``original_sizes`` ``(m, 2)`` long: ``(H, W)`` of each image; ``image_index`` ``(n,)`` long: image of each row;
* ``input_ids``, ``attention_mask`` ``(n, L)`` long; ``labels`` ``(n, L)`` (answers given): answer tokens and
  ``</s>``, -100 elsewhere (LISA's training targets).

Added tokens follow LISA's transformers 4.31 rules (``rosalia_hf.tokenization_lisa``): ``[SEG]``, ``<im_start>`` and
``<im_end>`` eat the whitespace on both sides; ``<image>`` strips nothing. ``clip_backend="pil"`` runs CLIP
preprocessing on PIL (bicubic on 8-bit pixels, as transformers 4.31 did and LISA/ROSALIA checkpoints were trained
with); ``"torchvision"`` (our tiny configs) differs from it by one or two 8-bit levels in about 0.5% of values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import PilBackend
from transformers.processing_utils import ProcessorMixin

from rosalia_hf.images import pil_to_array, to_uint8
from rosalia_hf.mask_geometry import masks_to_original, resize_longest_shape
from rosalia_hf.tokenization_lisa import (
    IM_END_TOKEN,
    IM_START_TOKEN,
    IMAGE_TOKEN,
    SEG_TOKEN,
    image_placeholder_token,
    stripping_token,
)

IGNORE_INDEX = -100
CLIP_BACKENDS = ("torchvision", "pil")
# LLaVA "v1" conversation (LISA's default template): roles USER/ASSISTANT, separators " " and "</s>".
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def equalize_histogram(gray: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of an ``HxW uint8`` image (CDF mapping), ``HxW uint8`` out."""
    hist = np.bincount(gray.ravel(), minlength=256)
    cdf = hist.cumsum()
    nonzero = cdf[cdf > 0]
    if nonzero.size == 0 or nonzero[0] == cdf[-1]:
        return gray.copy()
    lut = np.round((cdf - nonzero[0]) / (cdf[-1] - nonzero[0]) * 255).clip(0, 255).astype(np.uint8)
    return lut[gray]


MIN_IMAGE_SIDE = 8  # pixels; below this an image is refused (nothing of a chest X-ray is left to segment)


def to_rgb_uint8(image) -> np.ndarray:
    """``HxWx3 uint8`` from an ``HxW``/``HxWx1``/``HxWx3`` array (uint8, 16-bit, float: see :func:`to_uint8`) or a
    PIL image (16-bit and float modes scaled the same way, not clipped as ``convert("RGB")`` would)."""
    array = pil_to_array(image) if isinstance(image, Image.Image) else np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"images must be HxW or HxWx3, got shape {array.shape}")
    if min(array.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(f"image is {array.shape[0]}x{array.shape[1]} pixels: each side needs at least "
                         f"{MIN_IMAGE_SIDE}")
    array = to_uint8(array)
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def sam_pixel_values(rgb: np.ndarray, target: int) -> torch.Tensor:
    """``(3, S, S)`` float: bilinear resize of the longest side to ``S``, SAM mean/std, zero pad bottom/right."""
    new_h, new_w = resize_longest_shape(rgb.shape[0], rgb.shape[1], target)
    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR), dtype=np.float32)
    normed = (resized - np.array(SAM_PIXEL_MEAN, np.float32)) / np.array(SAM_PIXEL_STD, np.float32)
    out = torch.zeros(3, target, target)
    out[:, :new_h, :new_w] = torch.from_numpy(normed).permute(2, 0, 1)
    return out


def add_rosalia_tokens(tokenizer, seg_token: str = SEG_TOKEN, use_im_start_end: bool = True) -> dict[str, int]:
    """Adds ``[SEG]``, ``<image>`` (and ``<im_start>``/``<im_end>``) once, with LISA's whitespace rules; returns
    their ids, read back.

    Idempotent: tokens already in the vocabulary keep their ids (LISA tokenizers already hold ``[SEG]``) and only
    get the stripping flags. New ones are appended in the order ``[SEG]``, ``<im_start>``, ``<im_end>``, ``<image>``.
    """
    tokenizer.add_tokens([stripping_token(seg_token, special=False)])
    delimiters = [IM_START_TOKEN, IM_END_TOKEN] if use_im_start_end else []
    if delimiters:
        tokenizer.add_tokens([stripping_token(t, special=True) for t in delimiters], special_tokens=True)
    tokenizer.add_tokens([image_placeholder_token()], special_tokens=True)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in [seg_token, *delimiters, IMAGE_TOKEN]}


def with_clip_backend(image_processor, backend: str):
    """``image_processor`` on the requested backend (same settings); only CLIP processors can change backend."""
    if backend not in CLIP_BACKENDS:
        raise ValueError(f"clip_backend must be one of {CLIP_BACKENDS}, got {backend!r}")
    if image_processor is None or (backend == "pil") == isinstance(image_processor, PilBackend):
        return image_processor
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if not isinstance(image_processor, (CLIPImageProcessor, CLIPImageProcessorPil)):
        raise ValueError(f"clip_backend={backend!r} needs a CLIP image processor, "
                         f"got {type(image_processor).__name__}")
    settings = {k: v for k, v in image_processor.to_dict().items() if k != "image_processor_type"}
    return (CLIPImageProcessorPil if backend == "pil" else CLIPImageProcessor)(**settings)


def _shared_prefix(ids: Sequence[int], prefix: Sequence[int]) -> int:
    """How many leading ids ``ids`` and ``prefix`` share."""
    count = 0
    while count < min(len(ids), len(prefix)) and ids[count] == prefix[count]:
        count += 1
    return count


def build_prompt(instruction: str, image_seq_length: int, use_im_start_end: bool = True) -> str:
    """The LLaVA-v1 prompt up to ``ASSISTANT:``, with ``image_seq_length`` image tokens before the instruction."""
    image = IMAGE_TOKEN * image_seq_length
    if use_im_start_end:
        image = IM_START_TOKEN + image + IM_END_TOKEN
    return f"{LLAVA_V1_SYSTEM} USER: {image}\n{instruction} ASSISTANT:"


class RosaliaProcessor(ProcessorMixin):
    r"""
    Turns (image, instruction[, answer]) triples into a [`RosaliaForSegmentation`] batch.

    Args:
        image_processor (`CLIPImageProcessor`): CLIP pixels (LISA: shortest side 224, centre crop 224).
        tokenizer (`PreTrainedTokenizerFast`): the LLaMA tokenizer; ``[SEG]`` and the image tokens are added once.
        image_seq_length (`int`): image tokens per image (LISA: 256).
        sam_image_size (`int`): SAM input size ``S`` (1024 for SAM ViT-H).
        use_im_start_end (`bool`): wrap the image tokens in ``<im_start>``/``<im_end>`` (LISA-7B-v1 does).
        equalize_histogram (`bool`), equalize_probability (`float`): histogram-equalise each image with this
            probability (training augmentation / X-ray normalisation); the random draw uses ``rng`` of ``__call__``.
        clip_backend (`str`): ``"pil"`` reproduces LISA's CLIP pixels exactly (converted checkpoints);
            ``"torchvision"`` is faster and within two 8-bit levels of it.
    """

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, sam_image_size: int = 1024,
                 seg_token: str = SEG_TOKEN, use_im_start_end: bool = True, equalize_histogram: bool = False,
                 equalize_probability: float = 1.0, clip_backend: str = "torchvision", chat_template=None, **kwargs):
        image_processor = with_clip_backend(image_processor, clip_backend)
        self.clip_backend = clip_backend
        self.image_seq_length = image_seq_length
        self.sam_image_size = sam_image_size
        self.seg_token = seg_token
        self.use_im_start_end = use_im_start_end
        self.equalize_histogram = equalize_histogram
        self.equalize_probability = equalize_probability
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        ids = add_rosalia_tokens(self.tokenizer, seg_token, use_im_start_end)
        self.seg_token_id = ids[seg_token]
        self.image_token_id = ids[IMAGE_TOKEN]
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.unk_token

    # --- images ---
    def prepare_images(self, images: Sequence, rng: np.random.Generator | None = None,
                       equalize_probability: float | None = None) -> dict[str, torch.Tensor]:
        """CLIP pixels, SAM pixels and ``(H, W)`` for each image, in order.

        Histogram equalisation follows the processor's settings, or ``equalize_probability`` when given (the
        training collator's augmentation: one draw of ``rng`` per image, equalised when it falls below)."""
        rgbs = []
        for index, image in enumerate(images):
            try:
                rgbs.append(self._maybe_equalize(to_rgb_uint8(image), rng, equalize_probability))
            except ValueError as error:
                raise ValueError(f"image {index}: {error}") from None
        clip = self.image_processor(images=rgbs, return_tensors="pt", input_data_format="channels_last")[
            "pixel_values"]
        sam = torch.stack([sam_pixel_values(rgb, self.sam_image_size) for rgb in rgbs])
        sizes = torch.tensor([rgb.shape[:2] for rgb in rgbs], dtype=torch.long)
        return {"pixel_values": clip, "sam_pixel_values": sam, "original_sizes": sizes}

    def _maybe_equalize(self, rgb: np.ndarray, rng: np.random.Generator | None,
                        probability: float | None = None) -> np.ndarray:
        if probability is not None:  # the caller's draw: no draw at 0, one draw per image otherwise
            if probability <= 0 or (rng if rng is not None else np.random.default_rng()).random() >= probability:
                return rgb
        elif not self.equalize_histogram:
            return rgb
        elif self.equalize_probability < 1.0:
            rng = rng if rng is not None else np.random.default_rng()
            if rng.random() >= self.equalize_probability:
                return rgb
        gray = np.round(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8)
        return np.repeat(equalize_histogram(gray)[..., None], 3, axis=2)

    # --- text ---
    def encode_conversation(self, instruction: str, answer: str | None = None, add_eos: bool = True,
                            history: Sequence[tuple[str, str]] = ()) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of one conversation; labels keep the answer tokens (and ``</s>``) only.

        ``history``: earlier ``(instruction, answer)`` turns, before this one (LLaVA v1, as LISA builds several
        rounds: ``"{system} USER: <image>\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"``; the image only
        in the first turn). Every given answer is labelled with its ``</s>`` (the last one's only with
        ``add_eos``); each turn's span is found by tokenising the text up to it, so it is exact whatever the
        tokenizer merges. With no history the ids are those of the single-turn prompt the reference fixtures hold.
        """
        eos = self.tokenizer.eos_token
        turns = [*history, (instruction, answer)]
        text, spans = "", []
        for number, (question, reply) in enumerate(turns):
            last = number == len(turns) - 1
            if reply is None and not last:
                raise ValueError(f"turn {number + 1} of the history has no answer")
            text += (build_prompt(question, self.image_seq_length, self.use_im_start_end) if number == 0
                     else f"USER: {question} ASSISTANT:")
            start = text
            if reply is not None:
                text += f" {reply}" + (eos if add_eos or not last else "")
                spans.append((start, text))
        ids = self.tokenizer(text)["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            first, stop = _shared_prefix(ids, self.tokenizer(start)["input_ids"]), \
                _shared_prefix(ids, self.tokenizer(end)["input_ids"])
            labels[first:stop] = ids[first:stop]
        return ids, labels

    def pad(self, sequences: list[list[int]], labels: list[list[int]] | None, padding_side: str = "right"):
        """Pads to the longest row; ``labels`` get -100 and ``attention_mask`` 0 on padding."""
        length = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
        att = torch.zeros((len(sequences), length), dtype=torch.long)
        lab = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
        for row, seq in enumerate(sequences):
            cols = slice(0, len(seq)) if padding_side == "right" else slice(length - len(seq), length)
            ids[row, cols] = torch.tensor(seq)
            att[row, cols] = 1
            if labels is not None:
                lab[row, cols] = torch.tensor(labels[row])
        out = {"input_ids": ids, "attention_mask": att}
        if labels is not None:
            out["labels"] = lab
        return out

    def __call__(self, images: Sequence, instructions: Sequence[str], answers: Sequence[str] | None = None,
                 image_index: Sequence[int] | None = None, padding_side: str = "right", add_eos: bool = True,
                 rng: np.random.Generator | None = None, equalize_probability: float | None = None,
                 history: Sequence[Sequence[tuple[str, str]]] | None = None, **kwargs) -> BatchFeature:
        """One batch. ``image_index[i]`` names the image of instruction ``i`` (default: ``images[i]``);
        ``equalize_probability`` overrides the processor's histogram equalisation (see :meth:`prepare_images`);
        ``history[i]``: the earlier ``(instruction, answer)`` turns of row ``i``'s conversation (a multi-turn row,
        :meth:`encode_conversation`)."""
        if isinstance(instructions, str):
            instructions = [instructions]
        if image_index is None:
            if len(images) != len(instructions):
                raise ValueError(f"{len(instructions)} instructions for {len(images)} images: pass image_index")
            image_index = list(range(len(instructions)))
        if answers is not None and len(answers) != len(instructions):
            raise ValueError(f"{len(answers)} answers for {len(instructions)} instructions")
        if history is not None and len(history) != len(instructions):
            raise ValueError(f"{len(history)} histories for {len(instructions)} instructions")
        encoded = [self.encode_conversation(ins, None if answers is None else answers[i], add_eos,
                                            () if history is None else history[i])
                   for i, ins in enumerate(instructions)]
        batch = self.pad([e[0] for e in encoded], None if answers is None else [e[1] for e in encoded], padding_side)
        batch.update(self.prepare_images(images, rng, equalize_probability))
        batch["image_index"] = torch.as_tensor(list(image_index), dtype=torch.long)
        return BatchFeature(batch)

    def decode_answer(self, ids: Sequence[int]) -> str:
        """Answer text as LISA shows it: special tokens dropped, ``[SEG]`` set off by spaces, double spaces folded.

        transformers 4.31 decoded the text between added tokens separately and joined the parts with a space;
        LISA's chat then replaced double spaces by one. Decoding the ids in one go would glue ``[SEG]`` to its
        neighbours, since the stripping rules removed the spaces around it when encoding.
        """
        tok = self.tokenizer
        decoder = tok.added_tokens_decoder  # built afresh on every access
        added = {i for i, t in decoder.items() if not t.special}
        special = set(tok.all_special_ids) | {i for i, t in decoder.items() if t.special}
        parts, chunk = [], []
        for i in (int(v) for v in ids):
            if i in added:
                parts.extend(([tok.decode(chunk)] if chunk else []) + [tok.convert_ids_to_tokens(i)])
                chunk = []
            elif i not in special:
                chunk.append(i)
        if chunk:
            parts.append(tok.decode(chunk))
        return " ".join(parts).replace("  ", " ").strip()

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def post_process_masks(self, low_res_masks: torch.Tensor,
                           original_sizes: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
        """The inverse of :meth:`prepare_images`' SAM resize for decoded masks: low-res logits ``(n, 1, h, w)`` →
        one ``HxW`` float logit map per mask in its image's original frame (``original_sizes``: ``(H, W)`` each)."""
        return masks_to_original(low_res_masks, original_sizes, self.sam_image_size)


def _register() -> None:
    from rosalia_hf.configuration_rosalia import RosaliaConfig

    AutoProcessor.register(RosaliaConfig, RosaliaProcessor, exist_ok=True)


_register()

__all__ = ["RosaliaProcessor", "add_rosalia_tokens", "build_prompt", "with_clip_backend", "equalize_histogram",
           "resize_longest_shape",
           "sam_pixel_values", "to_rgb_uint8", "LLAVA_V1_SYSTEM", "IGNORE_INDEX"]
