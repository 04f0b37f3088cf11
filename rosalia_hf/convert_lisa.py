"""Convert a LISA-format checkpoint (``xinlai/LISA-7B-v1``, ``checkone/ROSALIA-7B-v1``) to ``RosaliaForSegmentation``.

LISA checkpoints hold the LLaMA weights (``model.embed_tokens``, ``model.layers.*``, ``model.norm``, ``lm_head``),
the multimodal projector (``model.mm_projector``: one Linear, or ``.0``/``.2`` for LLaVA-1.5's two-layer MLP),
``model.text_hidden_fcs.0.{0,2}`` and SAM under ``model.visual_model.*`` (original SAM key layout). CLIP is not
included: it comes from a local ``openai/clip-vit-large-patch14`` folder (``--clip``), as in LISA.

The tokenizer is read from the checkpoint folder (or ``--tokenizer``): LLaMA's sentencepiece ``tokenizer.model``
and ``added_tokens.json``, rebuilt as a fast tokenizer that gives the ids of LISA's transformers 4.31 slow tokenizer
(``rosalia_hf.tokenization_lisa``). A folder with only a ``tokenizer.json`` (not LISA's layout) is read as it is,
with LISA's added-token rules. ``<image>`` is added; every id is read back from the tokenizer, never assumed, and
checked against ``config.json``'s ``vocab_size``. Tokens that the checkpoint has no embedding row for (``<image>``,
whose row is never read because image features replace it) get the mean row. The CLIP image processor runs on PIL,
which reproduces the pixels LISA was trained with.

Unknown or missing keys, a tokenizer or CLIP folder that does not fit the checkpoint: the conversion stops with one
line naming the file and field, and no output folder is left behind (everything is written to a temporary sibling
folder that is renamed at the end). The command runs offline (:func:`rosalia_hf.offline.go_offline`); ``--checkpoint``,
``--clip`` and ``--tokenizer`` must be local folders, and a hub id there gets one line naming the option.

    python -m rosalia_hf.convert_lisa --checkpoint LISA-7B-v1 --clip clip-vit-large-patch14 --output rosalia-hf
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from rosalia_hf.configuration_rosalia import RosaliaConfig
from rosalia_hf.convert_sam import (
    CheckpointConversionError,
    check_complete,
    convert_sam_state_dict,
    expected_state_shapes,
    infer_sam_config,
    load_checkpoint,
    write_model,
)
from rosalia_hf.errors import NotLocalError
from rosalia_hf.modeling_rosalia import RosaliaForSegmentation
from rosalia_hf.offline import add_download_flag, downloads_allowed, go_offline, require_local
from rosalia_hf.processing_rosalia import RosaliaProcessor, add_rosalia_tokens
from rosalia_hf.tokenization_lisa import LisaTokenizerError
from rosalia_hf.tokenization_lisa import load_lisa_tokenizer as load_reference_tokenizer

SAM_PREFIX = "model.visual_model."
LM = "llava.model.language_model."
PROJ = "llava.model.multi_modal_projector."
# Keys LISA checkpoints may carry that are rebuilt, not loaded: rotary caches and an (unused) CLIP copy.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
IGNORED_PREFIXES = ("model.vision_tower.",)
LLAMA_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "rope_theta", "hidden_act",
                "bos_token_id", "eos_token_id")
_DIRECT = {"model.embed_tokens.weight": LM + "embed_tokens.weight", "model.norm.weight": LM + "norm.weight",
           "lm_head.weight": "llava.lm_head.weight",
           "model.text_hidden_fcs.0.0.weight": "text_hidden_fcs.0.weight",
           "model.text_hidden_fcs.0.0.bias": "text_hidden_fcs.0.bias",
           "model.text_hidden_fcs.0.2.weight": "text_hidden_fcs.2.weight",
           "model.text_hidden_fcs.0.2.bias": "text_hidden_fcs.2.bias"}
_PROJECTORS = {
    "linear": {"model.mm_projector.weight": PROJ + "linear.weight", "model.mm_projector.bias": PROJ + "linear.bias"},
    "mlp2x_gelu": {"model.mm_projector.0.weight": PROJ + "linear_1.weight",
                   "model.mm_projector.0.bias": PROJ + "linear_1.bias",
                   "model.mm_projector.2.weight": PROJ + "linear_2.weight",
                   "model.mm_projector.2.bias": PROJ + "linear_2.bias"},
}


def detect_projector(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"linear"`` (``model.mm_projector.weight``) or ``"mlp2x_gelu"`` (``model.mm_projector.{0,2}.*``)."""
    if "model.mm_projector.weight" in state_dict:
        return "linear"
    if "model.mm_projector.0.weight" in state_dict and "model.mm_projector.2.weight" in state_dict:
        return "mlp2x_gelu"
    found = sorted(k for k in state_dict if k.startswith("model.mm_projector"))
    raise CheckpointConversionError(f"unrecognised multimodal projector keys: {found or 'none'}")


