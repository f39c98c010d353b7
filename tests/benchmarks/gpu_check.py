"""A first check of a GPU for the paper profile: can it train and sample a Llama-2-7B-shaped model?

    python tests/benchmarks/gpu_check.py --out $OUT/gpu_check.json

Expected runtime on an H200: 3-5 minutes (an estimate, not measured yet; keep 8 in hand), probably
most of it in part b's 13 GB save and 4-bit reload.

Nothing comes from the hub: the model is a randomly initialised `LlamaForCausalLM` of Llama-2-7B's
shape (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32000) fed random token ids, so the
numbers are speed and memory only. Parts (`--parts abcde`, default all), one printed line each:

  a. the device: name, memory, torch/CUDA versions, bf16 support, package versions;
  b. QLoRA SFT: NF4 4-bit base (bitsandbytes, compute in bf16, double quantization), LoRA r=64 on
     q,k,v,o,gate,up,down, non-reentrant activation checkpointing, batch 8 x 512 tokens, AdamW on
     the adapters; 1 warm-up step, then 3 timed optimizer steps;
  c. the same with a bf16 base (no 4-bit);
  d. `model.generate` with the KV cache in bf16: 64 prompts of 128 tokens, 128 new tokens sampled;
  e. one PPO update as `rlreason.ppo` runs it (eval mode, adapters on the 4-bit base unless
     `--ppo-base bf16`): policy log-probs and a value head (a Linear on the last hidden state),
     reference log-probs with the adapters disabled, then clipped policy loss + clipped value loss,
     backward and an optimizer step per minibatch of 16, over 32 sequences x 384 tokens.

Throughput is "model FLOPs": 6 * N * tokens / time, N the matmul parameters (all but the input
embedding; attention's score FLOPs, ~2% at 512 tokens, are left out). With LoRA the base's weight
gradients (2N a token) are skipped but checkpointing recomputes the forward (2N), so the executed
work is also about 6N a token; 4-bit dequantization costs time, not FLOPs. The fraction is of
`--peak-tflops` (default 989, the H100/H200 SXM dense bf16 peak). Peak memory is
`torch.cuda.max_memory_allocated` from the part's start, after its model is built; "from X" is what
was allocated then (its weights, and the 4-bit model that part e reuses while c and d run).

Part b writes the random bf16 model to a temporary folder (13 GB, `--tmpdir`) and loads it back
quantized, the documented path (`from_pretrained(..., quantization_config=BitsAndBytesConfig)`).
A part whose package (transformers, peft, bitsandbytes) is missing prints that it is skipped; a part
that fails prints the error on one line and the next part runs. All numbers go to `--out` (default
`$OUT/gpu_check.json`, else `./gpu_check.json`), rewritten after each part.

Without CUDA the script exits, unless `--cpu-dry-run`: float32 on the CPU, tiny shapes, no 4-bit:
    python tests/benchmarks/gpu_check.py --cpu-dry-run --layers 1 --hidden 64 --intermediate 128 --heads 4 --vocab 256
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import torch

PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "vllm", "triton",
            "flash-attn", "safetensors")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPES = {  # per device: SFT batch, generation and PPO shapes
    "cuda": dict(batch=8, seq=512, gen_prompts=64, gen_prompt_len=128, gen_new=128,
                 ppo_seqs=32, ppo_len=384, ppo_prompt=128, ppo_minibatch=16),
    "cpu": dict(batch=2, seq=32, gen_prompts=4, gen_prompt_len=16, gen_new=8,
                ppo_seqs=4, ppo_len=48, ppo_prompt=16, ppo_minibatch=2),
}
GIB = 2**30


def version(name: str) -> str | None:
    """The installed version of a distribution, without importing it (None: not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def one_line(text: object, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Check:
    """Shared state: device, shapes, timers, the JSON being written and the models built so far."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cuda = not args.cpu_dry_run
        self.device = torch.device("cuda:0" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.shapes = dict(SHAPES["cuda" if self.cuda else "cpu"])
        self.shapes.update({k: getattr(args, k) for k in ("batch", "seq") if getattr(args, k)})
        self.versions = {name: version(name) for name in PACKAGES}
        self.results: dict = {"args": vars(args), "shapes": self.shapes}
        self.models: dict = {}  # "4bit" / "bf16": a peft model, kept for the parts after
        self.tmp: str | None = None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def memory(self) -> tuple[float, float]:
        """(peak allocated since the last reset, allocated now), GiB."""
        if not self.cuda:
            return 0.0, 0.0
        return torch.cuda.max_memory_allocated() / GIB, torch.cuda.memory_allocated() / GIB

    def reset_peak(self) -> float:
        """Start a part's peak here (after its model is built); returns GiB allocated now."""
        if not self.cuda:
            return 0.0
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / GIB

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def missing(self, *names: str) -> list[str]:
        return [n for n in names if self.versions.get(n) is None]

    def config(self):
        from transformers import LlamaConfig

        a = self.args
        return LlamaConfig(hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                           num_key_value_heads=a.kv_heads or a.heads, intermediate_size=a.intermediate,
                           vocab_size=a.vocab, max_position_embeddings=4096, tie_word_embeddings=False,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)

    def matmul_params(self) -> int:
        """N for 6N: every weight matrix but the input embedding (a lookup); norms are negligible."""
        a = self.args
        kv = a.hidden // a.heads * (a.kv_heads or a.heads)
        per_layer = 2 * a.hidden * a.hidden + 2 * a.hidden * kv + 3 * a.hidden * a.intermediate
        return a.layers * per_layer + a.vocab * a.hidden

    def random_model(self, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM

        with torch.device(self.device):  # initialised on the GPU: seconds, not minutes
            model = AutoModelForCausalLM.from_config(self.config(), dtype=dtype, attn_implementation="sdpa")
        return model.to(self.device)

    def ids(self, *shape: int) -> torch.Tensor:
        return torch.randint(3, self.args.vocab, shape, device=self.device)

    def lora(self, model):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=self.args.lora_r, lora_alpha=2 * self.args.lora_r, lora_dropout=0.05,
                            target_modules=PROJECTIONS, bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
        model.config.use_cache = False
        kwargs = {"use_reentrant": False}  # as rlreason.training.enable_checkpointing
        if hasattr(model, "activation_checkpointing_enable"):  # the newer transformers name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return model

    def flops_line(self, tokens: int, seconds: float) -> dict:
        tflops = 6 * self.matmul_params() * tokens / seconds / 1e12
        return {"tokens_per_s": tokens / seconds, "model_tflops": tflops,
                "fraction_of_peak": tflops / self.args.peak_tflops if self.cuda else None}


# ---- the parts ------------------------------------------------------------------------------------


def part_device(c: Check) -> tuple[dict, str]:
    info = {"python": platform.python_version(), "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count(), "versions": c.versions,
            "matmul_params": c.matmul_params()}
    if c.cuda:
        props = torch.cuda.get_device_properties(0)
        info |= {"name": props.name, "total_gib": props.total_memory / GIB,
                 "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
                 "bf16": torch.cuda.is_bf16_supported(), "gpus": torch.cuda.device_count()}
    else:
        info |= {"name": f"CPU ({platform.processor() or platform.machine()})", "bf16": None}
    tmp = c.args.tmpdir or tempfile.gettempdir()
    info["tmp_free_gib"] = shutil.disk_usage(tmp).free / GIB
    pkgs = ", ".join(f"{k} {v or 'MISSING'}" for k, v in c.versions.items())
    where = (f"{info['name']}, {info.get('total_gib', 0):.1f} GiB, cc {info.get('capability')}, "
             f"{info.get('sms')} SMs, {info.get('gpus')} GPU(s)" if c.cuda else info["name"])
    return info, (f"{where}; CUDA {info['torch_cuda']}, bf16 {info['bf16']}; {info['cpus']} CPUs; "
                  f"{tmp} has {info['tmp_free_gib']:.0f} GiB free; "
                  f"N = {info['matmul_params'] / 1e6:,.1f}M; {pkgs}")


def sft_steps(c: Check, model, label: str, extra: dict) -> tuple[dict, str]:
    """1 warm-up and `--steps` timed optimizer steps of causal-LM loss on a random batch."""
    b, s = c.shapes["batch"], c.shapes["seq"]
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = c.ids(b, s)
    start = c.reset_peak()

    def step() -> float:
        with c.autocast():
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t0 = c.now()
    step()
    warm = c.now() - t0
    t0 = c.now()
    losses = [step() for _ in range(c.args.steps)]
    seconds = c.now() - t0
    peak, _ = c.memory()
    trainable = sum(p.numel() for p in params)
    out = {"steps": c.args.steps, "batch": b, "seq": s, "seconds": seconds, "warmup_s": warm,
           "peak_gib": peak, "start_gib": start, "trainable_params": trainable, "loss": losses[-1],
           **c.flops_line(b * s * c.args.steps, seconds), **extra}
    frac = f" = {out['fraction_of_peak']:.1%} of {c.args.peak_tflops:g}" if c.cuda else ""
    return out, (f"{label}: {c.args.steps} steps of {b}x{s} in {seconds:.2f} s (warm-up {warm:.1f} s): "
                 f"{out['tokens_per_s']:,.0f} tok/s, {out['model_tflops']:.1f} TFLOP/s "
                 f"model FLOPs (6N){frac}; peak {peak:.1f} GiB (from {start:.1f}); "
                 f"{trainable / 1e6:.1f}M trainable; loss {losses[-1]:.2f}")


def qlora_model(c: Check):
    """The random bf16 model, saved to a temporary folder and loaded back in NF4; LoRA on top."""
    if "4bit" in c.models:
        return c.models["4bit"], {}
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    t0 = c.now()
    c.tmp = tempfile.mkdtemp(prefix="gpu_check_", dir=c.args.tmpdir)
    model = c.random_model(torch.bfloat16)
    model.save_pretrained(c.tmp)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    saved = c.now() - t0
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    t0 = c.now()
    model = AutoModelForCausalLM.from_pretrained(c.tmp, quantization_config=bnb, dtype=torch.bfloat16,
                                                 device_map={"": 0}, attn_implementation="sdpa")
    # As rlreason.models.load_policy: norms (and embeddings, head) to fp32, checkpointing set below.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    c.models["4bit"] = c.lora(model)
    loaded = c.now() - t0
    shutil.rmtree(c.tmp, ignore_errors=True)
    return c.models["4bit"], {"build_save_s": saved, "load_4bit_s": loaded,
                              "weights_gib": torch.cuda.memory_allocated() / GIB}


def bf16_model(c: Check):
    if "bf16" not in c.models:
        c.models["bf16"] = c.lora(c.random_model(c.dtype))
    return c.models["bf16"]


def part_qlora(c: Check) -> tuple[dict, str]:
    if not c.cuda:
        return {"skipped": "4-bit needs CUDA here"}, "skipped: bitsandbytes 4-bit is not run on the CPU"
    if missing := c.missing("transformers", "peft", "bitsandbytes"):
        return {"skipped": f"missing {missing}"}, f"skipped: {', '.join(missing)} not installed"
    free = shutil.disk_usage(c.args.tmpdir or tempfile.gettempdir()).free / GIB
    need = 2.2 * c.matmul_params() / GIB
    if free < need:
        return {"skipped": f"{free:.0f} GiB free"}, f"skipped: {free:.0f} GiB free on disk, needs {need:.0f}"
    model, load = qlora_model(c)
    out, line = sft_steps(c, model, "QLoRA NF4 SFT", load)
    return out, f"{line}; build+save {load['build_save_s']:.0f} s, 4-bit load {load['load_4bit_s']:.0f} s"


def part_lora(c: Check) -> tuple[dict, str]:
    if missing := c.missing("transformers", "peft"):
        return {"skipped": f"missing {missing}"}, f"skipped: {', '.join(missing)} not installed"
    t0 = c.now()
    model = bf16_model(c)
    built = c.now() - t0
    return sft_steps(c, model, f"LoRA SFT, {str(c.dtype).removeprefix('torch.')} base", {"build_s": built})


def part_generate(c: Check) -> tuple[dict, str]:
    if c.missing("transformers"):
        return {"skipped": "missing transformers"}, "skipped: transformers not installed"
    n, p, new = c.shapes["gen_prompts"], c.shapes["gen_prompt_len"], c.shapes["gen_new"]
    model = bf16_model(c) if not c.missing("peft") else c.random_model(c.dtype)
    model.eval()
    ids = c.ids(n, p)
    adapters_off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                  use_cache=True, pad_token_id=0, eos_token_id=2)
    with torch.no_grad(), adapters_off:
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        start = c.reset_peak()
        t0 = c.now()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kwargs)
        seconds = c.now() - t0
    made = (out.shape[1] - p) * n
    peak, _ = c.memory()
    res = {"prompts": n, "prompt_len": p, "new_tokens": new, "seconds": seconds,
           "tokens_per_s": made / seconds, "ms_per_step": 1000 * seconds / new, "peak_gib": peak,
           "start_gib": start}
    return res, (f"HF generate (KV cache, adapters off): {n} prompts x {p} + {new} sampled in "
                 f"{seconds:.2f} s: {res['tokens_per_s']:,.0f} new tok/s, {res['ms_per_step']:.1f} ms "
                 f"a step; peak {peak:.1f} GiB (from {start:.1f})")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum()


def part_ppo(c: Check) -> tuple[dict, str]:
    if missing := c.missing("transformers", "peft"):
        return {"skipped": f"missing {missing}"}, f"skipped: {', '.join(missing)} not installed"
    four_bit = c.args.ppo_base == "4bit" and c.cuda and not c.missing("bitsandbytes")
    if four_bit and "bf16" in c.models:  # only the model PPO uses stays on the GPU
        del c.models["bf16"]
        gc.collect()
        torch.cuda.empty_cache()
    t0 = c.now()
    model = qlora_model(c)[0] if four_bit else bf16_model(c)
    built = c.now() - t0
    start = c.reset_peak()
    model.eval()  # as rlreason.ppo: no dropout, gradients still flow (and no checkpointing)
    n, length, prompt, mb = (c.shapes[k] for k in ("ppo_seqs", "ppo_len", "ppo_prompt", "ppo_minibatch"))
    ids = c.ids(n, length)
    mask = torch.zeros(n, length - 1, device=c.device)
    mask[:, prompt - 1:] = 1.0  # log-probs of the response tokens
    head = torch.nn.Linear(model.config.hidden_size, 1, device=c.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-5)

    def logprobs_values(rows, values: bool = True):
        with c.autocast():
            out = model(input_ids=ids[rows], output_hidden_states=values)
        logp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, ids[rows, 1:, None]).squeeze(-1)
        return logp, (head(out.hidden_states[-1][:, :-1].float()).squeeze(-1) if values else None)

    t0 = c.now()
    with torch.no_grad():
        old_logp, old_v = logprobs_values(slice(None))
        with model.disable_adapter():
            ref_logp, _ = logprobs_values(slice(None), values=False)
    scored = c.now() - t0
    # Rewards: -0.05 * KL per token, a random score at the last token; returns without discounting.
    rewards = -0.05 * (old_logp - ref_logp) * mask
    rewards[:, -1] += torch.randn(n, device=c.device)
    returns = rewards.flip(1).cumsum(1).flip(1)
    adv = returns - old_v
    mean = masked_mean(adv, mask)
    adv = (adv - mean) / ((masked_mean(adv**2, mask) - mean**2).sqrt() + 1e-8)  # whitened
    t1 = c.now()
    for i in range(0, n, mb):
        rows = slice(i, i + mb)
        logp, v = logprobs_values(rows)
        ratio = (logp - old_logp[rows]).exp()
        pg = torch.max(-adv[rows] * ratio, -adv[rows] * ratio.clamp(0.8, 1.2))
        v_clip = old_v[rows] + (v - old_v[rows]).clamp(-0.2, 0.2)
        vf = 0.5 * torch.max((v - returns[rows]) ** 2, (v_clip - returns[rows]) ** 2)
        loss = masked_mean(pg, mask[rows]) + 0.1 * masked_mean(vf, mask[rows])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    updated = c.now() - t1
    peak, _ = c.memory()
    base = "NF4 4-bit" if four_bit else str(c.dtype).removeprefix("torch.")
    res = {"base": base, "seqs": n, "seq_len": length, "minibatch": mb, "score_s": scored,
           "update_s": updated, "seconds": scored + updated, "peak_gib": peak, "start_gib": start,
           "model_build_s": built, "loss": loss.item()}
    return res, (f"PPO update, LoRA on a {base} base: {n} x {length} tokens; score (policy, values, "
                 f"reference) {scored:.2f} s; {-(-n // mb)} minibatch steps of {mb} {updated:.2f} s; "
                 f"peak {peak:.1f} GiB (from {start:.1f})")


