"""``import fila_train`` is cheap, and still makes transformers' Auto classes know fila folders."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Three orders in one fresh interpreter each: fila_train alone; fila_train then transformers; one of our
# modules that imports transformers while it loads, then the Auto classes.
CHECK = """import sys
{imports}
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
config = CONFIG_MAPPING["fila"]
print(config.__name__, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[config].__name__, PROCESSOR_MAPPING[config].__name__,
      IMAGE_PROCESSOR_MAPPING[config]["pil"].__name__)
"""


def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_importing_the_package_imports_neither_torch_nor_transformers():
    assert run("import sys, fila_train, fila_train.cli, fila_train.training.preflight\n"
               "print([m for m in ('torch', 'transformers') if m in sys.modules])").strip() == "[]"


def test_auto_classes_know_fila_whatever_the_import_order():
    expected = "FilaConfig FilaForConditionalGeneration FilaProcessor FilaImageProcessor"
    code = "\n".join(CHECK.format(imports=imports) for imports in (
        "import fila_train",
        "import fila_train.model.configuration",  # imports transformers while the model package loads
    ))
    # Separate interpreters: the second must not profit from the first one's registration.
    for part in code.split("import sys\n")[1:]:
        assert run("import sys\n" + part).strip() == expected
