"""``radedit`` pseudo-normal backend: masked DDIM editing with the RadEdit diffusion model (paper App. A.3).

Components, all from local folders (nothing is downloaded):

* ``unet``: the ``microsoft/radedit`` snapshot (its ``unet/`` subfolder is used) or the ``unet`` folder itself
  (``config.json`` + ``diffusion_pytorch_model.safetensors``), a ``diffusers.UNet2DConditionModel``;
* ``vae``: the SDXL VAE folder (``stabilityai/sdxl-vae``), a ``diffusers.AutoencoderKL``;
* ``text_encoder``: the BioViL-T folder (``microsoft/BiomedVLP-BioViL-T``), loaded with ``transformers``
  ``AutoModel`` / ``AutoTokenizer`` (``model_max_length`` 128); ``tokenizer`` defaults to the same folder.

Every ``from_pretrained`` runs with ``local_files_only=True``; a Hugging Face hub id given where a folder is expected
is refused. CXR-BERT ships its own model class (``auto_map`` in its ``config.json``), Python code that
``trust_remote_code`` would execute: it is off unless the backend options say ``trust_remote_code: true``; a folder
that needs it without that option is refused with the reason.

Editing one image (``HxW uint8``, any size):

1. resize to ``resolution`` x ``resolution`` (512; a plain resize, undone at the end), grey -> 3 channels in [-1, 1],
   encode with the VAE (latent sampled with a per-image generator seeded from the dicom id);
2. DDIM-invert the latent with the unconditional (empty-prompt) UNet along the inference timesteps up to the first
   one kept after skipping ``skip_ratio`` of the steps;
3. denoise from there: classifier-free guidance (``guidance_scale``, prompt "No acute cardiopulmonary process")
   inside the latent edit mask, unconditional outside; after every step the keep region (outside the mask) is reset
   to the inverted latent of the next timestep, so it ends on the original latent;
4. decode, average the channels, resize back to the original frame, and paste into the original image inside the
   edit mask only (the keep region is returned untouched, byte for byte). Output ``HxW uint8``.

With ``eta = 0`` (the default) the editing is deterministic; the seed still fixes the VAE latent sample. Seeds come
from ``sha256(seed, dicom_id)``, so reruns give identical bytes on the same device with the same batches; a different
batch composition changes batched float sums only, i.e. at most a grey level or two here and there.

The prompts ("No acute cardiopulmonary process" and the empty one) are encoded as the published diffusers pipeline
does: ``text_encoder(input_ids)`` on the ids padded to 128, without an attention mask (see ``_encode_prompt`` and
``docs/vision_reference.md``).

Defaults (ours; the paper names RadEdit but not these numbers): 100 steps, guidance 7.5, skip ratio 0.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimic_ils.schema import BackendError
from mimic_ils.vision import base
from mimic_ils.vision.phantom import stable_seed

NORMAL_PROMPT = "No acute cardiopulmonary process"
TOKENIZER_MAX_LENGTH = 128
SCHEDULER_CONFIG = {
    "beta_schedule": "linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "trailing",
    "steps_offset": 1,
}


def _local_folder(path: str | Path, what: str, expected: str) -> Path:
    """``path`` as an existing local folder; a hub id or a missing path is a one-line BackendError."""
    folder = Path(path)
    if folder.is_dir():
        return folder
    text = str(path)
    if _looks_like_hub_id(text):
        raise BackendError(
            f"radedit: {what} {text!r} is not a local folder but looks like a Hugging Face hub id; nothing is "
            f"downloaded: download {expected} yourself and pass its folder"
        )
    raise BackendError(f"radedit: {what} folder {folder} not found (expected {expected})")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return (
        not text.startswith((".", "/", "~"))
        and 1 <= len(parts) <= 2
        and all(part and part.replace("-", "").replace("_", "").replace(".", "").isalnum() for part in parts)
    )


def _refuse_remote_code(folder: Path, what: str) -> None:
    """BackendError if the model in ``folder`` needs its own Python code (``auto_map``) to load."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BackendError(f"radedit: {what} folder {folder}: unreadable config.json ({error})") from None
    if isinstance(config, dict) and config.get("auto_map"):
        raise BackendError(
            f"radedit: {what} folder {folder} ships its own model code (auto_map in config.json), which runs only "
            "with the backend option trust_remote_code: true (it executes Python files from that folder)"
        )


