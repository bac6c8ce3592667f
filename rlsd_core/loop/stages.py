"""The stages of one training step, in data-flow order. Each takes the run's parts and the
records of earlier stages and returns its own record (rlsd_core.loop.batch):

    rows -> rollout -> verify -> teacher prompts -> advantages -> scoring forwards (pi_old,
    teacher) -> magnitude -> update (rlsd_core.loop.update) -> sync

`rlsd_core.loop.step.train_step` calls them in this order and nothing else.
"""

from __future__ import annotations

import torch

from .. import algo
from ..data import render_prompt, student_messages
from ..engines import SamplingParams
from ..models import token_logprobs
from ..records import CreditInputs
from .batch import Credit, Rollout, StepBatch, TeacherSide, Verified, draw_rows
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
    return StepBatch(step=step, tasks=[task for task, _ in picked], rows=[row for _, row in picked],
                     prompt_ids=[render_prompt(parts.tokenizer, student_messages(row)) for _, row in picked],
                     lam=lam, eps_w=eps_w, run_magnitude=run_mag, task_magnitudes=by_task,
                     group_size=cfg.rollout.group_size, use_teacher=use_teacher)


def rollout(parts: Parts, batch: StepBatch) -> Rollout:
    """G responses per row from the engine, seeded by (seed, step)."""
    cfg, tok = parts.cfg, parts.tokenizer
    params = SamplingParams(n=batch.group_size, temperature=cfg.rollout.temperature,
                            top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
                            stop_token_ids=(tok.eos_token_id,),
                            seed=cfg.seed * 1_000_003 + batch.step)
    groups = parts.engine.generate(batch.prompt_ids, params)
    gens = [(prompt, g) for prompt, group in zip(batch.prompt_ids, groups) for g in group]
    return Rollout(prompt_ids=[p for p, _ in gens], response_ids=[list(g.token_ids) for _, g in gens],
                   texts=[tok.decode(g.token_ids, skip_special_tokens=True) for _, g in gens],
                   finish_reasons=[g.finish_reason for _, g in gens],
                   logprobs=[list(g.logprobs) for _, g in gens])


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


def score(parts: Parts, batch: StepBatch, out: Rollout, verified: Verified,
          teacher_side: TeacherSide, adv: tuple[torch.Tensor, torch.Tensor]) -> Credit:
    """The no-grad scoring forwards: pi_old (with entropy) and, when the step uses it, the
    teacher on the same tokens under the teacher prompt."""
    cfg, tok = parts.cfg, parts.tokenizer
    temperature = cfg.rollout.temperature
    with torch.no_grad(), autocast(parts):
        old = token_logprobs(parts.model, out.prompt_ids, out.response_ids, temperature=temperature,
                             micro_batch=len(out.response_ids), pad_id=tok.pad_token_id,
                             return_entropy=True)
    teacher = None
    if batch.use_teacher:
        teacher = parts.teacher.score(teacher_side.ids, out.response_ids, temperature=temperature,
                                      micro_batch=len(out.response_ids), pad_id=tok.pad_token_id,
                                      return_logits=parts.objective.needs_logits(cfg.algo.model_dump()))
    advantages_, filled = adv
    return Credit(advantages=advantages_, filled_rewards=filled,
                  mask=old.mask & ~verified.infra.to(old.mask.device)[:, None],
                  response_mask=old.mask, old_logprobs=old.logprobs, entropy=old.entropy,
                  teacher_ids=teacher_side.ids, privileged=teacher_side.privileged,
                  teacher_logprobs=teacher.logprobs if teacher is not None else None,
                  teacher_logits=teacher.logits if teacher is not None else None)


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
    return Credit(**{**credit.__dict__, "token_advantages": token_adv})


def sync(parts: Parts, step: int) -> bool:
    """Push the new weights to the engine; refresh the teacher. True when the teacher changed."""
    parts.engine.load_weights(parts.model.state_dict())  # a checked no-op for the colocated HF engine
    return parts.teacher.update(step) if parts.teacher is not None else False
