"""Generation speed of a chat run: HF generate(), our stream() and stream_scored(), and the playground's API.

    .venv/bin/python benchmarks/bench_serve.py                    # runs/chat/small-sft, 96 new tokens, 10 rounds
    .venv/bin/python benchmarks/bench_serve.py --quick            # 32 new tokens, 3 rounds
    .venv/bin/python benchmarks/bench_serve.py --run runs/chat/base-sft --new-tokens 64 --rounds 5

One trained run (`llmpath chat sft` writes runs/chat/small-sft), greedy, batch 1, a prompt of about 16 tokens and N new
tokens, in one process:
  1. HF: `transformers.LlamaForCausalLM` holding the run's weights (`llama.hf.to_hf_state_dict`), `generate()` with
     do_sample=False and min_new_tokens=N (its stop tokens cannot end it early);
  2. ours: `generation.stream` (KV cache), no stop tokens;
  3. ours with probabilities: `generation.stream_scored(top=5)`, as the server calls it;
  4. the API: POST /v1/completions with stream=true (and once more with logprobs=5), temperature 0, to the playground
     app served by uvicorn on a loopback port in a thread of this process (llmpath.serve.app.background_server), read
     with httpx; the time runs from the request to `data: [DONE]`.
Between 3 and 4, the server's own generation without HTTP (`ServedModel.complete`, what the API iterates) shows
where the API's extra time goes.
The server keeps the model's stop tokens (<|im_end|>, ...: the API has no switch for them), so the prompt is the
first of PROMPTS whose greedy continuation holds no stop token for N tokens; the script asserts that every way writes
the same N tokens (the API: the same text, completion_tokens = N and finish_reason "length") before timing. The ways
are timed in interleaved rounds (bench_gpt.interleaved_times), median kept. "time / ours" > 1: slower than our
stream(); API / direct is what serving costs (HTTP, JSON, SSE, the event loop and its worker thread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from bench_gpt import interleaved_times, matmul_peak  # the GPT benchmark's timing (benchmarks/ is on sys.path)

from llmpath.generation import stream, stream_scored
from llmpath.llama.hf import config_to_hf, to_hf_state_dict
from llmpath.runs import load_run
from llmpath.serve.app import background_server
# Candidate prompts of about 16 tokens; small chat models end most English text with <|im_end|> at once
PROMPTS = ["我喜欢这家餐厅，菜很好吃，服务也很好，", "这个手机质量很差，用了两天就坏了，",
           "从前有一座山，山里有一座庙，庙里有一个老和尚，", "春眠不觉晓，处处闻啼鸟。夜来风雨声，",
           "这本书写得很好，我推荐给大家。书里"]


def hf_twin(model, stops: list[int]):
    """A LlamaForCausalLM with our model's weights (no hub); eos = the stop tokens, as a served model has them."""
    cfg = transformers.AutoConfig.for_model(**config_to_hf(model.cfg, eos_token_id=stops or None))
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.load_state_dict(to_hf_state_dict(model), strict=True)
    return hf


def pick_prompt(model, tok, stops: list[int], n: int) -> tuple[str, list[int], list[int]]:
    """The first candidate whose greedy n tokens hold no stop token: (text, prompt ids, the n new ids)."""
    for text in PROMPTS:
        ids = tok.encode(text, disallowed_special=())
        if len(ids) + n > model.cfg.block_size:
            continue
        new = list(stream(model, ids, n, greedy=True))
        if not set(new) & set(stops):
            return text, ids, new
    sys.exit(f"every candidate prompt hits a stop token within {n} greedy tokens; try a smaller --new-tokens")


def read_sse(client, url: str, body: dict, ttft: list[float] | None = None) -> tuple[str, list[dict]]:
    """POST a streaming completion and read it to `data: [DONE]`: (text, the chunks). Appends time to first chunk."""
    t0 = time.perf_counter()
    text, chunks = [], []
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            if ttft is not None and not chunks:
                ttft.append(time.perf_counter() - t0)
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"the server answered an error: {chunk['error']['message']}")
            chunks.append(chunk)
            text.extend(c["text"] for c in chunk["choices"])
    return "".join(text), chunks


