"""Hardening (issue 15): report text reaches only the loopback LLM endpoint, a server that is down is never the
study's outcome, and no command looks anything up on a hub unless the user opts in.

* S1: ``OpenAIChatTransport`` ignores ``http_proxy``/``HTTPS_PROXY``, follows no redirect, pins ``*.localhost`` to
  loopback without a name look-up, has a total deadline per request and a bounded answer size.
* W3: transport failures are :class:`TransientError`; an answer still unparseable after the retry is the study's
  :class:`ReportError`; the on-disk answer cache never holds an error.
* S4: ``mimic-ils``, ``convert_lisa``, ``convert_sam`` and the evaluation script run offline (before any hub
  library reaches the network) and turn a hub id where a local path is expected into one line, without a request
  to ``HF_ENDPOINT`` (a local server that records every request).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mimic_ils import cli
from mimic_ils.report import llm as llm_module
from mimic_ils.report import structure_report
from mimic_ils.report.llm import LlmBackend, OpenAIChatTransport
from mimic_ils.schema import BackendError, ReportError, TransientError
from rosalia_hf import offline

REPO = Path(__file__).resolve().parents[1]
LISA_FIXTURE = REPO / "tests" / "fixtures" / "lisa_reference"
REPORT = ("FINDINGS: \n Right lower lobe opacity likely reflects pneumonia.  No pleural effusion.\n"
          " IMPRESSION: \n Pneumonia.\n")
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "PATIENT REPORT TEXT"}]
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
OFFLINE_VARIABLES = (*offline.OFFLINE_ENVIRONMENT, offline.ALLOW_ENV)


def _unset(monkeypatch, names=OFFLINE_VARIABLES) -> None:
    """Unset ``names`` for this test; whatever the test then sets is undone afterwards."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def chat_payload(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


class Recorder:
    """An HTTP server on 127.0.0.1 that records every request (any method, CONNECT included) and lets
    ``respond(handler, record)`` write the answer (default: 404, at once)."""

    def __init__(self, respond: Callable | None = None) -> None:
        self.requests: list[dict] = []
        self.respond = respond or (lambda handler, record: send(handler, 404, b"not here"))
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                record = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                          "body": self.rfile.read(length) if length else b""}
                recorder.requests.append(record)
                try:
                    recorder.respond(self, record)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            do_GET = do_POST = do_HEAD = do_PUT = do_CONNECT = do_OPTIONS = _any  # noqa: N815 (http.server API)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def servers():
    started: list[Recorder] = []

    def start(respond: Callable | None = None) -> Recorder:
        started.append(Recorder(respond))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def proxied(monkeypatch, servers):
    """Every proxy variable points at a recording "proxy" (no no_proxy exception): it must receive nothing."""
    proxy = servers(lambda handler, record: send(handler, 200, chat_payload("from the proxy")))
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, proxy.url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return proxy


# ------------------------------------------------------------------------------------------- S1: where text goes


def test_environment_proxy_is_never_used(proxied, servers):
    server = servers(lambda handler, record: send(handler, 200, chat_payload("from the server")))
    for url in (server.url, f"http://localhost:{server.port}"):
        assert OpenAIChatTransport(url).complete(MESSAGES) == "from the server"
    assert proxied.requests == []
    assert len(server.requests) == 2 and all(b"PATIENT REPORT TEXT" in r["body"] for r in server.requests)
    assert server.requests[0]["path"] == "/v1/chat/completions"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_an_error_naming_the_location_and_the_target_gets_nothing(servers, status):
    target = servers(lambda handler, record: send(handler, 200, chat_payload("redirected")))
    location = f"{target.url}/v1/chat/completions"
    server = servers(lambda handler, record: send(handler, status, b"", Location=location))
    with pytest.raises(TransientError, match=f"HTTP {status} redirecting to {location}"):
        OpenAIChatTransport(server.url).complete(MESSAGES)
    assert len(server.requests) == 1 and target.requests == []


