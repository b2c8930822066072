"""Distillation engine: the loss, the distiller and the teacher-logit cache (no MLflow, no Optuna)."""

from .cache import TeacherLogitCache, model_fingerprint
from .distiller import Distiller, StepOutput, SupervisedTask, freeze
from .loss import COMBINE_MODES, KDTerms, kd_loss, kd_loss_terms, normalize_teacher_weights, teacher_log_probs

__all__ = [
    "COMBINE_MODES",
    "Distiller",
    "KDTerms",
    "StepOutput",
    "SupervisedTask",
    "TeacherLogitCache",
    "freeze",
    "kd_loss",
    "kd_loss_terms",
    "model_fingerprint",
    "normalize_teacher_weights",
    "teacher_log_probs",
]
