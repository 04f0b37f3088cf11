"""The LLaMA tokenizer exactly as LISA / ROSALIA encode with it, as a ``tokenizers`` fast tokenizer.

The authors' code (transformers 4.31, ``LlamaTokenizer(legacy=True)``, loaded with ``use_fast=False``) encodes a
string in three steps, and a checkpoint trained with it only makes sense with the same ids:

1. the text is split at the added tokens (``[SEG]``, ``<im_start>``, ``<im_end>``; ``<s>``/``</s>``/``<unk>``);
2. whitespace on both sides of an *added* token is stripped (``"is [SEG]."`` → ``"is"``, ``"[SEG]"``,
   ``"."``; ``"<im_end>\\nSegment"`` → ``"<im_end>"``, ``"Segment"``), never around ``<s>``/``</s>``/``<unk>``;
3. every remaining chunk is encoded by sentencepiece on its own, so each chunk gets its own leading ``"▁"``
   (``add_dummy_prefix``) and spaces become ``"▁"`` (no whitespace is removed).

Here the same is built from ``tokenizers`` parts: the BPE model converted from ``tokenizer.model`` by transformers,
a ``Prepend("▁")`` + ``Replace(" ", "▁")`` normalizer (run on each chunk after the added tokens are split off), no
pre-tokenizer, and added tokens with ``lstrip``/``rstrip``. The ``<image>`` placeholder that ``RosaliaProcessor``
adds strips nothing: LISA splits its prompt at ``<image>`` (``tokenizer_image_token``) without stripping.
``save_pretrained`` writes all of it to ``tokenizer.json``, so a reloaded tokenizer gives the same ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SEG_TOKEN = "[SEG]"
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"
IMAGE_TOKEN = "<image>"
SPIECE_UNDERLINE = "\u2581"


class LisaTokenizerError(ValueError):
    """A LISA tokenizer folder that cannot be read as the reference reads it; the message names file and field."""


def stripping_token(content: str, special: bool) -> AddedToken:
    """An added token that eats the whitespace on both sides, as every token LISA adds does in 4.31."""
    return AddedToken(content, lstrip=True, rstrip=True, normalized=False, special=special)


def image_placeholder_token() -> AddedToken:
    """``<image>``: split off without stripping (LISA splits the prompt at it and keeps the whitespace)."""
    return AddedToken(IMAGE_TOKEN, lstrip=False, rstrip=False, normalized=False, special=True)


def lisa_pipeline(backend: Tokenizer) -> Tokenizer:
    """``backend``'s model with LISA's sentencepiece-per-chunk normalizer, decoder and ``<s>`` prefix."""
    tok = Tokenizer.from_str(backend.to_str())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE_UNDERLINE),
                                           normalizers.Replace(" ", SPIECE_UNDERLINE)])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    bos = tok.token_to_id("<s>")
    if bos is None:
        raise LisaTokenizerError("tokenizer.model: no <s> piece; not a LLaMA sentencepiece model")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return tok


def read_added_tokens(folder: Path) -> tuple[dict[str, int], str]:
    """``{token: id}`` of the tokens added beyond the sentencepiece vocabulary, and the file they came from."""
    added = folder / "added_tokens.json"
    if added.exists():
        try:
            return {str(k): int(v) for k, v in json.loads(added.read_text()).items()}, added.name
        except (ValueError, AttributeError) as err:
            raise LisaTokenizerError(f"{added}: not a JSON object of token -> id ({err})") from err
    config = folder / "tokenizer_config.json"
    if config.exists():
        decoder = json.loads(config.read_text()).get("added_tokens_decoder", {})
        return {str(v["content"]): int(k) for k, v in decoder.items()}, config.name
    return {}, "added_tokens.json"


def check_added_ids(added: dict[str, int], source: str, base_size: int, required: list[str],
                    vocab_size: int | None) -> None:
    """Added ids must follow the sentencepiece vocabulary without gaps (4.31 refuses otherwise), hold every
    ``required`` token and fit in the checkpoint's ``vocab_size`` (its ``config.json``)."""
    missing = [t for t in required if t not in added]
    if missing:
        raise LisaTokenizerError(f"{source}: no id for {', '.join(missing)}; LISA checkpoints add them")
    beyond = {t: i for t, i in added.items() if i >= base_size}
    expected = list(range(base_size, base_size + len(beyond)))
    if sorted(beyond.values()) != expected:
        raise LisaTokenizerError(f"{source}: added token ids {dict(sorted(beyond.items(), key=lambda kv: kv[1]))} "
                                 f"must run from {base_size} (the size of tokenizer.model) without gaps")
    if vocab_size is not None:
        over = {t: i for t, i in sorted(beyond.items(), key=lambda kv: kv[1]) if i >= vocab_size}
        if over:
            raise LisaTokenizerError(f"{source}: ids {over} are outside config.json vocab_size {vocab_size}: "
                                     "the tokenizer does not belong to this checkpoint")


