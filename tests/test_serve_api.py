"""The playground's API, through the official openai client against a live server on loopback.

Reference: the same run loaded with load_run and generated with the generation module (same seed) gives the same
text, and the reported log-probabilities are the model's own log-softmax over the prompt and the tokens it wrote.
"""

import concurrent.futures
import json
import threading
import time

import pytest
import torch

from helpers import one_line_error
from serve_fixtures import running_server, tiny_runs

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow  # the tiny runs take ~40 s to train once per session


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tiny_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def url(runs):
    with running_server(runs, workers=2) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def _reference(runs, run_id, prompt_ids, max_tokens, seed, stop_tokens=()):
    """Tokens and log-probabilities straight from load_run + the generation module, as the server should make them."""
    from llmpath.generation import stream_scored
    from llmpath.runs import load_run

    model, tok, _ = load_run(runs / run_id)
    g = torch.Generator().manual_seed(seed)
    steps = list(stream_scored(model, prompt_ids, max_new_tokens=max_tokens, top=3, stop_tokens=list(stop_tokens),
                               generator=g))
    return model, tok, steps


def test_models_lists_the_decoders_and_their_kind(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"gpt/tiny", "chat/tiny", "chat/tiny-sft"}  # BERT and the Transformer do not generate
    assert models["chat/tiny-sft"].kind == "chat" and models["chat/tiny"].kind == "text"  # the base only continues
    assert models["gpt/tiny"].block_size == 32
    assert client.models.retrieve("chat/tiny-sft").kind == "chat"
    with pytest.raises(openai.NotFoundError, match="does not generate"):
        client.models.retrieve("bert/tiny")
    with pytest.raises(openai.NotFoundError, match="no run"):
        client.models.retrieve("gpt/none")


def test_completion_equals_the_generation_module_and_reports_the_models_logprobs(client, runs):
    r = client.completions.create(model="gpt/tiny", prompt="ROMEO:", max_tokens=12, seed=3, logprobs=3)
    tok_ids = _ids(runs, "gpt/tiny", "ROMEO:")
    model, tok, steps = _reference(runs, "gpt/tiny", tok_ids, 12, 3)
    assert r.choices[0].text == tok.decode([s.token for s in steps])
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens == len(tok_ids)
    # the log-probabilities are the model's log-softmax at each position, recomputed in one forward pass
    ids = torch.tensor([tok_ids + [s.token for s in steps]])
    with torch.no_grad():
        logp = model(ids)[0][0].log_softmax(-1)[len(tok_ids) - 1:-1]
    lp = r.choices[0].logprobs
    chosen = logp.gather(1, ids[0, len(tok_ids):, None])[:, 0]
    assert torch.allclose(torch.tensor(lp.token_logprobs), chosen, atol=1e-4)
    best = logp.topk(3)
    for k, alternatives in enumerate(lp.top_logprobs):
        assert sorted(alternatives.values(), reverse=True) == pytest.approx(best.values[k].tolist(), abs=1e-4)
        assert {tok.decode([i]) for i in best.indices[k].tolist()} == set(alternatives)


def _ids(runs, run_id, text):
    from llmpath.runs import load_run

    return load_run(runs / run_id).tokenizer.encode(text)


def test_a_continuation_may_go_past_the_context_as_the_generation_module_does(client, runs):
    """gpt/tiny reads 32 tokens; 40 new ones slide the window, exactly as generation.stream does."""
    r = client.completions.create(model="gpt/tiny", prompt="ROMEO:", max_tokens=40, seed=2)
    _, tok, steps = _reference(runs, "gpt/tiny", _ids(runs, "gpt/tiny", "ROMEO:"), 40, 2)
    assert r.usage.completion_tokens == 40 and r.choices[0].text == tok.decode([s.token for s in steps])


def test_streaming_gives_the_same_text_as_one_response(client):
    kw = dict(model="gpt/tiny", prompt="KING:", max_tokens=15, seed=7, temperature=0.9, top_p=0.95)
    whole = client.completions.create(**kw).choices[0]
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole.text
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "length"
    assert len([c for c in chunks if c.choices[0].text]) > 5  # token by token, not one block


