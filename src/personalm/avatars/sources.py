"""Read a person's history from files into turns: who spoke, what, when, and what was said just
before. Formats: plain text / Markdown (all the person's own words; a `YYYY-MM-DD` file-name
prefix dates it, a `President: Name` style first line is a header), JSONL and CSV chat logs
(`speaker`, `text`, optional `timestamp`), and WhatsApp text exports.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from personalm import corpus
from personalm.errors import PersonalmError
from personalm.tables import read_rows, require

CHAT_SUFFIXES = (".jsonl", ".ndjson", ".csv")
SUFFIXES = corpus.TEXT_SUFFIXES + CHAT_SUFFIXES
DATE_PREFIX = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")
HEADER_LINE = re.compile(r"^(President|Speaker|Author|Name|By):\s+\S.{0,80}$")
# "12/31/20, 9:41 PM - Name: text" (Android) or "[31.12.20, 21:41:05] Name: text" (iOS).
WHATSAPP = re.compile(
    r"^\u200e?\[?(?P<date>\d{1,4}[./-]\d{1,2}[./-]\d{1,4}),?\s+(?P<time>\d{1,2}[:.]\d{2}(?:[:.]\d{2})?"
    r"(?:\s?[AaPp]\.?\s?[Mm]\.?)?)\]?\s*(?:-\s+)?(?P<rest>.*)$"
)
CONTEXT_CHARS = 300


@dataclass
class Turn:
    """One speaker's consecutive words; `own` marks the person's, `context` what came before."""

    text: str
    own: bool
    ts: float | None = None
    context: str = ""


@dataclass
class Source:
    path: Path
    data: bytes
    turns: list[Turn]


def norm_speaker(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def discover(paths: list[Path]) -> list[Path]:
    """Files to ingest: given files, and the supported files under given folders (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            files = corpus.files(path)
            if not files:
                raise PersonalmError("empty folder: no files to ingest", source=str(path))
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise PersonalmError("no such file or folder", source=str(path))
    for path in found:
        if path.suffix.lower() not in SUFFIXES:
            raise PersonalmError(
                f"unknown format '{path.suffix or path.name}'; expected one of {', '.join(sorted(SUFFIXES))}",
                source=str(path),
            )
    return found


def read_source(path: Path, speakers: set[str]) -> Source:
    """Parse one file; raises one clear error (file, line) for unreadable or empty input."""
    data = corpus.read_bytes(path)
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        turns = _chat_turns(_jsonl_rows(path), speakers, path)
    else:
        text = corpus.decode(data, path)
        if suffix == ".csv":
            turns = _chat_turns(_csv_rows(text, path), speakers, path)
        elif _is_whatsapp(text):
            turns = _chat_turns(_whatsapp_rows(text), speakers, path)
        else:
            turns = _text_turns(text, path)
    if not any(turn.own and turn.text.strip() for turn in turns):
        raise PersonalmError("empty source: no words of this person found", source=str(path))
    return Source(path, data, turns)


def _file_date(path: Path) -> float | None:
    match = DATE_PREFIX.match(path.name)
    if not match:
        return None
    try:
        return datetime(*map(int, match.groups()), tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _text_turns(text: str, path: Path) -> list[Turn]:
    lines = text.splitlines()
    if lines and HEADER_LINE.match(lines[0].strip()):
        lines = lines[1:]
    body = "\n".join(lines).strip()
    return [Turn(body, True, _file_date(path))] if body else []


def _parse_time(value: object, path: Path, line: int) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise PersonalmError(
        f"expected 'timestamp' to be seconds since 1970 or an ISO date (got {value!r})", source=str(path), line=line
    )


def _jsonl_rows(path: Path) -> Iterator[tuple[int, str, str, float | None]]:
    for line, row in read_rows(path, "jsonl"):
        speaker = require(row, "speaker", str, str(path), line)
        text = require(row, "text", str, str(path), line)
        yield line, speaker, text, _parse_time(row.get("timestamp"), path, line)


def _csv_rows(text: str, path: Path) -> Iterator[tuple[int, str, str, float | None]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ("speaker", "text") if c not in (reader.fieldnames or [])]
    if missing:
        raise PersonalmError(
            f"expected a header with columns speaker, text (optional timestamp); missing {', '.join(missing)}",
            source=str(path),
            line=1,
        )
    try:
        for row in reader:
            line = reader.line_num
            if row.get("speaker") is None or row.get("text") is None:
                raise PersonalmError("expected values for speaker and text", source=str(path), line=line)
            yield line, row["speaker"], row["text"], _parse_time(row.get("timestamp"), path, line)
    except csv.Error as err:
        raise PersonalmError(f"malformed CSV ({err})", source=str(path), line=reader.line_num) from None


def _is_whatsapp(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()][:5]
    return bool(lines) and sum(bool(WHATSAPP.match(line)) for line in lines) >= max(1, len(lines) // 2 + 1)


def _whatsapp_time(date: str, clock: str) -> float | None:
    clock = clock.upper().replace(".", ":").replace("\u202f", " ")
    clock = re.sub(r"\s*([AP])\s*:?M:?$", r" \1M", clock)
    day = re.sub(r"[./]", "/", date)
    for fmt_date in ("%m/%d/%y", "%d/%m/%y", "%m/%d/%Y", "%d/%m/%Y", "%Y-%m-%d", "%d-%m-%Y"):
        for fmt_time in ("%I:%M %p", "%I:%M:%S %p", "%H:%M", "%H:%M:%S"):
            try:
                parsed = datetime.strptime(f"{day} {clock}", f"{fmt_date} {fmt_time}")
            except ValueError:
                continue
            return parsed.replace(tzinfo=UTC).timestamp()
    return None


def _whatsapp_rows(text: str) -> Iterator[tuple[int, str, str, float | None]]:
    """Messages with continuation lines joined; system lines (no "Name: ") are skipped."""
    pending: list = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = WHATSAPP.match(line)
        if match:
            if pending:
                yield tuple(pending)
            speaker, sep, message = match["rest"].partition(": ")
            pending = [number, speaker.strip(), message, _whatsapp_time(match["date"], match["time"])] if sep else []
        elif pending:
            pending[2] += "\n" + line
    if pending:
        yield tuple(pending)


def _chat_turns(rows: Iterator[tuple[int, str, str, float | None]], speakers: set[str], path: Path) -> list[Turn]:
    """Consecutive messages of one speaker form a turn; others' turns become the context of the
    person's next turn."""
    turns: list[Turn] = []
    seen: dict[str, None] = {}
    last_speaker = None
    for _, speaker, text, ts in rows:
        if not text.strip():
            continue
        seen.setdefault(speaker, None)
        own = norm_speaker(speaker) in speakers
        if turns and speaker == last_speaker:
            turns[-1].text += "\n" + text.strip()
            continue
        turns.append(Turn(text.strip(), own, ts))
        last_speaker = speaker
    if seen and not any(t.own for t in turns):
        names = ", ".join(list(seen)[:5])
        wanted = ", ".join(sorted(speakers))
        raise PersonalmError(f"no messages by {wanted} (speakers here: {names}); pass --speaker NAME", source=str(path))
    context: list[str] = []
    for turn in turns:
        if turn.own:
            turn.context = "\n".join(context)[-CONTEXT_CHARS:]
            context = []
        else:
            context.append(turn.text)
    return turns
