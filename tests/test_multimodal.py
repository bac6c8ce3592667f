"""Images in the prompt (docs/multimodal.md): rows with images, the tiny VLM, pixel inputs in every
forward, the teacher, leakage, bad images, and `rlsd train --suite shapes` end to end.

The independent reference for the scoring forward is transformers' own path: the processor's
`input_ids`/`mm_token_type_ids`/pixel inputs straight into the model, which computes its 3-D
(M-RoPE) positions itself. rlsd computes them for left-padded batches (models/vision.py); the two
must agree.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from rlsd_core.cli import main as rlsd_main
from rlsd_core.config import ConfigError, TaskConfig, TrainConfig
from rlsd_core.data import TeacherPrompts, encode_prompt, load_task, student_messages
from rlsd_core.loop import warmup_record
from rlsd_core.engines import SamplingParams, make_engine
from rlsd_core.leakage import leakage
from rlsd_core.models import (load_model, load_tokenizer, load_vision, tiny_model_dir, tiny_vlm_dir,
                              token_logprobs)
from rlsd_core.records import InjectorRecord, TaskError

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageDraw  # noqa: E402


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    """(model, tokenizer, vision prompter) of the untrained tiny VLM, built once per module."""
    path = str(tiny_vlm_dir(tmp_path_factory.mktemp("cache")))
    torch.manual_seed(0)
    model = load_model(path)
    model.eval()
    return model, load_tokenizer(path), load_vision(path)


def _png(squares: int, size=(84, 84)) -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for k in range(squares):
        draw.rectangle([28 * k + 4, 4, 28 * k + 20, 20], fill="red")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _task(pm, tmp_path, rows, **fields):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TaskConfig.model_validate({"name": "pics", "source": "files",
                                     "options": {"path": str(data)}, "eval_size": 1, **fields})
    return load_task(cfg, pm.registry, seed=0)


# --- rows -------------------------------------------------------------------------------------

def test_manifest_maps_an_image_column_and_places_it(pm, tmp_path):
    (tmp_path / "img").mkdir()
    for k in range(3):
        (tmp_path / "img" / f"{k}.png").write_bytes(_png(k))
    rows = [{"q": f"Count {k}", "picture": f"img/{k}.png", "answer": str(k)} for k in range(3)]
    task = _task(pm, tmp_path, rows, columns={"prompt": "q", "images": "picture"},
                 template=[{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Look: <image> {prompt}?"}])
    row = (task.train + task.eval)[0]
    assert row["images"] == [str(tmp_path / "img" / f"{row['answer']}.png")]  # relative to the data
    assert row["messages"][0] == {"role": "system", "content": "Be brief."}
    assert row["messages"][1]["content"] == [
        {"type": "text", "text": "Look: "}, {"type": "image", "image": row["images"][0]},
        {"type": "text", "text": f" Count {row['answer']}?"}]
    assert row["prompt"] == f"Count {row['answer']}"  # the text the student reads, no placeholder


def test_datasets_image_feature_rows_keep_encoded_bytes(pm, tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict(
        {"prompt": ["How many?", "How many now?"], "answer": ["1", "2"],
         "images": [[{"bytes": _png(1), "path": None}], [{"bytes": _png(2), "path": None}]]},
        features=datasets.Features({"prompt": datasets.Value("string"),
                                    "answer": datasets.Value("string"),
                                    "images": datasets.Sequence(datasets.Image())}))
    data.to_parquet(str(tmp_path / "rows.parquet"))
    cfg = TaskConfig.model_validate({"name": "pics", "source": "files", "eval_size": 1,
                                     "options": {"path": str(tmp_path / "rows.parquet")}})
    task = load_task(cfg, pm.registry, seed=0)
    row = task.train[0]
    assert isinstance(row["images"][0], bytes) and row["images"][0] == _png(int(row["answer"]))
    parts = row["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["image", "text"]  # no placeholder: image first


def test_shapes_circles_decoys_change_only_the_student_target(pm):
    """`shapes` with `circles` and decoys (the `shape_counts` suite): the same pictures, answers
    and held-out split as without decoys; 60% of the warm-up targets give the two counts in the
    other order; the teacher's target is always the answer."""
    from rlsd_plugins.task_sources import shapes_rows

    plain = shapes_rows(size=400, circles=True)
    decoyed = shapes_rows(size=400, circles=True, decoy_fraction=0.6)
    assert [(r["id"], r["images"], r["answer"]) for r in plain] == \
        [(r["id"], r["images"], r["answer"]) for r in decoyed]
    for r in plain:
        assert r["target"] == r["answer"] and "privileged_target" not in r
        squares, circles = map(int, r["answer"].split(","))
        assert squares != circles and squares + circles <= 4  # the other order is always wrong
    decoys = [r for r in decoyed if "privileged_target" in r]
    assert 0.54 < len(decoys) / len(decoyed) < 0.66
    for r in decoys:
        assert r["target"] == ",".join(reversed(r["answer"].split(",")))  # circles first
        assert r["target"] != r["answer"] and r["privileged_target"] == r["answer"]
    assert all(r["target"] == r["answer"] for r in decoyed if "privileged_target" not in r)
    assert shapes_rows(size=50) == shapes_rows(size=50, circles=False, decoy_fraction=0.0)
    cfgs = [TaskConfig(name="c", source="shapes", eval_size=50,
                       options={"size": 200, "circles": True, "decoy_fraction": f}) for f in (0.0, 0.6)]
    a, b = (load_task(c, pm.registry, seed=0) for c in cfgs)
    assert [r["id"] for r in a.eval] == [r["id"] for r in b.eval]
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(TaskError, match="decoy_fraction"):
            shapes_rows(size=4, circles=True, decoy_fraction=bad)
    with pytest.raises(TaskError, match="decoy_fraction needs circles"):
        shapes_rows(size=4, decoy_fraction=0.5)