def first_token_time(gen, ttft: list[float]) -> None:
    """Run a generator of tokens to its end, recording the seconds until its first token."""
    t0 = time.perf_counter()
    for k, _ in enumerate(gen):
        if k == 0:
            ttft.append(time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="", help="a decoder run folder runs/<topic>/<name> (default runs/chat/small-sft)")
    ap.add_argument("--new-tokens", type=int, default=96, help="tokens every way writes (prompt + these must fit)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the playground's default is 1)")
    ap.add_argument("--quick", action="store_true", help="32 new tokens, 3 rounds")
    args = ap.parse_args()
    run = Path(args.run or "runs/chat/small-sft")
    if not (run / "ckpt").is_dir():
        print(f"no trained run in {run}; train it first: llmpath chat sft (writes runs/chat/small-sft)")
        sys.exit(2 if args.run else 0)  # `make bench` before `make tour`: skipped, the other benchmarks still run
    n, rounds = (32, 3) if args.quick else (args.new_tokens, args.rounds)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # no notes about the generation config
    import httpx

    from llmpath.serve.models import ModelStore, Sampling, ServedModel

    run_id = f"{run.parent.name}/{run.name}"
    loaded = load_run(run)
    model, tok = loaded.model, loaded.tokenizer
    served = ServedModel(ModelStore(run.parent.parent).info(run_id), loaded)  # the server's generation, no HTTP
    stops = served.stop_tokens()
    hf = hf_twin(model, stops)
    text, ids, want = pick_prompt(model, tok, stops, n)
    prompt = torch.tensor([ids])
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, httpx {httpx.__version__}, "
          f"{torch.get_num_threads()} thread(s), fp32; 1024x1024 matmul {matmul_peak() / 1e9:.0f} GFLOP/s "
          f"(a gauge of the machine's load)")
    params = sum(p.numel() for p in model.parameters())
    print(f"run {run_id}: {params:,} parameters, block_size {model.cfg.block_size}; "
          f"prompt {text!r} ({len(ids)} tokens) + {n} new tokens, greedy, batch 1; stop tokens {stops} never hit")

    def hf_generate() -> list[int]:
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=n,
                          min_new_tokens=n, pad_token_id=stops[0] if stops else 0)
        return out[0, len(ids):].tolist()

    with background_server(run.parent.parent) as base, httpx.Client(timeout=120) as client:
        url = f"{base}/v1/completions"
        body = {"model": run_id, "prompt": text, "max_tokens": n, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        scored_body = {**body, "logprobs": 5}

        # the same tokens every way, before any timing
        assert hf_generate() == want, "HF generate() and our stream() differ"
        scored = list(stream_scored(model, ids, n, top=5, greedy=True))
        assert [s.token for s in scored] == want, "stream_scored() and stream() differ"
        want_text = tok.decode(want)
        for b in (body, scored_body):
            got, chunks = read_sse(client, url, b)
            usage = chunks[-1]["usage"]
            reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
            assert got == want_text, f"the API's text differs from stream()'s:\n{got!r}\n{want_text!r}"
            assert usage["completion_tokens"] == n and reasons[-1] == "length", f"the API wrote {usage}, {reasons[-1]}"
        # chunks: those of the logprobs=5 request, the loop's last
        lps = [lp for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
               for lp in c["choices"][0]["logprobs"]["token_logprobs"]]
        assert torch.allclose(torch.tensor(lps), torch.tensor([s.logprob for s in scored]), atol=1e-4), \
            "the API's logprobs differ from stream_scored()'s"

        assert "".join(p.text for p in served.complete(ids, Sampling(n, temperature=0))) == want_text, \
            "ServedModel.complete() and stream() differ"

        ttft = {k: [] for k in ("ours", "scored", "served", "api", "api5")}
        ways = {
            "HF `LlamaForCausalLM.generate()`": hf_generate,
            "ours `stream()`": lambda: first_token_time(stream(model, ids, n, greedy=True), ttft["ours"]),
            "ours `stream_scored(top=5)`": lambda: first_token_time(
                stream_scored(model, ids, n, top=5, greedy=True), ttft["scored"]),
            "the server's `ServedModel.complete`, no HTTP": lambda: first_token_time(
                served.complete(ids, Sampling(n, temperature=0)), ttft["served"]),
            "API `/v1/completions`, stream": lambda: read_sse(client, url, body, ttft["api"]),
            "API `/v1/completions`, stream, logprobs=5": lambda: read_sse(client, url, scored_body, ttft["api5"]),
        }
        times = interleaved_times(ways, rounds, 1)
    first = dict(zip(ways, [None, *ttft.values()]))
    med = {k: statistics.median(t) for k, t in times.items()}
    base_t = med["ours `stream()`"]
    print(f"\n## greedy generation, median of {rounds} rounds; first token: median time from the call / request")
    print("| way | tokens/s | time / ours `stream()` | first token |\n|---|---|---|---|")
    for k, s in med.items():
        f = first[k]
        ft = f"{1e3 * statistics.median(f[-rounds:]):.1f} ms" if f else "-"  # the last `rounds`: after the warm-up
        print(f"| {k} | {n / s:,.0f} | {s / base_t:.2f}x | {ft} |", flush=True)
    hf_t, _, scored_t, served_t, api_t, api5_t = med.values()
    print(f"\nHF / ours direct (time): {hf_t / base_t:.2f}x; serving overhead (API time / direct time): "
          f"{api_t / base_t:.2f}x without logprobs ({api_t / served_t:.2f}x vs ServedModel.complete), "
          f"{api5_t / scored_t:.2f}x with logprobs=5 (vs stream_scored); the same tokens every way")
    print(f"(matmul gauge at the end: {matmul_peak() / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