def map_lisa_key(key: str, projector: str) -> str | None:
    """Target name of one non-SAM LISA key, or None when unknown."""
    if key in _DIRECT:
        return _DIRECT[key]
    if key in _PROJECTORS[projector]:
        return _PROJECTORS[projector][key]
    if key.startswith("model.layers."):
        return LM + key[len("model."):]
    return None


def _is_ignored(key: str) -> bool:
    return key.endswith(IGNORED_SUFFIXES) or key.startswith(IGNORED_PREFIXES)


def convert_lisa_state_dict(state_dict: Mapping[str, torch.Tensor], projector: str,
                            clip_state: Mapping[str, torch.Tensor]):
    """``(converted, unknown, sources)`` for the language model, projector, ``text_hidden_fcs``, SAM and CLIP."""
    converted, unknown, sources = {}, [], {}
    for key, tensor in state_dict.items():
        if key.startswith(SAM_PREFIX) or _is_ignored(key):
            continue
        target = map_lisa_key(key, projector)
        if target is None:
            unknown.append(key)
        else:
            converted[target] = tensor
            sources[target] = key
    sam, sam_unknown, sam_sources = convert_sam_state_dict(state_dict, prefix=SAM_PREFIX, target_prefix="sam.")
    converted.update(sam)
    sources.update(sam_sources)
    converted.update({"llava.model.vision_tower." + k: v for k, v in clip_state.items()})
    return converted, unknown + sam_unknown, sources


def pad_vocab_rows(converted: dict[str, torch.Tensor], vocab_size: int) -> list[int]:
    """Grows ``embed_tokens``/``lm_head`` to ``vocab_size`` rows (new rows = mean row); returns the new ids."""
    new_ids: list[int] = []
    for key in (LM + "embed_tokens.weight", "llava.lm_head.weight"):
        weight = converted.get(key)
        if weight is None or weight.shape[0] >= vocab_size:
            continue
        extra = vocab_size - weight.shape[0]
        mean = weight.float().mean(0, keepdim=True).to(weight.dtype)
        converted[key] = torch.cat([weight, mean.expand(extra, -1)], dim=0)
        new_ids = list(range(weight.shape[0], vocab_size))
    return new_ids


def build_config(lisa_config: Mapping, clip_config: CLIPVisionConfig, sam_config, projector: str,
                 processor: RosaliaProcessor, vocab_size: int) -> RosaliaConfig:
    """``RosaliaConfig`` from LISA's ``config.json``, the CLIP folder's config, the SAM shapes and the tokenizer."""
    tok = processor.tokenizer
    text = {k: lisa_config[k] for k in LLAMA_FIELDS if k in lisa_config}
    text.update({"model_type": "llama", "vocab_size": vocab_size, "pad_token_id": tok.pad_token_id})
    vision = clip_config.to_dict()
    vision["model_type"] = "clip_vision_model"
    llava = {"vision_config": vision, "text_config": text, "image_token_index": processor.image_token_id,
             "image_seq_length": processor.image_seq_length,
             "vision_feature_layer": int(lisa_config.get("mm_vision_select_layer", -2)),
             "vision_feature_select_strategy": "default"}
    return RosaliaConfig(llava_config=llava, sam_config=sam_config, seg_token=processor.seg_token,
                         seg_token_index=processor.seg_token_id,
                         out_dim=sam_config.prompt_encoder_config.hidden_size, projector_type=projector)