def test_shapes_circles_privileged_examples_are_never_taught_a_decoy(pm, vlm):
    from rlsd_core.loop import build_examples

    _, tok, vision = vlm
    task = load_task(TaskConfig(name="c", source="shapes", eval_size=10,
                                options={"size": 130, "circles": True, "decoy_fraction": 0.9}),
                     pm.registry, seed=0)
    prompts = TeacherPrompts([task], {"reference_answer": pm.registry.injector("reference_answer")}, tok)
    examples = build_examples([task], tok, prompts.messages, privileged_fraction=0.5, seed=0,
                              vision=vision)
    seen = Counter()
    for p, t, pixels in examples:
        assert pixels is not None
        taught, text = tok.decode(t, skip_special_tokens=True), tok.decode(p)
        hinted = "reference solution" in text
        if hinted:
            seen[True, f"reference solution:\n{taught}\n" in text] += 1  # taught the reference
        else:
            seen[False, taught] += 1
    assert seen[True, False] == 0 and seen[True, True] > 30
    assert sum(n for (h, _), n in seen.items() if not h) > 30  # the student prompts: decoys or not


@pytest.mark.parametrize("case, expected", [
    ("missing", "image 0 file '{tmp}/gone.png' does not exist"),
    ("not_image", "image 0 file '{tmp}/notes.png' is not an image Pillow can read"),
    ("truncated", "image 0 cannot be decoded"),
    ("too_large", "image 0 is too large: 84 x 84 = 7,056 pixels, more than max_image_pixels=1,000"),
    ("placeholders", "its text has 2 <image> placeholders but the row has 1 images"),
])
def test_a_broken_image_is_an_error_naming_the_row(pm, tmp_path, case, expected):
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "cut.png").write_bytes(_png(2)[:60])
    (tmp_path / "ok.png").write_bytes(_png(1))
    bad = {"missing": "gone.png", "not_image": "notes.png", "truncated": "cut.png"}.get(case, "ok.png")
    rows = [{"id": "good", "prompt": "How many?", "answer": "1", "images": ["ok.png"]},
            {"id": "bad", "prompt": "<image> or <image>?" if case == "placeholders" else "How many?",
             "answer": "1", "images": [bad]}]
    fields = {"max_image_pixels": 1000} if case == "too_large" else {}
    with pytest.raises(TaskError) as err:
        _task(pm, tmp_path, rows, **fields)
    message = str(err.value)
    assert message.startswith("task 'pics': row ") and "(id " in message, message
    assert expected.format(tmp=tmp_path) in message, message
    if case != "too_large":  # the first row is fine; the error names the second
        assert "(id 'bad')" in message


