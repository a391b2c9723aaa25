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

AttnLRP (`attn_lrp`: one forward and one batched backward per side, no steps) is timed on the same per-token matrix
and its speed printed against ours and captum's at --n-steps.

`--faithfulness` instead runs every method on the demo pair's first forget example (word granularity, whole answer)
with each baseline and prints the deletion and insertion areas and the area between them per method and side
(core.analyses.attribution.faithfulness): the figures behind the Attribution page's default method.
`--baseline-table` runs the default method (feature ablation), integrated gradients and AttnLRP under both rules on
the demo's first forget and retain examples with every baseline, and prints each map's area between its curves, that
area less the random orders' (the curves replace features by the same baseline, so the random floor moves with it)
and the completeness gap |Σ map − explained| / |explained|: the figures behind the page's default baseline.

Usage: python bench/attribution.py [--n-steps 32] [--threads N] [--inseq-python /tmp/inseq-venv/bin/python]
       python bench/attribution.py --faithfulness [--baselines pad eos zero]
       python bench/attribution.py --baseline-table [--examples 1] [--start 0] [--methods feature_ablation]
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


def run_lrp(pair, ours_s: float, captum_s: float | None) -> None:
    """AttnLRP's per-token matrix on both sides, timed; its speed against IG (ours, captum's) at the same steps."""
    from core.analyses.attribution import AttributionSettings, attribute

    settings = AttributionSettings(per_token=True)
    result, seconds = timed(lambda: attribute(pair, PROMPT, ANSWER, "attn_lrp", settings=settings))
    share = max(
        abs(d) / max(abs(e), 1e-12)
        for side in ("base", "unlearned")
        for d, e in zip(result.convergence_delta[side], result.explained[side], strict=True)
    )
    print(f"  AttnLRP: {seconds:.1f} s, largest |Σ relevance − logit| / |logit| over rows {share:.1%}")
    print(f"AttnLRP vs our IG: {ours_s / seconds:.1f}× faster")
    if captum_s is not None:
        print(f"AttnLRP vs captum LLMGradientAttribution: {captum_s / seconds:.1f}× faster")


def faithfulness_table(baselines: list[str]) -> None:
    """Every method on the demo's first forget example, per baseline: deletion / insertion areas per side."""
    from core.analyses.attribution import AttributionSettings
    from core.analyses.attribution.faithfulness import compare_methods
    from core.cli.common import build_demo_first
    from core.data.examples import demo_examples
    from core.models.pair import ModelPair
    from core.models.spec import ModelSpec

    specs = [ModelSpec.parse("demo:target"), ModelSpec.parse("demo:unlearned")]
    build_demo_first(specs)
    pair = ModelPair.load(*specs)
    example = next(e for e in demo_examples() if e.split == "forget")
    print(f"demo:target vs demo:unlearned, first forget example: {example.question!r} → {example.answer!r}")
    print(f"{'baseline':8s} {'method':22s} {'side':9s} {'deletion':>9s} {'insertion':>9s} {'between':>8s}")
    for baseline in baselines:
        settings = AttributionSettings(granularity="word", baseline=baseline)
        (results, report), seconds = timed(
            lambda: compare_methods(pair, example.question, example.answer, False, settings)  # noqa: B023
        )
        for side in ("base", "unlearned"):
            for method, curve in [*report.curves[side].items(), ("(random order)", report.random[side])]:
                print(
                    f"{baseline:8s} {method:22s} {side:9s} {curve.deletion_area:9.3f} {curve.insertion_area:9.3f} "
                    f"{curve.between:8.3f}"
                )
        for result in results:
            if result.convergence_delta:
                for side in ("base", "unlearned"):
                    error, change = sum(result.convergence_delta[side]), sum(result.explained_change(side))
                    print(f"  {result.method} {side}: convergence delta {error:+.3g} against {change:+.3g}")
        print(f"  ({seconds:.0f} s CPU for every method and the curves)")


def _demo_pair_and_examples(per_split: int, start: int = 0):
    from core.cli.common import build_demo_first
    from core.data.examples import demo_examples
    from core.models.pair import ModelPair
    from core.models.spec import ModelSpec

    specs = [ModelSpec.parse("demo:target"), ModelSpec.parse("demo:unlearned")]
    build_demo_first(specs)
    examples = demo_examples()
    chosen = [
        e
        for split in ("forget", "retain")
        for e in [x for x in examples if x.split == split][start : start + per_split]
    ]
    return ModelPair.load(*specs), chosen


def _orders(pair, example, settings, labels: list[str] | None) -> dict:
    """Per method label, its attribution result (whole answer, word granularity) under `settings`."""
    from dataclasses import replace

    from core.analyses.attribution import attribute

    runs = {
        "feature_ablation": ("feature_ablation", settings),
        "integrated_gradients": ("integrated_gradients", settings),
        "attn_lrp (attnlrp)": ("attn_lrp", replace(settings, lrp_rule="attnlrp")),
        "attn_lrp (cp)": ("attn_lrp", replace(settings, lrp_rule="cp")),
    }
    chosen = {label: run for label, run in runs.items() if labels is None or label in labels}
    return {label: attribute(pair, example.question, example.answer, m, False, s) for label, (m, s) in chosen.items()}


