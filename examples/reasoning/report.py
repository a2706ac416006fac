"""The reasoning example's report: every arm's numbers per seed, then the results (a)-(g) judged by
the ablation study's verdict rule (`minimind_spec.study.verdict`): a difference counts only when
the difference of the means over seeds exceeds the larger of the seed range and twice the
combined standard error (an exact-match share p on n problems has SE sqrt(p (1 - p) / n)).

- (0) the task discriminates: the teacher beats the SFT student, which stays below 100%;
- (a) SFT raises exact match over the base;
- (b) DPO raises held-out preference accuracy and reward margin, exact match not lower than SFT's;
- (c) the distilled student beats the SFT student;
- (d) LoRA recovers >= 80% of full fine-tuning's gain: from the base (lora_tokens against sft)
  and on the held-out domain from the SFT model (domain_lora against domain_full); "not
  settled" when below 80% but within the noise of full fine-tuning;
- (e) the aux loss keeps expert load balanced (lower load CV than without it);
- (f) QLoRA is within the noise of LoRA (lora_tokens);
- (g) GRPO raises exact match over its start (sft_short), its final KL to the reference bounded.

`report(result)` returns the Markdown text and the rows (for results.json).
"""

from __future__ import annotations

import math

from minimind_spec.study.verdict import Comparison, Measure, Verdict, compare

MAIN_EVAL = ("base", "sft", "dpo", "teacher", "distill", "lora_plain", "lora_tokens", "qlora", "sft_short", "grpo")
DOMAIN_EVAL = ("sft", "domain_full", "domain_lora")  # evaluated on the held-out domain
RECOVERED = 0.8  # LoRA's share of full fine-tuning's gain that counts as recovering it
KL_BOUND = 1.0  # GRPO's final logged `kl` (to its reference) that counts as bounded


def _seeds(result: dict) -> list[dict]:
    return [result["seeds"][k] for k in sorted(result["seeds"])]


def share(result: dict, table: str, arm: str, key: str = "exact_match") -> Measure | None:
    """A share measured on every seed (None when an arm is missing on any)."""
    rows = [(seed.get(table) or {}).get(arm) for seed in _seeds(result)]
    if not rows or any(row is None for row in rows):
        return None
    return Measure(tuple(row[key] for row in rows), tuple(row.get(f"{key}_se") for row in rows))


def scalar(result: dict, table: str, key: str, arm: str | None = None) -> Measure | None:
    """A value with its SE (KEY_se) per seed, from seed[TABLE][ARM] or seed[TABLE]."""
    rows = []
    for seed in _seeds(result):
        row = seed.get(table) or {}
        row = row.get(arm) if arm is not None else row
        if not row or row.get(key) is None:
            return None
        rows.append(row)
    return Measure(tuple(row[key] for row in rows), tuple(row.get(f"{key}_se") for row in rows))


def zero(like: Measure) -> Measure:
    """Exactly zero on every seed (what a measurement against itself gives), with SE 0."""
    return Measure(tuple(0.0 for _ in like.values), tuple(0.0 for _ in like.values))


def show(m: Measure | None, percent: bool = True) -> str:
    """mean, and the seed range (several seeds) or the standard error (one seed)."""
    if m is None:
        return "n/a"
    f = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3f}")
    if len(m.values) > 1:
        return f"{f(m.mean)} (seeds {f(min(m.values))}..{f(max(m.values))})"
    return f"{f(m.mean)} ± {f(m.error)}" if m.error is not None and math.isfinite(m.error) else f(m.mean)


def judged(c: Comparison | None, percent: bool = True) -> str:
    """The difference of the means, what it had to exceed, and the verdict."""
    if c is None:
        return "n/a"
    f = (lambda v: f"{v:+.1%}") if percent else (lambda v: f"{v:+.3f}")
    noise = "no noise estimate" if c.noise is None else f"noise {f(c.noise)[1:]}"
    return f"{f(c.difference)} ({noise}: {c.verdict})"


def both(base: Measure | None, other: Measure | None, expected: int) -> Comparison | None:
    return compare(base, other, expected) if base is not None and other is not None else None


