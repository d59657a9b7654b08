"""Reading where training never happens: an .onnx export read without PyTorch, every module importable
without Unix-only modules, and the install without PyTorch (CI builds one)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from captcha_recognize.runtime import child_env
from conftest import ROOT

WITHOUT = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None  # import fails as if not installed\n"


def run_without(names: tuple[str, ...], code: str, *args: str) -> subprocess.CompletedProcess:
    """Python ``code`` in a fresh process in which the modules ``names`` cannot be imported."""
    program = WITHOUT.format(names=list(names)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", program, *args], cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, calibrated_ckpt):
    """The calibrated CNN as an .onnx export."""
    pytest.importorskip("onnx")
    from captcha_recognize.reading.export import export_onnx
    return export_onnx(calibrated_ckpt, tmp_path_factory.mktemp("onnx") / "m.onnx")


@pytest.mark.slow
def test_an_onnx_export_reads_without_pytorch_alike(exported):
    from captcha_recognize import CaptchaRecognizer
    files = sorted(str(p) for p in (ROOT / "new_images").iterdir())[:24]
    with_torch = CaptchaRecognizer(exported).predict_batch_details(files)
    code = """
        import json
        from captcha_recognize import CaptchaRecognizer
        files = json.loads(sys.argv[2])
        readings = CaptchaRecognizer(sys.argv[1]).predict_batch_details(files)
        print(json.dumps([[p.text, p.confidence, p.accept] for p in readings]))
        print("torch loaded:", "torch" in sys.modules and sys.modules["torch"] is not None)
    """
    r = run_without(("torch", "onnx"), code, str(exported), json.dumps(files))
    assert r.returncode == 0, r.stderr[-2000:]
    readings, loaded = r.stdout.strip().splitlines()
    assert json.loads(readings) == [[p.text, p.confidence, p.accept] for p in with_torch]  # the same, exactly
    assert loaded == "torch loaded: False"
    cli = run_without(("torch",), "from captcha_recognize.cli.launch import predict\nsys.exit(predict())",
                      str(ROOT / "new_images"), "--checkpoint", str(exported), "--json", "-")
    assert cli.returncode == 0, cli.stderr[-2000:]
    report = json.loads(cli.stdout)
    assert report["summary"]["n"] == 100 and report["summary"]["sequence_accuracy"] > 0.5


@pytest.mark.slow
def test_without_pytorch_a_checkpoint_or_a_training_tool_is_one_line_naming_what_to_install():
    r = run_without(("torch",), "from captcha_recognize.cli.launch import predict\nsys.exit(predict())",
                    str(ROOT / "new_images"), "--checkpoint", str(ROOT / "captcha_recognize.pth"))
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"error: {ROOT / 'captcha_recognize.pth'} is a PyTorch checkpoint, and reading it needs torch: pip install "
        "torch, or read an .onnx export of it (torch_model_export.py)"]
    r = run_without(("torch",), "from captcha_recognize.cli.launch import train\nsys.exit(train())", "--help")
    assert r.returncode == 1 and r.stderr.startswith("error: train needs torch") and "Traceback" not in r.stderr


@pytest.mark.slow
def test_every_module_imports_without_unix_only_modules(tmp_path):
    code = """
        import importlib, pathlib
        root = pathlib.Path("captcha_recognize")
        for path in sorted(root.rglob("*.py")):
            importlib.import_module(".".join(path.with_suffix("").parts).removesuffix(".__init__"))
        from captcha_recognize.errors import OutputBusy
        from captcha_recognize.files import output_lock
        with output_lock(sys.argv[1]):
            try:
                with output_lock(sys.argv[1]):
                    print("not refused")
            except OutputBusy as e:
                print("refused:", e)
    """
    r = run_without(("fcntl", "termios", "pwd", "grp", "resource"), code, str(tmp_path / "m.pth"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("refused: another training (pid ") and "is writing" in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CAPTCHA_LIGHT_PYTHON"), reason="CI sets CAPTCHA_LIGHT_PYTHON")
def test_the_light_install_has_no_pytorch_and_reads_an_export(exported):
    python = os.environ["CAPTCHA_LIGHT_PYTHON"]  # a fresh virtual environment: pip install ".[onnx]"
    r = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr
    r = subprocess.run([os.path.join(os.path.dirname(python), "captcha-predict"), str(ROOT / "new_images"),
                        "--checkpoint", str(exported), "--json", "-"], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["summary"]["n"] == 100
