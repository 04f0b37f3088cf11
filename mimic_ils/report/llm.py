"""The ``llm`` report backend: the paper's structuring prompt (Fig. 9) and two-step location prompts (Fig. 10).

The paper runs Mistral-Small-3.1-24B-Instruct-2503 for structuring and medgemma-27b-text-it for location mapping.
Any chat model works here, through one of two transports:

* :class:`TransformersTransport` — a local ``transformers`` causal LM loaded from a folder (``--llm-model PATH``),
  greedy decoding, chat template when the tokenizer has one;
* :class:`OpenAIChatTransport` — an OpenAI-compatible chat server such as vLLM (``--llm-url URL``), stdlib
  ``http.client``, ``temperature`` 0. A URL whose host is not loopback is refused: MIMIC-CXR report text may not
  leave the machine under the PhysioNet credentialed data use agreement, unless the user opts in
  (``allow_remote=True`` / ``--allow-remote-llm``) for a server that the agreement covers. The text goes to that
  endpoint only: no environment proxy, no redirect, host names pinned to loopback without a name look-up, a
  deadline per request and a bounded answer size. A server that is down, slow or broken raises
  :class:`TransientError` (never cached as the study's outcome).

Each answer is parsed as JSON and validated against its schema; an invalid answer is sent back once with the parse
error; an answer that still fails raises :class:`ReportError` for that study (never guessed). Valid answers are
cached on disk, one JSON file per ``sha256(model, prompt, text)``, so a rerun costs no model call.

The prompts are written in our own words and follow the rules of the paper's Fig. 9 (structuring, seven fields) and
Fig. 10 (two-step location mapping) as the project restates them (``PAPER_REPORT_STAGE.md``): step 1 picks among
the paper's 17 coarse categories (:data:`COARSE_CATEGORIES`), step 2 among the 15 lung categories
(:data:`LUNG_LABELS`). Both mapping steps see the location term *and* its entity; a finding without a location is
sent as :data:`NO_LOCATION` so that the entity alone decides (its labels then have ``location_source="entity"``).

Lateral view guard: a place seen mainly on the lateral view (retrocardiac, retrosternal, middle mediastinum) is never
given lung labels, since a frontal image cannot ground it. When step 1 answers "lateral view location" without
"lung", or answers both for a term that :data:`mimic_ils.report.locations.LATERAL_VIEW_PATTERN` matches, step 2 is
not asked and the finding has no lung label.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from mimic_ils.files import atomic_write_bytes
from mimic_ils.report.lexicon import DEVICE_PATTERN, FINDING_PATTERN, lesion_type_of
from mimic_ils.report.locations import COARSE_CATEGORIES, LATERAL_VIEW_PATTERN, map_location
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
    TransientError,
)

NO_LOCATION = "no specific location information"

STRUCTURING_PROMPT = f"""You are an expert radiologist. You will be given one section of a chest X-ray report, \
split into numbered sentences. Turn every disease or finding that the section mentions into one JSON object with \
exactly these seven keys:
- "entity": the name of the disease or finding only (for example "opacity", "pleural effusion", "pneumothorax", \
"adenopathy"). When the report attaches a general anatomical descriptor, one that could describe the place of many \
different kinds of findings, take it out of the entity and put it in "location": "hilar adenopathy" becomes entity \
"adenopathy" with location "hilar", and "retrocardiac opacity" becomes entity "opacity" with location \
"retrocardiac". Split a word off only when it is such a general descriptor. The entity and the location must never \
repeat the same anatomical word.
- "sentence_index": the number of the sentence that states the finding (1-based).
- "presence": "positive" when the finding is there, which includes a finding described as improved, stable, \
unchanged or worsening, and "no change in" a finding (it is still present); "negative" only when a specific, named \
finding is explicitly said to be absent or resolved ("no pneumothorax", "the effusion has resolved"). General \
statements of normality such as "clear", "unremarkable", "normal" or "within normal limits" make no object at all.
- "certainty": "definitive" when the report clearly asserts that the finding is present or absent; "tentative" \
when it only raises a possibility or a suggestion (possible, probable, likely, may represent, suggestive of, \
"cannot exclude", "cannot be ruled out") or comes to no definitive conclusion.
- "location": all the places the report gives for this finding, copied from the report; several places all go in \
this one field, joined with ", " (for example "right lower lobe, left base"); null when the report gives no place.
- "predicted_lesion_type": when a non-specific finding such as an opacity or a consolidation is said to represent, \
reflect or suggest a specific condition ("the opacity reflects pneumonia"), that condition, one of: \
{", ".join(LESION_TYPES)}; otherwise null.
- "predicted_lesion_type_sentence_index": the number of the sentence that names the predicted lesion type. It may \
be a different sentence from the finding's own: in "1. Left basal opacity. 2. This likely represents atelectasis." \
the opacity has sentence_index 1, predicted_lesion_type "atelectasis" and predicted_lesion_type_sentence_index 2. \
null when predicted_lesion_type is null.
Rules:
- Diseases and findings only: never make an object for a medical device (tubes, lines, catheters, pacemakers, \
wires, clips).
- Exactly one presence and one certainty per entity.
- Every location of an entity goes in that entity's location field.
- Use null for a location or a predicted lesion type that the report does not give.
Answer with a JSON array of these objects and nothing else. Answer [] if the section has no finding."""

_MAPPING_INPUT = f"""You will be given a finding from a chest X-ray report ("Entity") and the place the report \
gives for it ("Location"). When the location reads "{NO_LOCATION}", decide from the entity alone, as a \
radiologist would for that kind of finding."""

LOCATION_STEP1_PROMPT = f"""You are an expert radiologist. {_MAPPING_INPUT} Assign the location to the coarse \
anatomical categories it belongs to, chosen from this list of {len(COARSE_CATEGORIES)} categories:
{chr(10).join(f"- {name}" for name in COARSE_CATEGORIES)}
Examples of what some categories cover (not complete lists):
- mediastinum: esophagus, cardiomediastinum, upper mediastinum, anterior mediastinum
- abdomen: stomach, small bowel, duodenum, liver, pancreas, kidney
- heart: atrium, myocardium
- vessels: ascending aorta, aortic arch, pulmonary artery, inferior vena cava, pulmonary vessels, vasculature
- lung: left lung, left, right, bilateral, hilar, costophrenic angle, lingular
- pleura: right pleural, left pleural, pleural
- lateral view location: middle mediastinum, retrocardiac space, retrosternal space
Rules:
- Choose the category that is anatomically most appropriate under standard chest X-ray reading.
- Synonyms, adjectives and other variants of a name count as that category ("cardiac" is heart, "pulmonary" is \
lung, "vasculature" is vessels).
- A bare side, "left", "right" or "bilateral", means lung.
- A place that is seen mainly or only on the lateral view always goes to "lateral view location", whatever else it \
could be read as.
- A location that is unrelated to chest anatomy gets no category: answer [].
Answer with a JSON array of category names exactly as written in the list and nothing else."""

LOCATION_STEP2_PROMPT = f"""You are an expert radiologist. {_MAPPING_INPUT} The location (or, without one, the \
finding) is known to be in the lungs. Choose the lung categories it covers from this list of \
{len(LUNG_LABELS)} categories:
{chr(10).join(f"- {name}" for name in LUNG_LABELS)}
Rules:
- A location that overlaps several categories gets all of them ("bibasilar" gives "right lung base" and "left lung \
base").
- Do not list overlapping categories: when a broad category already covers its parts, give the broader one alone \
("right lung", not "right lung" together with "right lung base").
- Lobes map to the lobe categories ("right upper lobe" -> "lung upper lobe right", "lingula" -> "lung upper lobe \
left"); zones map to the zone categories ("right upper lung" -> "right upper zone lung", "basilar" or "lower lung" \
-> lung base, "apical" -> apical zone, "perihilar" -> mid zone); "bilateral" or plural forms cover both sides; a \
side alone ("right") is the whole lung ("right lung").
- The entity decides where a side-only place lies: a pleural effusion given only a side sits at that side's lung \
base ("small right pleural effusion" -> "right lung base"); a diffuse finding such as pulmonary edema with no \
location covers both lungs.
- When no category is relevant, answer [].
Answer with a JSON array of category names exactly as written in the list and nothing else."""

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


MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # an answer of a few thousand tokens is a few kB; more is refused
LOCALHOST_ADDRESSES = ("127.0.0.1", "::1")  # what "localhost" and "*.localhost" mean (RFC 6761), never asked of DNS
_CONTENT_STATUSES = (400, 413, 422)  # the server refused this request's content (e.g. too long): the study's own


def loopback_addresses(host: str) -> tuple[str, ...]:
    """The addresses a loopback host name is pinned to: an IP literal itself, ``localhost`` and ``*.localhost``
    :data:`LOCALHOST_ADDRESSES` (no name service is asked); :class:`BackendError` for any other host."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return LOCALHOST_ADDRESSES
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise BackendError(f"{host!r} is not a loopback host (localhost, *.localhost or a loopback IP)") from None
    if not address.is_loopback:
        raise BackendError(f"{host!r} is not a loopback address")
    return (str(address),)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a pinned IP address whose certificate is checked against the URL's host name."""

    def __init__(self, address: str, port: int, server_hostname: str, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout, context=ssl.create_default_context())
        self._server_hostname = server_hostname

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_hostname)


