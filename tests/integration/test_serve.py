"""``lhp serve`` end to end on a tiny trained checkpoint: a real uvicorn server on a loopback port,
driven with httpx and the official ``openai`` client; bad input, the bounded queue, H2Q stores,
and the benchmark's ``--quick`` mode."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from openai import OpenAI

from datamodules.tokenizers import ByteTokenizer
from experiments import h2q
from experiments.generate import generate_text
from experiments.serve import build_app, serve_in_thread
from experiments.serving.app import create_app
from experiments.serving.engine import Engine, Metrics, RowText, ServedModel, load_served_model
from lhp.errors import UserError
from lit_models.archs import build_arch
from lit_models.compression.store import WeightStore
from lit_models.generation import generate
from tests.conftest import compose_config

_TRAINED: dict[Path, Path] = {}


def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """last.ckpt of a 30-step ``smoke_tiny`` GPT (byte tokenizer, 128-token context), trained
    once per session (the browser test shares it)."""
    key = tmp_path_factory.getbasetemp()
    if key not in _TRAINED:
        from experiments.train import train

        out = tmp_path_factory.mktemp("serve_ckpt") / "run"
        train(compose_config("train", ["experiment=smoke_tiny", "data.block_size=128",
                                       "trainer.max_steps=30", "test=false", "logger=csv"],
                             out, data_dir))
        _TRAINED[key] = out / "checkpoints" / "last.ckpt"
    return _TRAINED[key]


def serve_config(ckpt: Path, out: Path, *overrides: str):
    return compose_config("serve", [f"ckpt_path={ckpt}", *overrides], out)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return tiny_checkpoint(tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def server(ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """(base URL, model name) of a server on a free loopback port."""
    torch.set_num_threads(1)
    app = build_app(serve_config(ckpt, tmp_path_factory.mktemp("serve"), "max_tokens_limit=256"))
    with serve_in_thread(app) as url:
        yield url, httpx.get(f"{url}/v1/models").json()["data"][0]["id"]


def test_health_models_and_chat_page(server) -> None:
    url, name = server
    assert name == "smoke_tiny"
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == name
    models = httpx.get(f"{url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["context_length"] == 128
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text
    assert 'id="temperature"' in page.text and 'id="top_p"' in page.text  # settings visible


def test_greedy_completion_is_what_generate_gives(server, ckpt: Path, tmp_path: Path) -> None:
    """Same loader, same KV-cache decoding: temperature 0 gives ``lhp generate``'s text."""
    url, name = server
    prompt = "where is mary? "
    body = {"model": name, "prompt": prompt, "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    got = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    [want] = generate_text(compose_config("generate", [
        f"ckpt_path={ckpt}", f"prompt='{prompt}'", "max_new_tokens=40", "temperature=0"], tmp_path))
    assert got["choices"][0]["text"] == want and want
    assert got["choices"][0]["finish_reason"] == "length"
    assert got["usage"]["completion_tokens"] == 40
    assert got["usage"]["prompt_tokens"] == len(prompt.encode())


def _stream(url: str, path: str, body: dict) -> list[dict]:
    chunks = []
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    return [json.loads(c) for c in chunks[:-1]]


