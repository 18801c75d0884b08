"""The ``compile`` setting: the Trainer compiles each regressor's backbone once, in place."""

from __future__ import annotations

import torch

from bmdbench.methods import Method
from bmdbench.runner import build_method
from bmdbench.spec import resolve
from bmdbench.trainer import Trainer, seed_everything

CPU = torch.device("cpu")


def method(name: str) -> Method:
    seed_everything(0)
    return build_method(resolve(name, "tiny", "smoke"))


def test_compile_compiles_every_regressor_once_in_place():
    trainer = Trainer(CPU, show_progress=False, compile=True)
    teacher_student = trainer.prepare(method("mean_teacher"))
    backbones = [teacher_student.regressor.backbone, teacher_student.teacher.module.backbone]
    compiled = [b._compiled_call_impl for b in backbones]
    assert all(c is not None for c in compiled)
    trainer.prepare(teacher_student)  # a second fit keeps the compiled code
    assert [b._compiled_call_impl for b in backbones] == compiled
    assert "regressor.backbone.features.0.weight" in teacher_student.state_dict()


def test_no_compilation_by_default():
    eager = Trainer(CPU, show_progress=False).prepare(method("baseline"))
    assert eager.regressor.backbone._compiled_call_impl is None
