"""Shared fixtures: the CLI runner, the real models, a llama.cpp server, a deterministic embedder, random soups
adapters."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from personalm.errors import PersonalmError


@pytest.fixture(scope="session")
def llamacpp_server() -> Iterator[str]:
    """A real OpenAI-compatible server (llama-cpp-python) on the embedded GGUF; yields its /v1 URL."""
    if any(importlib.util.find_spec(name) is None for name in ("llama_cpp", "uvicorn", "fastapi")):
        pytest.skip("llama-cpp-python[server] is not installed (pip install -e '.[llamacpp]')")
    from personalm.models.embedded import gguf_path
    from personalm.serve.background import free_port
    from personalm.studies.bench.server_process import ServerProcess

    try:
        gguf = gguf_path()
    except PersonalmError as exc:
        pytest.skip(str(exc))
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", "2",
        "--chat_format", "chatml",
        "--verbose", "false",
    ]  # fmt: skip
    with ServerProcess(command, port, "llama.cpp server", health="/v1/models") as url:
        yield f"{url}/v1"


@pytest.fixture(scope="session")
def embedded_model():
    """The real embedded default (SmolLM2-135M-Instruct), loaded once for the whole session."""
    from personalm.models.embedded import ensure_converted
    from personalm.models.local import LocalModel

    return LocalModel(ensure_converted(), name="smollm2-135m-instruct")


@pytest.fixture(scope="session")
def embedder():
    from personalm.models.embedder import Embedder

    return Embedder()


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"


class Cli:
    """The `personalm` CLI as a user meets it: exit code, stdout and stderr.

    `run` starts it in a subprocess (it inherits PYTHONPATH, so it runs the checkout under test);
    `invoke` calls `main` in this process, where a test's monkeypatches apply."""

    command = (sys.executable, "-c", "from personalm.cli.app import main; main()")
    timeout_s = 600  # generous: the machine has 2 cores that other test runs may share

    def env(self, **overrides: str | None) -> dict[str, str]:
        """This process's environment, offline, with `overrides` set (None removes a variable)."""
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        stdin: bytes | str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> CliResult:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        proc = subprocess.run(
            [*self.command, *args],
            cwd=cwd,
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            env=env or self.env(),
            timeout=timeout or self.timeout_s,
        )
        return CliResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def json(self, *args: str, cwd: Path | None = None, timeout: float | None = None) -> dict:
        """The JSON a `--json` command prints last, after checking it exited 0 (else its stderr tail)."""
        done = self.run(*args, cwd=cwd, timeout=timeout)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def invoke(self, *args: str, stdin: str = "") -> CliResult:
        from personalm.cli.app import main

        out, err = io.StringIO(), io.StringIO()
        code = 0
        saved_stdin, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                try:
                    main(list(args))
                except SystemExit as done:
                    code = done.code if isinstance(done.code, int) else int(done.code is not None)
        finally:
            sys.stdin = saved_stdin
        return CliResult(code, out.getvalue(), err.getvalue())

    @staticmethod
    def one_error_line(result: CliResult) -> str:
        """The single `error: ...` line of a user error (exit 2, no traceback), or an assertion saying what is wrong."""
        assert result.returncode == 2, str(result)
        assert "Traceback" not in result.stdout + result.stderr, str(result)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), str(result)
        return lines[0]


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


class WordHashEmbedder:
    """Bag of hashed words, L2-normalized: texts sharing words are close. Deterministic and
    instant, for tests of the logic around embeddings (the real MiniLM is tested elsewhere)."""

    name = "word-hash-512"

    def __init__(self, dimension: int = 512) -> None:
        self.dimension = dimension

    def embed(self, texts: Sequence[str], progress=None) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimension] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if progress:
            progress(len(texts))
        return out / np.where(norms == 0, 1, norms)


@pytest.fixture(scope="session")
def word_hash_embedder() -> Callable[..., WordHashEmbedder]:
    """Makes a `WordHashEmbedder` (512 dimensions unless told)."""
    return WordHashEmbedder


class KeywordCritic:
    """A stand-in preference critic for logic tests: an answer scores 1.0 when it shares a word of
    four or more letters with every stated preference, else 0.0. Records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str, list[str]]] = []
        self.meta = {"topics": {"train": [], "validation": [], "test": []}, "base": "keyword", "settings": {}}

    def score(self, preferences: Sequence[str], question: str, answers: Sequence[str]) -> np.ndarray:
        self.calls.append((list(preferences), question, list(answers)))
        wanted = [set(re.findall(r"[a-z]{4,}", p.lower())) for p in preferences]
        words = [set(re.findall(r"[a-z]{4,}", a.lower())) for a in answers]
        return np.array([float(all(w & said for w in wanted)) for said in words])


@pytest.fixture
def keyword_critic() -> KeywordCritic:
    return KeywordCritic()


@pytest.fixture(scope="session")
def keyword_critic_type() -> type[KeywordCritic]:
    """The class itself, for module-scoped servers."""
    return KeywordCritic


def make_tiny_base() -> torch.nn.Module:
    """A two-layer random Llama: every linear kind of the real model, in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def save_peft_adapter(base, out: Path, seed: int, rank: int, alpha: int, **options) -> Path:
    """An adapter on every linear layer of `base`, saved by PEFT itself, with random A and B."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear", init_lora_weights=False, **options)
    model = get_peft_model(copy.deepcopy(base), config)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_base() -> Callable[[], torch.nn.Module]:
    """Makes a fresh tiny random Llama (seeded, so every call gives the same weights)."""
    return make_tiny_base


@pytest.fixture(scope="session")
def peft_adapter() -> Callable[..., Path]:
    """Saves a random LoRA adapter made by PEFT: (base, out, seed, rank, alpha, **LoraConfig options)."""
    return save_peft_adapter


@pytest.fixture(scope="module")
def peft_soup(tmp_path_factory, tiny_base, peft_adapter) -> tuple[torch.nn.Module, list[Path]]:
    """A tiny base and three PEFT adapters on it (ranks 4, 2 with rsLoRA, 4): (base, their folders)."""
    root = tmp_path_factory.mktemp("peft-soup")
    base = tiny_base()
    specs = [(1, 4, 8, {}), (2, 2, 16, {"use_rslora": True}), (3, 4, 4, {})]
    return base, [peft_adapter(base, root / f"adapter{seed}", seed, rank, alpha, **o) for seed, rank, alpha, o in specs]


SOUP_TARGETS = ("q_proj", "v_proj")


def random_adapter(model, out: Path, seed: int, rank: int = 4, scale: float = 0.2) -> Path:
    """A PEFT LoRA adapter with random A and B (B is zero in a fresh adapter, which would change nothing)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in SOUP_TARGETS:
            rows, cols = module.weight.shape
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, cols, generator=generator) / cols**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(rows, rank, generator=generator) * scale
    out.mkdir(parents=True, exist_ok=True)
    LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(SOUP_TARGETS), task_type="CAUSAL_LM").save_pretrained(
        out
    )
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return out


def build_soups_folder(model, root: Path, poles: list[str], pmorl: bool = True) -> Path:
    """One adapter per pole (and `pmorl`), each from its own seed."""
    names = [*poles, "pmorl"] if pmorl else poles
    for seed, name in enumerate(names, start=1):
        random_adapter(model, root / name, seed)
    return root


@pytest.fixture(scope="session")
def soups_folder() -> Callable[..., Path]:
    """Writes a soups folder laid out as `personalm soups train` writes it: `soups_folder(model, root, poles)`."""
    return build_soups_folder
