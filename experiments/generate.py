"""Sample from a checkpoint: ``python -m experiments.generate ckpt_path=<file> prompt="..."``.

Tokenizer and model config come from the checkpoint. ``temperature=0`` is greedy decoding;
``use_kv_cache=false`` recomputes the whole context each step (same tokens, slower).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.tokenizers import build_tokenizer
from experiments import CONFIG_DIR
from lhp.config_check import check_config
from lhp.errors import UserError, entry_point
from lit_models.checkpoints import load_net
from lit_models.generation import generate

log = logging.getLogger("experiments.generate")


def generate_text(cfg: DictConfig) -> list[str]:
    """Return ``num_samples`` completions of ``prompt`` (prompt not included)."""
    check_config(OmegaConf.to_container(cfg, resolve=True))
    net, meta = load_net(cfg.ckpt_path, "tokens", "generate")
    if not isinstance(meta.get("tokenizer"), dict):
        raise UserError(f"checkpoint {cfg.ckpt_path} stores no tokenizer, so its ids cannot be "
                        "turned into text")
    tokenizer = build_tokenizer(meta["tokenizer"])
    net = net.to(cfg.device)
    prompt_ids = tokenizer.encode(cfg.prompt) or [tokenizer.eos_id]  # empty prompt: start a document
    idx = torch.tensor([prompt_ids] * cfg.num_samples, dtype=torch.long, device=cfg.device)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    start = time.perf_counter()
    out = generate(net, idx, cfg.max_new_tokens, temperature=cfg.temperature,
                   top_k=cfg.top_k, use_cache=cfg.use_kv_cache, generator=generator)
    elapsed = time.perf_counter() - start
    new_tokens = (out.size(1) - idx.size(1)) * out.size(0)
    log.info(f"{new_tokens} tokens in {elapsed:.2f} s ({new_tokens / max(elapsed, 1e-9):.1f} tokens/s, "
             f"kv_cache={cfg.use_kv_cache})")
    return [tokenizer.decode(row[idx.size(1):].tolist()) for row in out]


@entry_point
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    texts = generate_text(cfg)
    output_dir = Path(cfg.paths.output_dir)
    with open(output_dir / "samples.txt", "w") as fh:
        for i, text in enumerate(texts):
            print(f"--- sample {i} ---\n{cfg.prompt}{text}")
            fh.write(f"--- sample {i} ---\n{cfg.prompt}{text}\n")


if __name__ == "__main__":
    main()