def recovered(start: Measure | None, full: Measure | None, arm: Measure | None) -> tuple[str, bool | str | None, dict]:
    """(text, holds, numbers) for LoRA's share of full fine-tuning's gain from START. Holds: yes when
    full fine-tuning's gain counts and LoRA's mean share of it is >= RECOVERED; no when it is below
    and LoRA is below full fine-tuning beyond the noise; otherwise the noise does not settle it."""
    if start is None or full is None or arm is None:
        return "n/a", None, {}
    gains = [(f - s, a - s) for s, f, a in zip(start.values, full.values, arm.values)]
    shares = [a / f if f > 0 else float("nan") for f, a in gains]
    mean_share = sum(shares) / len(shares)
    full_gain, against_full = compare(start, full, +1), compare(full, arm, +1)
    if full_gain.verdict != Verdict.CONFIRMED:
        holds: bool | str = "not settled (full fine-tuning's gain is within the noise)"
    elif mean_share >= RECOVERED:
        holds = True
    elif against_full.verdict == Verdict.CONTRADICTED:
        holds = False
    else:
        holds = "not settled (LoRA is below the share but within the noise of full fine-tuning)"
    of_gain = f"{mean_share:.0%} of the gain" if math.isfinite(mean_share) else "n/a of the gain (full gained nothing on a seed)"
    text = (f"start {show(start)}, full {show(full)}, LoRA {show(arm)}: {of_gain} "
            f"(full's gain {judged(full_gain)}; LoRA - full {judged(against_full)})")
    return text, holds, {"recovered_share": mean_share, "per_seed": shares, "full_gain": full_gain.verdict,
                         "lora_minus_full": against_full.verdict}


def rows(result: dict) -> list[dict]:
    out = []

    def add(label: str, text: str, holds: bool | str | None, **numbers: object) -> None:
        """HOLDS: True / False (yes / no), None (not measured: n/a) or a sentence (the noise does not settle it)."""
        verdict = "n/a" if holds is None else holds if isinstance(holds, str) else "yes" if holds else "no"
        out.append({"result": label, "measured": text, "holds": verdict, **numbers})

    em = {arm: share(result, "eval", arm) for arm in MAIN_EVAL}
    teacher_gap = both(em["sft"], em["teacher"], +1)
    add("(0) the task discriminates: teacher > sft, sft < 100%",
        f"sft {show(em['sft'])}, teacher {show(em['teacher'])}: {judged(teacher_gap)}",
        None if teacher_gap is None else teacher_gap.verdict == Verdict.CONFIRMED and max(em["sft"].values) < 1.0)
    gain = both(em["base"], em["sft"], +1)
    add("(a) SFT raises exact match over the base", f"base {show(em['base'])} -> sft {show(em['sft'])}: {judged(gain)}",
        None if gain is None else gain.verdict == Verdict.CONFIRMED)

    accuracy_sft, accuracy_dpo = scalar(result, "dpo", "preference_accuracy_sft"), scalar(result, "dpo", "preference_accuracy_dpo")
    margin, keeps = scalar(result, "dpo", "margin"), both(em["sft"], em["dpo"], +1)
    chosen_sft, chosen_dpo = scalar(result, "dpo", "logp_chosen_sft"), scalar(result, "dpo", "logp_chosen_dpo")
    if accuracy_sft is None or margin is None or keeps is None:
        add("(b) DPO: preference accuracy and margin up, exact match kept", "n/a (no DPO measurements)", None)
    else:
        up, positive = compare(accuracy_sft, accuracy_dpo, +1), compare(zero(margin), margin, +1)
        add("(b) DPO: preference accuracy and margin up, exact match kept",
            f"preference accuracy {show(accuracy_sft)} -> {show(accuracy_dpo)} {judged(up)}; held-out reward margin "
            f"{show(margin, False)} {judged(positive, False)}; log p(chosen) {show(chosen_sft, False)} -> "
            f"{show(chosen_dpo, False)}; exact match {show(em['sft'])} -> {show(em['dpo'])} {judged(keeps)}",
            up.verdict == Verdict.CONFIRMED and positive.verdict == Verdict.CONFIRMED
            and keeps.verdict != Verdict.CONTRADICTED)

    distilled = both(em["sft"], em["distill"], +1)
    add("(c) the distilled student beats the SFT student",
        f"teacher {show(em['teacher'])}; distill {show(em['distill'])} vs sft {show(em['sft'])}: {judged(distilled)}",
        None if distilled is None else distilled.verdict == Verdict.CONFIRMED)

    text, holds, numbers = recovered(em["base"], em["sft"], em["lora_tokens"])
    add(f"(d) from the base: LoRA with trained special tokens recovers >= {RECOVERED:.0%} of full SFT's gain",
        f"{text}; without trained tokens (lora_plain) {show(em['lora_plain'])}", holds, **numbers)
    domain = {arm: share(result, "domain_eval", arm) for arm in DOMAIN_EVAL}
    text, holds, numbers = recovered(domain["sft"], domain["domain_full"], domain["domain_lora"])
    add(f"(d) held-out domain, from the SFT model: LoRA recovers >= {RECOVERED:.0%} of full fine-tuning's gain",
        text, holds, **numbers)

    aux, no_aux = scalar(result, "expert_load", "mean_cv", "moe_aux"), scalar(result, "expert_load", "mean_cv", "moe_no_aux")
    balanced = both(no_aux, aux, -1)
    add("(e) the aux loss keeps expert load balanced", f"load CV without aux {show(no_aux, False)} -> with aux "
        f"{show(aux, False)}: {judged(balanced, False)}", None if balanced is None else balanced.verdict == Verdict.CONFIRMED)

    near = both(em["lora_tokens"], em["qlora"], +1)
    base = _seeds(result)[0].get("qlora_base")  # the same on every seed
    add("(f) QLoRA (NF4 base) is within the noise of LoRA",
        f"lora_tokens {show(em['lora_tokens'])}, qlora {show(em['qlora'])}: {judged(near)}; frozen base "
        + (f"{base['bytes']:,} bytes in {base['scheme']} for {base['params']:,} weights ({4 * base['params']:,} in fp32)"
           if base else "bytes: TODO (the QLoRA run's executed.json records no base_quant)"),
        None if near is None else near.verdict != Verdict.CONTRADICTED)

    raised = both(em["sft_short"], em["grpo"], +1)
    kls = [seed.get("grpo_final_kl") for seed in _seeds(result)]
    bounded = bool(kls) and all(k is not None and math.isfinite(k) and k <= KL_BOUND for k in kls)
    kl_text = ", ".join("n/a" if k is None else f"{k:.4f}" for k in kls)
    add("(g) GRPO raises exact match over its start, KL bounded",
        f"sft_short {show(em['sft_short'])} -> grpo {show(em['grpo'])}: {judged(raised)}; final KL {kl_text} "
        f"(bound {KL_BOUND})", None if raised is None else raised.verdict == Verdict.CONFIRMED and bounded)
    return out


