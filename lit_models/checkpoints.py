"""Reading platform checkpoints: the one place every entry point loads them through.

Files are data, never code. A checkpoint stores its recipe as ``config.model._target_`` and its
data config with a ``_target_`` too; neither string is ever imported. A stored recipe name is
looked up in :data:`RECIPES` and a data config in :data:`DATAMODULES` (exact string matches
against the platform's own classes), and their arguments are bound against the class signature
before anything is built. The writer's side (``RunMetadata`` adds ``checkpoint["platform"]``,
``AtomicCheckpointIO`` adds ``checkpoint["integrity"]``) is what this module reads back.

Resume goes through :func:`select_resume_checkpoint` alone: newest good ``last.ckpt`` first, then
older checkpoints of the same run, skipping (and naming) any that do not load or verify.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datamodules.book_coords import BookCoordsDataModule
from datamodules.mock_jsonl import MockJSONLDataModule
from datamodules.wikitext_alpaca import WikiTextAlpacaDataModule
from lhp.errors import UserError
from lit_models.archs.registry import ARCHITECTURES, COORDINATE_ARCHITECTURES, make_config
from lit_models.coordinate_decoder import CoordinateDecoder
from lit_models.distillation import DistillationModel
from lit_models.integrity import verify_integrity
from lit_models.language_model import LanguageModel

log = logging.getLogger(__name__)


def _by_path(*classes: type) -> dict[str, type]:
    return {f"{c.__module__}.{c.__qualname__}": c for c in classes}


# The only classes a stored config may name. Token recipes need a token datamodule, and the
# coordinate recipe a coordinate one; ``DATA_KIND`` / ``RECIPE_KIND`` say which is which.
RECIPES: dict[str, type] = _by_path(LanguageModel, DistillationModel, CoordinateDecoder)
DATAMODULES: dict[str, type] = _by_path(MockJSONLDataModule, WikiTextAlpacaDataModule,
                                        BookCoordsDataModule)
RECIPE_KIND = {LanguageModel: "tokens", DistillationModel: "tokens", CoordinateDecoder: "coordinates"}
DATA_KIND = {MockJSONLDataModule: "tokens", WikiTextAlpacaDataModule: "tokens",
             BookCoordsDataModule: "coordinates"}

# torch's unpickling errors end with advice to retry with weights_only=False: that advice would
# switch the protection off, so only the reason itself is kept.
_WEIGHTS_ONLY_REASON = re.compile(r"WeightsUnpickler error:\s*(.*)")


def _short_reason(err: BaseException) -> str:
    text = str(err)
    match = _WEIGHTS_ONLY_REASON.search(text)
    reason = match.group(1) if match else text.strip().splitlines()[0] if text.strip() else ""
    return reason.split(". Check the")[0].strip() or type(err).__name__


SHARDED_METADATA = "meta.pt"  # Lightning's metadata file inside a sharded checkpoint directory


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A directory of per-rank shards (``trainer=fsdp`` with ``save_distributed_checkpoint``)."""
    return Path(path).is_dir() and (Path(path) / SHARDED_METADATA).is_file()


def load_checkpoint(path: str | Path, verify: bool = True, sharded: bool = False) -> dict[str, Any]:
    """Load a checkpoint (torch.save or SQLite weight store) with ``weights_only=True``, or a
    safetensors export directory (``lit_models.exporting.safetensors_dir``) without pickle.

    Verifies the weights checksum when the checkpoint carries one. Every failure is a
    ``UserError`` naming the file. A sharded checkpoint directory is refused unless ``sharded``
    (a multi-process resume: then only its metadata is returned, Lightning reads the shards).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if is_sharded_checkpoint(path):
        if not sharded:
            raise UserError(
                f"checkpoint {path} is a sharded directory (trainer=fsdp with "
                "trainer.strategy.save_distributed_checkpoint=true): one process cannot load it; "
                "resume it with trainer=fsdp, or train with the default "
                "save_distributed_checkpoint=false for checkpoints that load anywhere")
        try:
            return torch.load(path / SHARDED_METADATA, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors have many types
            raise UserError(f"cannot load checkpoint {path}: {_short_reason(err)}") from err
    if path.is_dir() and (path / "config.json").is_file():  # an `lhp export` directory
        from lit_models.exporting.safetensors_dir import read_export_dir

        return read_export_dir(path)  # safetensors + JSON, no pickle; validated like a checkpoint
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a regular file")
    from lit_models.compression.store import is_weight_store

    if is_weight_store(path):  # written by the SQLite CheckpointIO plugin (+plugins=sqlite_checkpoint)
        from lit_models.compression.checkpoint_io import read_checkpoint

        try:
            ckpt = read_checkpoint(path)
        except UserError:
            raise
        except Exception as err:  # sqlite3 / store errors have many types
            raise UserError(f"cannot load checkpoint {path}: {_short_reason(err)}") from err
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors have many types
            raise UserError(f"cannot load checkpoint {path}: it is corrupt or not a checkpoint "
                            f"({_short_reason(err)})") from err
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    if verify:
        verify_integrity(ckpt, path)
    return ckpt


def platform_meta(ckpt: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``platform`` block that ``RunMetadata`` stores in every training checkpoint."""
    meta = ckpt.get("platform")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise UserError(f"checkpoint {path} has no platform metadata (config/tokenizer); "
                        "was it written by experiments.train?")
    return meta


