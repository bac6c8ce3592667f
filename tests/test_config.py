"""The typed run config: defaults, YAML + overrides, error messages, plugin names, --help."""

from __future__ import annotations

import argparse

import pytest

from rlsd_core.cli.train import add_arguments, main as train_main, overrides_from_args
from rlsd_core.config import (ConfigError, TrainConfig, build_config, check_plugins, iter_fields,
                              parse_value)


def test_defaults_are_the_embedded_default_suite():
    cfg = build_config()
    assert cfg.model.name_or_path == "tiny"
    assert [t.source for t in cfg.tasks] == ["addition", "reverse"]
    assert cfg.algo.loss == "rlsd" and cfg.scheduler.name == "release"


def test_defaults_pass_the_plugin_check(pm):
    check_plugins(build_config(), pm.registry)  # raises on any missing plugin


def test_yaml_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.001\n  grad_clip: 0.5\nsteps: 7\n")
    cfg = build_config(path, [("optim.lr", 3e-4), ("rollout.group_size", 4)])
    assert cfg.optim.lr == 3e-4            # override beats the file
    assert cfg.optim.grad_clip == 0.5      # the file beats the default
    assert cfg.optim.weight_decay == 0.01  # untouched default survives the deep merge
    assert cfg.steps == 7 and cfg.rollout.group_size == 4


