"""Convert an original Segment Anything checkpoint (``sam_vit_h_4b8939.pth``) to a ``transformers`` ``SamModel``.

Original keys are ``image_encoder.* / prompt_encoder.* / mask_decoder.*``. The SAM configuration is read from
the tensor shapes (widths, depths, windowed vs global attention blocks, image size); only the mask decoder's head
count (8 in every released SAM) cannot be, and is an argument. Every original key must map to a target key and
every target key must be filled, with the right shape; otherwise nothing is written and the offending names are
reported. The command runs offline (:func:`rosalia_hf.offline.go_offline`); ``--checkpoint`` must be a local file or
folder, and anything else (a hub id) gets one line naming the option.

    python -m rosalia_hf.convert_sam --checkpoint sam_vit_h_4b8939.pth --output sam-vit-h-hf
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from transformers import SamConfig, SamModel

from rosalia_hf.errors import CheckpointConversionError
from rosalia_hf.offline import add_download_flag, downloads_allowed, go_offline, local_hint

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_GAUSSIAN = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"

# (pattern, replacement) applied in order to each original key (after the MLP-head renaming below).
_RULES = (
    (r"^image_encoder\.", "vision_encoder."),
    (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
    (r"^vision_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^(vision_encoder\.layers\.\d+)\.norm([12])\.", r"\1.layer_norm\2."),
    (r"^vision_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^vision_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^vision_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^vision_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.norm([1-4])\.", r"\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
)
_MLP_HEAD = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.+)$"
)


def _rename_mlp_head(key: str, depths: Mapping[str, int]) -> str:
    """SAM's ``MLP.layers.{0..d-1}`` → transformers' ``proj_in``, ``layers.{0..d-3}``, ``proj_out``."""
    match = _MLP_HEAD.match(key)
    if not match:
        return key
    head, index, rest = match.group(1), int(match.group(2)), match.group(3)
    depth = depths[head]
    if index == 0:
        return f"{head}.proj_in.{rest}"
    if index == depth - 1:
        return f"{head}.proj_out.{rest}"
    return f"{head}.layers.{index - 1}.{rest}"


def _mlp_depths(keys) -> dict[str, int]:
    depths: dict[str, int] = {}
    for key in keys:
        match = _MLP_HEAD.match(key)
        if match:
            depths[match.group(1)] = max(depths.get(match.group(1), 0), int(match.group(2)) + 1)
    return depths


def map_sam_key(key: str, depths: Mapping[str, int]) -> list[str] | None:
    """Target key(s) of one original SAM key, or None when the key is unknown.

    The Gaussian positional matrix feeds both tied copies (``shared_image_embedding`` and the prompt encoder's).
    """
    if key == _GAUSSIAN:
        return ["shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding"]
    if not key.startswith(SAM_PREFIXES):
        return None
    key = _rename_mlp_head(key, depths)
    for pattern, replacement in _RULES:
        key = re.sub(pattern, replacement, key)
    return [key]


def infer_sam_config(state_dict: Mapping[str, torch.Tensor], decoder_heads: int = 8) -> SamConfig:
    """A ``SamConfig`` read from the shapes of an original SAM state dict."""
    try:
        patch = state_dict["image_encoder.patch_embed.proj.weight"]
        hidden, patch_size = patch.shape[0], patch.shape[-1]
        grid = state_dict["image_encoder.pos_embed"].shape[1]
        depth = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks."))
        rel = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
        global_blocks = [i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1]
        windowed = [r.shape[0] for i, r in enumerate(rel) if i not in global_blocks]
        window = (windowed[0] + 1) // 2 if windowed else 14
        vision = {
            "hidden_size": hidden, "num_hidden_layers": depth, "num_attention_heads": hidden // rel[0].shape[1],
            "patch_size": patch_size, "image_size": grid * patch_size, "global_attn_indexes": global_blocks,
            "window_size": window, "output_channels": state_dict["image_encoder.neck.0.weight"].shape[0],
            "mlp_dim": state_dict["image_encoder.blocks.0.mlp.lin1.weight"].shape[0],
            "num_pos_feats": state_dict[_GAUSSIAN].shape[1],
        }
        width = state_dict["mask_decoder.iou_token.weight"].shape[1]
        layer_keys = [k for k in state_dict if k.startswith("mask_decoder.transformer.layers.")]
        n_layers = 1 + max(int(k.split(".")[3]) for k in layer_keys)
        cross = state_dict["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]
        depths = _mlp_depths(state_dict)
        decoder = {
            "hidden_size": width, "num_hidden_layers": n_layers, "num_attention_heads": decoder_heads,
            "mlp_dim": state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            "attention_downsample_rate": width // cross,
            "num_multimask_outputs": state_dict["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            "iou_head_depth": depths["mask_decoder.iou_prediction_head"],
            "iou_head_hidden_dim": state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        }
        prompt = {"hidden_size": width, "image_size": grid * patch_size, "patch_size": patch_size,
                  "mask_input_channels": state_dict["prompt_encoder.mask_downscaling.3.weight"].shape[0]}
    except (KeyError, ValueError, IndexError) as err:
        raise CheckpointConversionError(f"not an original SAM state dict: cannot read {err}") from err
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def expected_state_shapes(model_cls, config) -> dict[str, tuple[int, ...]]:
    """Parameter and persistent-buffer shapes of ``model_cls(config)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_sam_state_dict(original: Mapping[str, torch.Tensor], prefix: str = "",
                           target_prefix: str = "") -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """``(converted, unknown, sources)``: tensors under their target names, the original keys that map to nothing,
    and the original key of each target (for error messages).

    ``prefix`` is stripped from original keys first (``"model.visual_model."`` in LISA checkpoints); keys without
    it are skipped. ``target_prefix`` is prepended to every target name (``"sam."`` inside ROSALIA).
    """
    stripped = {k[len(prefix):]: v for k, v in original.items() if k.startswith(prefix)}
    depths = _mlp_depths(stripped)
    converted, unknown, sources = {}, [], {}
    for key, tensor in stripped.items():
        targets = map_sam_key(key, depths)
        if targets is None:
            unknown.append(prefix + key)
            continue
        for target in targets:
            converted[target_prefix + target] = tensor.clone() if len(targets) > 1 else tensor
            sources[target_prefix + target] = prefix + key
    return converted, unknown, sources


def check_complete(converted: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                   unknown: list[str], sources: Mapping[str, str] | None = None) -> None:
    """Raises ``CheckpointConversionError`` naming unknown, missing and wrongly shaped keys.

    A source key that maps to a name the target model does not have is reported under its source name.
    """
    sources = sources or {}
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(f"{sources.get(k, k)} -> {k}" for k in set(converted) - set(expected))
    wrong = sorted(f"{k} {tuple(converted[k].shape)} != {expected[k]}" for k in set(converted) & set(expected)
                   if tuple(converted[k].shape) != expected[k])
    problems = []
    for label, names in (("unknown source keys", unknown), ("unexpected target keys", unexpected),
                         ("missing keys", missing), ("shape mismatches", wrong)):
        if names:
            problems.append(f"{label} ({len(names)}): {', '.join(names[:20])}" + (" ..." if len(names) > 20 else ""))
    if problems:
        raise CheckpointConversionError("refusing to write a partial model: " + "; ".join(problems))


def indexed_shards(folder: Path) -> list[Path]:
    """The shard files a ``*.index.json`` (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``)
    names, or [] without an index; a shard it names but the folder lacks is an error."""
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / name
        if not index.exists():
            continue
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointConversionError(f"{index}: no readable weight_map ({err})") from err
        shards = [folder / f for f in sorted(set(weight_map.values()))]
        absent = [s.name for s in shards if not s.exists()]
        if absent:
            raise CheckpointConversionError(f"{index}: names shard(s) missing from {folder}: {', '.join(absent)}")
        return shards
    return []


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.bin`` (weights only) or ``.safetensors`` file, or a folder of shards."""
    path = Path(path)
    if path.is_dir():
        files = indexed_shards(path) or sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) or sorted(
            path.glob("*.pth"))
        if not files:
            raise CheckpointConversionError(f"{path}: no .safetensors, .bin or .pth weight files")
        merged: dict[str, torch.Tensor] = {}
        for file in files:
            merged.update(load_checkpoint(file))
        return merged
    if not path.exists():
        raise CheckpointConversionError(f"{path}: no such checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    return dict(state)


def write_model(state_dict: Mapping[str, torch.Tensor], config, output: str | Path,
                dtype: torch.dtype | None = None) -> Path:
    """``config.json`` + safetensors shards, loadable with ``from_pretrained``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in state_dict.items()}
    config.save_pretrained(output)
    save_torch_state_dict(tensors, output)
    return output