def test_train_check_reports_a_broken_image_before_any_model(tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text(json.dumps(
        {"id": "r0", "prompt": "How many?", "answer": "1", "images": "gone.png"}) + "\n" + json.dumps(
        {"id": "r1", "prompt": "How many?", "answer": "1", "images": "gone.png"}) + "\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ntasks:\n  - {name: pics, source: files, options: {path: rows.jsonl},"
                     " eval_size: 1}\n")
    assert rlsd_main(["train", "--suite", str(suite), "--check"]) == 2
    err = capsys.readouterr().err
    assert "task 'pics': row 0 (id 'r0'): image 0 file" in err and "does not exist" in err


# --- the model side ---------------------------------------------------------------------------

def _messages(png: bytes, text="How many squares?"):
    return [{"role": "user", "content": [{"type": "image", "image": png},
                                         {"type": "text", "text": text}]}]


def _direct_logprobs(model, vision, messages, png, response):
    """log p(response) by transformers' own path: the processor's outputs straight into the
    model, which computes the M-RoPE positions itself (no padding, no rlsd code)."""
    from rlsd_core.models.vision import bare_image_parts

    text = vision.tokenizer.apply_chat_template(bare_image_parts(messages), tokenize=False,
                                                add_generation_prompt=True)
    inputs = vision.processor(text=[text], images=[Image.open(io.BytesIO(png)).convert("RGB")],
                              return_tensors="pt", add_special_tokens=False)
    ids = torch.cat([inputs["input_ids"], torch.tensor([response])], 1)
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask",
                                                          "mm_token_type_ids")}
    types = torch.cat([inputs["mm_token_type_ids"], torch.zeros((1, len(response)), dtype=torch.long)], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, mm_token_type_ids=types, **extra).logits[0].float()
    p = inputs["input_ids"].shape[1]
    logp = torch.log_softmax(logits[p - 1:-1], -1)
    return logp.gather(-1, torch.tensor(response)[:, None]).squeeze(-1), inputs["input_ids"][0].tolist()


def test_image_prompt_ids_expand_the_image_and_pixels_change_the_scores(vlm):
    model, tok, vision = vlm
    ids, pixels = encode_prompt(tok, _messages(_png(2)), vision)
    assert ids.count(vision.image_token_id) == 9  # 84 x 84: 6 x 6 patches, 2 x 2 merged
    assert tuple(pixels.tensors["image_grid_thw"][0].tolist()) == (1, 6, 6)
    _, other = encode_prompt(tok, _messages(_png(0)), vision)
    with torch.no_grad():
        a = token_logprobs(model, [ids], [[5, 6, 7]], vision=[pixels]).logprobs
        b = token_logprobs(model, [ids], [[5, 6, 7]], vision=[other]).logprobs
    assert not torch.allclose(a, b)  # the picture reaches the language model