def test_yaml_task_list_replaces_the_default_suite(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tasks:\n  - {name: sums, source: addition, eval_size: 10}\n")
    cfg = build_config(path)
    assert [t.name for t in cfg.tasks] == ["sums"]
    assert cfg.tasks[0].eval_size == 10


def test_set_reaches_list_entries_and_appends():
    cfg = build_config(overrides=[("tasks.1.eval_size", 7),
                                  ("tasks.2", {"name": "more", "source": "addition"})])
    assert cfg.tasks[1].eval_size == 7
    assert cfg.tasks[2].name == "more"


def test_resolved_yaml_round_trips(tmp_path):
    cfg = build_config(overrides=[("optim.lr", 5e-5), ("tasks.0.options", {"digits": 1})])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert build_config(path) == cfg


@pytest.mark.parametrize("key, suggestion", [
    (("optim.lrr",), "did you mean 'optim.lr'"),
    (("rollout.group_sise",), "did you mean 'rollout.group_size'"),
    (("tasks.0.verifer",), "did you mean 'tasks[0].verifier'"),
    (("lr",), "'warmup.lr' or 'optim.lr'"),
])
def test_unknown_key_suggests_the_nearest(key, suggestion):
    with pytest.raises(ConfigError) as err:
        build_config(overrides=[(key[0], 1)])
    assert "unknown key" in str(err.value)
    assert suggestion in str(err.value)


def test_unknown_key_in_yaml_names_the_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  sync_evry: 5\n")
    with pytest.raises(ConfigError, match=r"teacher\.sync_evry: unknown key; did you mean 'teacher\.sync_every'"):
        build_config(path)


@pytest.mark.parametrize("key, value, field", [
    ("optim.lr", -1.0, "optim.lr"),
    ("rollout.group_size", 1, "rollout.group_size"),
    ("algo.eps_low", 1.5, "algo.eps_low"),
    ("warmup.privileged_fraction", 2, "warmup.privileged_fraction"),
    ("tasks.0.eval_size", 0, "tasks[0].eval_size"),
    # algo.token_divergence's open interval: beta 0 or 1 used to pass --check and fail at step 1
    ("algo.opsd_beta", 0.0, "algo.opsd_beta"),
    ("algo.opsd_beta", 1.0, "algo.opsd_beta"),
    ("faults.max_infra_fraction", 1.5, "faults.max_infra_fraction"),
    ("log.on_observer_error", "ignore", "log.on_observer_error"),
])
def test_out_of_range_value_names_the_field(key, value, field):
    with pytest.raises(ConfigError) as err:
        build_config(overrides=[(key, value)])
    # one problem, one line: "invalid config: <field>: <what> (got <value>) (see ...)"
    assert str(err.value).startswith(f"invalid config: {field}:") and "\n" not in str(err.value)
    assert repr(value) in str(err.value)


def test_duplicate_task_names_are_rejected():
    with pytest.raises(ConfigError, match="task names must be unique"):
        build_config(overrides=[("tasks.1.name", "addition")])


def test_task_without_rows_is_rejected():
    with pytest.raises(ConfigError, match="needs a `source` or a `path`"):
        build_config(overrides=[("tasks.2", {"name": "x"})])


@pytest.mark.parametrize("key, value, kind, installed", [
    ("tasks.0.verifier", "maths", "verifier", "exact_match"),
    ("tasks.1.injector", "hints", "injector", "reference_answer"),
    ("scheduler.name", "cosine", "scheduler", "release"),
    ("tasks.0.source", "gsm8k", "task_source", "Installed task_sources"),
    ("algo.loss", "ppo", "objective", "grpo+opsd"),
])
def test_unknown_plugin_name_lists_what_is_installed(pm, key, value, kind, installed):
    cfg = build_config(overrides=[(key, value)])
    with pytest.raises(ConfigError) as err:
        check_plugins(cfg, pm.registry)
    text = str(err.value)
    assert f"no {kind} named {value!r}" in text
    assert installed in text


def test_bad_scheduler_options_are_caught_before_training(pm):
    cfg = build_config(overrides=[("scheduler.options", {"lam0": 5.0})])
    with pytest.raises(ConfigError, match="scheduler.options"):
        check_plugins(cfg, pm.registry)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        build_config(listy)


def test_parse_value_reads_yaml_types():
    assert parse_value("1e-4") == 1e-4
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("{a: 1}") == {"a": 1}
    assert parse_value("hf") == "hf"


def _parser():
    parser = argparse.ArgumentParser(prog="rlsd train")
    add_arguments(parser)
    return parser


def test_help_documents_every_field_with_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside "token-mean"
    text = _parser().format_help()
    flat = " ".join(text.split())  # argparse wraps lines
    fields = list(iter_fields())
    assert len(fields) > 40
    for dotted, _ann, description, default in fields:
        assert f"--{dotted}" in flat, dotted
        assert description, f"{dotted} has no description"
        shown = repr(default) if isinstance(default, str) else str(default)
        if not isinstance(default, (list, dict)):
            assert f"(default: {shown})" in flat, dotted


def test_dotted_flags_and_set_become_overrides():
    args = _parser().parse_args(["--optim.lr", "3e-4", "--set", "rollout.group_size=4",
                                 "--algo.negative_only", "true"])
    overrides = dict(overrides_from_args(args))
    assert overrides == {"optim.lr": 3e-4, "rollout.group_size": 4, "algo.negative_only": True}
    cfg = build_config(overrides=list(overrides.items()))
    assert cfg.optim.lr == 3e-4 and cfg.algo.negative_only is True


def test_cli_errors_exit_2_before_any_model_loads(capsys):
    assert train_main(["--set", "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    assert train_main(["--set", "scheduler.name=nope"]) == 2
    assert "Installed schedulers" in capsys.readouterr().err
    assert train_main(["--set", "optim.lr"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_cli_check_and_print_config(capsys):
    assert train_main(["--check", "--steps", "3"]) == 0
    assert train_main(["--print-config", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "steps: 3" in out
    assert TrainConfig.model_validate(__import__("yaml").safe_load(out)).steps == 3


def test_configuration_doc_lists_every_field():
    from pathlib import Path

    from rlsd_core.config import TaskConfig

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    names = [d for d, *_ in iter_fields()] + [d for d, *_ in iter_fields(TaskConfig, "tasks[N].")]
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_auto_bool_fields_accept_yaml_booleans():
    """`--warmup.enabled false` (and `enabled: false` in YAML) arrive as bools; both spellings work."""
    from rlsd_core.config import TrainConfig

    cfg = TrainConfig.model_validate({"warmup": {"enabled": False}, "log": {"tensorboard": True}})
    assert (cfg.warmup.enabled, cfg.log.tensorboard) == ("false", "true")


def test_opsd_beta_range_is_the_divergence_range():
    """Every beta the config accepts is one algo.token_divergence accepts, and the reverse at the
    edges: the config's bounds are the function's."""
    import torch

    from rlsd_core import algo

    logits = torch.randn(1, 2, 5)
    for beta in (1e-6, 0.5, 1 - 1e-6):
        assert build_config(overrides=[("algo.opsd_beta", beta)]).algo.opsd_beta == beta
        algo.token_divergence(logits, logits.flip(-1), beta=beta)
    for beta in (0.0, 1.0):
        with pytest.raises(ValueError):
            algo.token_divergence(logits, logits.flip(-1), beta=beta)
