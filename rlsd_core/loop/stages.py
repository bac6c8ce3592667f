"""The stages of one training step, in data-flow order. Each takes the run's parts and the
records of earlier stages and returns its own record (rlsd_core.loop.batch):

    rows -> rollout -> verify -> teacher prompts -> advantages -> pi_old -> teacher
    -> magnitude -> update (rlsd_core.loop.update) -> sync

`rlsd_core.loop.step.train_step` calls them in this order and nothing else.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from .. import algo
from ..data import encode_student_prompts
from ..engines import SamplingParams
from ..models import TokenScores, token_logprobs
from ..records import CreditInputs
from . import distributed, scoring
from .batch import Credit, Rollout, StepBatch, TeacherSide, Verified, draw_rows, rollout_seeds
from .run import Parts
from .schedule import Schedule
from .spans import thought_mask


def autocast(parts: Parts):
    """The precision context of every policy forward (student, pi_old, teacher)."""
    return torch.autocast(device_type=parts.device.type, dtype=torch.bfloat16, enabled=parts.autocast)


def rows(parts: Parts, schedule: Schedule, step: int) -> StepBatch:
    """The step's rows (a function of seed and step), each row's magnitude, the student prompts.
    The magnitudes are read before the rollout so that the teacher forward can be skipped when
    the objective does not need it this step (every lambda 0: plain GRPO)."""
    cfg = parts.cfg
    picked = draw_rows(parts.tasks, cfg.rollout.prompts_per_step, cfg.seed, step)
    run_mag, by_task = schedule.magnitudes(step, [t.name for t in parts.tasks])
    lam, eps_w = Schedule.per_row([task.name for task, _ in picked], by_task)
    when = parts.objective.teacher
    use_teacher = when == "always" or (when == "lambda" and bool((lam > 0).any()))
    prompt_ids, vision = encode_student_prompts(parts.tokenizer, [row for _, row in picked], parts.vision)
    return StepBatch(step=step, tasks=[task for task, _ in picked], rows=[row for _, row in picked],
                     prompt_ids=prompt_ids,
                     lam=lam, eps_w=eps_w, run_magnitude=run_mag, task_magnitudes=by_task,
                     group_size=cfg.rollout.group_size, use_teacher=use_teacher,
                     seeds=rollout_seeds(cfg.seed, step, len(picked)),
                     vision=vision)


def rollout(parts: Parts, batch: StepBatch) -> Rollout:
    """G responses per row from the engine, each row seeded by its own seed (batch.seeds)."""
    cfg, tok = parts.cfg, parts.tokenizer
    params = SamplingParams(n=batch.group_size, temperature=cfg.rollout.temperature,
                            top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
                            stop_token_ids=(tok.eos_token_id,), seeds=batch.seeds)
    images = {} if batch.vision is None else {"vision": batch.vision}
    groups = parts.engine.generate(batch.prompt_ids, params, **images)
    parts.engine.sleep()  # its memory (vLLM on a GPU) serves scoring and update until the sync
    gens = [(prompt, g) for prompt, group in zip(batch.prompt_ids, groups) for g in group]
    entropy = ([list(g.entropy) for _, g in gens]
               if all(g.entropy is not None for _, g in gens) else None)
    return Rollout(prompt_ids=[p for p, _ in gens], response_ids=[list(g.token_ids) for _, g in gens],
                   texts=[tok.decode(g.token_ids, skip_special_tokens=True) for _, g in gens],
                   finish_reasons=[g.finish_reason for _, g in gens],
                   logprobs=[list(g.logprobs) for _, g in gens], entropy=entropy,
                   vision=None if batch.vision is None else
                   [v for v in batch.vision for _ in range(batch.group_size)])


def verify(parts: Parts, batch: StepBatch, out: Rollout) -> Verified:
    """Each task's responses through that task's scorer."""
    verdicts = [None] * len(out.texts)
    for task in parts.tasks:
        mine = [i for i in range(len(out.texts)) if batch.tasks[batch.of_response(i)] is task]
        if mine:
            scored = parts.scorers[task.name].score([out.texts[i] for i in mine],
                                                    [batch.rows[batch.of_response(i)] for i in mine])
            for i, v in zip(mine, scored):
                verdicts[i] = v
    return Verified(verdicts=verdicts,
                    rewards=torch.tensor([v.reward for v in verdicts], dtype=torch.float32),
                    infra=torch.tensor([v.is_infra for v in verdicts]))


def teacher_prompts(parts: Parts, batch: StepBatch, out: Rollout, verified: Verified) -> TeacherSide:
    """The teacher prompt of every response, built once: one per row for injectors that read
    only the row, one per response for group injectors (which read the siblings' verdicts)."""
    G = batch.group_size
    built: list[tuple[list[int], str]] = []
    for r, (task, row) in enumerate(zip(batch.tasks, batch.rows)):
        if not parts.prompts.needs_group(task.name):
            built.extend([parts.prompts.prompt(task.name, row)] * G)
            continue
        lo = r * G
        for k in range(G):
            built.append(parts.prompts.prompt(task.name, row, index=k, responses=out.texts[lo:lo + G],
                                              verdicts=verified.verdicts[lo:lo + G]))
    return TeacherSide(ids=[ids for ids, _ in built], privileged=[text for _, text in built])


def advantages(parts: Parts, batch: StepBatch, verified: Verified) -> tuple[torch.Tensor, torch.Tensor]:
    """(group advantages [N], rewards with infra faults filled [N]); see algo.masked_group_advantages."""
    return algo.masked_group_advantages(verified.rewards, verified.infra, batch.group_size,
                                        normalize_std=parts.cfg.algo.normalize_std)


def scoring_forward(parts: Parts, score_fn, prompt_ids: list[list[int]],
                    response_ids: list[list[int]], **extra) -> TokenScores:
    """Every no-grad scoring forward (pi_old, the teacher, OPSD's teacher logits): one precision
    (the training forward's autocast), chunks of scoring.micro_batch sequences, shared prompts
    per scoring.share_prefix. `score_fn` is token_logprobs' signature without the model."""
    cfg = parts.cfg
    with torch.no_grad(), autocast(parts):
        return score_fn(prompt_ids, response_ids, temperature=cfg.rollout.temperature,
                        micro_batch=cfg.scoring.micro_batch, pad_id=parts.tokenizer.pad_token_id,
                        share_prefix=scoring.share_prefix(cfg), **extra)


def pi_old(parts: Parts, out: Rollout, verified: Verified, teacher_side: TeacherSide,
           adv: tuple[torch.Tensor, torch.Tensor]) -> Credit:
    """pi_old and the entropy at every response token: the rollout engine's own numbers when they
    are provably the trainer's (scoring.rollout_pi_old_refusal), else a no-grad student forward."""
    refusal = scoring.rollout_pi_old_refusal(parts.cfg, parts.model, parts.engine, parts.autocast)
    if refusal is None and out.entropy is not None:
        source = "rollout"
        old_lp, entropy = (scoring.padded(out.logprobs, parts.device),
                           scoring.padded(out.entropy, parts.device))
        lengths = torch.tensor([len(r) for r in out.response_ids], device=parts.device)
        response_mask = torch.arange(old_lp.shape[1], device=parts.device)[None, :] < lengths[:, None]
    else:
        source = "recompute"
        # Under torchrun the model is gathered once for the stage (distributed.unsharded): no
        # collective inside, so ranks need not run the same number of scoring chunks.
        with distributed.unsharded(parts.world, parts.model):
            old = scoring_forward(parts, functools.partial(token_logprobs, parts.model),
                                  out.prompt_ids, out.response_ids, return_entropy=True,
                                  vision=out.vision)
        old_lp, entropy, response_mask = old.logprobs, old.entropy, old.mask
    advantages_, filled = adv
    return Credit(advantages=advantages_, filled_rewards=filled,
                  mask=response_mask & ~verified.infra.to(response_mask.device)[:, None],
                  response_mask=response_mask, old_logprobs=old_lp, entropy=entropy,
                  teacher_ids=teacher_side.ids, privileged=teacher_side.privileged,
                  pi_old_source=source)


def teacher(parts: Parts, batch: StepBatch, out: Rollout, credit: Credit) -> Credit:
    """log P_T of the sampled tokens under the teacher prompt, when the step uses the teacher.
    Full-vocabulary logits (OPSD) are not computed here: the update asks for them per micro-batch."""
    if not batch.use_teacher:
        return credit
    # the same pixel inputs as the student: the injector keeps the images
    with distributed.unsharded(parts.world, parts.teacher.model):  # as pi_old's
        scores = scoring_forward(parts, parts.teacher.score, credit.teacher_ids, out.response_ids,
                                 vision=out.vision)
    return dataclasses.replace(credit, teacher_logprobs=scores.logprobs)


def magnitude(parts: Parts, batch: StepBatch, out: Rollout, credit: Credit) -> Credit:
    """The objective's per-token advantages (for RLSD: A scaled by the teacher's evidence),
    within the reasoning span only when `algo.thought_only` is set."""
    algo_cfg = parts.cfg.algo
    token_mask = None
    if algo_cfg.thought_only:
        token_mask = thought_mask(parts.tokenizer, out.response_ids, credit.mask.shape[1],
                                  algo_cfg.thought_start, algo_cfg.thought_end).to(credit.mask.device)
    token_adv = parts.objective.credit(CreditInputs(
        advantages=credit.advantages, old_logprobs=credit.old_logprobs, mask=credit.mask,
        lam=batch.lam.repeat_interleave(batch.group_size),
        eps_w=batch.eps_w.repeat_interleave(batch.group_size),
        teacher_logprobs=credit.teacher_logprobs, options=algo_cfg.model_dump(),
        token_mask=token_mask))
    return dataclasses.replace(credit, token_advantages=token_adv)


def sync(parts: Parts, step: int) -> bool:
    """Push the new weights to the engine; refresh the teacher. True when the teacher changed."""
    parts.engine.load_weights(parts.model.state_dict())  # a checked no-op for the colocated HF engine
    return parts.teacher.update(step) if parts.teacher is not None else False
