"""The report card: what every stage of a pipeline did to the model, in one markdown file with plots.

    python scripts/report.py --pipeline recipes/tiny/pipeline.yaml --output_dir runs/tiny/report

It reads what the stages wrote, and computes nothing new: lm-eval results of every evaluated checkpoint
(`results.json` of each `scripts/evaluate.py` stage), the loss curves in each training stage's
`trainer_state.json`, each stage's own held-out measurements (`stage_complete.json`), and the answers that the
checkpoints gave to the same prompts (lm-eval's logged samples).
"""

import llm_recipes  # noqa: F401, I001  first of all: it keeps known library start-up noise out of the log
import argparse
import json
import math
from pathlib import Path

from llm_recipes import stage
from llm_recipes.evaluation import load_results
from llm_recipes.pipeline import Pipeline
from llm_recipes.recipe import repo_path

# The figure that stands for each task in the table; every other metric stays in results.json.
HEADLINE_METRICS = ("exact_match,strict", "exact_match,first_number", "exact_match,none", "acc,none",
                    "word_perplexity,none", "refusal_rate,none", "over_refusal_rate,none", "correct_call,none",
                    "exact_match,flexible")
SAMPLE_TASKS = ("tiny_arithmetic", "tiny_word_problems", "tiny_safety_refusal")
# The lab table: the checkpoints a lab compares, the math tiers (lm-eval groups) and their tasks, whose replies
# are measured for length and stopping.
LAB_CHECKPOINTS = ("base", "sft", "dpo", "ppo", "grpo")
LAB_TIERS = {"tiny_sft_tier": "SFT tier (two-digit, one step)", "tiny_rl_tier": "RL tier (three-digit, two steps)"}
LAB_TASKS = ("tiny_arithmetic", "tiny_word_problems", "tiny_three_digit", "tiny_two_step")
LAB_PROMPTS = ("tiny_arithmetic", "tiny_three_digit", "tiny_two_step")  # the first question of each, side by side
# Stages beside the lab: the distilled students against the one trained by SFT alone (the teacher first), and the
# constitutional SFT model against its SFT parent on safety (and on arithmetic, which it must not lose).
DISTILLATION = ("sft", "student_sft", "distill_off_policy", "distill_on_policy")
CONSTITUTIONAL = ("sft", "sft_constitutional")
COMPARED_TASKS = {"tiny_sft_tier": ("exact_match,strict", "SFT tier accuracy"),
                  "tiny_rl_tier": ("exact_match,strict", "RL tier accuracy"),
                  "tiny_safety_refusal": ("refusal_rate,none", "refusals of held-out forbidden requests"),
                  "tiny_jailbreak_refusal": ("refusal_rate,none", "refusals of them under jailbreak attacks"),
                  "tiny_safety_overrefusal": ("over_refusal_rate,none", "over-refusal of benign look-alikes")}
# What the curves of each kind of stage show: (logged key, label), the first key found of each alternative.
RL_CURVES = ((("reward", "objective/scores"), "reward"),
             (("rewards/answer_accuracy/mean", "rewards/answer_accuracy"), "answer accuracy"),
             (("eval_pass@1",), "held-out pass@1"), (("eval_greedy_accuracy",), "held-out greedy accuracy"))
KL_KEYS = ("kl", "objective/kl")


def evaluated_checkpoints(pipeline: Pipeline) -> list[tuple[str, str, dict]]:
    """(column name, eval folder, results) for every evaluation stage whose results exist, in pipeline order.
    A column is named after the evaluation stage, less its `eval_` prefix (eval_sft -> sft)."""
    found = []
    for s in pipeline.stages:
        if Path(s.script).name == "evaluate.py" and load_results(s.output_dir) is not None:
            found.append((s.name.removeprefix("eval_"), s.output_dir, load_results(s.output_dir)))
    return found


