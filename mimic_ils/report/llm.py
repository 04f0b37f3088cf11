"""The ``llm`` report backend: the paper's structuring prompt (Fig. 9) and two-step location prompts (Fig. 10).

The paper runs Mistral-Small-3.1-24B-Instruct-2503 for structuring and medgemma-27b-text-it for location mapping.
Any chat model works here, through one of two transports:

* :class:`TransformersTransport` — a local ``transformers`` causal LM loaded from a folder (``--llm-model PATH``),
  greedy decoding, chat template when the tokenizer has one;
* :class:`OpenAIChatTransport` — an OpenAI-compatible chat server such as vLLM (``--llm-url URL``), stdlib
  ``urllib``, ``temperature`` 0. A URL whose host is not loopback is refused: MIMIC-CXR report text may not leave
  the machine under the PhysioNet credentialed data use agreement, unless the user opts in
  (``allow_remote=True`` / ``--allow-remote-llm``) for a server that the agreement covers.

Each answer is parsed as JSON and validated against its schema; an invalid answer is sent back once with the parse
error; an answer that still fails raises :class:`ReportError` for that study (never guessed). Valid answers are
cached on disk, one JSON file per ``sha256(model, prompt, text)``, so a rerun costs no model call.

The prompt wording is our reconstruction of the paper's Fig. 9 / Fig. 10 from its description (the figure text was
not available to us verbatim); the 16 coarse categories of step 1 are :data:`COARSE_CATEGORIES`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from mimic_ils.report.lexicon import DEVICE_PATTERN, FINDING_PATTERN, lesion_type_of
from mimic_ils.report.locations import COARSE_CATEGORIES, map_location
from mimic_ils.report.sections import split_sentences
from mimic_ils.schema import (
    CERTAINTY,
    LESION_TYPES,
    LUNG_LABELS,
    PRESENCE,
    BackendError,
    Finding,
    ReportError,
    Section,
)

STRUCTURING_PROMPT = f"""You are an expert radiologist. You will be given one section of a chest X-ray report, \
split into numbered sentences. Extract every finding the section mentions, positive or negative, and describe each \
finding as a JSON object with exactly these six keys:
- "entity": the finding as written in the report (for example "opacity", "pleural effusion", "pneumothorax"). One \
object per finding: a sentence that lists several findings gives several objects.
- "sentence_index": the number of the sentence the finding comes from (1-based).
- "presence": "positive" if the finding is present, including unchanged, improved or worsened findings; \
"negative" if it is absent, excluded or resolved.
- "certainty": "definitive" if the finding is stated with certainty; "tentative" if it is hedged (possible, \
probable, likely, may represent, suggestive of, cannot be excluded).
- "location": the anatomical location of the finding exactly as written in the report (for example "right lower \
lobe", "bibasilar", "left"), or null if the report gives none.
- "predicted_lesion_type": when the report says what the finding is thought to be (for example "opacity likely \
reflecting atelectasis" or "consolidation concerning for pneumonia"), that lesion type, one of: \
{", ".join(LESION_TYPES)}; otherwise null.
Do not report support devices (tubes, lines, catheters, pacemakers, wires, clips) as findings.
Answer with a JSON array of these objects and nothing else. Answer [] if the section has no finding."""

LOCATION_STEP1_PROMPT = f"""You are an expert radiologist. You will be given an anatomical location phrase from a \
chest X-ray report. Map it to the coarse anatomical categories it refers to, chosen from this list:
{chr(10).join(f"- {name}" for name in COARSE_CATEGORIES)}
A phrase that names a lung, a lobe, a lung zone, a lung base or apex, or only a side ("right", "bilateral") refers \
to "lung". Choose every category the phrase refers to.
Answer with a JSON array of category names exactly as written above and nothing else."""

LOCATION_STEP2_PROMPT = f"""You are an expert radiologist. You will be given a location phrase from a chest X-ray \
report that refers to the lungs. Map it to the lung categories it covers, chosen from this list:
{chr(10).join(f"- {name}" for name in LUNG_LABELS)}
Rules: lobes map to the lobe categories ("right upper lobe" -> "lung upper lobe right", "lingula" -> "lung upper \
lobe left"); zones map to the zone categories ("right upper lung" -> "right upper zone lung", "basilar" or "lower \
lung" -> lung base, "apical" -> apical zone, "perihilar" -> mid zone); "bilateral", "bibasilar" or plural forms \
cover both sides; a side alone ("right") is the whole lung ("right lung").
Answer with a JSON array of category names exactly as written above and nothing else. Answer [] if none applies."""

RETRY_MESSAGE = "Your answer could not be parsed: {error}. Answer again with only the JSON, following the format."
DUA_MESSAGE = (
    "refusing to send MIMIC-CXR report text to non-loopback LLM endpoint {url}: the PhysioNet credentialed data use "
    "agreement does not allow sharing the data with third parties; use a server on this machine (127.0.0.1 / "
    "localhost), or pass allow_remote=True / --allow-remote-llm only for a server the agreement covers"
)


class ChatTransport(Protocol):
    """Sends chat messages to one model and returns its reply text; ``model_id`` names the model in cache keys."""

    model_id: str

    def complete(self, messages: list[dict[str, str]]) -> str: ...


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is ``localhost`` or a loopback IP literal (no DNS lookup is made)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def chat_completions_url(url: str) -> str:
    """The ``/v1/chat/completions`` endpoint of a server given by its base, ``/v1`` or full endpoint URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return f"{url}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions"