def _check_token_rows(converted: Mapping[str, torch.Tensor], processor: RosaliaProcessor) -> None:
    """[SEG] and the image delimiters must have *trained* rows in the checkpoint (the tokenizer must match it)."""
    rows = converted[LM + "embed_tokens.weight"].shape[0]
    trained = {processor.seg_token: processor.seg_token_id}
    if processor.use_im_start_end:
        trained.update({t: processor.tokenizer.convert_tokens_to_ids(t) for t in ("<im_start>", "<im_end>")})
    beyond = {t: i for t, i in trained.items() if i >= rows}
    if beyond:
        raise CheckpointConversionError(f"tokenizer ids {beyond} have no row in the checkpoint's {rows}-row "
                                        "embedding: the tokenizer does not belong to this checkpoint")


def convert_lisa_checkpoint(checkpoint: str | Path, clip: str | Path, output: str | Path,
                            tokenizer: str | Path | None = None, sam_decoder_heads: int = 8,
                            dtype: torch.dtype | None = None) -> Path:
    """LISA-format folder + local CLIP folder → ``RosaliaForSegmentation`` + ``RosaliaProcessor`` folder."""
    checkpoint, output = Path(checkpoint), Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CheckpointConversionError(f"{output}: exists and is not empty; choose a new output folder")
    lisa_config = _read_json(checkpoint / "config.json") if (checkpoint / "config.json").exists() else {}
    state = load_checkpoint(checkpoint)
    projector = detect_projector(state)
    sam_config = infer_sam_config(_sam_part(state), sam_decoder_heads)
    clip_model = load_clip_tower(clip, lisa_config, state, projector)
    use_im_start_end = bool(lisa_config.get("mm_use_im_start_end", True))
    processor = RosaliaProcessor(
        CLIPImageProcessor.from_pretrained(clip),
        load_lisa_tokenizer(tokenizer or checkpoint, use_im_start_end, lisa_config.get("vocab_size")),
        use_im_start_end=use_im_start_end,
        image_seq_length=_image_seq_length(clip_model.config),
        sam_image_size=sam_config.vision_config.image_size,
        clip_backend="pil",
    )
    converted, unknown, sources = convert_lisa_state_dict(state, projector, clip_model.state_dict())
    vocab_size = len(processor.tokenizer)
    if LM + "embed_tokens.weight" in converted:  # when absent, check_complete reports it by name
        _check_token_rows(converted, processor)
        # A checkpoint may carry more rows than the tokenizer has tokens (padded vocabularies): keep them all.
        vocab_size = max(vocab_size, converted[LM + "embed_tokens.weight"].shape[0])
    pad_vocab_rows(converted, vocab_size)
    config = build_config(lisa_config, clip_model.config, sam_config, projector, processor, vocab_size)
    check_complete(converted, expected_state_shapes(RosaliaForSegmentation, config), unknown, sources)

    def write(folder: Path) -> None:
        write_model(converted, config, folder, dtype)
        processor.save_pretrained(folder)

    return write_atomically(output, write)