def test_chat_uses_the_template_and_stops_at_im_end(client, runs):
    from llmpath.chat.template import encode_chat

    messages = [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "你好"}]
    _, tok, _ = _reference(runs, "chat/tiny-sft", [0], 1, 0)
    prompt, _ = encode_chat(tok, messages, add_generation_prompt=True)
    stops = [tok.special_tokens[s] for s in ("<|im_end|>", "<|im_start|>", "<|endoftext|>")]
    split_chars = 0
    for seed in range(4):
        r = client.chat.completions.create(model="chat/tiny-sft", messages=messages, max_tokens=20, seed=seed)
        _, _, steps = _reference(runs, "chat/tiny-sft", prompt, 20, seed, stops)
        written = [s.token for s in steps if s.token not in stops]
        assert r.choices[0].message.content == tok.decode(written)
        assert r.choices[0].finish_reason == ("stop" if steps[-1].token in stops else "length")
        assert r.usage.prompt_tokens == len(prompt)
        stream = client.chat.completions.create(model="chat/tiny-sft", messages=messages, max_tokens=20, seed=seed,
                                                stream=True, logprobs=True, top_logprobs=2)
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
        scored = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        # a token holding part of a character's bytes is sent with the token that completes it: no empty chunks
        assert all(c.choices[0].delta.content for c in chunks if c.choices[0].logprobs)
        split_chars += sum(len(c.choices[0].logprobs.content) > 1 for c in chunks if c.choices[0].logprobs)
        assert [t.logprob for t in scored] == pytest.approx([s.logprob for s in steps[:len(scored)]], abs=1e-4)
        assert all(len(t.top_logprobs) == 2 for t in scored)
    assert split_chars > 0  # the tiny BPE leaves many characters in pieces: the grouping above was exercised


