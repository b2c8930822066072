"""Distillation engine: losses, objectives, the distiller and the teacher-logit cache (no MLflow, no Optuna)."""

from .cache import TeacherLogitCache, model_fingerprint
from .distiller import Distiller, StepOutput, Supervised, SupervisedTask, build_distiller, freeze
from .loss import COMBINE_MODES, KDTerms, kd_loss, kd_loss_terms, normalize_teacher_weights, teacher_list, teacher_log_probs
from .objectives import Objective, Progress, available_objectives, build_objective, register_objective, validate_objective_args

__all__ = [
    "COMBINE_MODES",
    "Distiller",
    "KDTerms",
    "Objective",
    "Progress",
    "StepOutput",
    "Supervised",
    "SupervisedTask",
    "TeacherLogitCache",
    "available_objectives",
    "build_distiller",
    "build_objective",
    "freeze",
    "kd_loss",
    "kd_loss_terms",
    "model_fingerprint",
    "normalize_teacher_weights",
    "register_objective",
    "teacher_list",
    "teacher_log_probs",
    "validate_objective_args",
]
