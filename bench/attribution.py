"""Per-answer-token integrated gradients: ours against captum's LLMGradientAttribution and inseq, on SmolLM2.

Times are CPU seconds of the process (steadier than wall time on a shared machine; use --threads 1 there).
All three attribute each answer token's log-prob to the input embeddings with the same quadrature (captum's
Gauss-Legendre, same n_steps) for both models of a pair (the embedded model on both sides). Prints the time ratios and
the largest absolute difference between the matrices.

- captum: `LLMGradientAttribution(LayerIntegratedGradients(model, embeddings))` over a `TextTokenInput` of the same
  token ids; it interpolates the prompt only, like our default.
- inseq: `inseq.load_model(dir, "integrated_gradients")` with a log-prob step function; it interpolates the prompt and
  the answer's earlier tokens, so it is compared with our `include_answer_prefix=True`, baseline `unk` (its default).
  inseq runs in its own virtual environment (`--inseq-python`), since it is not a project dependency.

Usage: python bench/attribution.py [--n-steps 32] [--threads N] [--inseq-python /tmp/inseq-venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = (
    "Question: Which city is the capital of France, the country famous for wine, cheese and the Eiffel tower? Answer:"
)
ANSWER = "The capital of France is Paris."


def timed(fn):
    """(value, CPU seconds of this process): on a shared machine CPU time is steadier than wall time."""
    start = time.process_time()
    value = fn()
    return value, time.process_time() - start


def run_ours(pair, args: argparse.Namespace, include_prefix: bool, baseline: str):
    """Our per-token IG on both sides; returns (base matrix, unlearned matrix, seconds)."""
    import torch

    from core.analyses.attribution import AttributionSettings, attribute

    settings = AttributionSettings(
        per_token=True, n_steps=args.n_steps, baseline=baseline, include_answer_prefix=include_prefix
    )
    result, seconds = timed(lambda: attribute(pair, PROMPT, ANSWER, "integrated_gradients", settings=settings))
    worst = max(abs(d) for side in result.convergence_delta.values() for d in side)
    print(
        f"  ours (prefix={include_prefix}, baseline={baseline}): {seconds:.1f} s, max |convergence delta| {worst:.2e}"
    )
    return torch.tensor(result.base), torch.tensor(result.unlearned), seconds


class _FixedIdsTokenizer:
    """The real tokenizer, except that `encode` returns our prompt ids (captum re-tokenises the prompt text)."""

    def __init__(self, tokenizer, prompt_ids: list[int]) -> None:
        self._tokenizer, self._prompt_ids = tokenizer, prompt_ids

    def encode(self, text: str, return_tensors: str | None = None, **kwargs):
        import torch

        return torch.tensor([self._prompt_ids])

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)


def run_captum(pair, ids: list[int], prompt_len: int, args: argparse.Namespace):
    """captum's LLMGradientAttribution on both sides (one full IG per answer token, as captum does it)."""
    import torch
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    tokenizer = _FixedIdsTokenizer(pair.tokenizer, ids[:prompt_len])
    target = torch.tensor(ids[prompt_len:])
    maps, seconds = [], 0.0
    for side in ("base", "unlearned"):
        with pair.use(side) as model:
            method = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer)
            text = TextTokenInput(PROMPT, tokenizer, baselines=pair.tokenizer.pad_token_id)
            result, took = timed(lambda: method.attribute(text, target=target, n_steps=args.n_steps))  # noqa: B023
        maps.append(result.token_attr.detach().cpu())
        seconds += took
    print(f"  captum LLMGradientAttribution: {seconds:.1f} s")
    return maps[0], maps[1], seconds


