"""Generation latency of a QTG (or any registered) model, with and without the KV cache.

    python -m experiments.bench.generation_latency [--arch qtg] [--new-tokens 512]
        [--n-layer 6 --n-head 6 --n-embd 384 --vocab 8192] [--prompt 8] [--device cpu]

Randomly initialised weights (latency does not depend on training); greedy decoding of
``--new-tokens`` tokens after a ``--prompt``-token prompt, context = prompt + new tokens so the
window never slides. Checks that both paths produce the same tokens; the speed-up is the last
line.
"""

from __future__ import annotations

import argparse
import time

import torch

from lit_models.archs import build_arch
from lit_models.generation import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="qtg")
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=8)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = build_arch(args.arch, {"vocab_size": args.vocab, "n_layer": args.n_layer,
                                 "n_head": args.n_head, "n_embd": args.n_embd,
                                 "block_size": args.prompt + args.new_tokens}).to(args.device)
    prompt = torch.randint(0, args.vocab, (1, args.prompt), device=args.device)
    out, secs = {}, {}
    for cache in (True, False):
        t0 = time.perf_counter()
        out[cache] = generate(net, prompt, args.new_tokens, temperature=0, use_cache=cache)
        secs[cache] = time.perf_counter() - t0
        print(f"kv_cache={cache}: {args.new_tokens} tokens in {secs[cache]:.2f} s "
              f"({args.new_tokens / secs[cache]:.1f} tokens/s)")
    same = torch.equal(out[True], out[False])
    params = sum(p.numel() for p in net.parameters())
    print(f"arch={args.arch} params={params:,} device={args.device} "
          f"threads={torch.get_num_threads()} same tokens: {same}")
    print(f"{args.new_tokens} new tokens: {secs[True]:.2f} s with KV cache, {secs[False]:.2f} s "
          f"without -> {secs[False] / secs[True]:.1f}x faster with the cache")


if __name__ == "__main__":
    main()