def test_stop_sequences_cut_the_text_in_both_modes(client):
    kw = dict(model="chat/tiny", prompt="The ", max_tokens=30, seed=1)
    full = client.completions.create(**kw).choices[0].text
    stop = full[8:10]  # two characters from inside the text: the answer must end just before their first occurrence
    expected = full[:full.index(stop)]
    cut = client.completions.create(stop=[stop, "never-there"], **kw).choices[0]
    assert (cut.text, cut.finish_reason) == (expected, "stop")
    chunks = list(client.completions.create(stop=stop, stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == expected and chunks[-1].choices[0].finish_reason == "stop"


def test_temperature_zero_is_greedy_and_seed_makes_sampling_repeatable(client):
    greedy = {client.completions.create(model="gpt/tiny", prompt="A", max_tokens=10, temperature=0, seed=s)
              .choices[0].text for s in range(3)}
    assert len(greedy) == 1
    sampled = [client.completions.create(model="gpt/tiny", prompt="A", max_tokens=10, seed=s).choices[0].text
               for s in (5, 5, 6)]
    assert sampled[0] == sampled[1] != sampled[2]


@pytest.mark.parametrize("body, status, words", [
    ({"model": "gpt/none", "prompt": "x"}, 404, "no run 'gpt/none'"),
    ({"model": "gpt/tiny", "prompt": "x", "max_tokens": -1}, 400, "max_tokens=-1"),
    ({"model": "gpt/tiny", "prompt": "x", "max_tokens": 2000}, 400, "max_tokens=2000 is out of range"),
    ({"model": "gpt/tiny", "prompt": "x" * 40}, 400, "reads at most 32"),
    ({"model": "gpt/tiny", "prompt": "x", "temperature": 3}, 400, "temperature=3"),
    ({"model": "gpt/tiny", "prompt": "x", "n": 2}, 400, "n > 1"),
    ({"model": "gpt/tiny", "prompt": "¤"}, 400, "not in this model's character vocabulary"),
    ({"model": "gpt/tiny", "prompt": 3}, 400, "prompt must be a string"),
    ({"prompt": "x"}, 400, "model is missing"),
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "send a JSON object"),
])
def test_bad_completion_requests_get_a_4xx_and_the_server_keeps_serving(url, client, body, status, words):
    data = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(url + "/v1/completions", content=data, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and "\n" not in err["message"] and err["type"] == "invalid_request_error"
    assert client.models.list().data  # still serving


def test_bad_chat_requests_through_the_client(client):
    with pytest.raises(openai.NotFoundError, match="no run"):
        client.chat.completions.create(model="chat/nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="not a chat model"):
        client.chat.completions.create(model="gpt/tiny", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="message 0"):
        client.chat.completions.create(model="chat/tiny-sft", messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="ask for at most"):  # a reply must fit with the question
        client.chat.completions.create(model="chat/tiny-sft", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=200)
    with pytest.raises(openai.BadRequestError, match="reads at most 128"):
        client.chat.completions.create(model="chat/tiny-sft", messages=[{"role": "user", "content": "长" * 200}])
    assert client.chat.completions.create(model="chat/tiny-sft", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices


def test_a_too_large_body_is_refused(runs):
    with running_server(runs, max_body_bytes=2000) as base:
        r = httpx.post(base + "/v1/completions", json={"model": "gpt/tiny", "prompt": "x" * 5000})
        assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
        assert httpx.get(base + "/v1/models").status_code == 200


def test_concurrent_streams_each_finish_with_their_own_text(client):
    kw = [dict(model="chat/tiny", prompt="The ", max_tokens=25, seed=s) for s in range(6)]
    alone = [client.completions.create(**k).choices[0].text for k in kw]

    def streamed(k):
        return "".join(c.choices[0].text for c in client.completions.create(stream=True, **k))

    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # 6 at once against 2 generation slots: 4 wait
        together = list(pool.map(streamed, kw))
    assert together == alone


def test_generation_runs_off_the_event_loop(url, client, monkeypatch):
    """While a slow generation runs, other requests are answered at once."""
    from llmpath.serve.models import Completion

    real_iter = Completion.__iter__

    def slow(self):
        for piece in real_iter(self):
            time.sleep(0.3)
            yield piece

    monkeypatch.setattr(Completion, "__iter__", slow)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (client.completions.create(model="gpt/tiny", prompt="A", max_tokens=8,
                                                                         temperature=0), done.set()))
    worker.start()
    time.sleep(0.3)
    start = time.monotonic()
    assert httpx.get(url + "/healthz").json() == {"ok": True}
    assert time.monotonic() - start < 1.0 and not done.is_set()
    worker.join(30)
    assert done.is_set()


def test_runs_metrics_and_files(url, runs):
    listing = httpx.get(url + "/api/runs").json()
    by_id = {r["id"]: r for r in listing["runs"]}
    assert set(by_id) == {"transformer/tiny", "gpt/tiny", "bert/tiny", "chat/tiny", "chat/tiny-sft"}
    assert by_id["gpt/tiny"]["inspect"] == ["tokens", "attention", "kv"]
    assert by_id["bert/tiny"]["inspect"] == ["tokens", "attention"] and not by_id["bert/tiny"]["generates"]
    assert listing["report"] == "/files/tour/report.html"
    rows = httpx.get(url + "/api/runs/gpt/tiny/metrics").json()["rows"]
    expected = [json.loads(line) for line in (runs / "gpt/tiny/metrics.jsonl").read_text().splitlines()]
    assert rows == expected and any("val_loss" in r for r in rows)
    assert httpx.get(url + "/api/runs/gpt/nope/metrics").status_code == 404
    assert "tour report" in httpx.get(url + "/files/tour/report.html").text
    assert httpx.get(url + "/files/gpt/tiny/ckpt/best.pt").status_code == 404  # weights are not served
    assert httpx.get(url + "/files/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert httpx.get(url + "/").headers["content-type"].startswith("text/html")
    font = httpx.get(url + "/fonts/cjk.otf")  # Noto Sans CJK SC from mplfonts, for machines without a CJK font
    assert font.status_code == 200 and font.headers["content-type"] == "font/otf" and font.content[:4] == b"OTTO"


def test_look_inside_views(url, runs):
    from llmpath.runs import load_run

    tok = load_run(runs / "chat/tiny-sft").tokenizer
    text = "你好, world"
    r = httpx.post(url + "/api/tokenize", json={"model": "chat/tiny-sft", "text": text}).json()
    assert [t["id"] for t in r["tokens"]] == tok.encode(text) and r["chars"] == len(text)
    att = httpx.post(url + "/api/attention", json={"model": "bert/tiny", "text": "to be or not"}).json()
    maps = torch.tensor(att["maps"])  # (L, H, T, T) with [CLS] and [SEP]
    assert att["kind"] == "bidirectional" and maps.shape[:2] == (att["n_layer"], att["n_head"])
    assert maps.shape[2] == maps.shape[3] == len(att["tokens"]) and att["tokens"][0] == "[CLS]"
    assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:3]), atol=1e-3)
    kv = httpx.post(url + "/api/kv", json={"model": "chat/tiny-sft", "text": text}).json()
    assert kv["prompt_tokens"] == len(tok.encode(text)) and kv["points"][-1] == [128, 128 * kv["bytes_per_token"]]
    bad = httpx.post(url + "/api/kv", json={"model": "bert/tiny", "text": "hi"})
    assert bad.status_code == 400 and "no kv view" in bad.json()["error"]["message"]


def test_serve_command_refuses_bad_options_in_one_line(capsys, tmp_path):
    from llmpath.cli import main

    assert main(["serve", f"--runs={tmp_path / 'none'}"]) == 2
    assert "no runs folder" in one_line_error(capsys)
    assert main(["serve", "--port=70000"]) == 2
    assert "--port" in one_line_error(capsys)
    assert main(["serve", "--help"]) == 0 and "OpenAI-compatible" in capsys.readouterr().out


def test_the_serve_command_serves_and_stops_cleanly_on_ctrl_c(runs):
    """`llmpath serve` as a learner starts it: models listed, Ctrl-C ends it with exit 0 and no traceback."""
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llmpath", "serve", f"--runs={runs}", f"--port={port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "llmpath serve did not start"
                time.sleep(0.2)
        assert {m["id"] for m in models["data"]} == {"gpt/tiny", "chat/tiny", "chat/tiny-sft"}
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert f"http://127.0.0.1:{port}" in out and "3 model(s)" in out