def check_sentencepiece_model(path: Path) -> int:
    """Number of pieces of a LLaMA-style ``tokenizer.model``; refuses one whose normalisation our pipeline would not
    reproduce (LLaMA: identity normaliser, ``add_dummy_prefix``, whitespace kept, BPE)."""
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf raises its own DecodeError
        raise LisaTokenizerError(f"{path}: not a sentencepiece model ({type(err).__name__})") from err
    spec = proto.normalizer_spec
    problems = []
    if spec.name not in ("identity", "") or spec.precompiled_charsmap:
        problems.append(f"normalizer_spec.name {spec.name!r} (LLaMA: 'identity')")
    if not spec.add_dummy_prefix:
        problems.append("normalizer_spec.add_dummy_prefix false (LLaMA: true)")
    if spec.remove_extra_whitespaces:
        problems.append("normalizer_spec.remove_extra_whitespaces true (LLaMA: false)")
    if proto.trainer_spec.model_type != 2:
        problems.append(f"trainer_spec.model_type {proto.trainer_spec.model_type} (LLaMA: 2, BPE)")
    if problems:
        raise LisaTokenizerError(f"{path}: not a LLaMA sentencepiece model: " + "; ".join(problems))
    return len(proto.pieces)


def load_lisa_tokenizer(folder: str | Path, use_im_start_end: bool = True,
                        vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """The reference's LLaMA tokenizer from a LISA checkpoint folder (``tokenizer.model`` + ``added_tokens.json``).

    ``vocab_size`` is the checkpoint's ``config.json`` value; ids outside it are refused. Raises
    ``LisaTokenizerError`` with the file and field at fault.
    """
    folder = Path(folder)
    if not (folder / "tokenizer.model").exists():
        raise LisaTokenizerError(f"{folder / 'tokenizer.model'}: missing; LISA checkpoints ship LLaMA's "
                                 "sentencepiece tokenizer (pass --tokenizer to read it from elsewhere)")
    pieces = check_sentencepiece_model(folder / "tokenizer.model")
    added, source = read_added_tokens(folder)
    try:
        converted = AutoTokenizer.from_pretrained(folder)
    except (ImportError, ValueError, OSError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LisaTokenizerError(f"{folder / 'tokenizer.model'}: cannot be read: {reason}") from err
    backend = converted.backend_tokenizer
    base_size = backend.get_vocab_size(with_added_tokens=False)
    if base_size != pieces:
        raise LisaTokenizerError(f"{folder / 'tokenizer.model'}: {pieces} pieces, but the converted vocabulary has "
                                 f"{base_size}; a tokenizer.json beside it may belong to another model")
    required = [SEG_TOKEN] + ([IM_START_TOKEN, IM_END_TOKEN] if use_im_start_end else [])
    check_added_ids(added, f"{folder / source}", base_size, required, vocab_size)
    tok = lisa_pipeline(backend)
    for content, _ in sorted(((t, i) for t, i in added.items() if i >= base_size), key=lambda kv: kv[1]):
        if content == IMAGE_TOKEN:
            tok.add_special_tokens([image_placeholder_token()])
        elif content == SEG_TOKEN:
            tok.add_tokens([stripping_token(content, special=False)])
        else:
            tok.add_special_tokens([stripping_token(content, special=True)])
    wrong = {t: tok.token_to_id(t) for t, i in added.items() if tok.token_to_id(t) != i}
    if wrong:
        raise LisaTokenizerError(f"{folder / source}: ids {wrong} differ from the file's {added}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", model_max_length=converted.model_max_length,
                                   padding_side="right", clean_up_tokenization_spaces=False)


__all__ = ["LisaTokenizerError", "load_lisa_tokenizer", "check_sentencepiece_model", "lisa_pipeline",
           "stripping_token",
           "image_placeholder_token", "check_added_ids", "read_added_tokens"]
