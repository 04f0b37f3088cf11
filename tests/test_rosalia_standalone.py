"""The model half stands alone: a lazy package face, no import of mimic_ils, the metric reached by public imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_import_rosalia_hf_loads_neither_torch_nor_transformers():
    out = _run("import sys, rosalia_hf, rosalia_hf.table2, rosalia_hf.offline, rosalia_hf.errors, "
               "rosalia_hf.evaluation_cli; "
               "print(sorted(m for m in ('torch', 'transformers', 'mimic_ils') if m in sys.modules))")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_touching_a_model_class_imports_and_registers_it():
    out = _run("import sys, rosalia_hf; cls = rosalia_hf.RosaliaForSegmentation; "
               "from transformers import AutoConfig, AutoModel, AutoProcessor; "
               "config = AutoConfig.for_model('rosalia'); "
               "print(cls.__name__, type(config).__name__, 'torch' in sys.modules, "
               "AutoModel._model_mapping[type(config)].__name__)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["RosaliaForSegmentation", "RosaliaConfig", "True", "RosaliaForSegmentation"]


def test_touching_the_config_registers_autoconfig_and_loads_only_its_module():
    out = _run("import sys, rosalia_hf; config = rosalia_hf.RosaliaConfig(); "
               "from transformers import AutoConfig; "
               "print(type(AutoConfig.for_model('rosalia')).__name__, type(config).__name__, "
               "'rosalia_hf.modeling_rosalia' in sys.modules, 'rosalia_hf.processing_rosalia' in sys.modules)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["RosaliaConfig", "RosaliaConfig", "False", "False"]


def test_touching_the_processor_registers_autoprocessor_without_the_model():
    out = _run("import sys, rosalia_hf; cls = rosalia_hf.RosaliaProcessor; "
               "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING; "
               "print(PROCESSOR_MAPPING[rosalia_hf.RosaliaConfig].__name__, "
               "'rosalia_hf.modeling_rosalia' in sys.modules)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["RosaliaProcessor", "False"]


def test_no_module_of_rosalia_hf_imports_mimic_ils():
    """Every import statement (top level or inside a function) and every ``import_module("...")`` string."""
    offending = []
    for path in sorted((ROOT / "rosalia_hf").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if not node.level else []
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "import_module", "__import__"):
                names = [arg.value for arg in node.args[:1] if isinstance(arg, ast.Constant)]
            else:
                continue
            offending += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                          if name == "mimic_ils" or str(name).startswith("mimic_ils.")]
    assert offending == []


def test_the_face_names_what_it_exports_and_refuses_the_rest():
    import rosalia_hf

    assert set(rosalia_hf.__all__) <= set(dir(rosalia_hf))
    assert rosalia_hf.RosaliaPredictor.__module__ == "rosalia_hf.predictor"
    with pytest.raises(AttributeError, match="no attribute 'RosaliaTokenizer'"):
        rosalia_hf.RosaliaTokenizer  # noqa: B018


def test_the_predictor_owns_no_weights_and_the_model_no_predict():
    from rosalia_hf.modeling_rosalia import RosaliaForSegmentation
    from rosalia_hf.predictor import RosaliaPredictor
    from rosalia_hf.processing_rosalia import RosaliaProcessor
    from rosalia_hf.testing import tiny_rosalia

    model, processor = tiny_rosalia(0)
    predictor = RosaliaPredictor(model, processor)
    assert not hasattr(RosaliaForSegmentation, "predict") and not hasattr(RosaliaForSegmentation, "postprocess_masks")
    assert hasattr(RosaliaProcessor, "post_process_masks")
    assert not isinstance(predictor, __import__("torch").nn.Module)
    assert vars(predictor).keys() == {"model", "processor"}


def test_the_metric_loads_from_its_folder_and_uses_the_public_core(tmp_path):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = ("import evaluate, sys; m = evaluate.load(sys.argv[1]); module = sys.modules[type(m).__module__]; "
            "from rosalia_hf import ils_scores; print(module.summarize is ils_scores.summarize, "
            "m.compute(predictions=[[[1, 1]]], references=[[[1, 0]]])['giou'])")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "metrics" / "ils")], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "0.5"]


def test_pairs_render_table2s_strings_and_there_is_one_copy_of_them():
    from mimic_ils import pairs
    from rosalia_hf import table2

    assert pairs.BASIC_INSTRUCTION is table2.BASIC_INSTRUCTION and pairs.join_locations is table2.join_locations
    sources = [path for path in (*ROOT.glob("mimic_ils/**/*.py"), *ROOT.glob("rosalia_hf/*.py"),
                                 *ROOT.glob("metrics/**/*.py"))
               if "It possibly reflects {lesion}." in path.read_text(encoding="utf-8")]
    assert [path.relative_to(ROOT).as_posix() for path in sources] == ["rosalia_hf/table2.py"]


def test_load_ils_metric_finds_the_checkout_folder_or_takes_a_path(tmp_path):
    import shutil

    from rosalia_hf.evaluation import METRIC_DIR, load_ils_metric

    assert METRIC_DIR == ROOT / "metrics" / "ils"
    copy = tmp_path / "elsewhere"
    shutil.copytree(METRIC_DIR, copy)
    metric = load_ils_metric(copy)
    assert metric.compute(predictions=[[[1, 1]]], references=[[[1, 0]]])["giou"] == 0.5
    with pytest.raises(FileNotFoundError, match=f"no ILS metric module at {tmp_path}"):
        load_ils_metric(tmp_path)
