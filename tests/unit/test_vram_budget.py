"""VRAM budget: exact parts vs real tensors, activation model vs saved tensors, fit/fail modes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from callbacks.vram_budget import (
    GB,
    VRAMBudget,
    activation_bytes,
    estimate_bytes,
    estimate_memory,
    gradient_bytes,
    optimizer_state_bytes,
    parameter_bytes,
    strategy_layout,
)
from lit_models.archs import COORDINATE_ARCHITECTURES, build_arch, make_config
from lit_models.optim import build_optimizer

SMALL = dict(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_embd=64)


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if torch.is_tensor(t))


@pytest.mark.parametrize("arch", ["gpt", "qtg"])
def test_exact_parts_equal_the_allocated_tensors(arch: str) -> None:
    torch.manual_seed(0)
    net = build_arch(arch, SMALL)
    unique = {p.data_ptr(): p for p in net.parameters()}.values()  # tied head counted once
    assert parameter_bytes(net) == sum(p.numel() * p.element_size() for p in unique)
    x = torch.randint(0, 300, (2, 32))
    logits, aux = net(x)
    (logits.logsumexp(-1).mean() + sum(aux.values())).backward()
    assert gradient_bytes(net) == sum(p.grad.numel() * p.grad.element_size() for p in unique)
    opt = build_optimizer(net, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    opt.step()
    assert optimizer_state_bytes(net, "adamw") == _state_bytes(opt)
    assert optimizer_state_bytes(net, opt) == _state_bytes(opt)
    amsgrad = torch.optim.Adam(net.parameters(), amsgrad=True)
    amsgrad.step()
    assert optimizer_state_bytes(net, amsgrad) == _state_bytes(amsgrad)


def _saved_bytes(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward + CE."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter) and t.untyped_storage().nbytes():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, aux = net(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x.flatten())
        (loss + sum(aux.values())).backward()
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("variant", [("gpt", {}), ("qtg", {}), ("qtg", {"attention": "dot"})])
def test_activation_model_is_close_to_the_saved_tensors(variant: tuple) -> None:
    arch, extra = variant
    net = build_arch(arch, {**SMALL, **extra})
    b, s = 4, 64
    measured = _saved_bytes(net, torch.randint(0, 300, (b, s)))
    modelled, _ = activation_bytes(net.config, b, s, elem=4)
    assert 0.8 <= modelled / measured <= 1.25, f"model {modelled:,} vs saved {measured:,} bytes"


def test_checkpointing_and_mixed_precision_change_the_estimate_as_expected() -> None:
    with torch.device("meta"):
        net = build_arch("qtg", {**SMALL, "block_size": 512})
    full = estimate_memory(net, 8, 512, "32-true")
    ckpt = estimate_memory(net, 8, 512, "32-true", checkpointing=True)
    mixed = estimate_memory(net, 8, 512, "bf16-mixed")
    assert ckpt.activations < full.activations and ckpt.weights == full.weights
    assert mixed.weights == full.weights and mixed.autocast_copies > 0
    assert mixed.activations < full.activations
    assert estimate_memory(net, 8, 512, "bf16-true").weights == full.weights // 2


@pytest.mark.parametrize(("arch", "extra", "full", "recomputed", "transient"), [
    ("gpt", {}, 1724416, 1228800, 768000),
    ("gpt", {"qk_norm": True, "dropout": 0.1, "mlp_ratio": 8 / 3}, 1761280, 1255424, 768000),
    ("qtg", {}, 4337664, 2928640, 1015808),
    ("qtg", {"attention": "dot", "qk_norm": True, "topo_filter": "knn_mean"}, 2641920, 2080768,
     768000),
    ("indra", {"d_model": 32}, 1981952, 1486336, 768000),
])
def test_each_config_states_its_activation_bytes(arch: str, extra: dict, full: int,
                                                 recomputed: int, transient: int) -> None:
    """Each architecture's own byte counts (mixed precision, micro-batch 4 x 64 tokens): saved
    activations as the callback gave them when it read QTG's fields itself (commit 4a09852) for
    gpt and qtg; Indra's own input path and tied head; the transient is the larger of the
    loss's (logits + float32 log-softmax gradients) and one block's backward (QTG: its
    (s, s) gradients)."""
    config = make_config(arch, {**SMALL, **extra})
    assert activation_bytes(config, 4, 64, elem=2) == (full, transient)
    assert config.activation_bytes(4, 64, 2, checkpointing=True) == (recomputed, transient)
    assert make_config(arch, {**SMALL, **extra, "activation_checkpointing": True}
                       ).activation_bytes(4, 64, 2)[0] == recomputed  # the config's own switch


def test_the_peak_is_the_largest_moment_of_a_step() -> None:
    """Weights and optimizer state always; then the largest of backward's start, the forward's
    end (the previous step's gradients still live) and the optimizer step; accumulated
    gradients live through backward."""
    with torch.device("meta"):
        net = build_arch("gpt", SMALL)
    est = estimate_memory(net, 4, 64, "32-true", device="cpu")
    fixed = est.weights + est.optimizer
    assert est.total == fixed + max(est.activations + est.transient,
                                    est.activations + est.forward_transient + est.grads,
                                    est.grads + est.optimizer_step)
    accum = estimate_memory(net, 4, 64, "32-true", device="cpu", accumulate=4)
    assert accum.total >= est.total and accum.accumulating
    cuda = estimate_memory(net, 4, 64, "32-true", device="cuda")
    assert cuda.rounding > 0 and cuda.optimizer_step == 4 * sum(
        p.numel() for p in net.parameters() if p.dim() >= 2)  # foreach: the matrix group at once


def test_strategies_divide_or_add_what_they_should() -> None:
    """FSDP divides weights, gradients and optimizer state by the world size (padded dim-0
    shards) and adds a working set of unsharded parameters; DDP divides nothing and adds the
    gradient buckets; checkpointing cuts activations; the pure function equals the callback's."""
    values = {**SMALL, "n_layer": 4}
    single = estimate_bytes("qtg", values, 4, 64, "bf16-mixed")
    with torch.device("meta"):
        net = build_arch("qtg", values)
    assert single == estimate_memory(net, 4, 64, "bf16-mixed")
    ddp = estimate_bytes("qtg", values, 4, 64, "bf16-mixed", world_size=8)
    assert ddp.weights == single.weights and ddp.communication == single.grads
    assert ddp.total == single.total + single.grads
    fsdp = estimate_bytes("qtg", values, 4, 64, "bf16-mixed", world_size=8, sharded=True)
    for part in ("weights", "grads", "optimizer"):
        full, shard = getattr(single, part), getattr(fsdp, part)
        assert full / 8 <= shard <= full / 8 * 1.1, part
    block = sum(p.numel() for p in net.blocks[0].parameters()) * 4
    root = sum(p.numel() for p in net.parameters()) * 4 - 4 * block
    assert fsdp.communication == 2 * root + 3 * block
    assert fsdp.activations == single.activations
    wide = estimate_bytes("qtg", values, 4, 64, "bf16-mixed", world_size=64, sharded=True)
    assert wide.total < fsdp.total < ddp.total
    ckpt = estimate_bytes("qtg", {**values, "activation_checkpointing": True}, 4, 64, "bf16-mixed")
    assert ckpt.activations < single.activations and ckpt.weights == single.weights


def test_the_callback_reads_the_strategy_from_the_trainer() -> None:
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    assert strategy_layout(SimpleNamespace(world_size=8, strategy=ModelParallelStrategy())) == (8, True)
    assert strategy_layout(SimpleNamespace(world_size=8, strategy=DDPStrategy())) == (8, False)
    assert strategy_layout(SimpleNamespace()) == (1, False)
    trainer, module = _fake_run(batch=4)
    callback = VRAMBudget(mode="warn")
    trainer.world_size, trainer.strategy = 8, ModelParallelStrategy()
    callback.setup(trainer, module, "fit")
    sharded = callback.estimate
    trainer.strategy = DDPStrategy()
    callback.setup(trainer, module, "fit")
    assert sharded.weights < callback.estimate.weights and callback.estimate.communication > 0


def test_the_benchmark_and_the_gpu_checks_run_on_cpu(capsys: pytest.CaptureFixture) -> None:
    from experiments.bench import vram_estimate

    figures = list(vram_estimate.gpu_checks(torch.device("cpu"), tiny=True))
    assert [unit for _, _, unit in figures] == ["GB", "x"] * 3
    assert all(value > 0 for _, value, _ in figures)
    rows = vram_estimate.main(["--quick"])
    assert {r["arch"] for r in rows} == {"gpt", "qtg", "indra"}
    assert all(r["ratio"] > 0 and r["fixed_ratio"] > 0 for r in rows)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("vram_estimate (CPU")
    table = vram_estimate.memory_table()
    assert len(table) == 8 and all(r["w64"] <= r["w1"] for r in table if r["strategy"] == "FSDP")


def test_a_config_without_activation_bytes_is_named() -> None:
    with pytest.raises(ValueError, match="FractalConfig has no activation_bytes"):
        activation_bytes(make_config("fractal", {"vocab_size": 20}, COORDINATE_ARCHITECTURES),
                         1, 8, elem=4)


def _fake_run(batch: int = 8, accum: int = 1, precision: str = "32-true"):
    net = build_arch("qtg", {**SMALL, "block_size": 256})
    trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=batch, block_size=256),
                              accumulate_grad_batches=accum, precision=precision)
    return trainer, SimpleNamespace(net=net)


