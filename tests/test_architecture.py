"""The import rules of docs/architecture.md, enforced on the code: layers, no cycles, the model half standing alone.

Every import statement counts, including those inside functions (a lazy import is still a dependency). A module
that no layer claims fails the test: a new file must be given its room in the table (and in docs/architecture.md).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mimic_ils", "rosalia_hf")

# Bottom to top. A module may import its own layer and the layers below it, never one above. Patterns are module
# names; "x.*" claims x's package face and every module under it.
MIMIC_LAYERS = (
    ("model half", ("rosalia_hf.*",)),
    ("vocabulary and files", ("mimic_ils", "mimic_ils.schema", "mimic_ils.files", "mimic_ils.rows",
                              "mimic_ils.features", "mimic_ils.synth_phrases", "mimic_ils.progress")),
    ("inputs", ("mimic_ils.dicom", "mimic_ils.ingest", "mimic_ils.scan", "mimic_ils.phantom_render",
                "mimic_ils.synth", "mimic_ils.ms_cxr")),
    ("report stage", ("mimic_ils.report.*",)),
    ("vision stage", ("mimic_ils.vision.*",)),
    ("grounding", ("mimic_ils.grounding.*",)),
    ("pairs", ("mimic_ils.pairs", "mimic_ils.reasoning", "mimic_ils.conversations")),
    ("orchestration", ("mimic_ils.orchestration.*", "mimic_ils.release", "mimic_ils.stats", "mimic_ils.builder",
                       "mimic_ils.validation")),
    ("commands", ("mimic_ils.commands.*", "mimic_ils.cli", "mimic_ils.__main__")),
)
ROSALIA_LAYERS = (
    ("grammar and plumbing", ("rosalia_hf.table2", "rosalia_hf.errors", "rosalia_hf.offline",
                              "rosalia_hf.ils_scores", "rosalia_hf.mask_geometry", "rosalia_hf.configuration_rosalia",
                              "rosalia_hf.tokenization_lisa", "rosalia_hf.losses", "rosalia_hf.sampler",
                              "rosalia_hf.dicom", "rosalia_hf.images", "rosalia_hf.overlay", "rosalia_hf.progress",
                              "rosalia_hf.console", "rosalia_hf.splits", "rosalia_hf.files")),
    ("model", ("rosalia_hf.processing_rosalia", "rosalia_hf.modeling_rosalia", "rosalia_hf.predictor")),
    ("training and evaluation", ("rosalia_hf.data", "rosalia_hf.trainer_config", "rosalia_hf.trainer",
                                 "rosalia_hf.evaluation", "rosalia_hf.evaluation_report",
                                 "rosalia_hf.training_report", "rosalia_hf.testing")),
    ("tools", ("rosalia_hf.convert_sam", "rosalia_hf.convert_lisa", "rosalia_hf.evaluation_cli",
               "rosalia_hf.cli", "rosalia_hf.app", "rosalia_hf.__main__")),
    ("package face", ("rosalia_hf",)),
)


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in (``a.b.c`` -> ``a.b`` when c is a function), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports, anywhere in its file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.update(_resolve(f"{base}.{alias.name}") for alias in node.names)
    return {name for name in found if name and name != module}


def layer_of(module: str, layers) -> int | None:
    for index, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            if module == pattern.removesuffix(".*") or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return index
    return None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph[node]):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                child = stack.pop()
                on_stack.discard(child)
                component.append(child)
                if child == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


GRAPH = {module: imports_of(module) for module in MODULES}


def test_there_are_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package, layers", [("mimic_ils", MIMIC_LAYERS), ("rosalia_hf", ROSALIA_LAYERS)])
def test_every_module_has_a_layer_and_imports_only_downwards(package, layers):
    unplaced = [module for module in MODULES if module.split(".")[0] == package and layer_of(module, layers) is None]
    assert unplaced == [], "give these modules a layer in tests/test_architecture.py and docs/architecture.md"
    upward = []
    for module in (name for name in MODULES if name.split(".")[0] == package):
        for target in GRAPH[module]:
            target_layer = layer_of(target, layers)
            if target_layer is None or target_layer > layer_of(module, layers):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_the_model_half_never_imports_the_dataset_half():
    assert [f"{m} -> {t}" for m in MODULES if m.startswith("rosalia_hf") for t in GRAPH[m]
            if t.startswith("mimic_ils")] == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    assert layer_of("mimic_ils.pairs", MIMIC_LAYERS) < layer_of("mimic_ils.orchestration.pipeline", MIMIC_LAYERS)
    assert layer_of("mimic_ils.grounding.pipeline", MIMIC_LAYERS) < layer_of("mimic_ils.pairs", MIMIC_LAYERS)
    assert "mimic_ils.schema" in GRAPH["mimic_ils.pairs"]  # the graph reads `from x import y` as a dependency on x


def _documented_layers(text: str, heading: str) -> list[str]:
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return [row.split("|")[1].strip() for row in section.splitlines() if re.match(r"\|\s*\d+\s*\|", row)]


@pytest.mark.parametrize("heading, layers", [("Layers of mimic_ils", MIMIC_LAYERS),
                                             ("Layers of rosalia_hf", ROSALIA_LAYERS)])
def test_docs_list_the_same_layers(heading, layers):
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in row.split("|")[1:-1]] for row in section.splitlines()
            if re.match(r"\|\s*\d+\s*\|", row)]
    assert [row[1] for row in rows] == [name for name, _ in layers][::-1]  # the doc lists them top first
    for row, (_, patterns) in zip(rows, layers[::-1], strict=True):
        assert sorted(re.findall(r"`([^`]+)`", row[2])) == sorted(patterns)
