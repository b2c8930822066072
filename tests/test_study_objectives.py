"""What a study optimises and prunes on comes from its task (research.tasks): the objectives
a study file may name, the directions filled in, and the metric each epoch reports to the
pruner (research.sweep.pruning_target). Hand-written expectations; no training."""

from types import SimpleNamespace

import pytest

from research.config import ConfigError, StudyConfig, parse
from research.sweep import PruningTarget, pruning_target


def study_cfg(objectives=None, **extra) -> StudyConfig:
    raw = {"name": "obj", "data": {"dataset": "mnist1d"}, "teachers": [{"model": {"name": "mnist1d_cnn"}}],
           "student": {"name": "mnist1d_mlp"}, **extra}
    if objectives is not None:
        raw["objectives"] = objectives
        if len(objectives) > 1:
            raw["pruner"] = {"name": "none"}
    return parse(StudyConfig, raw)


def pairs(cfg):
    return [(o.metric, o.direction) for o in cfg.objectives]


def test_the_default_objective_is_the_tasks_validation_metric():
    assert pairs(study_cfg()) == [("val_accuracy", "maximize")]  # classification: accuracy, maximised


def test_directions_are_filled_from_the_task_and_for_costs_and_kept_when_given():
    cfg = study_cfg([{"metric": "val_accuracy"}, {"metric": "params"}, {"metric": "latency_b1_ms"}, {"metric": "val_nll", "direction": "minimize"}])
    assert pairs(cfg) == [("val_accuracy", "maximize"), ("params", "minimize"), ("latency_b1_ms", "minimize"), ("val_nll", "minimize")]
    assert cfg.directions == ["maximize", "minimize", "minimize", "minimize"]
    assert pairs(study_cfg([{"metric": "val_accuracy", "direction": "minimize"}])) == [("val_accuracy", "minimize")]  # as written


@pytest.mark.parametrize("metric", ["val_errors", "val_ece", "val_agreement", "val_kl_to_teacher", "params_nonzero", "size_bytes", "payload_bytes", "flops"])
def test_every_run_metric_of_the_task_and_every_cost_can_be_an_objective(metric):
    assert study_cfg([{"metric": metric, "direction": "minimize"}]).objectives[0].metric == metric


BAD = {
    "unknown": ([{"metric": "val_bleu", "direction": "maximize"}],
                "objectives.0.metric: unknown objective metric 'val_bleu' for task 'classification'; choose from val_accuracy, val_errors"),
    "test": ([{"metric": "test_accuracy"}], "the test set never steers the search"),
    "no direction": ([{"metric": "val_accuracy"}, {"metric": "val_nll"}], "objectives.1.direction: give maximize or minimize for val_nll"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_objectives_are_refused_in_one_line(case):
    objectives, message = BAD[case]
    with pytest.raises(ConfigError, match=message) as e:
        study_cfg(objectives)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("objective, want", [
    (None, PruningTarget("val_accuracy", 1.0)),                                                  # the default
    ({"metric": "val_nll", "direction": "minimize"}, PruningTarget("val_nll", 1.0)),            # a per-epoch metric: itself
    ({"metric": "val_accuracy", "direction": "minimize"}, PruningTarget("val_accuracy", 1.0)),  # itself, in the study's direction
    ({"metric": "val_ece", "direction": "minimize"}, PruningTarget("val_accuracy", -1.0)),      # not per epoch: accuracy, turned
    ({"metric": "params"}, PruningTarget("val_accuracy", -1.0)),
    ({"metric": "flops", "direction": "maximize"}, PruningTarget("val_accuracy", 1.0)),
])
def test_the_pruner_gets_the_first_objective_when_validated_each_epoch_else_the_tasks_metric(objective, want):
    cfg = study_cfg(None if objective is None else [objective])
    assert pruning_target(cfg) == want


def test_the_pruning_target_asks_the_task():
    """A task whose validation metric is minimised (a stand-in with the Task attributes)."""
    task = SimpleNamespace(validation_metric="loss", direction="minimize", epoch_metric_names=("loss", "accuracy"))
    assert pruning_target(study_cfg([{"metric": "params"}]), task) == PruningTarget("val_loss", 1.0)
    assert pruning_target(study_cfg([{"metric": "val_accuracy"}]), task) == PruningTarget("val_accuracy", 1.0)
    assert pruning_target(study_cfg([{"metric": "flops", "direction": "maximize"}]), task) == PruningTarget("val_loss", -1.0)
