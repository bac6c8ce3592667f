"""The teacher check: is the self-teacher informative before any RL step is spent on it?

RLSD only helps when the model, shown the privileged context, judges its own tokens better than
without it. This module measures that precondition on the policy as it stands (the teacher at
step 0 has the policy's weights in every teacher mode), per task:

    held-out rows -> student prompt and teacher prompt (the task's injector)
      greedy with each prompt -> verifier -> accuracy with / without the privileged context,
                                             leakage of what only the teacher saw
    G sampled responses per row (student prompt, rollout temperature) -> verifier -> right/wrong
      log P_S (token_logprobs, student prompt) and log P_T (Teacher.score, teacher prompt) of
      the same tokens -> delta = log P_T - log P_S per token
        mean delta on right vs wrong responses, AUROC of a response's mean delta for its
        correctness (pooled, and within groups: what a group advantage compares), delta on
        answer tokens vs the rest, the trainer's clip fractions at the configured eps_w
    -> a verdict with its reason: informative, uninformative or harmful

Rows with images get their pixel inputs in every one of these passes, as in the training step (the
teacher prompt keeps the student's images, so both forwards take the same pixels).

Rows are the task's held-out rows (never trained on, so a teacher that memorised training rows
in a warm-up cannot pass by recall). `rlsd check-teacher` (rlsd_core.cli.check_teacher) prints
the full check; the trainer runs a small one at step 0 (`teacher.check`) and warns when a task
fails. Built on the public scoring API (`token_logprobs`, `Teacher.score`), not on the step's
stages, so the step can change without this module noticing.

Answer tokens: the response tokens whose text overlaps the answer span, which is the content of
the last \\boxed{...} when there is one, else the last occurrence of the verifier's extracted
answer in the text, else the text after the last '='; a response with none of these has no
answer tokens. The other response tokens (including the end-of-sequence token) are "the rest".
For a task whose whole response is the answer (exact match of the response), "the rest" is
just the end-of-sequence token.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from .. import algo
from ..data import TaskData, TeacherPrompts, encode_student_prompts
from ..engines import SamplingParams
from ..leakage import leakage
from ..models import token_logprobs
from ..verdict import Verdict
from .evaluation import greedy_pair, judged_ok
from .teacher import Teacher

VERDICTS = ("informative", "uninformative", "harmful")  # ordered best to worst
MIN_AUROC = 0.6    # a useful separation of right from wrong, not only a significant one
MIN_GAP = 0.5      # delta right - delta wrong must reach this fraction of the clip range ln(1 + eps_w)
Z = 2.0            # "significant": beyond two standard errors


class TeacherCheckWarning(UserWarning):
    """The self-teacher failed the step-0 teacher check (it is uninformative or harmful)."""


@dataclass
class Settings:
    """How much the check samples (rows per task, responses per row) and how it samples."""

    rows: int = 128                 # held-out rows per task for the greedy accuracies
    sample_rows: int = 32           # rows per task whose G responses are sampled and scored
    group_size: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 16        # sampled responses (the rollout's cap)
    eval_max_new_tokens: int = 16   # greedy responses (the evaluation's cap)
    seed: int = 0
    micro_batch: int = 64


@dataclass
class TaskCheck:
    """One task's check. Accuracies are fractions; deltas are nats per token (None: no tokens)."""

    task: str
    injector: str
    rows: int
    acc_student: float
    acc_teacher: float
    acc_gain_se: float              # standard error of acc_teacher - acc_student (paired)
    leakage: int                    # teacher-prompt greedy outputs flagged by rlsd_core.leakage
    samples: int
    right: int
    delta_right: float | None
    delta_wrong: float | None
    auroc: float | None             # P(mean delta of a right response > that of a wrong one)
    auroc_se: float | None
    auroc_within: float | None      # the same over pairs from one group only
    delta_answer_right: float | None
    delta_answer_wrong: float | None
    delta_rest_right: float | None
    delta_rest_wrong: float | None
    eps_w: float
    clip_low_frac: float
    clip_high_frac: float
    verdict: str = ""
    reason: str = ""

    @property
    def clip_frac(self) -> float:
        return self.clip_low_frac + self.clip_high_frac