def stored_class(section: Any, table: Mapping[str, type], what: str, path: str | Path) -> type:
    """The registered class a stored ``_target_`` names (an exact string match, never imported)."""
    target = section.get("_target_") if isinstance(section, Mapping) else None
    if not isinstance(target, str) or target not in table:
        raise UserError(f"checkpoint {path}: the {what} {target!r} is not one of the "
                        f"platform's {what}s {sorted(table)}; refusing to build it")
    return table[target]


def _bind(cls: type, kwargs: Mapping[str, Any], where: str) -> None:
    """Check ``kwargs`` against ``cls.__init__`` before building it (no ``**kwargs`` smuggling)."""
    if not all(isinstance(k, str) for k in kwargs):
        raise UserError(f"{where}: argument names must be strings")
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise UserError(f"{where}: {err} (arguments of {cls.__name__}: "
                        f"{list(inspect.signature(cls).parameters)})") from None


def recipe_class(meta: Mapping[str, Any], path: str | Path) -> type:
    """The registered LightningModule class a checkpoint was trained with."""
    return stored_class(meta["config"].get("model"), RECIPES, "recipe", path)


def _check_hparams(cls: type, hp: Any, path: str | Path) -> dict[str, Any]:
    if not isinstance(hp, dict):
        raise UserError(f"checkpoint {path} has no hyper_parameters dict")
    _bind(cls, hp, f"checkpoint {path}: hyper_parameters")
    table = COORDINATE_ARCHITECTURES if RECIPE_KIND[cls] == "coordinates" else ARCHITECTURES
    arch, arch_config = hp.get("arch"), hp.get("arch_config")
    if arch not in table or not isinstance(arch_config, dict):
        raise UserError(f"checkpoint {path}: architecture {arch!r} is not one of "
                        f"{sorted(table)} for {cls.__name__}")
    try:
        make_config(arch, arch_config, table)  # the dataclass validates every value
    except (TypeError, ValueError) as err:
        raise UserError(f"checkpoint {path}: invalid arch_config for {arch!r}: {err}") from None
    return hp


def load_module(ckpt: dict[str, Any], meta: Mapping[str, Any], path: str | Path = "<checkpoint>"
                ) -> Any:
    """Rebuild the LightningModule from a loaded checkpoint dict (no second read).

    Same as ``Cls.load_from_checkpoint``, but the class comes from :data:`RECIPES` and the
    hyper-parameters are checked against its signature and the architecture's config first.
    """
    cls = recipe_class(meta, path)
    hp = _check_hparams(cls, ckpt.get("hyper_parameters"), path)
    module = cls(**hp)
    _load_weights(module, ckpt.get("state_dict"), path)
    module.on_load_checkpoint(ckpt)
    return module.eval()


def _load_weights(module: nn.Module, state: Any, path: str | Path, prefix: str = "") -> None:
    if not isinstance(state, Mapping):
        raise UserError(f"checkpoint {path} has no state_dict")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    check_state_dict_fits(module, state, str(path))
    module.load_state_dict(state, strict=True)


