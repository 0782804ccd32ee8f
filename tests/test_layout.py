"""The house rules of the layout, checked by walking the import statements of every module.

The library never reaches up into the studies, the benchmarks, the demo or the CLI, and the adapter
file format is known in one place only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import personalm

ROOT = Path(personalm.__file__).resolve().parent
LIBRARY = ("models", "adapters", "eval", "executors", "personas", "synth", "train", "tone", "perce", "soups", "avatars", "serve", "critic")
ABOVE = ("personalm.studies", "personalm.cli", "personalm.demo")


def imported_modules(path: Path, src: Path = ROOT.parent) -> set[str]:
    """Absolute names of the personalm modules a file under `src` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(src).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("personalm")}


def library_files() -> list[Path]:
    return [file for package in LIBRARY for file in sorted((ROOT / package).rglob("*.py"))]


def test_the_library_never_imports_studies_benchmarks_demo_or_cli():
    assert library_files(), "no library modules found"
    offenders = [
        f"{file.relative_to(ROOT)} imports {name}"
        for file in library_files()
        for name in sorted(imported_modules(file))
        if name.startswith(ABOVE) or name in {"personalm.studies", "personalm.cli", "personalm.demo"}
    ]
    assert not offenders, "\n".join(offenders)


def test_the_import_walk_sees_relative_and_absolute_imports(tmp_path):
    probe = tmp_path / "personalm" / "serve" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from ..studies import bench\nfrom . import app\nimport personalm.cli.app\n", encoding="utf-8")
    found = imported_modules(probe, tmp_path)
    assert {"personalm.studies", "personalm.studies.bench", "personalm.serve.app", "personalm.cli.app"} <= found


def test_the_train_package_does_not_import_perce():
    offenders = [
        f"{file.relative_to(ROOT)} imports {name}"
        for file in sorted((ROOT / "train").rglob("*.py"))
        for name in imported_modules(file)
        if name.startswith("personalm.perce")
    ]
    assert not offenders, "\n".join(offenders)


def test_only_the_adapter_layer_names_the_adapter_config_file():
    offenders = [
        str(file.relative_to(ROOT))
        for file in sorted(ROOT.rglob("*.py"))
        if "adapter_config.json" in file.read_text(encoding="utf-8") and file.relative_to(ROOT).parts[0] != "adapters"
    ]
    assert not offenders, offenders


def definitions(name: str) -> list[str]:
    """Where a top-level function, class or constant called `name` is defined in the package."""
    found = []
    for file in sorted(ROOT.rglob("*.py")):
        for node in ast.parse(file.read_text(encoding="utf-8")).body:
            defined = (
                [node.name]
                if isinstance(node, ast.FunctionDef | ast.ClassDef)
                else [t.id for t in node.targets if isinstance(t, ast.Name)]
                if isinstance(node, ast.Assign)
                else []
            )
            if name in defined:
                found.append(str(file.relative_to(ROOT)))
    return found


def test_one_prefeval_loader_one_corpus_reader_one_provenance_module():
    assert definitions("load_prefeval") == ["eval/prefeval.py"]
    assert definitions("read_texts") == ["corpus.py"]
    assert definitions("TEXT_SUFFIXES") == ["corpus.py"]
    assert definitions("versions") == definitions("machine") == ["provenance.py"]


def test_one_html_report_writer():
    writers = [str(f.relative_to(ROOT)) for f in sorted(ROOT.rglob("*.py")) if "<html" in f.read_text(encoding="utf-8")]
    assert writers == ["report.py"]