def _gb(trainer, module, micro: int, accum: int = 1) -> float:
    """What the callback estimates for a fake (single-process, CPU) run."""
    return estimate_memory(module.net, micro, 256, trainer.precision, device="cpu",
                           accumulate=accum).total / GB


def test_fit_mode_lowers_micro_batch_and_keeps_the_effective_batch() -> None:
    trainer, module = _fake_run(batch=8, accum=2)
    target = (_gb(trainer, module, 2, 8) + _gb(trainer, module, 4, 4)) / 2  # 4 does not fit, 2 does
    cb = VRAMBudget(budget_gb=target * 2, target_gb=target, mode="fit")
    cb.setup(trainer, module, "fit")
    assert trainer.datamodule.batch_size == 2 and trainer.accumulate_grad_batches == 8
    assert cb.estimate.total <= target * GB


def test_fit_mode_leaves_a_fitting_run_alone_and_warn_mode_never_changes_it() -> None:
    for mode in ("fit", "warn"):
        trainer, module = _fake_run(batch=8, accum=1)
        target = _gb(trainer, module, 8) * (1.1 if mode == "fit" else 0.5)
        VRAMBudget(budget_gb=10.0, target_gb=target, mode=mode).setup(trainer, module, "fit")
        assert (trainer.datamodule.batch_size, trainer.accumulate_grad_batches) == (8, 1)