def _require_folder(path: str | Path, what: str, expected: str) -> Path:
    folder = _local_folder(path, what, expected)
    if not (folder / "config.json").is_file():
        raise BackendError(f"radedit: {what} folder {folder} has no config.json (expected {expected})")
    return folder


def _unet_folder(path: str | Path) -> Path:
    root = _local_folder(path, "UNet", "the microsoft/radedit snapshot or its unet/ subfolder")
    if (root / "unet" / "config.json").is_file():
        return root / "unet"
    return _require_folder(root, "UNet", "the microsoft/radedit snapshot or its unet/ subfolder")


def _torch_dtype(name: str, device: str):
    import torch

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(name)
    if dtype is None:
        raise BackendError(f"radedit: unknown dtype {name!r}; expected float32, float16 or bfloat16")
    return torch.float32 if str(device).startswith("cpu") else dtype


def image_problem(image: np.ndarray, edit_mask: np.ndarray) -> str | None:
    """Why ``image`` / ``edit_mask`` cannot be edited, or None: HxW uint8 image, HxW mask with pixels in it."""
    if image.ndim != 2 or image.dtype != np.uint8 or min(image.shape) < 8:
        return f"expected an HxW uint8 image of at least 8 px, got {image.dtype} {image.shape}"
    if np.shape(edit_mask) != image.shape:
        return f"edit mask {np.shape(edit_mask)} is not in the image frame {image.shape}"
    if not np.any(edit_mask):
        return "edit mask is empty (no lungs or heart found)"
    return None