class OpenAIChatTransport:
    """An OpenAI-compatible ``/v1/chat/completions`` server (vLLM, llama.cpp, ...), greedy (``temperature`` 0)."""

    def __init__(self, url: str, model: str = "default", *, timeout: float = 120.0, max_tokens: int = 2048,
                 allow_remote: bool = False) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise BackendError(f"LLM URL must be http:// or https://, got {url!r}")
        if not allow_remote and not is_loopback_url(url):
            raise BackendError(DUA_MESSAGE.format(url=url))
        self.url, self.model_id, self.timeout, self.max_tokens = chat_completions_url(url), model, timeout, max_tokens

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = {"model": self.model_id, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            raise ReportError(f"LLM server {self.url} answered HTTP {error.code}: {error.reason}") from None
        except TimeoutError:
            raise ReportError(f"LLM server {self.url} timed out after {self.timeout:g} s") from None
        except urllib.error.URLError as error:
            reason = "timed out" if isinstance(error.reason, socket.timeout) else error.reason
            raise ReportError(f"LLM server {self.url} unreachable: {reason}") from None
        except (ValueError, OSError) as error:
            raise ReportError(f"LLM server {self.url} sent no valid JSON response: {error}") from None
        try:
            return str(payload["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise ReportError(f"LLM server {self.url} response has no choices[0].message.content") from None


class TransformersTransport:
    """A local ``transformers`` causal LM loaded from ``model_path`` (never downloaded); greedy decoding."""

    def __init__(self, model_path: str | Path, *, max_new_tokens: int = 1024, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_path)
        if not path.is_dir():
            raise BackendError(f"LLM model folder not found: {path}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype="auto")
        except (OSError, ValueError) as error:
            raise BackendError(f"cannot load LLM from {path}: {str(error).splitlines()[0]}") from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.model_id, self.max_new_tokens = str(path.resolve()), max_new_tokens

    def _encode(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        if getattr(self.tokenizer, "chat_template", None):
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                         return_dict=True)
        else:
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
            encoded = self.tokenizer(text, return_tensors="pt")
        return {key: value.to(self.device) for key, value in encoded.items()}

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        inputs = self._encode(messages)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            output = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens,
                                         pad_token_id=pad)
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)


class ResponseCache:
    """Valid model answers on disk: ``<dir>/<sha256>.json`` holding ``{"model", "response"}``; None = no cache."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory else None

    @staticmethod
    def key(model: str, prompt: str, text: str) -> str:
        return hashlib.sha256(json.dumps([model, prompt, text]).encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        if self.directory is None:
            return None
        try:
            return json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8"))["response"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, model: str, response: str) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump({"model": model, "response": response}, stream)
        os.replace(temp, self.directory / f"{key}.json")


# ------------------------------------------------------------------------------------------------ answer parsing

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(answer: str) -> Any:
    """The JSON value in a model answer (code fences and text around the outermost array/object are ignored)."""
    fenced = _FENCE.search(answer)
    text = fenced.group(1) if fenced else answer
    starts = [index for index in (text.find("["), text.find("{")) if index >= 0]
    if not starts:
        raise ValueError("no JSON array or object in the answer")
    start = min(starts)
    closing = "]" if text[start] == "[" else "}"
    end = text.rfind(closing)
    if end < start:
        raise ValueError("unterminated JSON in the answer")
    try:
        return json.loads(text[start: end + 1])
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON ({error.msg} at character {error.pos})") from None


def _optional_text(value: Any, key: str, index: int) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "n/a")):
        return None
    if not isinstance(value, str):
        raise ValueError(f"finding {index}: {key!r} must be a string or null")
    return value.strip()


def _choice(value: Any, allowed: tuple[str, ...], key: str, index: int) -> str:
    text = str(value).strip().lower() if value is not None else ""
    if text not in allowed:
        raise ValueError(f"finding {index}: {key!r} must be one of {', '.join(allowed)}, got {value!r}")
    return text


def parse_structuring(answer: str, n_sentences: int) -> list[dict[str, Any]]:
    """Validated six-tuples from a structuring answer (a JSON array, or an object with a ``findings`` array)."""
    value = extract_json(answer)
    if isinstance(value, dict) and isinstance(value.get("findings"), list):
        value = value["findings"]
    if not isinstance(value, list):
        raise ValueError("the answer must be a JSON array of finding objects")
    findings = []
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise ValueError(f"finding {index} is not a JSON object")
        entity = _optional_text(item.get("entity"), "entity", index)
        if not entity:
            raise ValueError(f"finding {index}: 'entity' is missing")
        sentence = item.get("sentence_index")
        if isinstance(sentence, bool) or not isinstance(sentence, int | str) or not str(sentence).strip().isdigit():
            raise ValueError(f"finding {index}: 'sentence_index' must be an integer, got {sentence!r}")
        if not 1 <= int(sentence) <= n_sentences:
            raise ValueError(f"finding {index}: 'sentence_index' {sentence} is outside 1..{n_sentences}")
        predicted = _optional_text(item.get("predicted_lesion_type"), "predicted_lesion_type", index)
        if predicted is not None and predicted.lower() not in LESION_TYPES:
            raise ValueError(f"finding {index}: 'predicted_lesion_type' must be one of {', '.join(LESION_TYPES)} "
                             f"or null, got {predicted!r}")
        findings.append({
            "entity": entity, "sentence_index": int(sentence),
            "presence": _choice(item.get("presence"), PRESENCE, "presence", index),
            "certainty": _choice(item.get("certainty"), CERTAINTY, "certainty", index),
            "location": _optional_text(item.get("location"), "location", index),
            "predicted_lesion_type": predicted.lower() if predicted else None,
        })
    return findings


def parse_categories(answer: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Validated category names from a mapping answer (a JSON array, or an object with one array value)."""
    value = extract_json(answer)
    if isinstance(value, dict):
        arrays = [item for item in value.values() if isinstance(item, list)]
        if len(arrays) != 1:
            raise ValueError("the answer must be a JSON array of category names")
        value = arrays[0]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("the answer must be a JSON array of category names")
    lookup = {name.lower(): name for name in allowed}
    unknown = [item for item in value if item.strip().lower() not in lookup]
    if unknown:
        raise ValueError(f"unknown categories {unknown!r}; choose from the given list")
    return tuple(dict.fromkeys(lookup[item.strip().lower()] for item in value))


# ------------------------------------------------------------------------------------------------------ backend


class LlmBackend:
    """Report structuring and two-step location mapping by a chat model (see the module docstring).

    Give exactly one of ``model_path`` (local ``transformers`` folder), ``url`` (OpenAI-compatible server on
    loopback) or ``transport`` (any :class:`ChatTransport`). ``cache_dir`` enables the on-disk answer cache.
    ``mapping="rules"`` maps locations with the rule table (:mod:`locations`) instead of the two LLM prompts.
    Entities that only name a support device are dropped even if the model reports them.
    """

    name = "llm"

    def __init__(self, model_path: str | Path | None = None, url: str | None = None, *, model_name: str = "default",
                 cache_dir: str | Path | None = None, allow_remote: bool = False, timeout: float = 120.0,
                 max_new_tokens: int = 1024, transport: ChatTransport | None = None, mapping: str = "llm") -> None:
        if mapping not in ("llm", "rules"):
            raise BackendError(f"location mapping must be 'llm' or 'rules', got {mapping!r}")
        self.mapping = mapping
        given = [value for value in (model_path, url, transport) if value is not None]
        if len(given) != 1:
            raise BackendError("the llm backend needs exactly one of a model path (--llm-model) or a server URL "
                               "(--llm-url)")
        if transport is None and url is not None:
            transport = OpenAIChatTransport(url, model_name, timeout=timeout, max_tokens=max_new_tokens,
                                            allow_remote=allow_remote)
        elif transport is None:
            transport = TransformersTransport(model_path, max_new_tokens=max_new_tokens)
        self.transport: ChatTransport = transport
        self.cache = ResponseCache(cache_dir)
        self.calls = 0  # model calls actually made (cache hits excluded)

    def ask(self, prompt: str, text: str, parse: Callable[[str], Any]) -> Any:
        """Parsed answer of the model to ``prompt`` + ``text``: cache, then one call, then one retry on a bad parse."""
        model = self.transport.model_id
        key = ResponseCache.key(model, prompt, text)
        cached = self.cache.get(key)
        if cached is not None:
            try:
                return parse(cached)
            except ValueError:
                pass
        messages = [{"role": "system", "content": prompt}, {"role": "user", "content": text}]
        answer = self._call(messages)
        try:
            parsed = parse(answer)
        except ValueError as error:
            retry = [*messages, {"role": "assistant", "content": answer},
                     {"role": "user", "content": RETRY_MESSAGE.format(error=error)}]
            answer = self._call(retry)
            try:
                parsed = parse(answer)
            except ValueError as second:
                raise ReportError(f"LLM answer unparseable after one retry: {second}") from None
        self.cache.put(key, model, answer)
        return parsed

    def _call(self, messages: list[dict[str, str]]) -> str:
        self.calls += 1
        return self.transport.complete(messages)

    def map_location(self, phrase: str | None) -> tuple[str, ...]:
        """Fig. 10: coarse categories first; only a phrase placed in ``lung`` is mapped to the 15 lung categories."""
        if not phrase:
            return ()
        if self.mapping == "rules":
            return map_location(phrase)
        coarse = self.ask(LOCATION_STEP1_PROMPT, phrase, lambda answer: parse_categories(answer, COARSE_CATEGORIES))
        if "lung" not in coarse:
            return ()
        return self.ask(LOCATION_STEP2_PROMPT, phrase, lambda answer: parse_categories(answer, LUNG_LABELS))

    def structure(self, section: Section) -> tuple[Finding, ...]:
        """Findings of a section: the structuring answer, each location mapped in two steps (cached per phrase)."""
        sentences = split_sentences(section.text)
        if not sentences:
            return ()
        numbered = "\n".join(f"{index}. {sentence}" for index, sentence in enumerate(sentences, start=1))
        items = self.ask(STRUCTURING_PROMPT, numbered, lambda answer: parse_structuring(answer, len(sentences)))
        findings = []
        for item in items:
            entity = item["entity"].lower()
            if DEVICE_PATTERN.search(entity) and not FINDING_PATTERN.search(entity):
                continue
            lesion_type = item["predicted_lesion_type"] or lesion_type_of(item["entity"])
            findings.append(Finding(**item, lesion_type=lesion_type, locations=self.map_location(item["location"])))
        return tuple(findings)
