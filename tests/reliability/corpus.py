"""A fuzz corpus: malformed inputs for every format the platform reads, and their readers.

``build_cases(root)`` writes valid seed files once (a tiny trained checkpoint, its SQLite twin,
a weight store, safetensors, an atlas library, JSONL/Alpaca/book/tokenizer/study files), then
derives the malformed inputs from them: truncations, flipped bytes, random bytes, wrong
encodings, empty and huge files, special files (a FIFO, a directory), hostile pickles, hostile
``_target_``s, corrupted SQLite pages and metadata, wrong schemas, swapped file kinds, and
malformed Hydra overrides. Each case names the reader it goes to (the loader or entry point that
reads that format). ``run_cases`` (``tests/reliability/runner.py``) classifies what happened.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MARKER = "EXECUTED"  # hostile inputs try to create this file in the case directory


@dataclass
class Case:
    """One malformed input: ``make(dir) -> path`` writes it, ``read(path, dir)`` consumes it."""

    name: str
    fmt: str
    make: Callable[[Path], Any]
    read: Callable[[Any, Path], Any]
    may_accept: bool = False  # e.g. a flipped byte inside text may leave a valid file


class Evil:
    """A pickle that runs ``touch <marker>`` when unpickled without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- mutations
def truncations(data: bytes) -> Iterator[tuple[str, bytes]]:
    n = len(data)
    for label, cut in (("empty", 0), ("1B", 1), ("10pct", n // 10), ("half", n // 2),
                       ("90pct", n * 9 // 10), ("minus1", n - 1)):
        yield f"trunc-{label}", data[:cut]


def flips(data: bytes, seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    for i in range(count):
        buf = bytearray(data)
        pos = rng.randrange(len(buf))
        buf[pos] ^= 1 << rng.randrange(8)
        yield f"flip{i}@{pos}", bytes(buf)


def garbage(data: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    yield "random-bytes", bytes(rng.randrange(256) for _ in range(max(len(data) // 8, 64)))
    yield "nul-bytes", b"\x00" * 4096
    yield "latin1-text", "caf\xe9 na\xefve r\xe9sum\xe9\n".encode("latin-1") * 50
    yield "json-array", b"[1, 2, 3]\n"
    yield "huge", data[:4096] * 2048  # ~8 MB of repeated prefix


def _maker(name: str, create: Callable[[Path], Any]) -> Callable[[Path], Path]:
    """``make(dir)``: ``create(dir / name)`` and return that path."""
    def make(d: Path) -> Path:
        create(d / name)
        return d / name
    return make


def write_bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    return _maker(name, lambda p: p.write_bytes(data))


def fifo(name: str) -> Callable[[Path], Path]:
    return _maker(name, os.mkfifo)


def directory(name: str) -> Callable[[Path], Path]:
    return _maker(name, Path.mkdir)


def file_cases(prefix: str, fmt: str, filename: str, seed_bytes: bytes,
               read: Callable[[Any, Path], Any], n_flips: int, text: bool = False,
               swapped: dict[str, bytes] | None = None) -> list[Case]:
    """The byte-level mutations of one format's seed file, plus special and swapped files."""
    cases = [Case(f"{prefix}/{label}", fmt, write_bytes(filename, data), read)
             for label, data in [*truncations(seed_bytes), *garbage(seed_bytes, hash(prefix) % 997)]]
    cases += [Case(f"{prefix}/{label}", fmt, write_bytes(filename, data), read, may_accept=True)
              for label, data in flips(seed_bytes, 7, n_flips)]
    cases += [Case(f"{prefix}/fifo", fmt, fifo(filename), read),
              Case(f"{prefix}/directory", fmt, directory(filename), read)]
    for kind, data in (swapped or {}).items():
        cases.append(Case(f"{prefix}/swapped-{kind}", fmt, write_bytes(filename, data), read))
    if text:  # a truncation inside a text file, or many copies of it, can still be valid text
        for case in cases:
            if case.name.endswith(("/trunc-90pct", "/trunc-minus1", "/trunc-half", "/huge")):
                case.may_accept = True
    if fmt == "book":  # any non-empty UTF-8 text is a book
        for case in cases:
            if not case.name.endswith(("/trunc-empty", "/latin1-text", "/fifo", "/directory",
                                       "/swapped-checkpoint", "/random-bytes")):
                case.may_accept = True
    return cases


# ----------------------------------------------------------------------------- seeds
@dataclass
class Seeds:
    root: Path
    ckpt: Path
    ckpt_dict: dict[str, Any]
    sqlite_ckpt: Path
    store: Path
    safetensors: Path
    library: Path
    jsonl: Path
    alpaca: Path
    book: Path
    tokenizer_json: Path
    study: Path

    def bytes_of(self, name: str) -> bytes:
        return getattr(self, name).read_bytes()


def make_seeds(root: Path) -> Seeds:
    """Valid files of every format, written once (a 4-step smoke_tiny run gives the checkpoint)."""
    from experiments.train import train
    from lit_models.archs.fractal import FractalConfig, FractalDecoder
    from lit_models.atlas import AtlasLibrary
    from lit_models.compression.checkpoint_io import SQLiteCheckpointIO
    from lit_models.compression.store import WeightStore
    from tests.conftest import compose_config

    root.mkdir(parents=True, exist_ok=True)
    run = root / "run"
    train(compose_config("train", ["experiment=smoke_tiny", "logger=csv", "test=false",
                                   "trainer.max_steps=4"], run, data_dir=root / "data"))
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt_dict = torch.load(ckpt, weights_only=True)
    sqlite_ckpt = root / "sqlite.ckpt"
    SQLiteCheckpointIO().save_checkpoint(copy.deepcopy(ckpt_dict), sqlite_ckpt)
    store = root / "weights.db"
    with WeightStore(store, "a") as ws:
        ws.put_state_dict({k: v for k, v in ckpt_dict["state_dict"].items() if "wte" not in k})
    from safetensors.torch import save_file

    safet = root / "weights.safetensors"
    save_file({"a": torch.randn(8, 8), "b": torch.arange(10)}, str(safet))
    net = FractalDecoder(FractalConfig(vocab_size=30, num_books=1, n_embd=16, block_hidden=32,
                                       depth=2, n_frequencies=4, key_dim=4))
    library = root / "library"
    AtlasLibrary.create(library, net, [chr(c) for c in range(97, 97 + 29)])
    jsonl = root / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"record {i} about mary and the lamb."}) + "\n"
                             for i in range(60)), encoding="utf-8")
    alpaca = root / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"say {i}", "input": "", "output": f"{i}!"}
                                  for i in range(40)]), encoding="utf-8")
    book = root / "book.txt"
    book.write_text("alice was beginning to get very tired of sitting by her sister.\n" * 40,
                    encoding="utf-8")
    from datamodules.tokenizers import train_bpe

    tok_dir = root / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    tok = train_bpe([jsonl.read_text(encoding="utf-8")] * 4, 300)
    tokenizer_json = tok_dir / "tokenizer.json"
    tokenizer_json.write_text(tok.hf_tokenizer.to_str(), encoding="utf-8")
    study = root / "study.yaml"
    study.write_text("experiment: smoke_tiny\nseeds: [1]\nvariants:\n  base: []\n", encoding="utf-8")
    return Seeds(root, ckpt, ckpt_dict, sqlite_ckpt, store, safet, library, jsonl, alpaca, book,
                 tokenizer_json, study)


