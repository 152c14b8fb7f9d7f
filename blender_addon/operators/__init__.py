"""The add-on's operators, one module per feature; :data:`CLASSES` in registration order."""

from __future__ import annotations

from .directions import (
    FASTAVATAR_OT_add_all_directions, FASTAVATAR_OT_add_direction, FASTAVATAR_OT_direction_from_photos,
    FASTAVATAR_OT_remove_direction, FASTAVATAR_OT_train_direction,
)
from .drive import FASTAVATAR_OT_clear_performance, FASTAVATAR_OT_drive, FASTAVATAR_OT_reset_expression
from .engine_service import FASTAVATAR_OT_install_engine, FASTAVATAR_OT_stop_engine
from .export import FASTAVATAR_OT_export, export_menu
from .generate import FASTAVATAR_OT_generate, FASTAVATAR_OT_generate_multi
from .interpolate import FASTAVATAR_OT_interpolate
from .jobs import FASTAVATAR_OT_cancel_job
from .refine import FASTAVATAR_OT_refine

CLASSES = (FASTAVATAR_OT_generate, FASTAVATAR_OT_generate_multi, FASTAVATAR_OT_refine, FASTAVATAR_OT_interpolate,
           FASTAVATAR_OT_add_direction, FASTAVATAR_OT_add_all_directions, FASTAVATAR_OT_remove_direction,
           FASTAVATAR_OT_train_direction, FASTAVATAR_OT_direction_from_photos, FASTAVATAR_OT_cancel_job,
           FASTAVATAR_OT_export, FASTAVATAR_OT_install_engine, FASTAVATAR_OT_stop_engine, FASTAVATAR_OT_drive,
           FASTAVATAR_OT_reset_expression, FASTAVATAR_OT_clear_performance)

__all__ = ["CLASSES", "export_menu"]