def cell(seed: dict, table: str, arm: str) -> str:
    status = seed["arms"].get(arm, {}).get("status", "not run")
    row = (seed.get(table) or {}).get(arm)
    if status != "done" or row is None:
        return status if status != "done" else "not measured"
    return f"{row['exact_match']:.1%} ({row['answer_format']:.0%})"


def report(result: dict) -> tuple[str, list[dict]]:
    seeds = sorted(result["seeds"])
    judged_rows = rows(result)
    head = "| arm | " + " | ".join(f"seed {k}" for k in seeds) + " |"
    rule = "|---|" + "---|" * len(seeds)
    first = result["seeds"][seeds[0]]
    lines = [
        f"Held-out: {len(seeds)} seed(s) (data seed = run seed), steps {result['steps']} (scale {result['scale']}); "
        f"{result['train_minutes']:.1f} min of training, this invocation {result['this_invocation_minutes']:.1f} min.",
        "", "Exact match on the 200 held-out problems (share of answers in the trained format):", "", head, rule,
        *[f"| {arm} | " + " | ".join(cell(result["seeds"][k], "eval", arm) for k in seeds) + " |" for arm in MAIN_EVAL],
        "", "Exact match on the 200 held-out money problems (the held-out domain):", "", head, rule,
        *[f"| {arm} | " + " | ".join(cell(result["seeds"][k], "domain_eval", arm) for k in seeds) + " |"
          for arm in DOMAIN_EVAL],
        "", "| result | measured (mean, seed range or ± SE) | holds? |", "|---|---|---|",
        *[f"| {r['result']} | {r['measured']} | {r['holds']} |" for r in judged_rows],
    ]
    problems = [(k, arm, s) for k in seeds for arm, s in result["seeds"][k]["arms"].items() if s["status"] != "done"]
    if problems:
        lines += ["", "Arms not trained:"]
        for k, arm, s in problems:
            lines.append(f"- seed {k} {arm}: {s['status']}: {s.get('why') or 'exit ' + str(s.get('exit'))}")
            if s.get("tail"):
                lines += ["", "  ```", *[f"  {line}" for line in s["tail"].splitlines()[-8:]], "  ```"]
    errors = [(k, what, e) for k in seeds for what, e in result["seeds"][k]["errors"].items()]
    if errors:
        lines += ["", "Measurements that failed:", *[f"- seed {k}: {what}: {e}" for k, what, e in errors]]
    seconds = {arm: s.get("seconds") for arm, s in first["arms"].items() if s.get("seconds")}
    lines += ["", f"Training seconds per arm (seed {seeds[0]}): " + ", ".join(f"{a} {v:.0f}" for a, v in seconds.items()) + "."]
    return "\n".join(lines) + "\n", judged_rows