# ----------------------------------------------------------------------------- readers
def read_checkpoint_all(path: Path, d: Path) -> Any:
    """What evaluate/generate/resume do with a checkpoint before any work: load, rebuild."""
    from lit_models.checkpoints import load_checkpoint, load_module, platform_meta

    ckpt = load_checkpoint(path)
    return load_module(ckpt, platform_meta(ckpt, path), path)


def generate_entry(path: Path, d: Path) -> Any:
    from experiments.generate import generate_text
    from tests.conftest import compose_config

    return generate_text(compose_config("generate", [f"ckpt_path={path}", "max_new_tokens=2"], d / "gen"))


def evaluate_entry(path: Path, d: Path) -> Any:
    from experiments.evaluate import evaluate
    from tests.conftest import compose_config

    return evaluate(compose_config("eval", [f"ckpt_path={path}", "logger=csv",
                                            "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"],
                                   d / "eval", data_dir=d / "data"))


def store_read(path: Path, d: Path) -> Any:
    from lit_models.compression.store import WeightStore

    with WeightStore(path, "r") as ws:
        ws.verify()
        return ws.load_state_dict()


def sqlite_ckpt_read(path: Path, d: Path) -> Any:
    from lit_models.checkpoints import load_checkpoint

    return load_checkpoint(path)


def h2q_entry(path: Path, d: Path) -> Any:
    from experiments import h2q

    return h2q.main(["analyse", str(path), "--json"])