def test_teacher_logprobs_with_images_equal_a_direct_forward(vlm, pm):
    """The teacher prompt built by the injector keeps the image and adds the hint; Teacher.score
    on a padded mixed batch equals transformers' own forward of each row alone."""
    from rlsd_core.data import TaskData
    from rlsd_core.loop.teacher import Teacher

    model, tok, vision = vlm
    rows = [{"prompt": "How many squares?", "answer": str(k), "images": [_png(k)],
             "messages": _messages(_png(k))} for k in (1, 3)]
    task = TaskData(name="t", train=rows, eval=[], verifier="exact_match", injector="reference_answer")
    prompts = TeacherPrompts([task], {"reference_answer": pm.registry.injector("reference_answer")},
                             tok, vision)
    teacher_ids = [prompts.ids("t", r) for r in rows]
    student = [encode_prompt(tok, student_messages(r), vision) for r in rows]
    text = "".join(tok.decode(teacher_ids[1]))
    assert "Here is a reference solution:\n3" in text and "<|image_pad|>" in text
    assert teacher_ids[1].count(vision.image_token_id) == student[1][0].count(vision.image_token_id)
    responses = [[40, 41, 42, 43], [44, 45]]
    pixels = [v for _, v in student]  # the teacher forward takes the student's pixel inputs
    got = Teacher(model, mode="live").score(teacher_ids, responses, temperature=1.0,
                                            pad_id=tok.pad_token_id, vision=pixels)
    for i, r in enumerate(rows):
        messages = pm.registry.injector("reference_answer").fn(r, student_messages(r), _ctx())
        want, direct_ids = _direct_logprobs(model, vision, messages, r["images"][0], responses[i])
        assert direct_ids == teacher_ids[i]
        assert torch.allclose(got.logprobs[i, :len(responses[i])], want, atol=1e-5), (i, got, want)


def _ctx():
    from rlsd_core.records import InjectorContext
    return InjectorContext(options={})


def test_hf_engine_logprobs_with_images_equal_the_scoring_forward(vlm):
    model, tok, vision = vlm
    a = encode_prompt(tok, _messages(_png(1)), vision)
    b = encode_prompt(tok, [{"role": "system", "content": "Count."}] + _messages(_png(3), "And?"), vision)
    text = (encode_prompt(tok, [{"role": "user", "content": "What is 2 + 2?"}])[0], None)
    engine = make_engine("hf", model, tok)
    groups = engine.generate([a[0], b[0], text[0]], SamplingParams(n=2, max_new_tokens=5, seed=3),
                             vision=[a[1], b[1], None])
    prompts = [p for p in (a, b, text) for _ in range(2)]
    gens = [g for group in groups for g in group]
    with torch.no_grad():
        scored = token_logprobs(model, [p for p, _ in prompts], [g.token_ids for g in gens],
                                vision=[v for _, v in prompts])
        alone = [token_logprobs(model, [p], [g.token_ids], vision=[v])
                 for (p, v), g in zip(prompts, gens)]
        # chunks of 2 = one group each: the image groups take the plain forward, the text group
        # shares its prompt; all in blocks (issue 13's scoring), all equal to the plain numbers
        shared = token_logprobs(model, [p for p, _ in prompts], [g.token_ids for g in gens],
                                vision=[v for _, v in prompts], micro_batch=2, share_prefix=True)
    for i, g in enumerate(gens):
        n = len(g.token_ids)
        assert torch.allclose(scored.logprobs[i, :n], torch.tensor(g.logprobs), atol=1e-4)
        assert torch.allclose(scored.logprobs[i, :n], alone[i].logprobs[0, :n], atol=1e-5)
        assert torch.allclose(shared.logprobs[i, :n], scored.logprobs[i, :n], atol=1e-5)