def test_fail_mode_names_the_numbers_and_what_to_change() -> None:
    trainer, module = _fake_run()
    target = _gb(trainer, module, 8) / 2
    with pytest.raises(MemoryError, match=r"over target by .*accumulate_grad_batches"):
        VRAMBudget(budget_gb=8.0, target_gb=target, mode="fail").setup(trainer, module, "fit")
    with pytest.raises(MemoryError, match="even micro-batch 1"):
        VRAMBudget(budget_gb=8.0, target_gb=1e-6, mode="fit").setup(trainer, module, "fit")


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(mode="shrink"), "mode"), (dict(target_gb=9.0), "target_gb"),
    (dict(budget_gb=-1), "budget_gb"), (dict(optimizer="lion"), "optimizer"),
])
def test_arguments_are_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VRAMBudget(**kwargs)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_cpu_peak_can_be_reset_so_training_is_measured_alone() -> None:
    """A 256 MB transient before training must not count as training's peak on CPU."""
    from callbacks.vram_budget import measured_peak_bytes, reset_cpu_peak

    big = torch.ones(64 << 20)  # 256 MB, touched
    del big  # large blocks go back to the OS, the high-water mark stays
    before = measured_peak_bytes(torch.device("cpu"))
    rss = reset_cpu_peak()
    after = measured_peak_bytes(torch.device("cpu"))
    assert rss is not None and after < before - (128 << 20) and after >= rss


def test_qtg_on_cuda_keeps_no_score_matrix() -> None:
    """FlexAttention (CUDA) keeps no (s, s) matrix; the block-causal CPU kernel does; the GPT's
    SDPA blocks are the same on both."""
    qtg, gpt = make_config("qtg", SMALL), make_config("gpt", SMALL)
    cpu, cuda = qtg.activation_bytes(4, 64, 2, device="cpu"), qtg.activation_bytes(4, 64, 2, device="cuda")
    square = 8 * 4 * SMALL["n_head"] * 64 * 64
    assert cpu[0] - cuda[0] == SMALL["n_layer"] * (square - 4 * 4 * SMALL["n_head"] * 64)
    assert gpt.activation_bytes(4, 64, 2, device="cpu") == gpt.activation_bytes(4, 64, 2, device="cuda")
