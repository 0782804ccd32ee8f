"""Preference dimensions as configuration: each dimension has opposing poles, each pole a prompt.

The defaults are the three dimensions of Personalized Soups (Jang et al., arXiv 2310.11564).
Users add or replace dimensions with a YAML or JSON file shaped like

    dimensions:
      - name: expertise
        poles:
          elementary: "Generate a response that can be easily understood by an elementary school student."
          phd: "Generate a response that only a PhD student in that specific field could understand."

Pole keys (`expertise.elementary`) name adapters and merge weights everywhere else.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from personalm.corpus import read_text
from personalm.errors import PersonalmError

_NAME = re.compile(r"^[a-z][a-z0-9_-]*\Z")  # \Z: "$" would let a trailing newline through


@dataclass(frozen=True)
class Pole:
    dimension: str
    name: str
    prompt: str

    @property
    def key(self) -> str:
        return f"{self.dimension}.{self.name}"


@dataclass(frozen=True)
class Dimension:
    name: str
    poles: tuple[Pole, ...]

    def pole(self, name: str) -> Pole:
        for pole in self.poles:
            if pole.name == name:
                return pole
        raise PersonalmError(f"dimension '{self.name}' has no pole '{name}' (poles: {', '.join(self.pole_names)})")

    @property
    def pole_names(self) -> list[str]:
        return [p.name for p in self.poles]


DEFAULT_DIMENSIONS: dict[str, dict[str, str]] = {
    "expertise": {
        "elementary": "Generate a response that can be easily understood by an elementary school student.",
        "phd": "Generate a response that only a PhD student in that specific field could understand.",
    },
    "informativeness": {
        "concise": "Generate a response that is concise and to the point, without being verbose.",
        "informative": "Generate a response that is very informative, without missing any background information.",
    },
    "style": {
        "friendly": "Generate a response that is friendly, witty, funny, and humorous, like a close friend.",
        "unfriendly": "Generate a response in an unfriendly manner.",
    },
}


class Preferences:
    """An ordered set of dimensions; looks poles up by `dimension.pole` key."""

    def __init__(self, dimensions: list[Dimension]):
        if not dimensions:
            raise PersonalmError("no preference dimensions configured")
        self.dimensions = dimensions
        self._poles = {p.key: p for d in dimensions for p in d.poles}

    @classmethod
    def default(cls) -> Preferences:
        return cls.from_mapping(DEFAULT_DIMENSIONS, source="defaults")

    @classmethod
    def from_mapping(cls, mapping: dict[str, dict[str, str]], source: str) -> Preferences:
        dims = []
        for name, poles in mapping.items():
            dims.append(_dimension(name, poles, source))
        return cls(dims)

    @classmethod
    def load(cls, path: str | Path | None = None, *, extend: bool = True) -> Preferences:
        """The defaults, extended (or replaced, `extend=False`) by the dimensions in `path`."""
        if path is None:
            return cls.default()
        mapping = dict(DEFAULT_DIMENSIONS) if extend else {}
        mapping.update(_read_file(Path(path)))
        return cls.from_mapping(mapping, source=str(path))

    @property
    def poles(self) -> list[Pole]:
        return list(self._poles.values())

    def dimension(self, name: str) -> Dimension:
        for dim in self.dimensions:
            if dim.name == name:
                return dim
        raise PersonalmError(f"unknown preference dimension '{name}' (known: {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def pole(self, key: str) -> Pole:
        if key not in self._poles:
            raise PersonalmError(f"unknown preference '{key}' (known: {', '.join(self._poles)})")
        return self._poles[key]

    def combinations(self) -> list[tuple[Pole, ...]]:
        """Every choice of one pole per dimension (2×2×2 = 8 for the defaults)."""
        return list(itertools.product(*(d.poles for d in self.dimensions)))

    def combined_prompt(self, poles: tuple[Pole, ...] | list[Pole]) -> str:
        """The system prompt that states a combination (the prompted baseline and P-MORL)."""
        return " ".join(p.prompt for p in poles)


def combination_name(poles: tuple[Pole, ...] | list[Pole]) -> str:
    return "+".join(p.key for p in poles)


def _dimension(name: object, poles: object, source: str) -> Dimension:
    if not isinstance(name, str) or not _NAME.match(name):
        raise PersonalmError(f"dimension name {name!r} must be lower-case letters, digits, '_' or '-'", source=source)
    if not isinstance(poles, dict) or len(poles) < 2:
        raise PersonalmError(f"dimension '{name}' needs at least two poles as {{pole: prompt}}", source=source)
    out = []
    for pole, prompt in poles.items():
        if not isinstance(pole, str) or not _NAME.match(pole):
            raise PersonalmError(
                f"pole name {pole!r} of '{name}' must be lower-case letters, digits, '_' or '-'", source=source
            )
        if not isinstance(prompt, str) or not prompt.strip():
            raise PersonalmError(f"pole '{name}.{pole}' needs a non-empty preference prompt", source=source)
        out.append(Pole(name, pole, prompt.strip()))
    return Dimension(name, tuple(out))


def _read_file(path: Path) -> dict[str, dict[str, str]]:
    """Read `dimensions:` as a list of {name, poles} (or a mapping name → poles) from YAML/JSON."""
    text = read_text(path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise PersonalmError(f"invalid JSON: {err.msg}", source=str(path), line=err.lineno) from None
    except Exception as err:  # yaml.YAMLError carries a problem_mark with the line
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PersonalmError(f"invalid YAML: {getattr(err, 'problem', err)}", source=str(path), line=line) from None
    dims = data.get("dimensions") if isinstance(data, dict) else None
    if isinstance(dims, dict):
        return dims
    if not isinstance(dims, list):
        raise PersonalmError("expected a top-level 'dimensions' list of {name, poles}", source=str(path))
    mapping = {}
    for i, entry in enumerate(dims):
        if not isinstance(entry, dict) or "name" not in entry or "poles" not in entry:
            raise PersonalmError(f"dimensions[{i}] needs 'name' and 'poles'", source=str(path))
        mapping[entry["name"]] = entry["poles"]
    return mapping