def write_atomically(output: Path, write) -> Path:
    """Runs ``write(tmp)`` into a temporary sibling folder, then renames it to ``output``; on failure nothing stays."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        write(tmp)
        if output.exists():
            output.rmdir()  # checked empty above
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointConversionError(f"{path}: not valid JSON ({err})") from err


def load_clip_tower(clip: str | Path, lisa_config: Mapping, state: Mapping[str, torch.Tensor],
                    projector: str) -> CLIPVisionModel:
    """The CLIP vision tower of ``clip``, checked against the checkpoint: its width must be the projector's input
    width (``mm_hidden_size``) and its preprocessor must crop to the tower's input size."""
    clip = Path(clip)
    for name in ("config.json", "preprocessor_config.json"):
        if not (clip / name).exists():
            raise CheckpointConversionError(f"{clip / name}: missing; --clip must be a local "
                                            "openai/clip-vit-large-patch14 folder")
    tower = CLIPVisionModel.from_pretrained(clip)
    width = tower.config.hidden_size
    mm_hidden = lisa_config.get("mm_hidden_size")
    if mm_hidden is not None and int(mm_hidden) != width:
        raise CheckpointConversionError(f"{clip / 'config.json'}: vision hidden_size {width} != mm_hidden_size "
                                        f"{mm_hidden} in the checkpoint's config.json (a CLIP of another size)")
    first = "model.mm_projector.weight" if projector == "linear" else "model.mm_projector.0.weight"
    if int(state[first].shape[1]) != width:
        raise CheckpointConversionError(f"{clip / 'config.json'}: vision hidden_size {width} != "
                                        f"{int(state[first].shape[1])}, the input width of the checkpoint's {first}")
    crop = _read_json(clip / "preprocessor_config.json").get("crop_size")
    crop = crop.get("height") if isinstance(crop, dict) else crop
    if crop is not None and int(crop) != tower.config.image_size:
        raise CheckpointConversionError(f"{clip / 'preprocessor_config.json'}: crop_size {crop} != the tower's "
                                        f"image_size {tower.config.image_size} in config.json")
    return tower


def load_lisa_tokenizer(path: str | Path, use_im_start_end: bool = True, vocab_size: int | None = None):
    """The checkpoint's tokenizer with LISA's ids (``tokenization_lisa``); a folder with only ``tokenizer.json``
    is read as it is, with LISA's added-token rules. Errors name the file and field."""
    path = Path(path)
    try:
        if (path / "tokenizer.model").exists() or not (path / "tokenizer.json").exists():
            return load_reference_tokenizer(path, use_im_start_end, vocab_size)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except LisaTokenizerError as err:
        raise CheckpointConversionError(str(err)) from err
    except (ImportError, ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointConversionError(f"cannot read the tokenizer in {path}: {reason}") from err
    add_rosalia_tokens(tokenizer, use_im_start_end=use_im_start_end)
    return tokenizer


def _sam_part(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    part = {k[len(SAM_PREFIX):]: v for k, v in state.items() if k.startswith(SAM_PREFIX)}
    if not part:
        raise CheckpointConversionError(f"no SAM weights under {SAM_PREFIX!r}: not a LISA checkpoint")
    return part


def _image_seq_length(clip_config: CLIPVisionConfig) -> int:
    return (clip_config.image_size // clip_config.patch_size) ** 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="LISA-format folder (config.json, weights, tokenizer)")
    parser.add_argument("--clip", required=True, help="local openai/clip-vit-large-patch14 folder")
    parser.add_argument("--output", required=True, help="folder to write the ROSALIA model and processor to")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the checkpoint folder)")
    parser.add_argument("--sam-decoder-heads", type=int, default=8)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    add_download_flag(parser)
    args = parser.parse_args(argv)
    go_offline(args.allow_downloads)
    downloads = downloads_allowed(args.allow_downloads)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        for option, value in (("--checkpoint", args.checkpoint), ("--clip", args.clip),
                              ("--tokenizer", args.tokenizer)):  # the converter reads local folders only
            require_local(value, option, downloads=downloads, fetchable=False)
    except NotLocalError as err:
        raise SystemExit(f"convert_lisa: {err}") from None
    try:
        out = convert_lisa_checkpoint(args.checkpoint, args.clip, args.output, args.tokenizer,
                                      args.sam_decoder_heads, dtype)
    except CheckpointConversionError as err:
        raise SystemExit(f"convert_lisa: {err}") from err
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
