"""The llm report backend for real: over HTTP against a fake OpenAI-compatible server on 127.0.0.1, and through the
transformers transport with a tiny randomly initialised causal LM."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest

from mimic_ils import cli
from mimic_ils.report import get_backend, structure_report
from mimic_ils.report import llm as llm_module
from mimic_ils.report.llm import (
    LOCATION_STEP1_PROMPT,
    LOCATION_STEP2_PROMPT,
    NO_LOCATION,
    STRUCTURING_PROMPT,
    LlmBackend,
    TransformersTransport,
    chat_completions_url,
    is_loopback_url,
    parse_categories,
    parse_structuring,
)
from mimic_ils.report.locations import COARSE_CATEGORIES
from mimic_ils.schema import LESION_TYPES, LUNG_LABELS, BackendError, ReportError, Section, TransientError

sys.path.insert(0, str(Path(__file__).parent))
from _llm_helpers import FakeChatServer, ScriptedTransport, mapping_text, parse_mapping_text  # noqa: E402

REPORT = (
    "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___F with"
    " cough.\n \n FINDINGS: \n \n Right lower lobe opacity likely reflects pneumonia.  No pleural\n effusion.  The"
    " heart is enlarged.\n \n IMPRESSION: \n \n Pneumonia.\n"
)
SENTENCES = ("1. Right lower lobe opacity likely reflects pneumonia.\n2. No pleural effusion.\n"
             "3. The heart is enlarged.")
STRUCTURED = [
    {"entity": "opacity", "sentence_index": 1, "presence": "positive", "certainty": "tentative",
     "location": "right lower lobe", "predicted_lesion_type": "pneumonia", "predicted_lesion_type_sentence_index": 1},
    {"entity": "pleural effusion", "sentence_index": 2, "presence": "negative", "certainty": "definitive",
     "location": None, "predicted_lesion_type": None, "predicted_lesion_type_sentence_index": None},
    {"entity": "cardiomegaly", "sentence_index": 3, "presence": "positive", "certainty": "definitive",
     "location": "heart", "predicted_lesion_type": None, "predicted_lesion_type_sentence_index": None},
]
# keyed by (entity, location); None = the finding had no location
STEP1 = {("opacity", "right lower lobe"): ["lung"], ("pleural effusion", None): ["pleura"],
         ("cardiomegaly", "heart"): ["heart"]}
STEP2 = {("opacity", "right lower lobe"): ["lung lower lobe right"]}


def good_answer(body: dict, structured: list | None = None, step1: dict | None = None,
                step2: dict | None = None) -> str:
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    if system == STRUCTURING_PROMPT:
        return "```json\n" + json.dumps(STRUCTURED if structured is None else structured) + "\n```"
    key = parse_mapping_text(user)
    if system == LOCATION_STEP1_PROMPT:
        return json.dumps((STEP1 if step1 is None else step1)[key])
    assert system == LOCATION_STEP2_PROMPT
    return "Answer: " + json.dumps((STEP2 if step2 is None else step2)[key])


@pytest.fixture
def server():
    fake = FakeChatServer(good_answer)
    yield fake
    fake.close()


def test_prompts_parsing_and_two_step_mapping(server, tmp_path):
    backend = get_backend("llm", url=server.url, model_name="mistral-small", cache_dir=tmp_path / "cache")
    report = structure_report(REPORT, backend=backend)
    assert report.section.name == "findings"
    assert [(f.entity, f.presence, f.certainty, f.location, f.predicted_lesion_type, f.lesion_type, f.locations,
             f.predicted_lesion_sentence_index, f.location_source) for f in report.findings] == [
        ("opacity", "positive", "tentative", "right lower lobe", "pneumonia", "pneumonia", ("lung lower lobe right",),
         1, "report"),
        ("pleural effusion", "negative", "definitive", None, None, "effusion", (), None, None),
        ("cardiomegaly", "positive", "definitive", "heart", None, "cardiomegaly", (), None, None),
    ]
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["model"] == "mistral-small"
    assert first["temperature"] == 0
    assert first["messages"] == [{"role": "system", "content": STRUCTURING_PROMPT},
                                 {"role": "user", "content": SENTENCES}]
    # step 1 for every finding (the one without a location too); step 2 only for the one placed in the lung
    assert server.systems() == [STRUCTURING_PROMPT, LOCATION_STEP1_PROMPT, LOCATION_STEP2_PROMPT,
                                LOCATION_STEP1_PROMPT, LOCATION_STEP1_PROMPT]
    assert server.users()[1:] == [
        "Entity: opacity\nLocation: right lower lobe", "Entity: opacity\nLocation: right lower lobe",
        f"Entity: pleural effusion\nLocation: {NO_LOCATION}", "Entity: cardiomegaly\nLocation: heart"]


def test_devices_dropped_and_rule_mapping_option(tmp_path):
    device = {"entity": "Endotracheal tube", "sentence_index": 3, "presence": "positive",
              "certainty": "definitive", "location": "trachea", "predicted_lesion_type": None}

    def answer(body):
        return json.dumps([STRUCTURED[0], device]) if body["messages"][0]["content"] == STRUCTURING_PROMPT else "?"

    fake = FakeChatServer(answer)
    try:
        backend = LlmBackend(url=fake.url, mapping="rules")
        report = structure_report(REPORT, backend=backend)
    finally:
        fake.close()
    assert [(f.entity, f.locations, f.location_source) for f in report.findings] == [
        ("opacity", ("lung lower lobe right",), "report")]
    assert fake.systems() == [STRUCTURING_PROMPT]  # no location prompt with the rule table
    with pytest.raises(BackendError, match="location mapping"):
        LlmBackend(url=fake.url, mapping="cxas")


def test_prompt_texts_name_the_schema_and_categories():
    keys = ("entity", "sentence_index", "presence", "certainty", "location", "predicted_lesion_type",
            "predicted_lesion_type_sentence_index")
    assert all(f'"{key}"' in STRUCTURING_PROMPT for key in keys) and "seven keys" in STRUCTURING_PROMPT
    assert all(name in STRUCTURING_PROMPT for name in LESION_TYPES)
    assert len(COARSE_CATEGORIES) == 17 and all(f"- {name}\n" in LOCATION_STEP1_PROMPT for name in COARSE_CATEGORIES)
    assert "list of 17 categories" in LOCATION_STEP1_PROMPT and "list of 15 categories" in LOCATION_STEP2_PROMPT
    assert all(f"- {name}\n" in LOCATION_STEP2_PROMPT for name in LUNG_LABELS)


def test_retry_with_the_parse_error(tmp_path):
    answers = iter(["I think there is an opacity.", json.dumps(STRUCTURED[1:2])])

    def answer(body):
        return next(answers) if body["messages"][0]["content"] == STRUCTURING_PROMPT else good_answer(body)

    fake = FakeChatServer(answer)
    try:
        backend = LlmBackend(url=fake.url, cache_dir=tmp_path)
        report = structure_report(REPORT, backend=backend)
    finally:
        fake.close()
    assert [f.entity for f in report.findings] == ["pleural effusion"]
    retry = fake.requests[1]["messages"]
    assert retry[2] == {"role": "assistant", "content": "I think there is an opacity."}
    assert retry[3]["role"] == "user" and "could not be parsed: no JSON array or object" in retry[3]["content"]
    assert backend.calls == 2 + 1  # structuring and its retry, then step 1 for the effusion


@pytest.mark.parametrize("bad", [
    "no json here",
    json.dumps([{"entity": "opacity", "sentence_index": 9, "presence": "positive", "certainty": "definitive"}]),
    json.dumps([{"entity": "opacity", "sentence_index": 1, "presence": "maybe", "certainty": "definitive"}]),
])
def test_garbage_twice_is_recorded_unparseable_not_guessed(tmp_path, bad):
    fake = FakeChatServer(lambda body: bad)
    try:
        backend = LlmBackend(url=fake.url, cache_dir=tmp_path / "cache")
        with pytest.raises(ReportError, match="LLM answer unparseable after one retry"):
            structure_report(REPORT, backend=backend)
    finally:
        fake.close()
    assert len(fake.requests) == 2
    assert not list((tmp_path / "cache").glob("*.json")) if (tmp_path / "cache").exists() else True


def test_cache_hit_costs_no_call(server, tmp_path):
    first = LlmBackend(url=server.url, cache_dir=tmp_path)
    expected = structure_report(REPORT, backend=first)
    sent = len(server.requests)
    assert sent == 5 and len(list(tmp_path.glob("*.json"))) == 5
    again = LlmBackend(url=server.url, cache_dir=tmp_path)
    assert structure_report(REPORT, backend=again) == expected
    assert len(server.requests) == sent and again.calls == 0
    other_model = LlmBackend(url=server.url, model_name="medgemma", cache_dir=tmp_path)
    structure_report(REPORT, backend=other_model)
    assert other_model.calls == 5  # the key includes the model


@pytest.mark.parametrize("url", ["http://192.168.1.20:8000", "https://api.example.org/v1", "http://10.0.0.1"])
def test_non_loopback_url_refused_without_opt_in(url):
    with pytest.raises(BackendError, match="PhysioNet credentialed data use agreement"):
        LlmBackend(url=url)
    assert LlmBackend(url=url, allow_remote=True).transport.url.endswith("/chat/completions")


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:8000", True), ("http://127.5.0.1", True), ("http://localhost:8000/v1", True),
    ("http://[::1]:8000", True), ("http://localhost.example.org", False), ("http://8.8.8.8", False),
])
def test_is_loopback_url(url, loopback):
    assert is_loopback_url(url) is loopback


@pytest.mark.parametrize(("url", "endpoint"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1/chat/completions"),
    ("http://127.0.0.1:8000/v1/chat/completions", "http://127.0.0.1:8000/v1/chat/completions"),
])
def test_chat_completions_url(url, endpoint):
    assert chat_completions_url(url) == endpoint


def test_server_down_timeout_and_http_error_are_transient_errors():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(TransientError, match="unreachable"):
        structure_report(REPORT, backend=LlmBackend(url=f"http://127.0.0.1:{closed_port}", timeout=2))
    slow = FakeChatServer(lambda body: (time.sleep(1.5), good_answer(body))[1])
    failing = FakeChatServer(lambda body: (500, "boom"))
    try:
        with pytest.raises(TransientError, match="timed out"):
            structure_report(REPORT, backend=LlmBackend(url=slow.url, timeout=0.3))
        with pytest.raises(TransientError, match="HTTP 500"):
            structure_report(REPORT, backend=LlmBackend(url=failing.url))
    finally:
        slow.close()
        failing.close()


@pytest.mark.parametrize(("answer", "error"), [
    ('{"findings": []}', None),
    ('Sure! [{"entity": "edema", "sentence_index": "2", "presence": "Positive", "certainty": "tentative",'
     ' "location": "none", "predicted_lesion_type": null}] Hope this helps.', None),
    ('[{"sentence_index": 1, "presence": "positive", "certainty": "definitive"}]', "'entity' is missing"),
    ('[{"entity": "x", "sentence_index": 1.5, "presence": "positive", "certainty": "definitive"}]', "integer"),
    ('[{"entity": "x", "sentence_index": 1, "presence": "positive", "certainty": "sure"}]', "'certainty'"),
    ('[{"entity": "x", "sentence_index": 1, "presence": "positive", "certainty": "definitive",'
     ' "predicted_lesion_type": "tumor"}]', "'predicted_lesion_type'"),
    ('[{"entity": "x", "sentence_index": 1', "unterminated|invalid JSON"),
    ('"just a string"', "no JSON array"),
])
def test_structuring_schema(answer, error):
    if error is None:
        parsed = parse_structuring(answer, 3)
        assert all(item["presence"] in ("positive", "negative") for item in parsed)
        if parsed:
            assert parsed[0]["sentence_index"] == 2 and parsed[0]["location"] is None
    else:
        with pytest.raises(ValueError, match=error):
            parse_structuring(answer, 3)


def test_category_schema():
    assert parse_categories('["Lung", "heart"]', COARSE_CATEGORIES) == ("lung", "heart")
    assert parse_categories('{"categories": ["right lung base"]}', LUNG_LABELS) == ("right lung base",)
    with pytest.raises(ValueError, match="unknown categories"):
        parse_categories('["right lower zone"]', LUNG_LABELS)


def test_cli_llm_batch_goes_on_after_a_bad_answer(tmp_path, capsys):
    good, bad = tmp_path / "s50000001.txt", tmp_path / "s50000002.txt"
    good.write_text(REPORT)
    bad.write_text(REPORT.replace("The heart is enlarged.", "Odd."))

    def answer(body):
        if "Odd." in body["messages"][-1]["content"] or "Odd." in body["messages"][1]["content"]:
            return "garbage"
        return good_answer(body)

    fake = FakeChatServer(answer)
    try:
        code = cli.main(["structure-report", "--backend", "llm", "--llm-url", fake.url, "--llm-cache",
                         str(tmp_path / "cache"), str(good), str(bad), str(good)])
    finally:
        fake.close()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and [line["file"] for line in lines] == [str(good), str(bad), str(good)]
    assert lines[0]["findings"][0]["locations"] == ["lung lower lobe right"] and lines[0] == lines[2]
    assert "unparseable" in lines[1]["error"]
    assert len(fake.requests) == 5 + 2  # first report, then the bad one and its retry; the repeat is cached


# ------------------------------------------------------------------------------ the paper's rules (Fig. 9 / 10)

RULE_PHRASES = {
    STRUCTURING_PROMPT: {
        "entity/location split": ['"hilar adenopathy" becomes entity "adenopathy" with location "hilar"',
                                  '"retrocardiac opacity" becomes entity "opacity"', "general anatomical descriptor",
                                  "Split a word off only when", "never repeat the same anatomical word"],
        "presence positive": ["improved", "stable", "worsening", '"no change in"', "still present"],
        "presence negative": ["specific, named", "absent or resolved"],
        "no record for general words": ['"clear"', '"unremarkable"', '"normal"', '"within normal limits"',
                                        "make no object"],
        "certainty": ['"definitive"', '"tentative"', "possibility", "suggestion", '"cannot exclude"',
                      "no definitive conclusion"],
        "all locations": ["all the places", "several places all go in", "Every location of an entity"],
        "predicted type": ["non-specific finding", "represent", "reflect"],
        "seventh field": ['"predicted_lesion_type_sentence_index"', "different sentence",
                          "Left basal opacity. 2. This likely represents atelectasis.",
                          "null when predicted_lesion_type is null"],
        "no devices": ["never make an object for a medical device", "tubes", "lines", "pacemakers"],
        "one presence and certainty": ["Exactly one presence and one certainty per entity"],
        "none when absent": ["Use null for a location or a predicted lesion type", "Answer [] if the section"],
    },
    LOCATION_STEP1_PROMPT: {
        "entity and location given": ['("Entity")', '("Location")', f'"{NO_LOCATION}"', "from the entity alone"],
        "scope examples": ["mediastinum: esophagus, cardiomediastinum, upper mediastinum, anterior mediastinum",
                           "abdomen: stomach, small bowel, duodenum, liver, pancreas, kidney",
                           "heart: atrium, myocardium",
                           "vessels: ascending aorta, aortic arch, pulmonary artery, inferior vena cava, pulmonary "
                           "vessels, vasculature",
                           "lung: left lung, left, right, bilateral, hilar, costophrenic angle, lingular",
                           "pleura: right pleural, left pleural, pleural",
                           "lateral view location: middle mediastinum, retrocardiac space, retrosternal space"],
        "most appropriate": ["anatomically most appropriate under standard chest X-ray reading"],
        "synonyms": ["Synonyms", '"cardiac" is heart', '"pulmonary" is lung', '"vasculature" is vessels'],
        "bare side": ['A bare side, "left", "right" or "bilateral", means lung'],
        "lateral view always": ['seen mainly or only on the lateral view always goes to "lateral view location"'],
        "unrelated → none": ["unrelated to chest anatomy gets no category: answer []"],
    },
    LOCATION_STEP2_PROMPT: {
        "entity and location given": ['("Entity")', '("Location")', f'"{NO_LOCATION}"'],
        "overlap → all": ["overlaps several categories gets all of them"],
        "no broad plus parts": ["Do not list overlapping categories", "give the broader one alone"],
        "none → []": ["When no category is relevant, answer []"],
    },
}


@pytest.mark.parametrize("prompt", list(RULE_PHRASES), ids=["structuring", "step1", "step2"])
def test_prompts_carry_every_rule(prompt):
    text = " ".join(prompt.split())
    missing = {rule: [phrase for phrase in phrases if phrase not in text]
               for rule, phrases in RULE_PHRASES[prompt].items()}
    assert not {rule: phrases for rule, phrases in missing.items() if phrases}


def test_step1_prompt_lists_the_17_categories_once_in_order():
    listed = [line[2:] for line in LOCATION_STEP1_PROMPT.splitlines() if line.startswith("- ") and ":" not in line
              and not line.startswith(("- Choose", "- Synonyms", "- A ", "- When"))]
    assert tuple(listed) == COARSE_CATEGORIES and len(listed) == 17
    assert "reconstruction" not in llm_module.__doc__ and "Fig. 9" in llm_module.__doc__


def _backend_with(answer, **options):
    transport = ScriptedTransport(answer)
    return LlmBackend(transport=transport, **options), transport


def test_entity_is_sent_to_both_mapping_steps_and_keys_the_cache(tmp_path):
    structured = [
        {"entity": "opacity", "sentence_index": 1, "presence": "positive", "certainty": "definitive",
         "location": "left base", "predicted_lesion_type": None},
        {"entity": "atelectasis", "sentence_index": 2, "presence": "positive", "certainty": "definitive",
         "location": "left base", "predicted_lesion_type": None},
    ]
    step1 = {("opacity", "left base"): ["lung"], ("atelectasis", "left base"): ["lung"]}
    step2 = {("opacity", "left base"): ["left lung base"], ("atelectasis", "left base"): ["left lung base"]}
    backend, transport = _backend_with(lambda body: good_answer(body, structured, step1, step2), cache_dir=tmp_path)
    findings = backend.structure(Section("findings", "Left basal opacity. Left basal atelectasis."))
    assert [f.locations for f in findings] == [("left lung base",)] * 2
    mapping = [(messages[0]["content"], messages[1]["content"]) for messages in transport.received[1:]]
    assert mapping == [(LOCATION_STEP1_PROMPT, mapping_text("opacity", "left base")),
                       (LOCATION_STEP2_PROMPT, mapping_text("opacity", "left base")),
                       (LOCATION_STEP1_PROMPT, mapping_text("atelectasis", "left base")),
                       (LOCATION_STEP2_PROMPT, mapping_text("atelectasis", "left base"))]
    assert mapping_text("opacity", "left base") == "Entity: opacity\nLocation: left base"
    assert len(list(tmp_path.glob("*.json"))) == 5  # the same term with another entity is another cache entry


def test_missing_location_is_mapped_from_the_entity():
    structured = [{"entity": "pneumonia", "sentence_index": 1, "presence": "positive", "certainty": "tentative",
                   "location": None, "predicted_lesion_type": None}]
    step1 = {("pneumonia", None): ["lung"]}
    step2 = {("pneumonia", None): ["right lung", "left lung"]}
    backend, transport = _backend_with(lambda body: good_answer(body, structured, step1, step2))
    (finding,) = backend.structure(Section("impression", "Possible pneumonia."))
    assert transport.users()[1:] == [f"Entity: pneumonia\nLocation: {NO_LOCATION}"] * 2
    assert NO_LOCATION == "no specific location information"
    assert (finding.location, finding.locations, finding.location_source) == (
        None, ("right lung", "left lung"), "entity")
    # the rule table has no entity mapping: a finding without a location stays unmapped there
    rules, rules_transport = _backend_with(lambda body: good_answer(body, structured, step1, step2), mapping="rules")
    (unmapped,) = rules.structure(Section("impression", "Possible pneumonia."))
    assert (unmapped.locations, unmapped.location_source) == ((), None)
    assert rules_transport.systems() == [STRUCTURING_PROMPT]


@pytest.mark.parametrize(("location", "step1", "step2_asked", "labels"), [
    ("retrocardiac", ["lateral view location"], False, ()),
    ("retrocardiac", ["lung", "lateral view location"], False, ()),  # the guard: no lung labels all the same
    ("retrosternal space", ["lateral view location", "lung"], False, ()),
    ("left lower lobe", ["lung", "lateral view location"], True, ("lung lower lobe left",)),  # not a lateral place
    ("left lower lobe", ["lung"], True, ("lung lower lobe left",)),
])
def test_lateral_view_locations_never_get_lung_labels(location, step1, step2_asked, labels):
    structured = [{"entity": "opacity", "sentence_index": 1, "presence": "positive", "certainty": "definitive",
                   "location": location, "predicted_lesion_type": None}]
    backend, transport = _backend_with(lambda body: good_answer(
        body, structured, {("opacity", location): step1}, {("opacity", location): ["lung lower lobe left"]}))
    (finding,) = backend.structure(Section("findings", f"Opacity, {location}."))
    assert (LOCATION_STEP2_PROMPT in transport.systems()) is step2_asked
    assert finding.locations == labels and finding.location_source == ("report" if labels else None)


def test_lateral_view_guard_applies_to_the_entity_when_no_location():
    structured = [{"entity": "retrocardiac opacity", "sentence_index": 1, "presence": "positive",
                   "certainty": "definitive", "location": None, "predicted_lesion_type": None}]
    backend, transport = _backend_with(lambda body: good_answer(
        body, structured, {("retrocardiac opacity", None): ["lung", "lateral view location"]}, {}))
    (finding,) = backend.structure(Section("findings", "Retrocardiac opacity."))
    assert finding.locations == () and LOCATION_STEP2_PROMPT not in transport.systems()


def _item(predicted, index=..., sentence=1):
    item = {"entity": "opacity", "sentence_index": sentence, "presence": "positive", "certainty": "tentative",
            "location": "left base", "predicted_lesion_type": predicted}
    if index is not ...:
        item["predicted_lesion_type_sentence_index"] = index
    return json.dumps([item])


@pytest.mark.parametrize(("answer", "expected"), [
    (_item("atelectasis", 2), 2),
    (_item("atelectasis", "2"), 2),
    (_item("atelectasis", 1), 1),
    (_item("atelectasis"), 1),  # missing with a predicted type → the finding's own sentence
    (_item("atelectasis", None, sentence=2), 2),
    (_item(None, None), None),
    (_item(None), None),
    (_item(None, "null"), None),
])
def test_seventh_field_parsing(answer, expected):
    (parsed,) = parse_structuring(answer, 3)
    assert parsed["predicted_lesion_sentence_index"] == expected
    assert "predicted_lesion_type_sentence_index" not in parsed


@pytest.mark.parametrize(("answer", "error"), [
    (_item("atelectasis", 4), "outside 1..3"),
    (_item("atelectasis", 0), "outside 1..3"),
    (_item("atelectasis", 1.5), "must be an integer"),
    (_item("atelectasis", True), "must be an integer"),
    (_item("atelectasis", "two"), "must be an integer"),
    (_item(None, 2), "must be null when 'predicted_lesion_type' is null"),
])
def test_seventh_field_invalid_values(answer, error):
    with pytest.raises(ValueError, match=error):
        parse_structuring(answer, 3)


def test_seventh_field_invalid_after_retry_is_a_report_error(tmp_path):
    backend, transport = _backend_with(lambda body: _item(None, 2), cache_dir=tmp_path)
    with pytest.raises(ReportError, match="unparseable after one retry.*must be null"):
        backend.structure(Section("findings", "Left basal opacity. This likely represents atelectasis."))
    assert len(transport.received) == 2 and not list(tmp_path.glob("*.json"))
    assert "predicted_lesion_type_sentence_index" in transport.received[1][-1]["content"]


def test_seventh_field_reaches_the_finding_and_the_cache_is_hit_on_a_rerun(tmp_path):
    text = "Left basal opacity. This likely represents atelectasis."
    answer = lambda body: good_answer(  # noqa: E731
        body, json.loads(_item("atelectasis", 2)), {("opacity", "left base"): ["lung"]},
        {("opacity", "left base"): ["left lung base"]})
    backend, transport = _backend_with(answer, cache_dir=tmp_path)
    (finding,) = backend.structure(Section("findings", text))
    assert (finding.sentence_index, finding.predicted_lesion_type, finding.predicted_lesion_sentence_index,
            finding.lesion_type, finding.locations, finding.location_source) == (
        1, "atelectasis", 2, "atelectasis", ("left lung base",), "report")
    again, again_transport = _backend_with(answer, cache_dir=tmp_path)
    assert again.structure(Section("findings", text)) == (finding,)
    assert again.calls == 0 and again_transport.received == []


# ------------------------------------------------------------------------------------ transformers transport


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a byte-level BPE tokenizer trained here (offline) and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_llm")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([STRUCTURING_PROMPT, LOCATION_STEP1_PROMPT, REPORT], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>")
    fast.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                          "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_transformers_transport_is_greedy(tiny_llm):
    transport = TransformersTransport(tiny_llm, max_new_tokens=6, device="cpu")
    messages = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "1. No effusion."}]
    first = transport.complete(messages)
    assert isinstance(first, str) and first == transport.complete(messages)
    assert transport.model_id == str(tiny_llm.resolve())


def test_random_model_garbage_is_unparseable_not_a_crash(tiny_llm, tmp_path):
    backend = get_backend("llm", model_path=str(tiny_llm), max_new_tokens=6, cache_dir=tmp_path)
    with pytest.raises(ReportError, match="unparseable after one retry"):
        structure_report(REPORT, backend=backend)
    assert backend.calls == 2 and not list(tmp_path.glob("*.json"))


def test_missing_model_folder_and_wrong_options(tmp_path):
    with pytest.raises(BackendError, match="not found"):
        LlmBackend(model_path=tmp_path / "nope")
    with pytest.raises(BackendError, match="cannot load LLM"):
        LlmBackend(model_path=tmp_path)
    with pytest.raises(BackendError, match="exactly one"):
        LlmBackend()
