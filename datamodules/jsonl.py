"""Strict JSONL corpus reading, record formatting, and a learnable synthetic corpus.

A record is one JSON object per line holding either ``text`` or Alpaca-style
``instruction``/``input``/``output``. Reading is strict: any problem stops with a
``DataFormatError`` (a ``UserError``) naming the file, the line and what was expected, rather
than silently training on a partial, garbled or empty corpus.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datamodules.files import DataFormatError, iter_lines, parse_json, write_atomic
from lhp.errors import UserError

__all__ = ["DataFormatError", "check_strings", "format_record", "iter_json_lines", "json_kind",
           "read_jsonl_records", "write_mock_corpus"]

_EXPECTED_RECORD = "an object with a string 'text', or strings 'instruction' and 'output'"
_EXPECTED_FILE = "a JSONL file (or set data.create_mock_data=true to generate a mock corpus)"
_JSON_KINDS = {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
               type(None): "null"}


def _fail(path: Path, line: int | None, problem: str, expected: str) -> DataFormatError:
    where = f"{path}:{line}" if line is not None else f"{path}"
    return DataFormatError(f"{where}: {problem}; expected {expected}")


def json_kind(value: Any) -> str:
    """JSON's name for the type of a parsed value ("array", "string", ...)."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def check_strings(record: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Each of ``keys`` present in ``record`` holds a string of valid Unicode (JSON's ``\\ud800``
    escapes can smuggle in unpaired surrogates, which no tokenizer can encode)."""
    for key in keys:
        if key not in record:
            continue
        value = record[key]
        if not isinstance(value, str):
            raise DataFormatError(f"{where}: key {key!r} is a {type(value).__name__}, not a "
                                  f"string; expected {key!r} to be a JSON string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataFormatError(
                f"{where}: key {key!r} holds an unpaired surrogate {value[err.start]!r} at "
                f"character {err.start}, which is not valid Unicode; expected {key!r} to be "
                "valid Unicode text") from None


def _check_record(path: Path, lineno: int, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _fail(path, lineno, f"line is a JSON {json_kind(obj)}, not an object", _EXPECTED_RECORD)
    if "text" in obj:
        required, optional = ("text",), ()
    elif "instruction" in obj or "output" in obj:
        required, optional = ("instruction", "output"), ("input",)
    else:
        keys = ", ".join(repr(k) for k in obj) or "none"
        raise _fail(path, lineno, f"record has no 'text' or 'instruction' key (keys: {keys})",
                    _EXPECTED_RECORD)
    for key in required:
        if key not in obj:
            raise _fail(path, lineno, f"record is missing the key {key!r}", _EXPECTED_RECORD)
    check_strings(obj, required + optional, f"{path}:{lineno}")
    return obj


def iter_json_lines(path: Path, file_expected: str,
                    record_expected: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` of every non-blank line of a JSONL file; a missing or
    special file, bad UTF-8, a line over the record limit or invalid JSON is a
    ``DataFormatError`` naming the file and line (and what was expected of file or record)."""
    for lineno, line in iter_lines(path, file_expected):
        if line.strip():
            yield lineno, parse_json(line, path, f"one JSON object per line, {record_expected}",
                                     lineno)