def headline(task_results: dict) -> tuple[str, float, float | None] | None:
    for metric in HEADLINE_METRICS:
        if metric in task_results:
            name, filter_name = metric.split(",")
            stderr = task_results.get(f"{name}_stderr,{filter_name}")
            return metric, task_results[metric], stderr if isinstance(stderr, float) else None
    return None


def scores_table(checkpoints) -> tuple[str, dict]:
    tasks = list(dict.fromkeys(task for _, _, r in checkpoints for task in r["results"]
                               if task not in r.get("groups", {})))
    header = "| task | metric | " + " | ".join(name for name, _, _ in checkpoints) + " |"
    lines = [header, "|" + "---|" * (2 + len(checkpoints))]
    values = {}
    for task in tasks:
        picked = next((headline(r["results"][task]) for _, _, r in checkpoints if task in r["results"]), None)
        if picked is None:
            continue
        metric = picked[0]
        arrow = "↑" if next((r["higher_is_better"].get(task, {}).get(metric.split(",")[0]) for _, _, r in
                             checkpoints if task in r.get("higher_is_better", {})), True) else "↓"
        cells = []
        for name, _, r in checkpoints:
            result = r["results"].get(task, {})
            value, stderr = result.get(metric), result.get(metric.replace(",", "_stderr,"))
            values.setdefault(task, {})[name] = value
            if value is None:
                cells.append("–")
            elif isinstance(stderr, float) and not math.isnan(stderr):
                cells.append(f"{value:.3f} ± {stderr:.3f}")
            else:
                cells.append(f"{value:.3f}")
        lines.append(f"| {task} | {metric.split(',')[0]} {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines), values


def stage_measurements(pipeline: Pipeline) -> str:
    """Held-out numbers that training stages report themselves (perplexities before/after, pair accuracy...)."""
    lines = ["| stage | measurement | value |", "|---|---|---|"]
    for s in pipeline.stages:
        marker = Path(s.output_dir) / stage.COMPLETE_MARKER
        if Path(s.script).name == "evaluate.py" or not marker.is_file():
            continue
        summary = json.loads(marker.read_text())
        for key, value in summary.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "stage":
                lines.append(f"| {s.name} | {key} | {value:,.4g} |")
        # A mixture of experts' share of routed tokens per expert, one row per layer (llm_recipes/moe.py).
        for layer, shares in enumerate(summary.get("expert_shares", [])):
            lines.append(f"| {s.name} | expert shares, layer {layer} | {' '.join(f'{x:.3f}' for x in shares)} |")
    return "\n".join(lines)


def reply_statistics(folder: str, results: dict) -> dict[str, float]:
    """Mean think and reply length (tokens of the checkpoint's tokenizer) and the share of replies that stopped before
    the length limit, over the logged replies of the lab's math tasks."""
    from transformers import AutoTokenizer

    paths = {task: Path(folder) / f"samples_{task}.jsonl" for task in LAB_TASKS}
    paths = {task: path for task, path in paths.items() if path.is_file()}
    model = results.get("config", {}).get("model")
    if not paths or not isinstance(model, str):  # no logged samples, or no checkpoint to count tokens with
        return {}
    tokenizer = AutoTokenizer.from_pretrained(model)
    think, reply, stopped = [], [], []
    for task, path in paths.items():
        limit = results["configs"][task]["generation_kwargs"]["max_gen_toks"]
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            if sample["filter"] != "strict":
                continue
            text = sample["resps"][0][0]
            tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            inside = text.split("<think>", 1)[1].split("</think>", 1)[0] if "<think>" in text else ""
            think.append(len(tokenizer(inside, add_special_tokens=False)["input_ids"]))
            reply.append(tokens)
            stopped.append(tokens < limit)
    if not reply:
        return {}
    return {"think": sum(think) / len(think), "reply": sum(reply) / len(reply), "stopped": sum(stopped) / len(stopped)}


def first_replies(folder: str) -> dict[str, tuple[str, str, str]]:
    """(question, expected answer, reply) of the first document of each of LAB_PROMPTS."""
    out = {}
    for task in LAB_PROMPTS:
        path = Path(folder) / f"samples_{task}.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            sample = json.loads(line)
            if sample["doc_id"] == 0 and sample["filter"] == "strict":
                out[task] = (sample["doc"]["question"], sample["target"], sample["resps"][0][0])
    return out


def lab_table(checkpoints) -> str:
    """What the lab compares, base to RL: accuracy on each math tier, how long the model thinks and replies, whether
    it stops, and three prompts answered side by side."""
    lab = [(name, folder, r) for name, folder, r in checkpoints if name in LAB_CHECKPOINTS]
    if not lab:
        return ""
    lines = ["| | " + " | ".join(name for name, _, _ in lab) + " |", "|---|" + "---:|" * len(lab)]
    for tier, label in LAB_TIERS.items():
        cells = []
        for _, _, r in lab:
            result = r["results"].get(tier, {})
            value, stderr = result.get("exact_match,strict"), result.get("exact_match_stderr,strict")
            cells.append("–" if value is None else f"{value:.1%} ± {stderr:.1%}")
        lines.append(f"| {label} accuracy | " + " | ".join(cells) + " |")
    statistics = [reply_statistics(folder, r) for _, folder, r in lab]
    for key, label, form in (("think", "think length (tokens)", "{:.1f}"), ("reply", "reply length (tokens)", "{:.1f}"),
                             ("stopped", "stop rate", "{:.1%}")):
        lines.append(f"| {label} | " + " | ".join(form.format(s[key]) if s else "–" for s in statistics) + " |")
    blocks = ["\n".join(lines), ""]
    replies = [(name, first_replies(folder)) for name, folder, _ in lab]
    for task in LAB_PROMPTS:
        asked = next((r[task] for _, r in replies if task in r), None)
        if asked is None:
            continue
        blocks.append(f"**{asked[0]}** (expected: {asked[1]})\n")
        blocks += [f"- *{name}*: `{r[task][2].strip()[:200]}`".replace("\n", " ⏎ ") for name, r in replies if task in r]
        blocks.append("")
    return "\n".join(blocks)


def comparison_table(checkpoints, names: tuple[str, ...], tasks: tuple[str, ...]) -> str:
    """The given checkpoints side by side on the given tasks (value ± standard error); empty unless two exist."""
    found = [(name, r) for name, _, r in checkpoints if name in names]
    if len(found) < 2:
        return ""
    lines = ["| | " + " | ".join(name for name, _ in found) + " |", "|---|" + "---:|" * len(found)]
    for task in tasks:
        metric, label = COMPARED_TASKS[task]
        cells = []
        for _, r in found:
            result = r["results"].get(task, {})
            value, stderr = result.get(metric), result.get(metric.replace(",", "_stderr,"))
            cells.append("–" if value is None else f"{value:.1%}" + (f" ± {stderr:.1%}" if isinstance(stderr, float)
                                                                      else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def first_logged(history: list[dict], keys: tuple[str, ...]) -> list[tuple[int, float]]:
    for key in keys:
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            return points
    return []


def plot_stage(ax, name: str, history: list[dict]) -> None:
    """RL stages: reward, answer accuracy and held-out accuracy over the steps, with the KL on a second axis; the
    others: training and held-out loss."""
    if any(k in h for h in history for k in KL_KEYS):
        for keys, label in RL_CURVES:
            points = first_logged(history, keys)
            if points:
                ax.plot(*zip(*points), marker="o" if label.startswith("held-out") else None, label=label)
        kl = first_logged(history, KL_KEYS)
        twin = ax.twinx()
        twin.plot(*zip(*kl), color="grey", linestyle=":", label="KL")
        twin.set_ylabel("KL", fontsize=7)
        twin.legend(fontsize=7, loc="lower right")
    else:
        train = [(h["step"], h["loss"]) for h in history if "loss" in h]
        if train:
            ax.plot(*zip(*train), label="train loss")
        for key in sorted({k for h in history for k in h if k.startswith("eval_") and k.endswith("loss")}):
            points = [(h["step"], h[key]) for h in history if key in h]
            ax.plot(*zip(*points), marker="o", label=key.removeprefix("eval_"))
        if all(value > 0 for line in ax.get_lines() for value in line.get_ydata()):
            ax.set_yscale("log")
    ax.set_title(name)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)


def loss_curves(pipeline: Pipeline, path: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {}
    for s in pipeline.stages:
        state = Path(s.output_dir) / stage.TRAINER_STATE
        if state.is_file():
            histories[s.name] = json.loads(state.read_text())["log_history"]
    if not histories:
        return []
    columns = min(4, len(histories))
    rows = math.ceil(len(histories) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, (name, history) in zip(axes.flat, histories.items()):
        plot_stage(ax, name, history)
    for ax in list(axes.flat)[len(histories):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return list(histories)


def scores_plot(values: dict, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in values if "perplexity" not in t]
    if not tasks:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks)), 3.5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        ax.bar([x + i * width for x in range(len(tasks))],
               [values[t].get(name) or 0.0 for t in tasks], width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(tasks))])
    ax.set_xticklabels([t.removeprefix("tiny_") for t in tasks], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_answers(checkpoints, count: int = 4) -> str:
    blocks = []
    for task in SAMPLE_TASKS:
        answers = {}
        for name, folder, _ in checkpoints:
            path = Path(folder) / f"samples_{task}.jsonl"
            if not path.is_file():
                continue
            for line in path.read_text().splitlines():
                sample = json.loads(line)
                if sample["doc_id"] < count and sample["filter"] in ("strict", "none"):
                    answers.setdefault(sample["doc_id"], {"doc": sample["doc"], "target": sample["target"]})
                    answers[sample["doc_id"]][name] = sample["resps"][0][0].strip().replace("\n", " ⏎ ")
        if not answers:
            continue
        blocks.append(f"### {task}\n")
        for doc_id in sorted(answers):
            entry = answers[doc_id]
            prompt = entry["doc"].get("question") or entry["doc"].get("prompt")
            target = f" (expected: {entry['target']})" if entry["target"] else ""
            blocks.append(f"**{prompt}**{target}\n")
            blocks += [f"- *{name}*: {entry[name][:160]}" for name, _, _ in checkpoints if name in entry]
            blocks.append("")
    return "\n".join(blocks)


# The numbers a seeds run (bench/seeds.py) is quoted by: `stage/key` names ending in one of these.
SEED_HEADLINES = ("tiny_sft_tier", "tiny_rl_tier", "tiny_passkey", "tiny_safety_refusal", "tiny_jailbreak_refusal",
                  "tiny_safety_overrefusal",
                  "tiny_tool_call", "eval_pass@1_before", "eval_pass@1", "eval_pass@8_before", "eval_pass@8",
                  "eval_greedy_accuracy_before", "eval_greedy_accuracy", "eval_kl", "pair_accuracy",
                  "eval_accuracy", "preference_accuracy_before", "preference_accuracy")  # DPO: overall and per set


def seeds_table(summary_path: Path) -> str:
    """The headline numbers of a seeds run: each seed's value, and mean ± sample sd across the seeds."""
    import statistics

    per_seed = json.loads(summary_path.read_text())
    seeds = sorted(per_seed, key=int)
    keys = [k for k in dict.fromkeys(k for values in per_seed.values() for k in values)
            if k.endswith(SEED_HEADLINES) and not k.startswith("export/")]
    lines = [f"{len(seeds)} seeds ({summary_path}); tiers and pass@k in %.\n",
             "| measurement | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
             "|---|" + "---:|" * (len(seeds) + 1)]
    for key in keys:
        values = [per_seed[s].get(key) for s in seeds]
        present = [v for v in values if v is not None]
        scale, form = (1, "{:.3f}") if key.endswith("eval_kl") else (100, "{:.1f}")
        spread = statistics.stdev(present) * scale if len(present) > 1 else 0.0
        cells = ["–" if v is None else form.format(v * scale) for v in values]
        mean = form.format(statistics.fmean(present) * scale)
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {mean} ± {form.format(spread)} |")
    return "\n".join(lines)


def write_report(pipeline: Pipeline, output_dir: Path, seeds_summary: Path | None = None) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = evaluated_checkpoints(pipeline)
    table, values = scores_table(checkpoints) if checkpoints else ("No evaluated checkpoint yet.", {})
    curves = loss_curves(pipeline, output_dir / "loss_curves.png")
    scores_plot(values, [name for name, _, _ in checkpoints], output_dir / "scores.png")
    parts = [
        "# Report card\n",
        "Every score below was measured by lm-eval on held-out data (tasks/tiny), greedy decoding; "
        "± is lm-eval's standard error. Chat tasks go through the chat template, base tasks do not.\n",
    ]
    lab = lab_table(checkpoints)
    if lab:
        parts += ["## The lab: base, fine-tuned and RL-trained models on held-out math\n", lab]
    distilled = comparison_table(checkpoints, DISTILLATION, ("tiny_sft_tier", "tiny_rl_tier"))
    if distilled:
        parts += ["## Distillation: a student of half the layers, trained by SFT alone, off-policy, and by SFT then "
                  "on-policy from the teacher (sft), at equal steps\n", distilled]
    constitutional = comparison_table(checkpoints, CONSTITUTIONAL, ("tiny_safety_refusal", "tiny_jailbreak_refusal",
                                                                    "tiny_safety_overrefusal", "tiny_sft_tier"))
    if constitutional:
        parts += ["## Constitutional SFT (SL-CAI) against its SFT parent\n", constitutional]
    if seeds_summary is not None:
        parts += ["## Across training seeds (bench/seeds.py)\n", seeds_table(seeds_summary), ""]
    parts += ["## Scores by checkpoint\n", table, ""]
    if values:
        parts += ["![scores](scores.png)\n"]
    parts += ["## What each stage measured on its own held-out data\n", stage_measurements(pipeline), ""]
    if curves:
        parts += ["## Training curves\n", f"Stages: {', '.join(curves)}. RL stages show reward, answer accuracy and "
                  "the KL to the reference; the others their losses.\n", "![training curves](loss_curves.png)\n"]
    samples = sample_answers(checkpoints)
    if samples:
        parts += ["## The same prompts, answered by each checkpoint\n", samples]
    report = output_dir / "report.md"
    tmp = report.with_name(".report.md.tmp")
    tmp.write_text("\n".join(parts) + "\n")
    tmp.replace(report)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True, help="The pipeline file whose stages are reported.")
    parser.add_argument("--output_dir", required=True, help="Folder for report.md and its plots.")
    parser.add_argument("--seeds_summary", help="summary.json of a seeds run (bench/seeds.py): its headline numbers "
                        "as mean ± sd across seeds.")
    args = parser.parse_args(argv)
    stage.setup_logging()
    seeds = Path(args.seeds_summary) if args.seeds_summary else None
    if seeds is not None and not seeds.is_file():
        raise SystemExit(f"error: --seeds_summary {seeds} does not exist; run bench/seeds.py first.")
    report = write_report(Pipeline.from_yaml(repo_path(args.pipeline)), Path(args.output_dir), seeds)
    stage.logger.info("Report card: %s", report)
    print(report.read_text())
    stage.mark_complete(args.output_dir, {"stage": "report", "report": str(report)})


if __name__ == "__main__":
    stage.run(main)
