"""Generation latency of a QTG (or any registered) model, with and without the KV cache.

    lhp bench generation_latency [--arch qtg] [--new-tokens 512]
        [--n-layer 6 --n-head 6 --n-embd 384 --vocab 8192] [--prompt 8] [--device cpu]
        [--out report.json]

Randomly initialised weights (latency does not depend on training); greedy decoding of
``--new-tokens`` tokens after a ``--prompt``-token prompt, context = prompt + new tokens so the
window never slides. Checks that both paths produce the same tokens; the speed-up is the last
line.
"""

from __future__ import annotations

import time

import torch

from experiments.bench import common
from lhp.errors import entry_point
from lit_models.archs import build_arch
from lit_models.generation import generate


@entry_point
def main(argv: list[str] | None = None) -> float:
    parser = common.bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--arch", default="qtg")
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=8)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--device", default="cpu")
    args = common.parse_args(parser, argv)
    torch.manual_seed(0)
    net = build_arch(args.arch, {"vocab_size": args.vocab, "n_layer": args.n_layer,
                                 "n_head": args.n_head, "n_embd": args.n_embd,
                                 "block_size": args.prompt + args.new_tokens}).to(args.device)
    prompt = torch.randint(0, args.vocab, (1, args.prompt), device=args.device)
    out, rows = {}, []
    for cache in common.progress((True, False), "generating"):
        t0 = time.perf_counter()
        out[cache] = generate(net, prompt, args.new_tokens, temperature=0, use_cache=cache)
        secs = time.perf_counter() - t0
        rows.append({"kv_cache": cache, "seconds": secs, "tokens_per_s": args.new_tokens / secs})
    same = torch.equal(out[True], out[False])
    params = sum(p.numel() for p in net.parameters())
    cached, uncached = rows[0]["seconds"], rows[1]["seconds"]
    common.report(rows, f"{args.new_tokens} new tokens: {cached:.2f} s with KV cache, {uncached:.2f} s "
                        f"without -> {uncached / cached:.1f}x faster with the cache", args.out,
                  columns=[("kv_cache", "KV cache", ""), ("seconds", "seconds", ".2f"),
                           ("tokens_per_s", "tokens/s", ".1f")],
                  notes=[f"arch={args.arch} params={params:,} device={args.device} "
                         f"threads={torch.get_num_threads()} same tokens: {same}"],
                  meta={"speedup": uncached / cached, "same_tokens": same})
    return uncached / cached


if __name__ == "__main__":
    main()
