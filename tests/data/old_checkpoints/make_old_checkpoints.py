"""Write the tiny checkpoints of tests/unit/test_old_checkpoints.py (kept for reference).

They were written once with the code as committed before the architectures moved their
knowledge into ``lit_models/archs/`` (commit 4a09852), so that test proves checkpoints written
earlier still load and give the same logits. Rerunning it with today's code would only test
today against itself: run it against an old tree, e.g.
``git worktree add /tmp/old <commit> && PYTHONPATH=/tmp/old python <this file>``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from lit_models.coordinate_decoder import CoordinateDecoder
from lit_models.distillation import DistillationModel
from lit_models.language_model import LanguageModel

HERE = Path(__file__).resolve().parent
TOKEN = {"vocab_size": 32, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16,
         "dropout": 0.0}
CASES = {
    "gpt": (LanguageModel, "gpt", {**TOKEN, "pos_embedding": "rope", "qk_norm": True}),
    "gpt_phm": (LanguageModel, "gpt", {**TOKEN, "linear": "phm", "phm_n": 2,
                                       "tie_embeddings": False}),
    "qtg": (LanguageModel, "qtg", {**TOKEN, "topo_k": 3}),
    "indra": (DistillationModel, "indra", {**TOKEN, "d_model": 12}),
    "fractal": (CoordinateDecoder, "fractal", {
        "vocab_size": 20, "num_books": 2, "n_embd": 16, "block_hidden": 32, "depth": 2,
        "n_frequencies": 4, "key_dim": 4, "update_fraction": 0.5, "spectral_norm": True,
        "head": "factorized", "head_rank": 4}),
}


def main() -> None:
    for name, (cls, arch, arch_config) in CASES.items():
        torch.manual_seed(0)
        module = cls(arch=arch, arch_config=arch_config).eval()
        if cls is CoordinateDecoder:
            inputs = {"coords": torch.linspace(0, 1, 8, dtype=torch.float64),
                      "book_id": torch.tensor([0, 1] * 4)}
            with torch.no_grad():
                module.net.train()(**inputs)  # one power iteration: non-trivial u, v buffers
                logits, _ = module.net.eval()(**inputs)
        else:
            inputs = {"idx": torch.randint(0, arch_config["vocab_size"], (2, 10))}
            with torch.no_grad():
                logits, _ = module.net(**inputs)
        target = f"{cls.__module__}.{cls.__qualname__}"
        torch.save({"state_dict": module.state_dict(),
                    "hyper_parameters": copy.deepcopy(dict(module.hparams)),
                    "platform": {"config": {"model": {"_target_": target}}},
                    "inputs": inputs, "logits": logits}, HERE / f"{name}.pt")


if __name__ == "__main__":
    main()