def convert_sam_checkpoint(checkpoint: str | Path, output: str | Path, decoder_heads: int = 8,
                           dtype: torch.dtype | None = None) -> Path:
    """Original SAM checkpoint → ``SamModel`` folder; raises ``CheckpointConversionError`` before writing."""
    original = load_checkpoint(checkpoint)
    config = infer_sam_config(original, decoder_heads)
    converted, unknown, sources = convert_sam_state_dict(original)
    check_complete(converted, expected_state_shapes(SamModel, config), unknown, sources)
    return write_model(converted, config, output, dtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="original SAM .pth (e.g. sam_vit_h_4b8939.pth)")
    parser.add_argument("--output", required=True, help="folder to write the SamModel to")
    parser.add_argument("--decoder-heads", type=int, default=8, help="mask decoder attention heads (SAM: 8)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    add_download_flag(parser)
    args = parser.parse_args(argv)
    go_offline(args.allow_downloads)
    if not Path(args.checkpoint).expanduser().exists():
        raise SystemExit(f"convert_sam: --checkpoint {args.checkpoint}: no such checkpoint (not a local file or "
                         f"folder; {local_hint(downloads_allowed(args.allow_downloads))})")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        out = convert_sam_checkpoint(args.checkpoint, args.output, args.decoder_heads, dtype)
    except CheckpointConversionError as err:
        raise SystemExit(f"convert_sam: {err}") from err
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