@pytest.mark.parametrize("framing", ["content-length", "close-delimited"])
def test_oversized_answer_is_refused(servers, framing):
    big = chat_payload("x" * (8 * 1024 * 1024 + 10))  # over the 8 MiB cap (llm.MAX_RESPONSE_BYTES)

    def respond(handler, record):
        handler.send_response(200)
        if framing == "content-length":
            handler.send_header("Content-Length", str(len(big)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        for start in range(0, len(big), 1 << 20):
            handler.wfile.write(big[start:start + (1 << 20)])

    server = servers(respond)
    with pytest.raises(TransientError, match="larger than"):
        OpenAIChatTransport(server.url).complete(MESSAGES)
    small = OpenAIChatTransport(server.url, max_response_bytes=len(big) + 1)
    assert len(small.complete(MESSAGES)) == 8 * 1024 * 1024 + 10  # the cap refuses, not the reading


@pytest.mark.parametrize("part", ["headers", "body"])
def test_trickling_server_hits_the_total_deadline(servers, part):
    def respond(handler, record):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
        if part == "body":
            handler.wfile.write(head)
            handler.wfile.flush()
            head = b""
        for byte in head + b" " * 40:  # one byte every 0.1 s: each read is quick, the whole answer takes ~8 s
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.1)

    server = servers(respond)
    start = time.monotonic()
    with pytest.raises(TransientError, match="timed out"):
        OpenAIChatTransport(server.url, timeout=1.0).complete(MESSAGES)
    assert time.monotonic() - start < 2.5


def test_localhost_names_are_pinned_to_loopback_without_a_name_lookup(monkeypatch, servers):
    looked_up = []
    real = socket.getaddrinfo

    def hostile_dns(host, *args, **kwargs):  # a resolver that sends *.localhost elsewhere
        looked_up.append(host)
        if "localhost" in str(host):
            return real("192.0.2.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hostile_dns)
    server = servers(lambda handler, record: send(handler, 200, chat_payload("pinned")))
    transport = OpenAIChatTransport(f"http://foo.localhost:{server.port}/v1", timeout=3)
    assert transport.complete(MESSAGES) == "pinned"
    assert server.requests[0]["headers"]["Host"] == f"foo.localhost:{server.port}"  # the Host header is kept
    assert not [host for host in looked_up if "localhost" in str(host)]
    assert transport.addresses() == ("127.0.0.1", "::1")
    assert llm_module.loopback_addresses("foo.localhost") == ("127.0.0.1", "::1")
    assert llm_module.loopback_addresses("LOCALHOST.") == ("127.0.0.1", "::1")
    assert llm_module.loopback_addresses("127.0.0.9") == ("127.0.0.9",)
    for host in ("localhost.example.org", "10.0.0.1", "example.org"):
        with pytest.raises(BackendError):
            llm_module.loopback_addresses(host)


def test_non_loopback_still_needs_the_opt_in():
    with pytest.raises(BackendError, match="PhysioNet credentialed data use agreement"):
        OpenAIChatTransport("http://localhost.example.org:8000")
    assert OpenAIChatTransport("http://192.0.2.1:8000", allow_remote=True).url.endswith("/v1/chat/completions")


# --------------------------------------------------------------------------- W3: a server down is not the study's


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_refused_connection_is_transient_not_the_studys(tmp_path):
    backend = LlmBackend(url=f"http://127.0.0.1:{_closed_port()}", cache_dir=tmp_path / "cache", timeout=2)
    with pytest.raises(TransientError, match="unreachable") as caught:
        structure_report(REPORT, backend=backend)
    assert not isinstance(caught.value, ReportError | BackendError)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("status", [500, 502, 503, 429, 404])
def test_server_errors_are_transient_and_the_server_is_retried_next_time(servers, tmp_path, status):
    state = {"up": False}

    def respond(handler, record):
        if state["up"]:
            send(handler, 200, chat_payload("[]"))  # no finding: one structuring call
        else:
            send(handler, status, b'{"error": "loading"}')

    server = servers(respond)
    cache = tmp_path / "cache"
    with pytest.raises(TransientError, match=f"HTTP {status}"):
        structure_report(REPORT, backend=LlmBackend(url=server.url, cache_dir=cache))
    assert not cache.exists() or not list(cache.iterdir())
    state["up"] = True
    again = LlmBackend(url=server.url, cache_dir=cache)
    assert structure_report(REPORT, backend=again).findings == () and again.calls == 1
    assert [json.loads(path.read_text())["response"] for path in cache.glob("*.json")] == ["[]"]


def test_an_answer_not_in_the_chat_format_is_transient(servers):
    server = servers(lambda handler, record: send(handler, 200, b"<html>a proxy login page</html>"))
    with pytest.raises(TransientError, match="no valid JSON response"):
        OpenAIChatTransport(server.url).complete(MESSAGES)


def test_garbage_twice_is_the_studys_report_error_and_nothing_is_cached(servers, tmp_path):
    server = servers(lambda handler, record: send(handler, 200, chat_payload("I am not sure.")))
    cache = tmp_path / "cache"
    with pytest.raises(ReportError, match="unparseable after one retry") as caught:
        structure_report(REPORT, backend=LlmBackend(url=server.url, cache_dir=cache))
    assert not isinstance(caught.value, TransientError)
    assert len(server.requests) == 2
    assert not cache.exists() or not list(cache.iterdir())


# ------------------------------------------------------------------------------------- S4: no hub look-ups at run


def _clean_env(hub: Recorder, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in OFFLINE_VARIABLES and key.lower() not in ("no_proxy", *map(str.lower, PROXY_VARIABLES))}
    env.update({"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "YOLO_CONFIG_DIR": str(tmp_path),
                "PYTHONPATH": str(REPO), **{name: hub.url for name in PROXY_VARIABLES}, **extra})
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


HUB_ID = "openai/clip-vit-large-patch14"
NOT_LOCAL = "not a local folder (downloads are off; give the path of a local copy)"


def test_hub_ids_get_one_line_and_no_network(servers, tmp_path):
    hub = servers()
    lisa = tmp_path / "lisa"
    shutil.copytree(LISA_FIXTURE / "lisa", lisa)
    env = _clean_env(hub, tmp_path)
    cases = [
        (["-m", "mimic_ils", "evaluate", "--model", HUB_ID, "--dataset", str(tmp_path), "--out",
          str(tmp_path / "eval")], f"mimic-ils evaluate: --model {HUB_ID}: {NOT_LOCAL}"),
        (["-m", "rosalia_hf.convert_lisa", "--checkpoint", str(lisa), "--clip", HUB_ID, "--output",
          str(tmp_path / "out")], f"convert_lisa: --clip {HUB_ID}: {NOT_LOCAL}"),
        (["examples/evaluate_rosalia.py", "--model", str(lisa), "--processor", HUB_ID, "--dataset", str(tmp_path),
          "--out", str(tmp_path / "eval")], f"evaluate_rosalia.py: --processor {HUB_ID}: {NOT_LOCAL}"),
        (["-m", "rosalia_hf.convert_sam", "--checkpoint", "facebook/sam-vit-huge", "--output", str(tmp_path / "x")],
         "convert_sam: --checkpoint facebook/sam-vit-huge: no such checkpoint (not a local file or folder; "
         "downloads are off; give the path of a local copy)"),
    ]
    for args, line in cases:
        result = _run(args, env)
        assert result.returncode != 0, args
        assert result.stderr.strip() == line, result.stderr
    assert hub.requests == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()


def test_downloads_only_when_the_user_opts_in(servers, tmp_path):
    hub = servers()  # answers 404: the look-up reaches it, and fails at once
    env = _clean_env(hub, tmp_path)
    args = ["-m", "mimic_ils", "--allow-downloads", "evaluate", "--model", HUB_ID, "--dataset", str(tmp_path),
            "--out", str(tmp_path / "eval")]
    result = _run(args, env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"mimic-ils evaluate: cannot load {HUB_ID}")
    assert any(HUB_ID in request["path"] for request in hub.requests)


def test_go_offline_sets_every_flag_even_for_libraries_already_imported(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    yolo_events = pytest.importorskip("ultralytics.utils.events")
    _unset(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(yolo_events, "ONLINE", True)
    monkeypatch.setattr(yolo_events.events, "enabled", True)
    monkeypatch.setenv(offline.ALLOW_ENV, "1")
    assert offline.go_offline() is False and "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.delenv(offline.ALLOW_ENV)
    assert offline.go_offline(allow_downloads=True) is False and "YOLO_OFFLINE" not in os.environ
    assert offline.go_offline() is True
    assert {name: os.environ[name] for name in offline.OFFLINE_ENVIRONMENT} == offline.OFFLINE_ENVIRONMENT
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True and huggingface_hub.is_offline_mode()
    assert datasets.config.HF_HUB_OFFLINE is True
    assert yolo_events.ONLINE is False and yolo_events.events.enabled is False


def test_mimic_ils_cli_goes_offline_before_the_command_runs(monkeypatch, tmp_path):
    _unset(monkeypatch)
    seen = {}

    def spy(args):
        seen.update({name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                              "HF_DATASETS_OFFLINE", "YOLO_OFFLINE")})
        return 0

    from mimic_ils.commands import stats

    monkeypatch.setattr(stats, "run", spy)
    assert cli.main(["stats", str(tmp_path)]) == 0
    assert seen == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "YOLO_OFFLINE": "1"}
    _unset(monkeypatch)
    seen.clear()
    assert cli.main(["stats", str(tmp_path), "--allow-downloads"]) == 0
    assert seen == dict.fromkeys(("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "YOLO_OFFLINE"))


def test_require_local():
    offline.require_local(str(REPO), "--model")
    offline.require_local(None, "--model")
    offline.require_local(HUB_ID, "--model", downloads=True)
    with pytest.raises(offline.NotLocalError, match=f"--clip {HUB_ID}: not a local folder \\(give the path"):
        offline.require_local(HUB_ID, "--clip", downloads=True, fetchable=False)
    with pytest.raises(offline.NotLocalError, match="not a folder"):
        offline.require_local(__file__, "--model")


@pytest.mark.parametrize("value", ["/no/such/model", "./typo", "../typo", "~/typo_model", "runs/x/merged",
                                   "C:\\models\\rosalia", "owner/../name"])
def test_a_missing_local_path_is_refused_even_with_downloads(value):
    assert offline.looks_like_path(value)
    with pytest.raises(offline.NotLocalError, match=f"^--model {re.escape(value)}: no such folder$"):
        offline.require_local(value, "--model", downloads=True)


@pytest.mark.parametrize("value", [HUB_ID, "gpt2", "microsoft/rad-dino"])
def test_hub_ids_do_not_look_like_paths(value):
    assert not offline.looks_like_path(value)


def test_a_missing_model_folder_ends_in_seconds_with_downloads_on(servers, tmp_path):
    hub = servers()
    env = _clean_env(hub, tmp_path)
    missing = tmp_path / "no_such_model"
    result = _run(["-m", "mimic_ils", "--allow-downloads", "evaluate", "--model", str(missing), "--dataset",
                   str(tmp_path), "--out", str(tmp_path / "eval")], env)
    assert result.returncode == 1
    assert result.stderr.strip() == f"mimic-ils evaluate: --model {missing}: no such folder"
    assert hub.requests == []