class OpenAIChatTransport:
    """An OpenAI-compatible ``/v1/chat/completions`` server (vLLM, llama.cpp, ...), greedy (``temperature`` 0).

    The report text goes to the endpoint itself and nowhere else: the request is made with :mod:`http.client` to
    the address the host name was pinned to (loopback hosts: :func:`loopback_addresses`, no name service; a remote
    host under ``allow_remote``: one ``getaddrinfo``, kept), with the URL's ``Host`` header; no proxy of the
    environment (``http_proxy``, ``HTTPS_PROXY``...) is used and a redirect is an error naming its ``Location``.
    ``timeout`` is a deadline for the whole request (connect, send, every byte of the answer), and an answer over
    ``max_response_bytes`` is refused.

    Failures of the server or of the connection (refused, deadline, HTTP 5xx and other statuses, redirect, an answer
    too large or not in the chat completions format) raise :class:`TransientError`: they say nothing about the
    study, so they are never cached as its outcome. A status that refuses the request's content (400, 413, 422)
    is a :class:`ReportError`.
    """

    def __init__(self, url: str, model: str = "default", *, timeout: float = 120.0, max_tokens: int = 2048,
                 allow_remote: bool = False, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise BackendError(f"LLM URL must be http:// or https://, got {url!r}")
        if not parts.hostname:
            raise BackendError(f"LLM URL has no host: {url!r}")
        if not allow_remote and not is_loopback_url(url):
            raise BackendError(DUA_MESSAGE.format(url=url))
        self.url, self.model_id, self.timeout, self.max_tokens = chat_completions_url(url), model, timeout, max_tokens
        self.max_response_bytes, self.allow_remote = max_response_bytes, allow_remote
        endpoint = urlsplit(self.url)
        self._scheme, self._host = endpoint.scheme, endpoint.hostname
        try:
            self._port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        except ValueError:
            raise BackendError(f"LLM URL has an invalid port: {url!r}") from None
        self._host_header = endpoint.netloc.rpartition("@")[2]
        self._path = (endpoint.path or "/") + (f"?{endpoint.query}" if endpoint.query else "")
        self._addresses: tuple[str, ...] | None = None if allow_remote else loopback_addresses(self._host)

    def addresses(self) -> tuple[str, ...]:
        """The IP addresses this transport connects to (resolved once, then pinned)."""
        if self._addresses is None:
            if is_loopback_url(self.url):
                self._addresses = loopback_addresses(self._host)
            else:
                try:
                    infos = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
                except OSError as error:
                    raise TransientError(f"LLM server {self.url} unreachable: cannot resolve {self._host}: "
                                         f"{error}") from None
                self._addresses = (str(infos[0][4][0]),)
        return self._addresses

    def _connection(self, address: str, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return _PinnedHTTPSConnection(address, self._port, self._host, timeout)
        return http.client.HTTPConnection(address, self._port, timeout=timeout)

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": self.model_id, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        deadline = time.monotonic() + self.timeout
        addresses = self.addresses()
        for number, address in enumerate(addresses, start=1):
            try:
                status, reason, headers, data = self._post(address, body, deadline)
                break
            except ConnectionRefusedError as error:
                if number == len(addresses):
                    raise TransientError(f"LLM server {self.url} unreachable: {error}") from None
        return self._content(status, reason, headers, data)

    def _post(self, address: str, body: bytes, deadline: float) -> tuple[int, str, Any, bytes]:
        """One POST to ``address`` under ``deadline``: ``(status, reason, headers, body bytes)``."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientError(f"LLM server {self.url} timed out: no answer within the {self.timeout:g} s deadline")
        connection = self._connection(address, left)
        expired = threading.Event()

        def expire() -> None:  # the deadline: unblocks whatever read or write is waiting on the socket
            expired.set()
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(left, expire)
        timer.daemon = True
        timer.start()
        try:
            connection.request("POST", self._path, body=body, headers={
                "Host": self._host_header, "Content-Type": "application/json", "Accept": "application/json",
                "Content-Length": str(len(body))})
            response = connection.getresponse()
            if 300 <= response.status < 400:
                location = response.getheader("Location") or "(no Location)"
                raise TransientError(f"LLM server {self.url} answered HTTP {response.status} redirecting to "
                                     f"{location}: redirects are not followed (report text goes only to the "
                                     "configured endpoint)")
            declared = response.getheader("Content-Length")
            if declared and declared.strip().isdigit() and int(declared) > self.max_response_bytes:
                raise self._too_large()
            chunks, size = [], 0
            while True:
                chunk = response.read(min(65536, self.max_response_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise self._too_large()
            if expired.is_set():
                raise self._deadline()
            return response.status, response.reason, response.headers, b"".join(chunks)
        except TransientError:
            raise
        except ConnectionRefusedError:
            raise
        except TimeoutError:
            raise self._deadline() from None
        except (OSError, http.client.HTTPException) as error:
            if expired.is_set():
                raise self._deadline() from None
            raise TransientError(f"LLM server {self.url} unreachable: {error or type(error).__name__}") from None
        finally:
            timer.cancel()
            connection.close()

    def _deadline(self) -> TransientError:
        return TransientError(f"LLM server {self.url} timed out: no complete answer within the {self.timeout:g} s "
                              "deadline")

    def _too_large(self) -> TransientError:
        return TransientError(f"LLM server {self.url} answer is larger than {self.max_response_bytes} bytes; refused")

    def _content(self, status: int, reason: str, headers: Any, data: bytes) -> str:
        if status in _CONTENT_STATUSES:
            raise ReportError(f"LLM server {self.url} refused the request: HTTP {status} {reason}")
        if status >= 400 or status < 200:
            raise TransientError(f"LLM server {self.url} answered HTTP {status}: {reason}")
        try:
            payload = json.loads(data.decode("utf-8"))
        except ValueError as error:
            raise TransientError(f"LLM server {self.url} sent no valid JSON response: {error}") from None
        try:
            return str(payload["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise TransientError(f"LLM server {self.url} response has no choices[0].message.content") from None


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
        payload = json.dumps({"model": model, "response": response}).encode("utf-8")
        atomic_write_bytes(self.directory / f"{key}.json", payload)


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


def _sentence_number(value: Any, key: str, index: int, n_sentences: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise ValueError(f"finding {index}: {key!r} must be an integer, got {value!r}")
    if not 1 <= int(value) <= n_sentences:
        raise ValueError(f"finding {index}: {key!r} {value} is outside 1..{n_sentences}")
    return int(value)


def _location_text(value: Any, index: int) -> str | None:
    """The location field: a string, or (tolerated) an array of strings that is joined with ", "."""
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise ValueError(f"finding {index}: 'location' must be a string, an array of strings or null")
        value = ", ".join(item.strip() for item in value if _optional_text(item, "location", index))
    return _optional_text(value, "location", index)


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "n/a"))


def parse_structuring(answer: str, n_sentences: int) -> list[dict[str, Any]]:
    """Validated seven-field records from a structuring answer (a JSON array, or an object with a ``findings``
    array). The keys are :class:`Finding`'s: the answer's ``predicted_lesion_type_sentence_index`` becomes
    ``predicted_lesion_sentence_index`` (1..n, null without a predicted type, the finding's own sentence when a
    predicted type comes without it)."""
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
        sentence = _sentence_number(item.get("sentence_index"), "sentence_index", index, n_sentences)
        predicted = _optional_text(item.get("predicted_lesion_type"), "predicted_lesion_type", index)
        if predicted is not None and predicted.lower() not in LESION_TYPES:
            raise ValueError(f"finding {index}: 'predicted_lesion_type' must be one of {', '.join(LESION_TYPES)} "
                             f"or null, got {predicted!r}")
        raw_predicted_sentence = item.get("predicted_lesion_type_sentence_index")
        if _is_null(raw_predicted_sentence):
            predicted_sentence = sentence if predicted else None
        elif predicted is None:
            raise ValueError(f"finding {index}: 'predicted_lesion_type_sentence_index' must be null when "
                             f"'predicted_lesion_type' is null, got {raw_predicted_sentence!r}")
        else:
            predicted_sentence = _sentence_number(raw_predicted_sentence, "predicted_lesion_type_sentence_index",
                                                  index, n_sentences)
        findings.append({
            "entity": entity, "sentence_index": sentence,
            "presence": _choice(item.get("presence"), PRESENCE, "presence", index),
            "certainty": _choice(item.get("certainty"), CERTAINTY, "certainty", index),
            "location": _location_text(item.get("location"), index),
            "predicted_lesion_type": predicted.lower() if predicted else None,
            "predicted_lesion_sentence_index": predicted_sentence,
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

    @staticmethod
    def mapping_input(entity: str, location: str | None) -> str:
        """The user message of both mapping steps: the entity and its location term (or :data:`NO_LOCATION`)."""
        return f"Entity: {entity}\nLocation: {location or NO_LOCATION}"

    def map_location(self, phrase: str | None, entity: str | None = None) -> tuple[str, ...]:
        """Fig. 10: the LUNG_LABELS of a location term for its entity (see :meth:`locate`)."""
        return self.locate(entity or "", phrase)[0]

    def locate(self, entity: str, location: str | None) -> tuple[tuple[str, ...], str | None]:
        """Fig. 10, both steps given the entity and its location: ``(labels, location_source)``.

        Step 1 picks coarse categories; only a term placed in ``lung`` (and not at a lateral view location, see the
        module docstring) goes to step 2. Without a location the entity alone decides and the source is
        ``"entity"``; with one it is ``"report"``; no labels → ``((), None)``. With ``mapping="rules"`` the rule
        table maps the location term, and a finding without one stays unmapped (no entity mapping there).
        """
        location = location.strip() if location and location.strip() else None
        if self.mapping == "rules":
            labels = map_location(location) if location else ()
            return labels, ("report" if labels else None)
        text = self.mapping_input(entity, location)
        coarse = self.ask(LOCATION_STEP1_PROMPT, text, lambda answer: parse_categories(answer, COARSE_CATEGORIES))
        if "lung" not in coarse:
            return (), None
        term = " ".join((location or entity).lower().split())
        if "lateral view location" in coarse and LATERAL_VIEW_PATTERN.search(term):
            return (), None  # guard: a lateral view place never gets lung labels, even if "lung" is also answered
        labels = self.ask(LOCATION_STEP2_PROMPT, text, lambda answer: parse_categories(answer, LUNG_LABELS))
        if not labels:
            return (), None
        return labels, ("report" if location else "entity")

    def structure(self, section: Section) -> tuple[Finding, ...]:
        """Findings of a section: the structuring answer, each finding mapped in two steps (cached per entity and
        location)."""
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
            labels, source = self.locate(item["entity"], item["location"])
            findings.append(Finding(**item, lesion_type=lesion_type, locations=labels, location_source=source))
        return tuple(findings)