def read_jsonl_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every record of a JSONL file, validating each line; blank lines are skipped.

    Raises ``DataFormatError`` (a ``UserError``) naming the file and 1-based line number; a
    file without records is refused too (it would train on nothing).
    """
    path = Path(path)
    records = [_check_record(path, lineno, obj)
               for lineno, obj in iter_json_lines(path, _EXPECTED_FILE, _EXPECTED_RECORD)]
    if not records:
        raise _fail(path, None, "file holds no records",
                    f"at least one line with a JSON object: {_EXPECTED_RECORD}")
    return records


def format_record(record: dict[str, Any]) -> str:
    """The training text of a record: ``text`` as is, or an Alpaca-format prompt + response.

    The ``### Input:`` section is left out when ``input`` is missing or blank.
    """
    if "text" in record:
        return record["text"]
    if "instruction" not in record or "output" not in record:
        raise ValueError(f"record has neither 'text' nor 'instruction'/'output': {record!r}")
    parts = [f"### Instruction:\n{record['instruction']}"]
    inp = record.get("input") or ""
    if inp.strip():
        parts.append(f"### Input:\n{inp}")
    parts.append(f"### Response:\n{record['output']}")
    return "\n\n".join(parts)


# --- synthetic corpus -------------------------------------------------------------------------

_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)
_PEOPLE = ("mary", "john", "sandra", "daniel", "emma", "peter")
_PLACES = ("kitchen", "garden", "office", "bathroom", "hallway", "bedroom")
_OBJECTS = ("apple", "football", "milk", "book")
_MOVES = ("went to", "moved to", "journeyed to", "travelled to")
_COLORS = ("red", "blue", "green", "yellow", "orange", "black", "white")
_SIZES = ("big", "small", "old", "new")
_NOUNS = (("ball", "balls"), ("box", "boxes"), ("cat", "cats"), ("dog", "dogs"),
          ("cup", "cups"), ("mouse", "mice"), ("child", "children"), ("bus", "buses"),
          ("egg", "eggs"), ("apple", "apples"), ("car", "cars"), ("fox", "foxes"))
_SPOTS = ("on the table", "under the bed", "in the box", "near the door", "by the window")
_WORDS = ("garden", "kitchen", "apple", "river", "yellow", "planet", "window", "sugar",
          "pencil", "bottle", "orange", "basket", "cloud", "stone", "music", "tiger")
_OPPOSITES = (("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"),
              ("old", "new"), ("day", "night"), ("open", "closed"), ("early", "late"))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _fill(rng: random.Random, make: Callable[[], str], low: int = 60, high: int = 380) -> str:
    """Join sentences from ``make`` until a length drawn from [low, high) is reached."""
    target = rng.randrange(low, high)
    text = make()
    while len(text) < target:
        nxt = make()
        if len(text) + 1 + len(nxt) > 400:
            break
        text += " " + nxt
    return text


def _story(rng: random.Random) -> str:
    """bAbI-style: people move and carry objects; answers need the whole context."""
    where: dict[str, str] = {}
    holder: dict[str, str] = {}  # object -> person carrying it
    placed: dict[str, str] = {}  # object -> place it was dropped
    people = rng.sample(_PEOPLE, rng.randint(2, 4))
    lines: list[str] = []
    for obj in rng.sample(_OBJECTS, rng.randint(0, 2)):
        placed[obj] = rng.choice(_PLACES)
        lines.append(f"the {obj} is in the {placed[obj]}.")
    for _ in range(rng.randint(3, 9)):
        person = rng.choice(people)
        carried = [o for o, p in holder.items() if p == person]
        free = [o for o in _OBJECTS if o not in holder and placed.get(o) == where.get(person)]
        roll = rng.random()
        if person in where and carried and roll < 0.2:
            obj = rng.choice(carried)
            del holder[obj]
            placed[obj] = where[person]
            lines.append(f"{person} dropped the {obj}.")
        elif person in where and free and roll < 0.45:
            obj = rng.choice(free)
            holder[obj] = person
            placed.pop(obj, None)
            lines.append(f"{person} took the {obj}.")
        else:
            place = rng.choice([p for p in _PLACES if p != where.get(person)])
            where[person] = place
            lines.append(f"{person} {rng.choice(_MOVES)} the {place}.")
    # Ask about a person, or about an object whose location follows from the story.
    objects = [o for o in _OBJECTS if o in holder or o in placed]
    if objects and rng.random() < 0.4:
        obj = rng.choice(objects)
        answer = where[holder[obj]] if obj in holder else placed[obj]
        lines.append(f"where is the {obj}? {answer}.")
    else:
        person = rng.choice([p for p in people if p in where])
        lines.append(f"where is {person}? {where[person]}.")
    return " ".join(lines)


def _arithmetic(rng: random.Random) -> str:
    """Small arithmetic facts, in words and in digits."""

    def fact() -> str:
        style = rng.randrange(5)
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        if style == 0:
            return f"{_NUMBER_WORDS[a]} plus {_NUMBER_WORDS[b]} is {_NUMBER_WORDS[a + b]}."
        if style == 1:
            return f"{a} + {b} = {a + b}."
        if style == 2:
            hi, lo = max(a, b), min(a, b)
            return f"{_NUMBER_WORDS[hi]} minus {_NUMBER_WORDS[lo]} is {_NUMBER_WORDS[hi - lo]}."
        if style == 3:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            return f"{a} * {b} = {a * b}."
        start = rng.randint(0, 14)
        return "counting: " + ", ".join(_NUMBER_WORDS[start : start + rng.randint(3, 6)]) + "."

    return _fill(rng, fact)


def _description(rng: random.Random) -> str:
    """Templated sentences with number agreement (a/an, is/are, plural forms)."""

    def sentence() -> str:
        one, many = rng.choice(_NOUNS)
        adj = rng.choice(_COLORS + _SIZES)
        style = rng.randrange(4)
        if style == 0:
            return f"{_article(adj)} {adj} {one} is {rng.choice(_SPOTS)}."
        if style == 1:
            return f"the {many} are {adj}. the {one} is {adj} too."
        if style == 2:
            n = rng.randint(2, 9)
            return f"there is one {one}. there are {_NUMBER_WORDS[n]} {many}."
        return f"this {one} is {adj}. these {many} are {adj}."

    return _fill(rng, sentence)


def _instruction(rng: random.Random) -> dict[str, str]:
    """An Alpaca-style record; some tasks take no input."""
    task = rng.randrange(6)
    if task == 0:
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        return {"instruction": "Add the two numbers.", "input": f"{a} and {b}",
                "output": str(a + b)}
    if task == 1:
        word = rng.choice(_WORDS)
        return {"instruction": "Reverse the word.", "input": word, "output": word[::-1]}
    if task == 2:
        word = rng.choice(_WORDS)
        return {"instruction": "Write the word in capital letters.", "input": word,
                "output": word.upper()}
    if task == 3:
        one, many = rng.choice(_NOUNS)
        return {"instruction": "Give the plural of the noun.", "input": one, "output": many}
    if task == 4:
        start = rng.randint(1, 10)
        stop = start + rng.randint(3, 6)
        return {"instruction": f"Count from {_NUMBER_WORDS[start]} to {_NUMBER_WORDS[stop]}.",
                "input": "", "output": ", ".join(_NUMBER_WORDS[start : stop + 1]) + "."}
    word, opposite = rng.choice(_OPPOSITES)
    return {"instruction": f"What is the opposite of {word}?", "input": "",
            "output": f"the opposite of {word} is {opposite}."}


_KIND_SHARES = (("story", 0.35), ("arithmetic", 0.25), ("description", 0.25),
                ("instruction", 0.15))


def _kind_schedule(rng: random.Random, n: int) -> list[str]:
    """Exactly proportioned record kinds (largest remainder), in a seeded random order."""
    exact = [(kind, share * n) for kind, share in _KIND_SHARES]
    counts = {kind: int(x) for kind, x in exact}
    by_remainder = sorted(exact, key=lambda kx: kx[1] - int(kx[1]), reverse=True)
    for kind, _ in by_remainder[: n - sum(counts.values())]:
        counts[kind] += 1
    kinds = [kind for kind, _ in _KIND_SHARES for _ in range(counts[kind])]
    rng.shuffle(kinds)
    return kinds


def _mock_record(rng: random.Random, kind: str) -> dict[str, str]:
    if kind == "instruction":
        return _instruction(rng)
    make = {"story": _story, "arithmetic": _arithmetic, "description": _description}[kind]
    return {"text": make(rng)}


def write_mock_corpus(path: str | os.PathLike[str], num_records: int, seed: int) -> Path:
    """Write a synthetic, learnable JSONL corpus of ``num_records`` records; return its path.

    The corpus is templated English with structure at several ranges (bAbI-style stories whose
    answer lies earlier in the context, arithmetic facts, agreement patterns, and ~15%
    instruction records), reproducible byte for byte from ``seed``. The file is written to a
    temporary file in the same directory and moved into place, so it is never half-written.
    """
    if isinstance(num_records, bool) or not isinstance(num_records, int) or num_records < 1:
        raise UserError(f"data.mock_num_records (num_records) must be an int >= 1, got {num_records!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"data.mock_seed (seed) must be an int, got {seed!r}")
    path = Path(path)
    rng = random.Random(seed)
    lines = [json.dumps(_mock_record(rng, kind), ensure_ascii=False)
             for kind in _kind_schedule(rng, num_records)]
    payload = ("\n".join(lines) + "\n").encode("utf-8")

    return write_atomic(path, lambda fh: fh.write(payload))