@dataclass
class TeacherCheckReport:
    tasks: list[TaskCheck]
    seconds: float
    settings: Settings
    verdict: str = field(init=False)
    reason: str = field(init=False)

    def __post_init__(self) -> None:
        worst = max(self.tasks, key=lambda t: VERDICTS.index(t.verdict))
        self.verdict = worst.verdict
        self.reason = "; ".join(f"{t.task}: {t.verdict} ({t.reason})" for t in self.tasks)

    def failing(self) -> list[TaskCheck]:
        return [t for t in self.tasks if t.verdict != "informative"]

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "reason": self.reason, "seconds": round(self.seconds, 2),
                "settings": asdict(self.settings),
                "tasks": {t.task: {**asdict(t), "clip_frac": t.clip_frac} for t in self.tasks}}


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------

def auroc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """P(a positive scores above a negative), ties counting one half (Mann-Whitney U / n+ n-)."""
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def auroc_se(a: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC (Hanley and McNeil, 1982)."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def paired_se(x: Sequence[bool], y: Sequence[bool]) -> float:
    """Standard error of mean(y) - mean(x) over the same problems."""
    d = [float(b) - float(a) for a, b in zip(x, y)]
    n = len(d)
    if n < 2:
        return 0.0
    m = sum(d) / n
    return math.sqrt(sum((v - m) ** 2 for v in d) / (n - 1) / n)


def within_group_auroc(scores: Sequence[float], right: Sequence[bool], group_size: int) -> float | None:
    wins = pairs = 0.0
    for lo in range(0, len(scores), group_size):
        s, r = scores[lo:lo + group_size], right[lo:lo + group_size]
        for p, rp in zip(s, r):
            for q, rq in zip(s, r):
                if rp and not rq:
                    wins += (p > q) + 0.5 * (p == q)
                    pairs += 1
    return wins / pairs if pairs else None


def judge(t: TaskCheck) -> tuple[str, str]:
    """The verdict on one task and its reason, from the numbers alone."""
    gain = t.acc_teacher - t.acc_student
    acc = (f"greedy accuracy {100 * t.acc_student:.1f}% -> {100 * t.acc_teacher:.1f}% with the "
           f"privileged context")
    if gain < 0 and -gain > Z * t.acc_gain_se:
        return "harmful", f"the hint lowers accuracy: {acc} (more than {Z:g} SE)"
    if t.auroc is not None and t.auroc + Z * (t.auroc_se or 0.0) < 0.5:
        return "harmful", (f"delta favours wrong responses: AUROC {t.auroc:.2f} +- {t.auroc_se:.2f}"
                           f" (RLSD would give their tokens more credit)")
    if t.auroc is None:
        which = "right" if t.right == 0 else "wrong"
        return "uninformative", (f"no {which} response among {t.samples} samples, so delta cannot "
                                 f"separate them ({acc}; RL gets no signal from such groups either)")
    sep = f"AUROC {t.auroc:.2f} +- {t.auroc_se:.2f}, delta right {t.delta_right:+.2f} vs wrong {t.delta_wrong:+.2f}"
    if not (t.auroc - Z * t.auroc_se > 0.5 and t.auroc >= MIN_AUROC):
        return "uninformative", (f"delta does not separate right from wrong responses (needs AUROC "
                                 f">= {MIN_AUROC} and {Z:g} SE above 0.5: {sep}); {acc}")
    # A separation far inside the clip range moves RLSD's weights by a few percent: RLSD is then
    # GRPO in all but name, however significant the AUROC.
    need = MIN_GAP * math.log1p(t.eps_w)
    if t.delta_right - t.delta_wrong < need:
        return "uninformative", (f"delta ranks right above wrong responses but by {t.delta_right - t.delta_wrong:.3f} "
                                 f"nats, less than {MIN_GAP:g} x ln(1 + eps_w) = {need:.3f}: too weak to "
                                 f"move the evidence weights ({sep}); {acc}")
    return "informative", f"delta separates right from wrong responses ({sep}); {acc}"


# ---------------------------------------------------------------------------------------------
# answer tokens
# ---------------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def answer_span(text: str, verdict: Verdict) -> tuple[int, int] | None:
    """Character span of the answer in a response (see the module docstring), or None."""
    boxed = list(_BOXED.finditer(text))
    if boxed:
        return boxed[-1].span(1)
    if verdict.answer:
        at = text.rfind(verdict.answer)
        if at >= 0:
            return at, at + len(verdict.answer)
    at = text.rfind("=")
    if at >= 0 and text[at + 1:].strip():
        return at + 1, len(text)
    return None


def answer_token_mask(tokenizer, response_ids: Sequence[int], span: tuple[int, int] | None,
                      width: int) -> torch.Tensor:
    """[width] bool: the response tokens whose decoded characters overlap `span`."""
    mask = torch.zeros(width, dtype=torch.bool)
    if span is None:
        return mask
    prev = 0
    for k in range(len(response_ids)):
        end = len(tokenizer.decode(response_ids[:k + 1], skip_special_tokens=True))
        if end > prev and prev < span[1] and end > span[0]:
            mask[k] = True
        prev = end
    return mask


# ---------------------------------------------------------------------------------------------
# the check
# ---------------------------------------------------------------------------------------------

def _images(vision: list | None, lo: int = 0, hi: int | None = None) -> dict:
    """The `vision=` argument of engine.generate for prompts lo:hi (none for text prompts)."""
    return {} if vision is None else {"vision": vision[lo:hi]}


def _mean(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    return float(values[mask].mean()) if bool(mask.any()) else None


def _teacher_ids(prompts: TeacherPrompts, task: TaskData, rows, texts, verdicts, G: int) -> list[list[int]]:
    """One teacher prompt per response, exactly as the trainer's teacher-prompts stage builds them."""
    ids = []
    for r, row in enumerate(rows):
        if not prompts.needs_group(task.name):
            ids.extend([prompts.ids(task.name, row)] * G)
            continue
        lo = r * G
        ids.extend(prompts.ids(task.name, row, index=k, responses=texts[lo:lo + G],
                               verdicts=verdicts[lo:lo + G]) for k in range(G))
    return ids


def _greedy_part(model_parts: dict, task: TaskData, scorer, settings: Settings) -> dict:
    """Greedy accuracy with and without the privileged context; leakage of the teacher outputs."""
    rows = task.eval[:settings.rows]
    pair = greedy_pair(model_parts["engine"], model_parts["tokenizer"], model_parts["prompts"],
                       task.name, rows, scorer, settings.eval_max_new_tokens, model_parts["vision"])
    leaks = sum(bool(leakage(text, hint, row["prompt"]))
                for text, hint, row in zip(pair.teacher_texts, pair.hints, rows))
    return {"rows": len(rows), "acc_student": pair.acc_student, "acc_teacher": pair.acc_teacher,
            "acc_gain_se": paired_se(pair.student_ok, pair.teacher_ok), "leakage": leaks}


def _sampled_part(model_parts: dict, task: TaskData, scorer, settings: Settings, eps_w: float) -> dict:
    """Sampled responses scored by the student and the teacher prompt: delta statistics."""
    tok, engine, prompts = model_parts["tokenizer"], model_parts["engine"], model_parts["prompts"]
    G = settings.group_size
    rows = task.eval[:settings.sample_rows]
    student, pixels = encode_student_prompts(tok, rows, model_parts["vision"])
    params = SamplingParams(n=G, temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
                            stop_token_ids=(tok.eos_token_id,), seed=settings.seed)
    groups = engine.generate(student, params, **_images(pixels))
    resp = [list(g.token_ids) for group in groups for g in group]
    texts = [tok.decode(r, skip_special_tokens=True) for r in resp]
    verdicts = scorer.score(texts, [row for row in rows for _ in range(G)])
    right = judged_ok(verdicts)
    t_ids = _teacher_ids(prompts, task, rows, texts, verdicts, G)
    s_ids = [p for p in student for _ in range(G)]
    each = None if pixels is None else [v for v in pixels for _ in range(G)]  # student's = teacher's
    with torch.no_grad():
        lp_s = token_logprobs(model_parts["model"], s_ids, resp, temperature=settings.temperature,
                              micro_batch=settings.micro_batch, pad_id=tok.pad_token_id, vision=each)
    lp_t = model_parts["teacher"].score(t_ids, resp, temperature=settings.temperature,
                                        micro_batch=settings.micro_batch, pad_id=tok.pad_token_id,
                                        vision=each)
    mask = lp_s.mask.cpu()
    delta = (lp_t.logprobs - lp_s.logprobs).float().cpu().clamp(-algo.DELTA_CLAMP, algo.DELTA_CLAMP) * mask
    per_resp = [float(delta[i][mask[i]].mean()) if mask[i].any() else 0.0 for i in range(len(resp))]
    ans = torch.stack([answer_token_mask(tok, r, answer_span(t, v), mask.shape[1])
                       for r, t, v in zip(resp, texts, verdicts)]) & mask
    is_right = torch.tensor(right)[:, None]
    rewards = torch.tensor([v.reward for v in verdicts], dtype=torch.float32)
    adv = algo.group_advantages(rewards, G)
    diag = algo.rlsd_diagnostics(adv, lp_t.logprobs.cpu(), lp_s.logprobs.cpu(), mask,
                                 torch.zeros(mask.shape), eps_w=eps_w)
    pos = [s for s, r in zip(per_resp, right) if r]
    neg = [s for s, r in zip(per_resp, right) if not r]
    a = auroc(pos, neg)
    return {
        "samples": len(resp), "right": sum(right),
        "delta_right": _mean(delta, mask & is_right), "delta_wrong": _mean(delta, mask & ~is_right),
        "auroc": a, "auroc_se": auroc_se(a, len(pos), len(neg)) if a is not None else None,
        "auroc_within": within_group_auroc(per_resp, right, G),
        "delta_answer_right": _mean(delta, ans & is_right), "delta_answer_wrong": _mean(delta, ans & ~is_right),
        "delta_rest_right": _mean(delta, mask & ~ans & is_right),
        "delta_rest_wrong": _mean(delta, mask & ~ans & ~is_right),
        "eps_w": float(eps_w), "clip_low_frac": diag["clip_low_frac"], "clip_high_frac": diag["clip_high_frac"],
    }


def check_tasks(*, model, tokenizer, engine, teacher: Teacher | None, tasks: Sequence[TaskData],
                scorers: dict, prompts: TeacherPrompts, eps_w: dict[str, float], settings: Settings,
                on_task: Callable[[str], None] | None = None, vision=None) -> TeacherCheckReport:
    """Run the check on every task. `teacher` scores the teacher prompts (None: the policy
    itself, which is what every teacher mode holds at step 0); `eps_w` is each task's configured
    eps_w; `engine` generates with the policy's weights; `vision` is the model's vision prompter
    (rows with images: greedy, sampling, student and teacher scoring all get the row's pixels)."""
    started = time.perf_counter()
    parts = {"model": model, "tokenizer": tokenizer, "engine": engine, "prompts": prompts,
             "teacher": teacher or Teacher(model, mode="live"), "vision": vision}
    was_training = model.training
    model.eval()
    checks = []
    try:
        for task in tasks:
            if on_task is not None:
                on_task(task.name)
            numbers = {**_greedy_part(parts, task, scorers[task.name], settings),
                       **_sampled_part(parts, task, scorers[task.name], settings, eps_w[task.name])}
            check = TaskCheck(task=task.name, injector=task.injector, **numbers)
            check.verdict, check.reason = judge(check)
            checks.append(check)
    finally:
        model.train(was_training)
    return TeacherCheckReport(tasks=checks, seconds=time.perf_counter() - started, settings=settings)


def settings_for(cfg, *, rows: int, sample_rows: int) -> Settings:
    """The check's sampling settings from a run config (the rollout's and the evaluation's)."""
    return Settings(rows=rows, sample_rows=sample_rows, group_size=cfg.rollout.group_size,
                    temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                    eval_max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed * 1_000_003)


def configured_eps_w(cfg, registry, task_names: Sequence[str]) -> dict[str, float]:
    """Each task's eps_w at step 1, from a fresh copy of the run's schedule (the run's own
    schedule is not asked, so its state never moves)."""
    from .schedule import Schedule

    _, by_task = Schedule.from_config(cfg, registry).magnitudes(1, list(task_names))
    return {name: float(m.eps_w) for name, m in by_task.items()}


def run_check(run, *, rows: int, sample_rows: int) -> TeacherCheckReport:
    """The check on a set-up run (`rlsd_core.loop.run.Run`) before its first step."""
    p = run.parts
    return check_tasks(model=p.model, tokenizer=p.tokenizer, engine=p.engine, teacher=p.teacher,
                       tasks=p.tasks, scorers=p.scorers, prompts=p.prompts,
                       eps_w=configured_eps_w(p.cfg, p.pm.registry, [t.name for t in p.tasks]),
                       settings=settings_for(p.cfg, rows=rows, sample_rows=sample_rows), vision=p.vision)


def summary_line(t: TaskCheck) -> str:
    """One line of numbers for a warning."""
    def f(x: Any, pct: bool = False) -> str:
        return "n/a" if x is None else (f"{100 * x:.1f}%" if pct else f"{x:+.2f}")

    return (f"{t.task}: {t.verdict}: greedy {f(t.acc_student, True)} -> {f(t.acc_teacher, True)} with "
            f"the hint; delta right {f(t.delta_right)} / wrong {f(t.delta_wrong)} nats; AUROC "
            f"{'n/a' if t.auroc is None else f'{t.auroc:.2f}'} ({t.right}/{t.samples} right); "
            f"{100 * t.clip_frac:.0f}% of weights clipped at eps_w {t.eps_w:g}")


def check_config(cfg, pm, *, rows: int, sample_rows: int, reporter=None,
                 on_task: Callable[[str], None] | None = None) -> TeacherCheckReport:
    """The check for a run config without training: the tasks, scorers and the policy exactly
    as `rlsd train` builds them (the embedded model after its cached warm-up included), no run
    directory, no optimizer, no teacher copy (at step 0 the teacher is the policy)."""
    from ..data import load_task
    from ..engines import make_engine
    from ..rewards import build_scorer
    from .run import load_policy, pick_device, quiet

    registry = pm.registry
    tasks = [load_task(t, registry, seed=cfg.seed) for t in cfg.tasks]
    injectors = {t.injector: registry.injector(t.injector) for t in tasks}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg)
    scorers = {t.name: build_scorer(t, registry) for t in tasks}
    engine = None
    try:
        model, tokenizer, vision = load_policy(cfg, tasks, injectors, reporter or quiet, device, scorers)
        model.to(device)
        engine = make_engine(cfg.rollout.engine, model, tokenizer, **cfg.rollout.engine_options)
        return check_tasks(model=model, tokenizer=tokenizer, engine=engine, teacher=None, tasks=tasks,
                           scorers=scorers, prompts=TeacherPrompts(tasks, injectors, tokenizer, vision),
                           eps_w=configured_eps_w(cfg, registry, [t.name for t in tasks]),
                           settings=settings_for(cfg, rows=rows, sample_rows=sample_rows),
                           on_task=on_task, vision=vision)
    finally:
        if engine is not None:
            engine.close()
        for scorer in scorers.values():
            scorer.close()
