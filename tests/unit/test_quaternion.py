"""Quaternion maps: exact polar round trips, SU(2) inverse, exp/log, codec, fingerprints, baselines."""

from __future__ import annotations

import math

import pytest
import torch

from lit_models.compression import decode
from lit_models.compression.baselines import CastCodec, IntCodec, SVDCodec
from lit_models.compression.codecs import from_payload, pack_bits, to_payload, unpack_bits
from lit_models.compression.fingerprints import fingerprint
from lit_models.compression.quaternion import (
    QuaternionCodec,
    exp_map,
    from_polar,
    hamilton,
    log_map,
    random_unit_quaternion,
    rotate,
    to_polar,
    unrotate,
)
from lit_models.compression.structurizer import QuaternionStructurizer

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(), (1,), (7,), (3, 5), (4, 8), (2, 3, 5), (5, 1, 3, 2), (0, 4)]


def _sample(shape: tuple, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * 10 ** torch.randint(
        -6, 4, shape, generator=gen).to(torch.float64)
    t = t.to(dtype)
    if t.numel() > 2:  # exact zeros and a whole zero quaternion
        t.view(-1)[:2] = 0
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_polar_round_trip_is_exact(shape: tuple, dtype: torch.dtype) -> None:
    t = _sample(shape, dtype)
    polar = to_polar(t)
    assert polar.norms.shape[-1] == math.ceil((math.prod(shape[1:]) if len(shape) > 1 else math.prod(shape)) / 4)
    if polar.norms.numel():
        torch.testing.assert_close(polar.directions.norm(dim=-1), torch.ones_like(polar.norms),
                                   rtol=0, atol=1e-12)
    back = from_polar(polar)
    assert back.shape == t.shape and back.dtype == t.dtype
    if dtype == torch.float64:
        torch.testing.assert_close(back, t, rtol=4e-16, atol=0)
    else:
        assert torch.equal(back, t), "polar round trip must be bit-exact below float64"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_su2_rotation_is_undone_and_keeps_norms(dtype: torch.dtype) -> None:
    t = torch.randn(6, 10, dtype=torch.float64).to(dtype)  # 10 = 2 quaternions + 2 padded slots
    gen = torch.Generator().manual_seed(3)
    left, right = random_unit_quaternion(gen), random_unit_quaternion(gen)
    q = rotate(t, left, right)
    torch.testing.assert_close(q.norm(dim=-1), to_polar(t).norms, rtol=1e-13, atol=0)
    assert not torch.allclose(q[..., 0], to_polar(t).quaternions[..., 0])  # it did rotate
    back = unrotate(q, left, right, t.shape, t.dtype)
    assert back.dtype == dtype and torch.equal(back, t)


def test_su2_is_a_group_action_and_exp_log_invert() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = random_unit_quaternion(gen), random_unit_quaternion(gen)
    q = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(hamilton(a, hamilton(b, q)), hamilton(hamilton(a, b), q))
    v = torch.randn(5, 3, dtype=torch.float64) * 0.9
    torch.testing.assert_close(log_map(exp_map(v)), v)
    torch.testing.assert_close(exp_map(v).norm(dim=-1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(exp_map(torch.zeros(3)), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))


def test_bad_inputs_are_named() -> None:
    with pytest.raises(TypeError, match="float tensor"):
        to_polar(torch.arange(8))
    with pytest.raises(ValueError, match="inf/nan"):
        to_polar(torch.tensor([1.0, float("nan")]), "net.fc.weight")
    with pytest.raises(ValueError, match="unit quaternion"):
        rotate(torch.ones(4), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="dir_bits"):
        QuaternionCodec(dir_bits=0)


@pytest.mark.parametrize("bits", [1, 3, 8, 12, 16])
def test_bit_packing_round_trip(bits: int) -> None:
    codes = torch.randint(0, 1 << bits, (1001,))
    packed = pack_bits(codes, bits)
    assert packed.numel() == math.ceil(1001 * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, 1001), codes)
    with pytest.raises(ValueError, match="out of range"):
        pack_bits(torch.tensor([1 << bits]), bits)


@pytest.mark.parametrize("codebook", ["shared", "tensor"])
def test_quaternion_codec_error_falls_with_bits_and_survives_payload(codebook: str) -> None:
    w = torch.randn(48, 30)  # 30 columns: rows padded to 32
    errors = []
    for dir_bits, norm_bits in ((4, 2), (8, 4)):
        enc = QuaternionCodec(dir_bits, norm_bits, codebook=codebook).encode(w)
        payload, info = to_payload(enc)
        out = decode(from_payload(payload, info))
        assert out.shape == w.shape and out.dtype == w.dtype
        assert torch.equal(out, decode(enc))
        errors.append(float((out - w).norm() / w.norm()))
        code_bytes = math.ceil(48 * 8 * dir_bits / 8) + math.ceil(48 * 8 * norm_bits / 8)
        assert enc.parts["dir_codes"].numel() + enc.parts["norm_codes"].numel() == code_bytes
    assert errors[1] < errors[0] < 0.6
    assert errors[1] < 0.25


def test_quaternion_codec_is_exact_on_codewords_and_keeps_dtype() -> None:
    # a tensor whose quaternions are codewords with two distinct gains decodes (almost) exactly
    codec = QuaternionCodec(dir_bits=4, norm_bits=1, codebook="tensor", iters=3)
    base = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    w = torch.cat([base[0] * 1.0, base[1] * 0.5] * 4).reshape(2, 16)
    out = decode(codec.encode(w))
    torch.testing.assert_close(out, w, rtol=0, atol=2e-3)
    half = decode(QuaternionCodec(4, 2).encode(w.half()))
    assert half.dtype == torch.float16


def test_baselines_round_trip_and_order() -> None:
    w = torch.randn(64, 48)
    err = {}
    for name, codec in {"fp16": CastCodec(), "int8": IntCodec(8), "int4": IntCodec(4),
                        "svd8": SVDCodec(8), "svd_full": SVDCodec(48)}.items():
        out = decode(codec.encode(w))
        assert out.shape == w.shape and out.dtype == w.dtype
        err[name] = float((out - w).norm() / w.norm())
    assert err["fp16"] < 1e-3 < err["int8"] < 0.02 < err["int4"] < 0.2 < err["svd8"]
    assert err["svd_full"] < 1e-3  # no saving at full rank: stored dense fp16
    u, v = torch.randn(64, 3), torch.randn(3, 48)
    assert float((decode(SVDCodec(3).encode(u @ v)) - u @ v).norm() / (u @ v).norm()) < 2e-3


def test_fingerprints_measure_what_they_say() -> None:
    eye = fingerprint(torch.eye(8))
    assert eye["spectrum"]["effective_rank"] == pytest.approx(8)
    assert eye["spectrum"]["condition_number"] == pytest.approx(1)
    rank1 = fingerprint(torch.outer(torch.arange(1.0, 9.0), torch.ones(6)))
    assert rank1["spectrum"]["effective_rank"] == pytest.approx(1, abs=1e-6)
    assert rank1["spectrum"]["rank_99"] == 1
    assert rank1["spectrum"]["spectral_norm"] == pytest.approx(float(torch.arange(1.0, 9.0).norm() * 6**0.5))
    gauss = fingerprint(torch.randn(256, 256, generator=torch.Generator().manual_seed(0)))["quaternion"]
    assert gauss["mean_resultant_length"] < 0.03 and gauss["orthant_entropy"] > 0.99
    assert gauss["ks_first_component_vs_haar"] < 0.03
    aligned = fingerprint(torch.tensor([[1.0, 0.1, 0.0, 0.0]]).repeat(64, 1))["quaternion"]
    assert aligned["mean_resultant_length"] > 0.99 and aligned["ks_first_component_vs_haar"] > 0.5
    with pytest.raises(TypeError, match="floating-point"):
        fingerprint(torch.arange(4))


def test_structurizer_validate_reports_exact_round_trips() -> None:
    report = QuaternionStructurizer(QuaternionCodec(6, 2)).validate(torch.randn(40, 36), "w")
    assert report["polar_exact"] and report["su2_exact"] and report["su2_norms_preserved"]
    assert 0 < report["codec_rel_error"] < 0.5 and report["codec_bits_per_weight"] > 2