def safetensors_read(path: Path, d: Path) -> Any:
    from lit_models.checkpoints import read_state_dict

    return read_state_dict(path)


def atlas_core_read(path: Path, d: Path) -> Any:
    from lit_models.atlas import load_core_file

    return load_core_file(path)


def atlas_index_read(path: Path, d: Path) -> Any:
    from lit_models.atlas import AtlasLibrary

    lib = AtlasLibrary(path.parent)
    problems = lib.verify()
    if problems:
        from lhp.errors import UserError

        raise UserError("; ".join(problems))
    return lib.books()


def jsonl_datamodule(path: Path, d: Path) -> Any:
    from datamodules.mock_jsonl import MockJSONLDataModule

    dm = MockJSONLDataModule(data_files=[str(path)], tokenizer={"kind": "byte"}, block_size=16,
                             batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def alpaca_read(path: Path, d: Path) -> Any:
    """The Alpaca reader with the splits the datamodule asks for (an empty split is refused)."""
    from datamodules.corpora import alpaca_splits

    return alpaca_splits({"paths": [str(path)]}, 0.1, 0.1, 0)


def book_datamodule(path: Path, d: Path) -> Any:
    from datamodules.book_coords import BookCoordsDataModule

    dm = BookCoordsDataModule(books=[str(path)], batch_size=8, eval_batch_size=64)
    dm.setup("fit")
    return dm


def tokenizer_dir_read(path: Path, d: Path) -> Any:
    from datamodules.tokenizers import load_pretrained

    return load_pretrained(path.parent)


def study_read(path: Path, d: Path) -> Any:
    from experiments.study import load_study

    return load_study(str(path))


def spec_read(spec: Any, d: Path) -> Any:
    from datamodules.tokenizers import build_tokenizer

    return build_tokenizer(spec)


def override_read(overrides: list[str], d: Path) -> Any:
    """Compose the train config with the overrides and run every check done before work."""
    from experiments.train import check_before_work
    from tests.conftest import compose_config

    cfg = compose_config("train", ["experiment=smoke_tiny", *overrides], d / "run", data_dir=d / "data")
    check_before_work(cfg)
    from experiments.utils import check_targets

    check_targets(cfg, "")
    return cfg


# ----------------------------------------------------------------------------- structured cases
def hostile_checkpoints(seeds: Seeds) -> list[Case]:
    """Pickles that run code and configs that name non-platform classes."""

    def edited(name: str, edit: Callable[[dict, Path], None]) -> Callable[[Path], Path]:
        def make(d: Path) -> Path:
            ckpt = copy.deepcopy(seeds.ckpt_dict)
            edit(ckpt, d / MARKER)
            path = d / f"{name}.ckpt"
            torch.save(ckpt, path)
            return path
        return make

    def pickled(obj_fn: Callable[[Path], Any]) -> Callable[[Path], Path]:
        def make(d: Path) -> Path:
            path = d / "evil.ckpt"
            path.write_bytes(pickle.dumps(obj_fn(d / MARKER)))
            return path
        return make

    def set_key(*keys: str, value: Callable[[Path], Any]) -> Callable[[dict, Path], None]:
        def edit(ckpt: dict, marker: Path) -> None:
            node = ckpt
            for k in keys[:-1]:
                node = node[k]
            node[keys[-1]] = value(marker)
        return edit

    popen = {"_target_": "subprocess.Popen"}
    edits: dict[str, Callable[[dict, Path], None]] = {
        "recipe-popen": lambda c, m: (c["platform"]["config"]["model"].update(_target_="subprocess.Popen"),
                                      c.update(hyper_parameters={"args": ["touch", str(m)]})),
        "recipe-os-system": set_key("platform", "config", "model", "_target_", value=lambda m: "os.system"),
        "recipe-reexport": set_key("platform", "config", "model", "_target_",
                                   value=lambda m: "lit_models.checkpoints.Path"),
        "recipe-missing": lambda c, m: c["platform"]["config"]["model"].pop("_target_"),
        "recipe-not-string": set_key("platform", "config", "model", "_target_", value=lambda m: 42),
        "hparams-extra": set_key("hyper_parameters", "evil", value=lambda m: 1),
        "hparams-nested-target": set_key("hyper_parameters", "arch_config", "_target_",
                                         value=lambda m: "os.system"),
        "hparams-arch-unknown": set_key("hyper_parameters", "arch", value=lambda m: "os"),
        "hparams-bad-value": set_key("hyper_parameters", "arch_config", "n_layer", value=lambda m: "x"),
        "hparams-not-dict": set_key("hyper_parameters", value=lambda m: [1, 2]),
        "platform-missing": lambda c, m: c.pop("platform"),
        "platform-not-dict": set_key("platform", value=lambda m: "x"),
        "state-missing": lambda c, m: c.pop("state_dict"),
        "state-wrong-shape": lambda c, m: c["state_dict"].update(
            {k: torch.zeros(3) for k in list(c["state_dict"])[:1]}),
        "state-extra-key": set_key("state_dict", "net.evil", value=lambda m: torch.zeros(1)),
        "weights-edited": lambda c, m: next(v for v in c["state_dict"].values()
                                            if v.is_floating_point()).add_(1.0),
        "data-popen": set_key("platform", "config", "data",
                              value=lambda m: {**popen, "args": ["touch", str(m)]}),
    }
    data_only = {"data-popen"}  # only readers that build the stored data config see it
    cases = [Case(f"ckpt-hostile/{name}", "checkpoint", edited(name, fn), read_checkpoint_all)
             for name, fn in edits.items() if name not in data_only]
    cases += [Case(f"ckpt-hostile/{name}-generate", "checkpoint", edited(name, edits[name]),
                   generate_entry) for name in ("recipe-popen", "recipe-reexport")]
    cases += [Case(f"ckpt-hostile/{name}-evaluate", "checkpoint", edited(name, edits[name]),
                   evaluate_entry) for name in ("recipe-popen", "data-popen")]
    cases += [Case("ckpt-hostile/pickle-os-system", "checkpoint", pickled(Evil), read_checkpoint_all),
              Case("ckpt-hostile/pickle-nested", "checkpoint",
                   pickled(lambda m: {"state_dict": {"x": Evil(m)}}), read_checkpoint_all),
              Case("ckpt-hostile/pickle-generate", "checkpoint", pickled(Evil), generate_entry),
              Case("ckpt-hostile/not-a-dict", "checkpoint",
                   lambda d: (torch.save([1, 2, 3], d / "list.ckpt"), d / "list.ckpt")[1],
                   read_checkpoint_all)]
    return cases


def sqlite_cases(seeds: Seeds) -> list[Case]:
    """Corrupted pages, edited metadata and wrong schemas of the weight store."""

    def sql_edit(statement: str) -> Callable[[Path], Path]:
        def make(d: Path) -> Path:
            path = d / "weights.db"
            path.write_bytes(seeds.bytes_of("store"))
            with sqlite3.connect(path) as db:
                db.execute(statement)
            return path
        return make

    def table_names() -> list[str]:
        with sqlite3.connect(seeds.store) as db:
            return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]

    def columns(table: str) -> list[str]:
        with sqlite3.connect(seeds.store) as db:
            return [r[1] for r in db.execute(f"PRAGMA table_info({table})")]

    cases = []
    data = seeds.bytes_of("store")
    page = int.from_bytes(data[16:18], "big")
    page = 65536 if page == 1 else page  # the SQLite header stores 65536 as 1
    # cell content sits at the end of each page (the start is often free space): flip 64 bytes
    # just before each page's end, i.e. inside stored rows, chunk blobs and the schema
    for i, end in enumerate(range(page, len(data) + 1, page)):
        buf = bytearray(data)
        for j in range(end - 120, end - 56):
            buf[j] ^= 0xFF
        cases.append(Case(f"store/page{i}", "sqlite", write_bytes("weights.db", bytes(buf)),
                          _same_as(seeds.store, store_read), may_accept=True))
    for table in table_names():
        cases.append(Case(f"store/drop-{table}", "sqlite", sql_edit(f"DROP TABLE {table}"), store_read))
        for col in columns(table):
            if col in ("tensor_shape", "dtype", "codec", "shape", "checksum", "nbytes", "data"):
                value = "'[7, 7]'" if "shape" in col else "'float16'" if col == "dtype" else "'zzz'"
                cases.append(Case(f"store/edit-{table}.{col}", "sqlite",
                                  sql_edit(f"UPDATE {table} SET {col} = {value}"), store_read))
    cases += [Case("store/wrong-schema", "sqlite", lambda d: _sqlite_with(d, "CREATE TABLE t(x)"), store_read),
              Case("store/empty-sqlite", "sqlite", lambda d: _sqlite_with(d, None), store_read),
              Case("store/h2q-analyse-truncated", "sqlite",
                   write_bytes("weights.db", data[: len(data) // 2]), h2q_entry)]
    return cases


def _same_as(seed: Path, read: Callable[[Any, Path], Any]) -> Callable[[Any, Path], Any]:
    """``read``, and if the damaged file is accepted its tensors must equal the seed's (damage
    in unused page space is harmless; a silent change of a weight is not)."""
    def check(path: Path, d: Path) -> Any:
        got, want = read(path, d), store_read(seed, d)
        if got.keys() != want.keys() or not all(torch.equal(got[k], want[k]) for k in want):
            raise AssertionError(f"{path}: accepted with different tensors")
        return got
    return check


def _sqlite_with(d: Path, statement: str | None) -> Path:
    path = d / "weights.db"
    with sqlite3.connect(path) as db:
        if statement:
            db.execute(statement)
        else:
            db.execute("CREATE TABLE x(y)")
            db.execute("DROP TABLE x")
    return path


def spec_cases() -> list[Case]:
    specs: dict[str, Any] = {
        "kind-unknown": {"kind": "nope"}, "kind-missing": {}, "not-a-dict": "byte",
        "byte-extra-key": {"kind": "byte", "vocab_size": 300},
        "bpe-bad-size": {"kind": "bpe", "vocab_size": -5}, "bpe-size-str": {"kind": "bpe", "vocab_size": "x"},
        "bpe-json-garbage": {"kind": "bpe", "json": "{not json"},
        "pretrained-missing-path": {"kind": "pretrained", "path": "/nonexistent/tok"},
        "kind-target": {"kind": "byte", "_target_": "os.system"},
    }
    return [Case(f"tokenizer-spec/{k}", "tokenizer-spec", lambda d, v=v: v, spec_read) for k, v in specs.items()]


OVERRIDES: dict[str, list[str]] = {
    "max-steps-str": ["trainer.max_steps=abc"], "max-steps-zero": ["trainer.max_steps=0"],
    "max-steps-neg": ["trainer.max_steps=-5"], "max-steps-float": ["trainer.max_steps=2.5"],
    "batch-zero": ["data.batch_size=0"], "batch-str": ["data.batch_size=big"],
    "batch-list": ["data.batch_size=[1,2]"], "block-one": ["data.block_size=1"],
    "lr-neg": ["model.optimizer.lr=-1"], "lr-nan": ["model.optimizer.lr=nan"],
    "lr-inf": ["model.optimizer.lr=inf"], "lr-str": ["model.optimizer.lr=fast"],
    "wd-neg": ["model.optimizer.weight_decay=-0.1"], "warmup-neg": ["model.scheduler.warmup_steps=-1"],
    "min-lr-ratio": ["model.scheduler.min_lr_ratio=2"], "devices-str": ["trainer.devices=two"],
    "devices-zero": ["trainer.devices=0"], "accum-zero": ["trainer.accumulate_grad_batches=0"],
    "val-interval": ["trainer.val_check_interval=-3"], "limit-val": ["trainer.limit_val_batches=2.5"],
    "seed-str": ["seed=abc"], "workers-neg": ["data.num_workers=-1"],
    "token-budget": ["callbacks.token_budget.max_tokens=0"],
    "unknown-group": ["data=nope"], "unknown-experiment": ["experiment=nope"],
    "typo-key": ["trainer.max_stepz=3"], "bad-syntax": ["trainer.max_steps=[1,"],
    "target-os": ["+callbacks.evil._target_=os.system"],
    "target-popen-model": ["model._target_=subprocess.Popen"],
    "target-reexport": ["+callbacks.evil._target_=lit_models.checkpoints.Path"],
    "target-nested": ["+model.optimizer.x._target_=builtins.exec"],
    "target-logger": ["+logger.evil._target_=os.system"],
    "target-data": ["data._target_=shutil.rmtree"],
    "recipe-data-mismatch": ["data=book_coords"],
    "ckpt-missing": ["ckpt_path=/nonexistent/x.ckpt"],
    "resume-bad": ["resume=sometimes"],
}


def override_cases() -> list[Case]:
    cases = [Case(f"override/{k}", "override", lambda d, v=v: v, override_read) for k, v in OVERRIDES.items()]
    # resume from a file that is not a checkpoint goes through the same loader
    cases.append(Case("override/ckpt-garbage", "override",
                      lambda d: (d.joinpath("g.ckpt").write_bytes(b"garbage"), [f"ckpt_path={d / 'g.ckpt'}"])[1],
                      lambda ov, d: _train_resolve(ov, d)))
    return cases


def _train_resolve(overrides: list[str], d: Path) -> Any:
    from experiments.train import resolve_ckpt_path
    from tests.conftest import compose_config

    cfg = compose_config("train", ["experiment=smoke_tiny", *overrides], d / "run", data_dir=d / "data")
    return resolve_ckpt_path(cfg)


def build_cases(seeds: Seeds) -> list[Case]:
    """Every case of the corpus (≥ 200), deterministic for a given seed directory."""
    ckpt = seeds.bytes_of("ckpt")
    swapped = {"safetensors": seeds.bytes_of("safetensors"), "sqlite": seeds.bytes_of("store"),
               "jsonl": seeds.bytes_of("jsonl"), "checkpoint": ckpt[:20000]}
    cases: list[Case] = []
    cases += file_cases("ckpt", "checkpoint", "model.ckpt", ckpt, read_checkpoint_all, 12,
                        swapped={k: v for k, v in swapped.items() if k != "checkpoint"})
    cases += file_cases("sqlite-ckpt", "sqlite-checkpoint", "model.ckpt", seeds.bytes_of("sqlite_ckpt"),
                        sqlite_ckpt_read, 6)
    cases += file_cases("store", "sqlite", "weights.db", seeds.bytes_of("store"), store_read, 6,
                        swapped={"checkpoint": ckpt[:20000]})
    cases += file_cases("safetensors", "safetensors", "w.safetensors", seeds.bytes_of("safetensors"),
                        safetensors_read, 6, swapped={"checkpoint": ckpt[:20000]})
    core = (seeds.library / "core.safetensors")
    if core.is_file():
        cases += file_cases("atlas-core", "atlas-core", "core.safetensors", core.read_bytes(),
                            atlas_core_read, 4, swapped={"sqlite": seeds.bytes_of("store")})
    index = next(seeds.library.glob("*.json"))
    cases += [Case(f"atlas-index/{c.name.split('/')[1]}", "atlas-index",
                   _in_library_copy(seeds.library, index.name, c.make), atlas_index_read, c.may_accept)
              for c in file_cases("x", "x", index.name, index.read_bytes(), atlas_index_read, 4, text=True)
              if "fifo" not in c.name and "directory" not in c.name]
    cases += file_cases("jsonl", "jsonl", "data.jsonl", seeds.bytes_of("jsonl"), jsonl_datamodule, 4,
                        text=True, swapped={"checkpoint": ckpt[:20000]})
    cases += file_cases("alpaca", "alpaca", "alpaca.json", seeds.bytes_of("alpaca"), alpaca_read, 4,
                        text=True)
    cases.append(Case("alpaca/empty-list", "alpaca", write_bytes("alpaca.json", b"[]"), alpaca_read))
    cases.append(Case("alpaca/wrong-types", "alpaca",
                      write_bytes("alpaca.json", b'[{"instruction": 1, "output": null}]'), alpaca_read))
    cases += file_cases("book", "book", "book.txt", seeds.bytes_of("book"), book_datamodule, 2,
                        text=True, swapped={"checkpoint": ckpt[:20000]})
    cases += file_cases("tokenizer-json", "tokenizer", "tokenizer.json", seeds.bytes_of("tokenizer_json"),
                        tokenizer_dir_read, 4, text=True)
    cases += file_cases("study", "study", "study.yaml", seeds.bytes_of("study"), study_read, 2, text=True)
    cases.append(Case("study/hostile-target", "study",
                      write_bytes("study.yaml", b"experiment: smoke_tiny\nseeds: [1]\nvariants:\n"
                                                b"  evil: ['+callbacks.x._target_=os.system']\n"),
                      lambda p, d: _study_overrides_checked(p, d)))
    cases += hostile_checkpoints(seeds)
    cases += sqlite_cases(seeds)
    cases += spec_cases()
    cases += override_cases()
    return cases


def _in_library_copy(library: Path, index_name: str, make: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """A copy of the seed library with its index replaced by the mutated one."""
    import shutil

    def wrapped(d: Path) -> Path:
        lib = d / "library"
        shutil.copytree(library, lib)
        (lib / index_name).unlink()
        made = make(lib)
        return made if made.name == index_name else made.rename(lib / index_name)
    return wrapped


def _study_overrides_checked(path: Path, d: Path) -> Any:
    """A study's variant overrides reach training through the same target check."""
    from experiments.study import load_study

    study = load_study(str(path))
    for variant in study.variants.values():
        override_read([*study.common, *variant], d)
    return study