def test_the_engine_never_samples_image_placeholders_and_its_rollouts_score(vlm):
    """A response holding <|image_pad|> (or the other placeholders) cannot be scored: the forward
    has no feature for it and transformers' get_rope_index fails (seen at step 12 of a shapes run
    at temperature 1). Logits pushed +30 toward every placeholder: the engine still picks none, at
    temperature 1 and greedy, and reports the full distribution's log-probs, which the scoring
    forward reproduces."""
    import copy

    from rlsd_core.models import placeholder_token_ids

    model, tok, vision = vlm
    banned = placeholder_token_ids(model.config)
    assert len(banned) == 4 and model.config.image_token_id in banned
    pushed = copy.deepcopy(model)
    bias = torch.zeros(pushed.config.text_config.vocab_size if hasattr(pushed.config, "text_config")
                       else pushed.config.vocab_size)
    bias[banned] = 30.0
    pushed.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    a = encode_prompt(tok, _messages(_png(2)), vision)
    engine = make_engine("hf", pushed, tok)
    greedy = engine.generate([a[0]], SamplingParams(n=1, temperature=0.0, max_new_tokens=4),
                             vision=[a[1]])[0]
    sampled = engine.generate([a[0]], SamplingParams(n=4, max_new_tokens=4, seed=1), vision=[a[1]])[0]
    ids = [i for g in greedy + sampled for i in g.token_ids]
    assert len(ids) >= 5 and not set(ids) & set(banned), ids
    with torch.no_grad():
        scored = token_logprobs(pushed, [a[0]] * 4, [g.token_ids for g in sampled], vision=[a[1]] * 4)
    for i, g in enumerate(sampled):
        n = len(g.token_ids)
        assert torch.allclose(scored.logprobs[i, :n], torch.tensor(g.logprobs), atol=1e-4)
        assert max(g.logprobs) < -20  # the placeholders hold the mass: reported, never sampled


def test_leakage_ignores_image_tokens(vlm, pm):
    _, tok, vision = vlm
    row = {"prompt": "How many squares?", "answer": "2", "images": [_png(2)],
           "messages": _messages(_png(2))}
    from rlsd_core.data import TaskData
    task = TaskData(name="t", train=[row], eval=[], verifier="exact_match", injector="reference_answer")
    ids, secret = TeacherPrompts([task], {"reference_answer": pm.registry.injector("reference_answer")},
                                 tok, vision).prompt("t", row)
    assert ids.count(vision.image_token_id) == 9  # the teacher prompt holds the image's tokens
    assert "image" not in secret and "vision" not in secret  # ...and they are not text
    assert secret.startswith("Here is a reference solution: 2 ")  # the words only the teacher saw
    assert not leakage("2", secret, row["prompt"])
    assert leakage("The reference solution says 2", secret, row["prompt"])


def test_an_injector_that_drops_the_images_is_refused(vlm):
    _, tok, vision = vlm
    row = {"prompt": "How many squares?", "answer": "2", "images": [_png(2)],
           "messages": _messages(_png(2))}
    from rlsd_core.data import TaskData
    from rlsd_core.records import InjectorContext  # noqa: F401
    text_only = InjectorRecord(name="text_only", fn=lambda r, m, ctx: [
        {"role": "user", "content": r["prompt"] + " It is " + r["answer"]}])
    task = TaskData(name="t", train=[row], eval=[], verifier="exact_match", injector="text_only")
    with pytest.raises(TaskError, match="injector 'text_only' changed the images"):
        TeacherPrompts([task], {"text_only": text_only}, tok, vision).ids("t", row)


def test_train_check_refuses_the_vllm_engine_for_images(capsys):
    assert rlsd_main(["train", "--suite", "shapes", "--set", "tasks.0.options.size=6",
                      "--set", "tasks.0.eval_size=2", "--rollout.engine", "vllm", "--check"]) == 2
    assert "the vllm engine does not take images" in capsys.readouterr().err