def check_state_dict_fits(module: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Same keys and shapes as ``module``, or one UserError that lists the first differences."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(own)
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {items[:3]}{' …' if len(items) > 3 else ''}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
        raise UserError(f"{source} does not fit this model ({'; '.join(parts)}): it was written "
                        "by a different experiment or model config")


def require_kind(meta: Mapping[str, Any], path: str | Path, kind: str, what: str) -> None:
    """Refuse a checkpoint whose recipe works on the other data kind (tokens / coordinates)."""
    cls = recipe_class(meta, path)
    if RECIPE_KIND[cls] != kind:
        raise UserError(f"{what} needs a {kind} model, but checkpoint {path} holds a "
                        f"{RECIPE_KIND[cls]} model ({cls.__name__})")


def load_net(path: str | Path, kind: str = "tokens", what: str = "this command"
             ) -> tuple[nn.Module, dict[str, Any]]:
    """The bare architecture (``module.net``) of a checkpoint and its ``platform`` block, for
    generation, teachers and embedders that need the network without its training recipe."""
    ckpt = load_checkpoint(path)
    meta = platform_meta(ckpt, path)
    require_kind(meta, path, kind, what)
    return load_module(ckpt, meta, path).net, meta


def build_stored_datamodule(data_cfg: Any, path: str | Path, **kwargs: Any) -> Any:
    """Build a datamodule from a data config stored in (or merged onto) a checkpoint's config."""
    cls = stored_class(data_cfg, DATAMODULES, "datamodule", path)
    args = {k: v for k, v in dict(data_cfg).items() if k != "_target_"}
    args.update(kwargs)
    _bind(cls, args, f"data config of {path}")
    return cls(**args)


def check_recipe_fits_data(recipe_cls: type, data_cls: type, where: str) -> None:
    """A token recipe needs token batches and the coordinate recipe coordinate batches."""
    want, have = RECIPE_KIND.get(recipe_cls), DATA_KIND.get(data_cls)
    if want and have and want != have:
        raise UserError(f"{where}: {recipe_cls.__name__} trains on {want} but "
                        f"{data_cls.__name__} gives {have}; pick a matching data=/model= pair")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint (torch or SQLite), a weight store or a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    if path.suffix == ".safetensors":
        from lit_models.exporting.safetensors_dir import read_safetensors

        return read_safetensors(path)[0]  # tied tensors stored once come back under every name
    from lit_models.compression.store import WeightStore, is_weight_store

    if is_weight_store(path):
        with WeightStore(path, "r") as store:
            if store.get_metadata("checkpoint") is None:
                return store.load_state_dict()
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise UserError(f"{path}: checkpoint has no 'state_dict' (keys: {sorted(ckpt)[:8]})")
    return dict(ckpt["state_dict"])


def _candidates(run_root: Path, own_dir: Path | None) -> list[Path]:
    """Checkpoints under ``run_root`` (any depth), best resume candidate first: the run's own
    directory before others, ``last.ckpt`` before other checkpoints, newest first."""
    roots = [run_root] + ([own_dir] if own_dir is not None else [])
    files = list({p.resolve(): p for root in roots for p in root.rglob("*.ckpt")
                  if (p.is_file() or is_sharded_checkpoint(p))
                  and p.parent.name == "checkpoints"}.values())
    own = own_dir.resolve() if own_dir is not None else None

    def rank(p: Path) -> tuple[bool, bool, float]:
        mine = own is not None and p.resolve().is_relative_to(own)
        return mine, p.name == "last.ckpt", p.stat().st_mtime

    return sorted(files, key=rank, reverse=True)


def select_resume_checkpoint(run_root: str | Path, config: Mapping[str, Any] | None = None,
                             own_dir: str | Path | None = None
                             ) -> tuple[Path | None, dict[str, Any], list[tuple[str, Any, Any]]]:
    """The checkpoint a resume continues from: ``(path, loaded dict, config differences)``.

    Every resume path goes through here. Candidates are tried best first (``_candidates``); one
    that does not load or fails its checksum is named in a warning and skipped. With ``config``,
    a candidate whose stored config differs outside the execution-only keys
    (``lhp.identity.config_differences``) belongs to another run identity: it is skipped, except
    in the run's own directory, where the newest such candidate is returned with its differences
    for the caller to refuse (or, knowingly, accept). ``(None, {}, [])``: start fresh.
    """
    from lhp.identity import config_differences

    own = Path(own_dir).resolve() if own_dir is not None else None
    for path in _candidates(Path(run_root), own):
        mine = own is not None and path.resolve().is_relative_to(own)
        if config is not None and not mine and _peek_differs(path, config):
            continue  # another identity's run: not worth a full load and checksum
        try:
            ckpt = load_checkpoint(path, sharded=True)
        except UserError as err:
            log.warning(f"resume: skipping {path}: {err}; trying the previous checkpoint")
            continue
        stored = ((ckpt.get("platform") or {}).get("config")) if config is not None else None
        diffs = config_differences(stored, config) if isinstance(stored, dict) else []
        if not diffs or mine:
            return path, ckpt, diffs
    return None, {}, []


def _peek_differs(path: Path, config: Mapping[str, Any]) -> bool:
    """Whether a torch.save checkpoint's stored config differs from ``config``, read through
    ``mmap`` so the weights are not loaded (other formats: False, decided after a full load)."""
    from lhp.identity import config_differences

    if is_sharded_checkpoint(path):
        path = path / SHARDED_METADATA
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a zip checkpoint (SQLite, corrupt): full load decides
        return False
    stored = (ckpt.get("platform") or {}).get("config") if isinstance(ckpt, dict) else None
    return isinstance(stored, dict) and bool(config_differences(stored, config))