PARTS = {"a": ("device", part_device), "b": ("qlora_sft", part_qlora), "c": ("lora_sft", part_lora),
         "d": ("generate", part_generate), "e": ("ppo_update", part_ppo)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="abcde", help="which parts, e.g. 'ab' or 'a,d' (default: all)")
    default_out = os.path.join(os.environ.get("OUT") or ".", "gpu_check.json")
    parser.add_argument("--out", default=default_out, help="the JSON of all numbers (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=None, help="default: --heads (Llama-2-7B)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--batch", type=int, default=None, help="SFT batch (default 8; 2 on the CPU)")
    parser.add_argument("--seq", type=int, default=None, help="SFT tokens a row (default 512; 32 on the CPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps, after one warm-up")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak")
    parser.add_argument("--ppo-base", choices=("4bit", "bf16"), default="4bit")
    parser.add_argument("--tmpdir", default=None, help="where part b writes the bf16 model (13 GB)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny float32 run on the CPU, no 4-bit")
    args = parser.parse_args()
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available; --cpu-dry-run (with tiny shapes) smoke-tests on the CPU")
        return 1
    parts = [p for p in args.parts.replace(",", "") if p in PARTS]
    c = Check(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    for key in parts:
        name, fn = PARTS[key]
        t0 = time.perf_counter()
        try:
            res, line = fn(c)
            print(f"[{key}] {name}: {line} ({time.perf_counter() - t0:.1f} s)", flush=True)
        except Exception as e:  # every part reports its error and the next one runs
            res = {"error": f"{type(e).__name__}: {one_line(e)}"}
            print(f"[{key}] {name}: FAILED {res['error']} ({time.perf_counter() - t0:.1f} s)", flush=True)
        c.results[name] = res | {"part_s": time.perf_counter() - t0}
        gc.collect()
        if c.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with open(args.out, "w") as f:
            json.dump(c.results, f, indent=1, default=str)
    if c.tmp:
        shutil.rmtree(c.tmp, ignore_errors=True)
    total = time.perf_counter() - start
    c.results["total_s"] = total
    with open(args.out, "w") as f:
        json.dump(c.results, f, indent=1, default=str)
    print(f"total {total:.0f} s; numbers in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
