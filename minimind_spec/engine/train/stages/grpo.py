"""GRPO: prompts in, sampled groups of completions scored by verifiable rewards, `builders.grpo_loss_sum` out.

A row is one prompt of a prompt token cache (`records.Prompt`: its turns, no generation prompt)
and its reference answer, read from the same file. Making a batch of rows is where the sampling
happens (the loop builds every micro-batch of a step before the first forward, so all are
sampled from the same weights):
1. each prompt gets the generation prompt (`chatml.generation_prompt`, a `<think>` block opened
   with `thinking`) and keeps its last `seq_len - max_new_tokens` tokens; prompts are
   left-padded;
2. the policy, in eval mode and without gradients, samples `num_generations` completions per
   prompt with the batched KV-cache decode (`builders.inference.generate`: temperature, top-k,
   top-p) on the fp32 master weights (outside autocast: the decode path's packed CPU kernels do
   not take bf16 activations), stopping at `<|im_end|>` or `max_new_tokens`;
3. each completion is decoded and scored by every rule of `minimind_spec.rewards` against the
   prompt's answer; its reward is the weighted sum, and rewards become advantages within each
   group (`group_advantages`: a group of equal rewards gets 0, so no policy gradient);
4. the batch holds prompt + completion ids, their attention mask, and labels on the completion
   tokens only (their `<|im_end|>` included), so prompts and padding carry no loss.
Held-out rows are decoded greedily, one completion per prompt: their rewards are the held-out
evaluation (`eval_reward`, `eval_rewards/<rule>`); their loss is the KL term alone.

The objective runs the policy (train mode, with gradients) on the batch, takes each completion
token's log-prob, and the reference's (the stage's input model, frozen: a copy, or the policy
with its untrained adapters disabled; sampled sequences cannot be precomputed). One optimizer
step per sampled batch, so the sampling policy's log-probs are the policy's own, detached: the
ratio is 1 in value and the gradient is the policy gradient. The loss sum is over completion
tokens, its count the completion tokens. Metrics: `rewards/<rule>`, `reward`, `reward_std` (the
mean within-group std), `frac_reward_zero_std` (groups with no signal), `kl`, `clip_fraction`,
`completion_length`, `generation_tokens_per_s`; `GRPOWatch` warns when the KL grows past a bound
or every group has had equal rewards for many steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from builders import adapters_disabled
from builders.inference import drop_packed_weights, generate
from builders.model import MiniMindForCausalLM
from builders.techniques import IGNORE_INDEX, group_advantages, grpo_loss_sum, token_log_probs

from .... import rewards as reward_rules
from ....errors import InputError
from ....objectives import GRPOObjective
from ....plan import ReferenceMode
from ...data.chatml import generation_prompt
from ...data.records import Prompt, read_records
from ...data.tokenizer import BOS_TOKEN, ChatTokenizer
from ..monitors import ExpertLoadWatch, GRPOWatch
from .base import ObjectiveOutput, StageData, StageInputs, StageParts, balance_loss_metric, held_out_split
from .preference import frozen_copy


@dataclass(frozen=True)
class Rollouts:
    """A batch of sampled completions, `group` consecutive rows per prompt."""

    input_ids: torch.Tensor  # (N, T) prompt (left-padded), then completion (padded after its <|im_end|>)
    attention_mask: torch.Tensor  # (N, T) 1 on prompt and completion tokens
    labels: torch.Tensor  # (N, T) the completion tokens, IGNORE_INDEX elsewhere
    advantages: torch.Tensor  # (N,) group-normalised rewards
    group: int  # completions per prompt
    completion_tokens: int  # what the loss sum is normalised by
    real_tokens: int  # prompt + completion tokens
    metrics: dict[str, float]  # the rewards' and the sampling's means over the batch


@dataclass(frozen=True)
class Sampler:
    """Samples and scores the completions of a batch of prompts (module docstring, steps 1-4)."""

    policy: MiniMindForCausalLM
    tokenizer: ChatTokenizer
    settings: GRPOObjective
    prompts: list[np.ndarray]  # by row: the prompt's ids, the generation prompt included, cut to the budget
    answers: list[str]  # by row
    body_prefix: str  # the generation prompt after the role header: where the assistant body starts
    pad_id: int

    def sample(self, rows: list[int], device: str, evaluating: bool) -> Rollouts:
        group = 1 if evaluating else self.settings.num_generations
        prompts = [self.prompts[row] for row in rows for _ in range(group)]
        longest = max(len(p) for p in prompts)
        ids = np.full((len(prompts), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), longest), dtype=np.int64)
        for i, prompt in enumerate(prompts):  # left padding
            ids[i, longest - len(prompt):] = prompt
            mask[i, longest - len(prompt):] = 1
        prompt_ids, prompt_mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)  # (N, P)
        started = time.perf_counter()
        out = generate(self.policy, prompt_ids, attention_mask=prompt_mask, max_new_tokens=self.settings.max_new_tokens,
                       temperature=0.0 if evaluating else self.settings.temperature, top_k=self.settings.top_k,
                       top_p=self.settings.top_p, eos_token_id=self.tokenizer.eos_id, pad_token_id=self.pad_id)
        drop_packed_weights(self.policy)  # the decode's packed copy of the weights: rebuilt after every optimizer step anyway
        seconds = time.perf_counter() - started
        completions = out[:, longest:].clone()  # (N, C) a normal tensor (generate's are inference tensors)
        is_eos = completions == self.tokenizer.eos_id  # (N, C)
        finished = is_eos.any(dim=1)  # (N,)
        lengths = torch.where(finished, is_eos.int().argmax(dim=1) + 1, completions.shape[1])  # (N,) with <|im_end|>
        trained = torch.arange(completions.shape[1], device=device)[None, :] < lengths[:, None]  # (N, C)
        input_ids = torch.cat([prompt_ids, completions], dim=1)  # (N, P + C)
        attention_mask = torch.cat([prompt_mask, trained.long()], dim=1)  # (N, P + C)
        labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), torch.where(trained, completions, IGNORE_INDEX)], dim=1)
        values, totals = self._score(rows, group, completions, lengths, finished)
        rewards = torch.tensor(totals, dtype=torch.float32)  # (N,)
        advantages = group_advantages(rewards, group, self.settings.std_eps)  # (N,)
        grouped = rewards.view(-1, group)  # (prompts, group)
        tokens = int(lengths.sum())
        metrics = {**{f"rewards/{name}": float(np.mean(v)) for name, v in values.items()}, "reward": float(rewards.mean()),
                   "completion_length": tokens / len(prompts), "completions_finished": float(finished.float().mean()),
                   "generation_tokens_per_s": tokens / seconds if seconds > 0 else 0.0}
        if group > 1:  # the spread within groups (held-out prompts get one greedy completion each)
            metrics |= {"reward_std": float(grouped.std(dim=1, unbiased=False).mean()),
                        "frac_reward_zero_std": float((grouped.amax(dim=1) == grouped.amin(dim=1)).float().mean())}
        return Rollouts(input_ids, attention_mask, labels, advantages.to(device), group, tokens, int(attention_mask.sum()),
                        metrics)

    def _score(self, rows: list[int], group: int, completions: torch.Tensor, lengths: torch.Tensor,
               finished: torch.Tensor) -> tuple[dict[str, list[float]], list[float]]:
        """Each rule's values and each completion's reward (the weighted sum)."""
        rules = self.settings.rewards
        values: dict[str, list[float]] = {rule.name: [] for rule in rules}
        totals: list[float] = []
        for i, (ids, length, done) in enumerate(zip(completions.tolist(), lengths.tolist(), finished.tolist())):
            text = self.tokenizer.decode(ids[:length - 1 if done else length])  # without its <|im_end|>
            completion = reward_rules.Completion(self.body_prefix + text, length, done)
            scores = reward_rules.score(rules, completion, self.answers[rows[i // group]])
            for name, value in scores.items():
                values[name].append(value)
            totals.append(reward_rules.total(rules, scores))
        return values, totals


class Reference(Protocol):
    @property
    def mode(self) -> ReferenceMode: ...

    def log_probs(self, policy: nn.Module, batch: Rollouts) -> torch.Tensor: ...  # (N, T) no gradient


def _token_logps(model: nn.Module, batch: Rollouts) -> torch.Tensor:
    logits = model(batch.input_ids, attention_mask=batch.attention_mask).logits  # (N, T, V)
    return token_log_probs(logits, batch.labels)[0]  # (N, T)


@dataclass(frozen=True)
class FrozenCopy:
    model: nn.Module
    mode: ReferenceMode = ReferenceMode.COPY

    @torch.no_grad()
    def log_probs(self, policy: nn.Module, batch: Rollouts) -> torch.Tensor:
        return _token_logps(self.model, batch)


@dataclass(frozen=True)
class AdaptersOff:
    mode: ReferenceMode = ReferenceMode.ADAPTERS_OFF

    @torch.no_grad()
    def log_probs(self, policy: nn.Module, batch: Rollouts) -> torch.Tensor:
        was_training = policy.training
        policy.eval()
        try:
            with adapters_disabled(policy):
                return _token_logps(policy, batch)
        finally:
            policy.train(was_training)


@dataclass(frozen=True)
class GRPOLoss:
    settings: GRPOObjective
    reference: Reference

    def count(self, batch: Rollouts) -> float:
        return float(batch.completion_tokens)

    def __call__(self, model: nn.Module, batch: Rollouts) -> ObjectiveOutput:
        reference = self.reference.log_probs(model, batch)  # (N, T)
        out = model(batch.input_ids, attention_mask=batch.attention_mask)  # logits (N, T, V)
        log_probs, mask = token_log_probs(out.logits, batch.labels)  # (N, T)
        terms = grpo_loss_sum(log_probs, log_probs.detach(), reference, batch.advantages, mask, beta=self.settings.beta,
                              loss_type=self.settings.loss, clip_eps=self.settings.clip_eps,
                              cispo_max_weight=self.settings.cispo_max_weight)
        count = max(float(terms.count), 1.0)
        metrics = {**batch.metrics, "kl": float(terms.kl_sum) / count, "clip_fraction": float(terms.clipped) / count,
                   **balance_loss_metric(out.aux_loss, out.expert_counts)}
        return ObjectiveOutput(terms.loss_sum + out.aux_loss * batch.completion_tokens, metrics, out.expert_counts)


def _prompts(inputs: StageInputs, tokenizer: ChatTokenizer, settings: GRPOObjective) -> tuple[list[np.ndarray], list[str]]:
    """Every row's prompt ids (the generation prompt added, cut from the left to fit) and its answer."""
    cache, data = inputs.cache, inputs.plan.data
    if data is None:
        raise InputError("the grpo stage has no data file")
    answers = [record.answer for _, record in read_records(data, "prompt", skip_bad_lines=True) if isinstance(record, Prompt)]
    if len(answers) != len(cache):
        raise InputError(f"{data}: {len(answers)} prompt records but {len(cache)} cached prompts (the file changed while "
                         "the run started?)")
    opening = tokenizer.encode(generation_prompt(tokenizer.chat_format, settings.thinking))
    budget = inputs.plan.seq_len - settings.max_new_tokens
    if budget <= len(opening):
        raise InputError(f"the grpo stage's seq_len {inputs.plan.seq_len} leaves {budget} tokens for a prompt beside "
                         f"max_new_tokens {settings.max_new_tokens}: raise techniques.grpo.seq_len or lower max_new_tokens")
    prompts = [np.concatenate([np.asarray(cache.sample(i)[0], dtype=np.int64), opening])[-budget:] for i in range(len(cache))]
    return prompts, answers