def baseline_table(
    per_split: int, start: int = 0, labels: list[str] | None = None, names: list[str] | None = None
) -> None:
    """The default method's faithfulness per baseline on the demo's forget and retain examples (and the others' for
    reference): areas between the deletion and insertion curves, the random floor, IG's and AttnLRP's completeness gap.
    """
    import torch

    from core.analyses.attribution import AttributionSettings
    from core.analyses.attribution.faithfulness import RANDOM_ORDERS, _mean_curve, curves_for_orders, ranking
    from core.analyses.attribution.problem import build_problem, side_inputs
    from core.analyses.attribution.settings import BASELINE_NAMES, BASELINES

    pair, examples = _demo_pair_and_examples(per_split, start)
    print("demo:target vs demo:unlearned; word granularity, whole answer; areas in nats (insertion − deletion)")
    print(f"{'example':8s} {'baseline':8s} {'side':9s} {'method':22s} {'between':>8s} {'− random':>8s} {'gap':>7s}")
    for index, example in enumerate(examples):
        name = f"{example.split}{start + index % per_split + 1}"
        for baseline in names or BASELINE_NAMES:
            settings = AttributionSettings(granularity="word", baseline=baseline)
            results = _orders(pair, example, settings, labels)
            problem = build_problem(pair, example.question, example.answer, False, settings)
            n = len(problem.feature_groups)
            generator = torch.Generator().manual_seed(0)
            random = [torch.randperm(n, generator=generator).tolist() for _ in range(RANDOM_ORDERS)]
            for side in ("base", "unlearned"):
                orders = [ranking(torch.tensor(getattr(r, side)).sum(0).tolist()) for r in results.values()]
                with pair.use(side) as model:
                    inputs = side_inputs(model, problem, BASELINES[baseline](pair.tokenizer))
                    curves = curves_for_orders(model, problem, inputs, orders + random, 2048)
                floor = _mean_curve(curves[len(orders) :]).between
                for (label, result), curve in zip(results.items(), curves, strict=False):
                    gap = ""
                    if result.convergence_delta:
                        error, change = sum(result.convergence_delta[side]), sum(result.explained_change(side))
                        gap = f"{abs(error) / max(abs(change), 1e-12):7.1%}"
                    print(
                        f"{name:8s} {baseline:8s} {side:9s} {label:22s} {curve.between:8.2f} "
                        f"{curve.between - floor:8.2f} {gap:>7s}",
                        flush=True,
                    )
                print(f"{name:8s} {baseline:8s} {side:9s} {'(random order)':22s} {floor:8.2f}", flush=True)


def compare_captum(pair, ids: list[int], p: int, args: argparse.Namespace, ours_b, ours_u, ours_s: float) -> float:
    """captum's per-token IG against ours: the speed ratio and the largest matrix difference; captum's seconds."""
    cap_b, cap_u, cap_s = run_captum(pair, ids, p, args)
    diff = max((ours_b - cap_b).abs().max().item(), (ours_u - cap_u).abs().max().item())
    print(
        f"vs captum:  {cap_s / ours_s:.2f}× faster; max |Δ matrix| {diff:.2e} (max |attribution| "
        f"{cap_b.abs().max().item():.2f})"
    )
    return cap_s


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faithfulness", action="store_true", help="the demo's faithfulness table instead")
    parser.add_argument("--baselines", nargs="+", default=["pad", "eos", "zero"])
    parser.add_argument("--baseline-table", action="store_true", help="the default method's faithfulness per baseline")
    parser.add_argument("--examples", type=int, default=1, help="--baseline-table: demo examples per set")
    parser.add_argument("--table-baselines", nargs="+", help="--baseline-table: these baselines (default: all)")
    parser.add_argument("--start", type=int, default=0, help="--baseline-table: index of the first example per set")
    parser.add_argument("--methods", nargs="+", help="--baseline-table: only these labels (e.g. feature_ablation)")
    parser.add_argument("--n-steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--inseq-python", default="/tmp/inseq-venv/bin/python")
    parser.add_argument("--skip-captum", action="store_true")
    parser.add_argument("--inseq-worker", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.inseq_worker:
        inseq_worker(json.loads(args.inseq_worker))
        return

    sys.path.insert(0, str(ROOT))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.faithfulness:
        faithfulness_table(args.baselines)
        return
    if args.baseline_table:
        baseline_table(args.examples, args.start, args.methods, args.table_baselines)
        return

    from core.models.embedded import ensure_embedded_model
    from core.models.pair import ModelPair
    from core.models.spec import ModelSpec
    from core.scoring.encoding import encode

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
    cap_s = None if args.skip_captum else compare_captum(pair, ids, p, args, ours_b, ours_u, ours_s)
    run_lrp(pair, ours_s, cap_s)

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