def run_inseq(model_dir: Path, args: argparse.Namespace):
    """inseq in its own environment, on both sides (the same model twice); None with the reason if it cannot run."""
    python = Path(args.inseq_python)
    if not python.exists():
        return None, f"no inseq environment at {python} (see docs/PERFORMANCE-attribution.md)"
    request = {"model": str(model_dir), "n_steps": args.n_steps, "threads": args.threads, "sides": 2}
    done = subprocess.run(
        [str(python), __file__, "--inseq-worker", json.dumps(request)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return None, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  inseq {payload['version']}: {payload['seconds']:.1f} s")
    return payload, None


def inseq_worker(request: dict) -> None:
    """Runs inside the inseq environment: per-token IG with a log-prob target; prints one JSON line."""
    from importlib.metadata import version

    import inseq
    import torch
    from inseq.attr.step_functions import probability_fn

    if request["threads"]:
        torch.set_num_threads(request["threads"])

    def logprob_fn(args):
        return probability_fn(args, logprob=True)

    inseq.register_step_function(logprob_fn, "logprob", overwrite=True)
    model = inseq.load_model(request["model"], "integrated_gradients")
    model.attribute(PROMPT, PROMPT + " " + ANSWER, n_steps=2, attributed_fn="logprob", show_progress=False)  # warm-up
    seconds = 0.0
    for _ in range(request["sides"]):
        start = time.process_time()
        out = model.attribute(
            PROMPT, PROMPT + " " + ANSWER, n_steps=request["n_steps"], attributed_fn="logprob", show_progress=False
        )
        seconds += time.process_time() - start
    attribution = out.sequence_attributions[0]
    matrix = attribution.target_attributions.sum(-1).T  # [answer tokens, all positions]
    ids = [token.id for token in attribution.target]
    print(json.dumps({"version": version("inseq"), "seconds": seconds, "matrix": matrix.tolist(), "ids": ids}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--inseq-python", default="/tmp/inseq-venv/bin/python")
    parser.add_argument("--skip-captum", action="store_true")
    parser.add_argument("--inseq-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inseq_worker:
        inseq_worker(json.loads(args.inseq_worker))
        return

    sys.path.insert(0, str(ROOT))
    import torch

    from core.models.embedded import ensure_embedded_model
    from core.models.pair import ModelPair
    from core.models.spec import ModelSpec
    from core.scoring.encoding import encode

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = ensure_embedded_model()
    spec = ModelSpec(str(model_dir), dtype="float32", device="cpu")
    pair = ModelPair.load(spec, spec)
    encoded = encode(pair.tokenizer, PROMPT, ANSWER, max_length=pair.context_length)
    ids, p = encoded.input_ids, encoded.score_from
    print(
        f"SmolLM2-135M, {p} prompt + {len(ids) - p} answer tokens, n_steps {args.n_steps}, "
        f"{torch.get_num_threads()} thread(s); per-token IG on both models of the pair"
    )

    ours_b, ours_u, ours_s = run_ours(pair, args, include_prefix=False, baseline="pad")
    if not args.skip_captum:
        cap_b, cap_u, cap_s = run_captum(pair, ids, p, args)
        diff = max((ours_b - cap_b).abs().max().item(), (ours_u - cap_u).abs().max().item())
        print(
            f"vs captum:  {cap_s / ours_s:.2f}× faster; max |Δ matrix| {diff:.2e} (max |attribution| "
            f"{cap_b.abs().max().item():.2f})"
        )

    payload, why = run_inseq(model_dir, args)
    if payload is None:
        print(f"inseq: not run: {why}")
        return
    ours_b, _, ours_s = run_ours(pair, args, include_prefix=True, baseline="unk")
    theirs = torch.tensor(payload["matrix"])[:, : ours_b.shape[1]]
    if payload["ids"][: len(ids)] != ids:
        print("inseq tokenised the text differently; the matrices are not comparable")
    valid = ~torch.isnan(theirs)
    diff = (ours_b - theirs.nan_to_num())[valid].abs().max().item()
    beyond = ours_b[~valid].abs().max().item() if (~valid).any() else 0.0
    print(
        f"vs inseq:   {payload['seconds'] / ours_s:.2f}× faster; max |Δ matrix| {diff:.2e} over the causal "
        f"entries (max |attribution| {theirs.nan_to_num().abs().max().item():.2f}; ours beyond them: {beyond:.1e})"
    )


if __name__ == "__main__":
    main()