def test_image_rows_need_a_vlm_and_the_hf_engine(tmp_path):
    from rlsd_core.loop.run import setup

    base = {"output_dir": str(tmp_path / "run"), "warmup": {"enabled": False},
            "tasks": [{"name": "shapes", "source": "shapes", "options": {"size": 6},
                       "eval_size": 2}]}
    with pytest.raises(ConfigError, match="vllm engine does not take images"):
        setup(TrainConfig.model_validate({**base, "rollout": {"engine": "vllm"}}))
    text_model = str(tiny_model_dir(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="is a text model but task\\(s\\) \\['shapes'\\] have images"):
        setup(TrainConfig.model_validate({**base, "model": {"name_or_path": text_model}}))
    assert not (tmp_path / "run").exists()  # refused before any run directory


# --- end to end -------------------------------------------------------------------------------

def _ci_train(suite: str, max_new_tokens: int, run, *extra: str) -> list[str]:
    """`rlsd train` of a visual suite at CI size: 80 pictures, a 4-step warm-up, 2 RL steps."""
    return ["train", *extra, "--suite", suite, "--set", "tasks.0.options.size=80",
            "--set", "tasks.0.eval_size=8", "--warmup.steps", "4",
            "--warmup.batch_size", "16", "--steps", "2", "--eval.every", "0",
            "--rollout.prompts_per_step", "4", "--rollout.group_size", "4",
            "--rollout.max_new_tokens", str(max_new_tokens),
            "--eval.max_new_tokens", str(max_new_tokens), "--threads", "1", "--output_dir", str(run)]


def test_rlsd_train_suite_shapes_two_steps_then_eval_the_checkpoint(tmp_path, monkeypatch, capsys):
    """The CI run of the visual suite: warm-up (a few steps), 2 RLSD steps with images in the
    rollout, pi_old, teacher and student forwards; the checkpoint is a VLM `rlsd eval` reads."""
    monkeypatch.setenv("RLSD_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert rlsd_main(_ci_train("shapes", 3, run)) == 0
    err = capsys.readouterr().err
    assert "shapes" in err and "held-out after" in err
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert metrics[1]["teacher_skipped"] == 0 and metrics[1]["delta_abs_mean"] is not None
    assert metrics[1]["optimizer_steps"] == metrics[2]["optimizer_steps"] == 1
    # a group with differing rewards gives a gradient; after 4 warm-up steps whether any group
    # differs depends on the rollout seeds, so only the implication is asserted
    assert all(m["zero_var_frac"] == 1.0 or m["grad_norm"] > 0 for m in metrics[1:]), metrics
    ckpt = run / "checkpoints" / "step-000002"
    assert "image_processor" in json.loads((ckpt / "processor_config.json").read_text())
    # The teacher check on the same held-out rows with the pixels: its student greedy accuracy
    # is the run's evaluation of the same weights (another path: loop/evaluation.py).
    assert rlsd_main(["check-teacher", "--suite", "shapes", "--set", "tasks.0.options.size=80",
                      "--set", "tasks.0.eval_size=8", "--model.name_or_path", str(ckpt),
                      "--warmup.enabled", "false", "--rows", "8", "--sample-rows", "2",
                      "--rollout.group_size", "4", "--rollout.max_new_tokens", "3",
                      "--eval.max_new_tokens", "3", "--threads", "1", "--json", "-"]) in (0, 1)
    check = json.loads(capsys.readouterr().out)["tasks"]["shapes"]
    assert check["rows"] == 8 and check["samples"] == 8
    assert check["acc_student"] == metrics[2]["eval/shapes"]
    assert rlsd_main(["eval", str(ckpt), "--suite", "shapes", "--limit", "4", "--json", "-"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks"]["shapes"]["n"] == 4


def test_rlsd_train_suite_shape_counts_two_steps(tmp_path, monkeypatch, capsys):
    """The CI run of the `shape_counts` suite (two counts, decoys in the other order), with the
    warm-up's readiness check on pictures (greedy with the pixels, student and teacher prompt)."""
    monkeypatch.setenv("RLSD_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert rlsd_main(_ci_train("shape_counts", 4, run, "--warmup.check_every", "2",
                               "--warmup.check_rows", "8")) == 0
    err = capsys.readouterr().err
    assert "held-out after" in err
    (record,) = [warmup_record(p) for p in (tmp_path / "cache").glob("warmup-*")]
    assert [c["step"] for c in record["checks"]] == [2, 4] and record["check_rows"] == {"shape_counts": 8}
    # Four steps teach nothing to read: the run goes on, with the warning and its numbers.
    assert record["ready_at"] is None and "no task's self-teacher read its hint" in err
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert metrics[1]["teacher_skipped"] == 0 and metrics[1]["delta_abs_mean"] is not None