@base.register("pseudo_normal", "radedit")
class RadEditPseudoNormal:
    """Pseudo-normal images by masked RadEdit editing (see the module docstring for the algorithm and formats)."""

    name = "radedit"

    def __init__(
        self,
        unet: str | Path | None = None,
        vae: str | Path | None = None,
        text_encoder: str | Path | None = None,
        tokenizer: str | Path | None = None,
        trust_remote_code: bool = False,
        **options: object,
    ) -> None:
        """Load the components from local folders (see the module docstring); ``options`` as in :meth:`_configure`."""
        if unet is None or vae is None or text_encoder is None:
            raise BackendError(
                "radedit needs the unet, vae and text_encoder folders (options unet=, vae=, text_encoder=)"
            )
        if not isinstance(trust_remote_code, bool):
            raise BackendError(f"radedit: trust_remote_code must be true or false, got {trust_remote_code!r}")
        self._configure(**options)
        self._load(unet, vae, text_encoder, tokenizer, trust_remote_code)
        self._setup()

    @classmethod
    def from_components(cls, unet, vae, text_encoder, tokenizer, **options: object) -> RadEditPseudoNormal:
        """The backend around already-built modules (``UNet2DConditionModel``, ``AutoencoderKL``, a BERT-style text
        encoder and its tokenizer); ``options`` as in :meth:`_configure`."""
        backend = cls.__new__(cls)
        backend._configure(**options)
        backend.unet, backend.vae, backend.text_encoder, backend.tokenizer = unet, vae, text_encoder, tokenizer
        backend._setup()
        return backend

    def _configure(
        self,
        device: str = "cpu",
        dtype: str = "float16",
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        skip_ratio: float = 0.3,
        eta: float = 0.0,
        prompt: str = NORMAL_PROMPT,
        resolution: int = 512,
        batch_size: int = 4,
        seed: int = 0,
    ) -> None:
        """Editing options. ``dtype`` applies on accelerators only (CPU always runs float32)."""
        if not 0 <= skip_ratio < 1 or num_inference_steps < 1:
            raise BackendError(
                f"radedit: need 0 <= skip_ratio < 1 and steps >= 1, got {skip_ratio}, {num_inference_steps}"
            )
        self.device, self.dtype = device, _torch_dtype(dtype, device)
        self.steps, self.guidance_scale, self.skip_ratio, self.eta = (
            num_inference_steps,
            guidance_scale,
            skip_ratio,
            eta,
        )
        self.resolution, self.batch_size, self.seed, self._prompt = resolution, max(1, batch_size), seed, prompt

    def _load(self, unet, vae, text_encoder, tokenizer, trust_remote_code: bool) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import AutoModel, AutoTokenizer

        unet_folder = _unet_folder(unet)
        vae_folder = _require_folder(vae, "VAE", "the SDXL VAE folder")
        text_folder = _require_folder(text_encoder, "text encoder", "the BioViL-T folder")
        tokenizer_folder = _local_folder(tokenizer, "tokenizer", "the BioViL-T folder") if tokenizer else text_folder
        if not trust_remote_code:
            _refuse_remote_code(text_folder, "text encoder")
        local = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        try:
            offline = {"torch_dtype": self.dtype, "local_files_only": True}
            self.unet = UNet2DConditionModel.from_pretrained(unet_folder, **offline)
            self.vae = AutoencoderKL.from_pretrained(vae_folder, **offline)
            self.text_encoder = AutoModel.from_pretrained(text_folder, dtype=self.dtype, **local)
            self.tokenizer = AutoTokenizer.from_pretrained(
                tokenizer_folder, model_max_length=TOKENIZER_MAX_LENGTH, **local
            )
        except (OSError, ValueError) as error:
            raise BackendError(f"radedit: cannot load weights: {str(error).splitlines()[0]}") from None

    def _setup(self) -> None:
        """Check the components fit together, move them to the device, build the scheduler, encode the prompts."""
        from diffusers import DDIMScheduler

        hidden = getattr(self.text_encoder.config, "hidden_size", None)
        if hidden != self.unet.config.cross_attention_dim:
            raise BackendError(
                f"radedit: text encoder width {hidden} != UNet cross_attention_dim "
                f"{self.unet.config.cross_attention_dim}; wrong text encoder folder?"
            )
        for module in (self.unet, self.vae, self.text_encoder):
            if module.dtype != self.dtype:  # from_components with modules of another dtype
                module.to(dtype=self.dtype)
            module.to(self.device).eval().requires_grad_(False)
        self.scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.conditional, self.unconditional = self._encode_prompt(self._prompt), self._encode_prompt("")

    def _encode_prompt(self, prompt: str):
        """``(1, 128, hidden)`` embeddings of ``prompt`` as diffusers' ``StableDiffusionPipeline.encode_prompt`` (the
        pipeline of the RadEdit model card) makes them: padded to ``max_length`` 128, truncated, and encoded from the
        ``input_ids`` alone: no ``attention_mask``, so the padding tokens take part in attention, unless the text
        encoder's config sets ``use_attention_mask`` (BERT / CXR-BERT configs do not)."""
        import torch

        tokens = self.tokenizer(
            prompt, padding="max_length", max_length=TOKENIZER_MAX_LENGTH, truncation=True, return_tensors="pt"
        )
        use_mask = bool(getattr(self.text_encoder.config, "use_attention_mask", False))
        attention_mask = tokens.attention_mask.to(self.device) if use_mask else None
        with torch.no_grad():
            output = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=attention_mask)
        return output[0].to(self.dtype)

    def edit(
        self, images: Sequence[np.ndarray], edit_masks: Sequence[np.ndarray], dicom_ids: Sequence[str]
    ) -> list[np.ndarray | BackendError]:
        """Pseudo-normal ``HxW uint8`` per image (original frame); a ``BackendError`` for an unusable input."""
        results: list[np.ndarray | BackendError] = []
        valid = []
        for index, (image, mask, dicom_id) in enumerate(zip(images, edit_masks, dicom_ids, strict=True)):
            image = np.asarray(image)
            problem = image_problem(image, np.asarray(mask, bool))
            results.append(BackendError(f"{dicom_id}: {problem}") if problem else image)
            if not problem:
                valid.append(index)
        for start in range(0, len(valid), self.batch_size):
            chunk = valid[start : start + self.batch_size]
            edited = self._edit_batch(
                [np.asarray(images[i]) for i in chunk],
                [np.asarray(edit_masks[i], bool) for i in chunk],
                [dicom_ids[i] for i in chunk],
            )
            for index, image in zip(chunk, edited, strict=True):
                results[index] = image
        return results

    def _edit_batch(self, images: list[np.ndarray], masks: list[np.ndarray], dicom_ids: list[str]) -> list[np.ndarray]:
        import torch

        generators = [torch.Generator("cpu").manual_seed(stable_seed(self.seed, "radedit", i)) for i in dicom_ids]
        with torch.no_grad():
            pixels = self._to_model(images)
            latent_mask = self._latent_mask(masks)
            z0 = self._encode(pixels, generators)
            latents = self._masked_edit(z0, latent_mask, generators)
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return [self._to_frame(out, image, mask) for out, image, mask in zip(decoded, images, masks, strict=True)]

    def _to_model(self, images: list[np.ndarray]):
        import torch
        import torch.nn.functional as F

        grey = torch.stack([torch.from_numpy(image.astype(np.float32)) for image in images])[:, None]
        pixels = torch.cat(
            [
                F.interpolate(
                    g[None], size=(self.resolution,) * 2, mode="bilinear", antialias=True, align_corners=False
                )
                for g in grey
            ]
        )
        return (pixels / 127.5 - 1.0).repeat(1, 3, 1, 1).to(self.device, self.dtype)

    def _latent_mask(self, masks: list[np.ndarray]):
        import torch
        import torch.nn.functional as F

        size = self.resolution // self.vae_scale
        stacked = torch.stack([torch.from_numpy(mask.astype(np.float32)) for mask in masks])[:, None]
        # Every latent cell that the mask touches is edited (area > 0), so no lesion pixel is left in the keep region.
        cells = torch.cat(
            [
                F.interpolate(
                    F.interpolate(m[None], size=(self.resolution,) * 2, mode="nearest"), size=(size, size), mode="area"
                )
                for m in stacked
            ]
        )
        return (cells > 0).to(self.device, self.dtype)

    def _encode(self, pixels, generators):
        import torch

        latents = [
            self.vae.encode(pixels[i : i + 1]).latent_dist.sample(generator=generator)
            for i, generator in enumerate(generators)
        ]
        return torch.cat(latents) * self.vae.config.scaling_factor

    def _timesteps(self) -> list[int]:
        self.scheduler.set_timesteps(self.steps)
        timesteps = [int(t) for t in self.scheduler.timesteps]
        return timesteps[int(self.skip_ratio * self.steps) :]

    def _alpha(self, timestep: int | None):
        if timestep is None:
            return self.scheduler.final_alpha_cumprod
        return self.scheduler.alphas_cumprod[timestep]

    def _invert(self, z0, timesteps: list[int]) -> dict[int, object]:
        """DDIM inversion with the unconditional model: the latent at each of ``timesteps`` (low to high noise)."""
        inverted, latent, previous = {}, z0, None
        for timestep in reversed(timesteps):
            eps = self._unet(latent, timestep, self.unconditional.expand(len(latent), -1, -1))
            alpha_prev, alpha = self._alpha(previous).to(latent), self._alpha(timestep).to(latent)
            x0 = (latent - (1 - alpha_prev).sqrt() * eps) / alpha_prev.sqrt()
            latent = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
            inverted[timestep], previous = latent, timestep
        return inverted

    def _masked_edit(self, z0, mask, generators):
        import torch

        timesteps = self._timesteps()
        inverted = self._invert(z0, timesteps)
        batch = len(z0)
        embeddings = torch.cat([self.unconditional.expand(batch, -1, -1), self.conditional.expand(batch, -1, -1)])
        latent = inverted[timesteps[0]]
        for index, timestep in enumerate(timesteps):
            eps_uncond, eps_cond = self._unet(torch.cat([latent, latent]), timestep, embeddings).chunk(2)
            eps = eps_uncond + mask * self.guidance_scale * (eps_cond - eps_uncond)
            latent = self.scheduler.step(eps, timestep, latent, eta=self.eta, generator=generators).prev_sample
            keep = inverted[timesteps[index + 1]] if index + 1 < len(timesteps) else z0
            latent = mask * latent + (1 - mask) * keep
        return latent

    def _unet(self, latent, timestep: int, embeddings):
        return self.unet(latent, timestep, encoder_hidden_states=embeddings).sample

    def _to_frame(self, decoded, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch.nn.functional as F

        grey = ((decoded.float().mean(dim=0, keepdim=True) + 1.0) * 127.5).clamp(0, 255)
        grey = F.interpolate(grey[None], size=image.shape, mode="bilinear", antialias=True, align_corners=False)
        edited = np.rint(grey[0, 0].cpu().numpy().clip(0, 255)).astype(np.uint8)
        return np.where(mask, edited, image)
