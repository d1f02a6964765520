"""The code's shape: size limits, light imports, one definition of the shared constants."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "pipeline").rglob("*.py")) + [ROOT / "app.py"]


def test_no_module_over_400_lines_and_no_function_over_50():
    too_long = []
    for path in SOURCES:
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1 + len(node.decorator_list)
                if lines > 50:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, "\n".join(too_long)


def test_import_pipeline_loads_no_model_and_no_torch():
    code = ("import sys, pipeline, pipeline.config, pipeline.errors; "
            "assert 'torch' not in sys.modules, 'import pipeline imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_sample_rate_and_fps_are_defined_once():
    defined = [f"{p.relative_to(ROOT)}" for p in SOURCES for node in ast.parse(p.read_text()).body
               if isinstance(node, ast.Assign) and any(getattr(t, "id", None) in ("SAMPLE_RATE", "FPS")
                                                       for t in node.targets)]
    assert defined == ["pipeline/config.py", "pipeline/config.py"], defined