def grpo_stage(inputs: StageInputs) -> StageParts:
    settings = inputs.plan.objective
    assert isinstance(settings, GRPOObjective)
    tokenizer = inputs.tokenizer
    if tokenizer is None:
        raise ValueError("the grpo stage decodes its completions: StageInputs needs the run's tokenizer")
    if len(inputs.cache) == 0:
        raise InputError(f"{inputs.cache.meta.source}: no usable prompt")
    prompts, answers = _prompts(inputs, tokenizer, settings)
    train, held_out = held_out_split(len(prompts))
    first_held_out = len(train)
    opening = generation_prompt(tokenizer.chat_format, settings.thinking)
    sampler = Sampler(inputs.model, tokenizer, settings, prompts, answers,
                      opening.removeprefix(f"{BOS_TOKEN}assistant\n"), inputs.pad_id)
    data = StageData(train, held_out, lambda rows, device: sampler.sample(rows, device, evaluating=rows[0] >= first_held_out),
                     f"{len(prompts):,} prompts, {settings.num_generations} completions each per step; {len(held_out)} held "
                     "out (greedy)")
    mode = inputs.plan.reference
    reference: Reference
    if mode == ReferenceMode.COPY:
        reference = FrozenCopy(frozen_copy(inputs.model))
    elif mode == ReferenceMode.ADAPTERS_OFF:
        reference = AdaptersOff()
    else:
        raise ValueError(f"a GRPO stage needs a frozen copy or the adapters-off reference; the plan gave {mode!r}")
    watches = (GRPOWatch(), *((ExpertLoadWatch(),) if inputs.moe else ()))
    return StageParts(data, GRPOLoss(settings, reference), watches, reference=reference.mode)