def test_streaming_gives_the_same_text_token_by_token(server) -> None:
    url, name = server
    body = {"model": name, "messages": [{"role": "user", "content": "where is mary?"}],
            "max_tokens": 30, "temperature": 0.9, "seed": 7, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    whole = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    chunks = _stream(url, "/v1/chat/completions", body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    text = whole["choices"][0]["message"]["content"]
    assert "".join(deltas) == text and text
    assert sum(1 for d in deltas if d) > 1  # token by token, not one block
    assert chunks[-1]["usage"] == whole["usage"]  # include_usage: a last chunk with no choices
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == whole["choices"][0]["finish_reason"]


def test_official_openai_client_works_unchanged(server) -> None:
    url, name = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [name]
    chat = client.chat.completions.create(
        model=name, messages=[{"role": "system", "content": "Answer briefly."},
                              {"role": "user", "content": "where is mary?"}],
        max_tokens=16, temperature=0.7, top_p=0.9, seed=3, n=2, stop=["\n\n"])
    assert [c.index for c in chat.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") and "\n\n" not in c.message.content
               for c in chat.choices)
    assert chat.usage.completion_tokens <= 32
    pieces = [c.choices[0].text for c in client.completions.create(
        model=name, prompt="the", max_tokens=12, temperature=0, stream=True,
        extra_body={"ignore_eos": True}) if c.choices]
    assert len([p for p in pieces if p]) > 1
    again = client.completions.create(model=name, prompt="the", max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert again.choices[0].text == "".join(pieces)


BAD_REQUESTS = [  # (path, raw body, the field the error must name)
    ("/v1/completions", '{"prompt": "x", "max_tokens": ', "body"),
    ("/v1/completions", '{"prompt": "x", "max_tokenz": 5}', "max_tokenz"),
    ("/v1/completions", '{"prompt": "x", "max_tokens": "5"}', "max_tokens"),
    ("/v1/completions", '{"prompt": "x", "temperature": "hot"}', "temperature"),
    ("/v1/completions", '{"prompt": 17}', "prompt"),
    ("/v1/completions", '{"max_tokens": 5}', "prompt"),
    ("/v1/completions", '{"prompt": "x", "max_tokens": 0}', "max_tokens"),
    ("/v1/completions", '{"prompt": "x", "max_tokens": -3}', "max_tokens"),
    ("/v1/completions", '{"prompt": "x", "max_tokens": 100000}', "max_tokens"),
    ("/v1/completions", '{"prompt": "x", "temperature": -0.5}', "temperature"),
    ("/v1/completions", '{"prompt": "x", "top_p": 0}', "top_p"),
    ("/v1/completions", '{"prompt": "x", "n": 99}', "n"),
    ("/v1/completions", '{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', "stop"),
    ("/v1/completions", '{"prompt": "x", "model": "gpt-4"}', "model"),
    ("/v1/completions", '{"prompt": "' + "where is mary? " * 20 + '"}', "prompt"),
    ("/v1/completions", json.dumps({"prompt": "x" * (1 << 20)}), "prompt"),
    ("/v1/completions", "[1, 2]", "body"),
    ("/v1/chat/completions", '{"messages": []}', "messages"),
    ("/v1/chat/completions", '{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
    ("/v1/chat/completions", '{"messages": [{"role": "user"}]}', "messages[0].content"),
    ("/v1/chat/completions", '{"messages": [{"role": "assistant", "content": "x"}]}', "messages"),
]


def test_bad_requests_are_4xx_naming_the_field_and_the_server_keeps_serving(server) -> None:
    url, name = server
    with httpx.Client(base_url=url, timeout=60) as client:
        for path, raw, field in BAD_REQUESTS:
            r = client.post(path, content=raw, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (raw[:80], r.status_code, r.text[:200])
            error = r.json()["error"]
            assert error["param"] == field and error["message"].startswith(field), (raw[:80], error)
        # a client that leaves mid-stream: the server closes cleanly and goes on
        with client.stream("POST", "/v1/completions", json={
                "prompt": "the", "max_tokens": 200, "stream": True, "ignore_eos": True}) as r:
            next(r.iter_lines())
        long = "where is mary? " * 20  # > 128 tokens: cut from the left when asked
        cut = client.post("/v1/completions", json={"prompt": long, "truncate": "left", "max_tokens": 4})
        assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 128
        good = client.post("/v1/completions", json={"model": name, "prompt": "the", "max_tokens": 5})
        assert good.status_code == 200 and good.json()["choices"][0]["finish_reason"] in ("stop", "length")
        metrics = client.get("/metrics").text
    assert 'lhp_serve_requests_total{route="/v1/completions",status="400"}' in metrics
    for series in ("lhp_serve_request_latency_seconds_bucket", "lhp_serve_time_to_first_token_seconds_count",
                   "lhp_serve_generated_tokens_total", "lhp_serve_generated_tokens_per_second_count",
                   "lhp_serve_queue_depth"):
        assert series in metrics


def test_a_full_queue_answers_429_with_retry_after(ckpt: Path, tmp_path: Path) -> None:
    app = build_app(serve_config(ckpt, tmp_path, "max_queue=1"))
    body = {"prompt": "the", "max_tokens": 512, "ignore_eos": True}
    with serve_in_thread(app) as url, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{url}/v1/completions", json=body, timeout=120),
                                range(4)))
        codes = sorted(r.status_code for r in answers)
        busy = [r for r in answers if r.status_code == 429]
        assert busy and set(codes) <= {200, 429} and codes.count(200) >= 1, codes
        assert int(busy[0].headers["Retry-After"]) >= 1 and busy[0].json()["error"]["type"] == "rate_limit_error"
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "the", "max_tokens": 3},
                          timeout=60).status_code == 200


def test_files_that_are_not_a_platform_model_stop_at_start(ckpt: Path, tmp_path: Path) -> None:
    junk = tmp_path / "model.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="model.ckpt"):
        build_app(serve_config(junk, tmp_path / "a"))
    store = tmp_path / "weights.db"
    h2q.main(["structure", str(ckpt), str(store), "--raw", "--no-fingerprints"])
    with pytest.raises(UserError, match="weights="):  # weights only: says how to serve it
        build_app(serve_config(store, tmp_path / "b"))
    with pytest.raises(UserError, match="not an H2Q weight store"):
        build_app(serve_config(ckpt, tmp_path / "c", f"weights={ckpt}"))


def test_serving_from_an_h2q_store_decodes_its_weights(ckpt: Path, tmp_path: Path) -> None:
    raw, coded = tmp_path / "raw.db", tmp_path / "coded.db"
    h2q.main(["structure", str(ckpt), str(raw), "--raw", "--no-fingerprints"])
    h2q.main(["structure", str(ckpt), str(coded), "--dir-bits", "6", "--norm-bits", "2",
              "--no-fingerprints"])
    plain = load_served_model(ckpt)
    prompt = torch.tensor([plain.tokenizer.encode("where is mary?")])
    want = generate(plain.net, prompt, 20, temperature=0)
    from_raw = load_served_model(ckpt, weights=raw)
    assert torch.equal(generate(from_raw.net, prompt, 20, temperature=0), want)  # lossless store
    from_coded = load_served_model(ckpt, weights=coded)
    name = "blocks.0.mlp.fc.weight"
    with WeightStore(coded, "r") as store:
        decoded = store.load(f"net.{name}")
        assert store.info(f"net.{name}").codec  # this layer is quaternion-coded
    assert torch.equal(from_coded.net.state_dict()[name], decoded)
    assert not torch.equal(decoded, plain.net.state_dict()[name])


@pytest.mark.parametrize("arch,extra", [("gpt", {}), ("gpt", {"linear": "phm", "phm_n": 4}),
                                        ("qtg", {}), ("indra", {})], ids=["gpt", "phm_gpt", "qtg", "indra"])
def test_every_token_architecture_streams_with_the_kv_cache(arch: str, extra: dict) -> None:
    """Random weights (decoding does not care): the streamed greedy tokens are ``generate``'s."""
    torch.manual_seed(0)
    net = build_arch(arch, {"vocab_size": 258, "n_layer": 1, "n_head": 4, "n_embd": 32,
                            "block_size": 64, **extra}).eval()
    tok = ByteTokenizer()
    prompt = "where is mary?"
    want = generate(net, torch.tensor([tok.encode(prompt)]), 12, temperature=0)[0, len(prompt):]
    app = create_app(Engine(ServedModel(arch, net, tok, "cpu", "random"), Metrics()))
    with serve_in_thread(app) as url:
        chunks = _stream(url, "/v1/completions", {"prompt": prompt, "max_tokens": 12,
                                                  "temperature": 0, "ignore_eos": True})
    assert "".join(c["choices"][0]["text"] for c in chunks) == tok.decode(want.tolist())


def test_stop_strings_never_leak_and_partial_characters_wait() -> None:
    row = RowText(("STOP",))
    assert row.step("abc S") == ("abc ", False)  # "S" may start "STOP": held back
    assert row.step("abc ST") == ("", False)
    assert row.step("abc STx") == ("STx", False)
    assert row.step("abc STx\ufffd") == ("", False)  # an incomplete UTF-8 character waits
    assert row.step("abc STxé STOP and more") == ("é ", True)
    assert RowText(()).flush("tail") == "tail"


def test_top_p_keeps_the_nucleus() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.9, -3.0]])
    g = torch.Generator().manual_seed(0)
    from lit_models.generation import _sample

    seen = {int(_sample(logits, 1.0, None, g, top_p=0.5)) for _ in range(50)}
    assert seen == {1}  # the top token alone already holds >= 0.5 of the mass
    seen = {int(_sample(logits, 1.0, None, g, top_p=0.9)) for _ in range(200)}
    assert seen == {1, 2}


def test_quick_benchmark(ckpt: Path, tmp_path: Path) -> None:
    from experiments.bench import serve as bench

    report = bench.main(["--quick", "--ckpt", str(ckpt), "--out", str(tmp_path / "r.json")])
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert rows and all(r["errors"] == 0 and r["requests"] > 0 for r in rows)
    assert {r["stream"] for r in rows} == {True, False}
    assert report["server_vs_generate"] > 0
