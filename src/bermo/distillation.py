"""Knowledge distillation as a feature of the training loop: the student also learns the teacher's softened logits.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss

(for a regression head, the mean squared error between the two outputs instead of the KL term). The teacher is a
fine-tuned model of the same task and label order, loaded once, frozen, in evaluation mode, and run on each training
batch without gradients. Off unless --teacher_name_or_path is given.
"""

import torch
import torch.nn.functional as F

from ._errors import one_line
from .arguments import DistillationArguments, changed_fields
from .features import TrainingFeature, register_feature


def distillation_loss(student_logits, teacher_logits, temperature):
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch; MSE for one output."""
    student, teacher = student_logits.float(), teacher_logits.float()
    if student.shape[-1] == 1:
        return F.mse_loss(student, teacher)
    return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature ** 2


@register_feature
class DistillationFeature(TrainingFeature):
    """Distil a fine-tuned teacher into the model being trained (pruned or not)."""

    name = "distillation"
    arguments = DistillationArguments

    def __init__(self, arguments):
        self.teacher_path = arguments.teacher_name_or_path
        self.temperature, self.alpha = float(arguments.distillation_temperature), float(arguments.distillation_alpha)
        if not self.temperature > 0:
            raise ValueError(f"--distillation_temperature {self.temperature}: must be > 0")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"--distillation_alpha {self.alpha}: a weight in [0, 1]")
        self.teacher = None

    @classmethod
    def from_arguments(cls, arguments, max_train_steps):
        if arguments.teacher_name_or_path is None:
            unused = changed_fields(arguments)
            if unused:
                raise ValueError(f"--{next(iter(unused))} needs --teacher_name_or_path")
            return None
        return cls(arguments)

    def setup(self, model):
        """Load the teacher (before anything is written): same number of labels and, when both name them, the same
        label order as the student; frozen and in evaluation mode."""
        import transformers

        import bermo  # noqa: F401  (registers BERMo with the Auto classes: a BERMo teacher loads without remote code)

        where = f"--teacher_name_or_path {self.teacher_path}"
        try:
            teacher = transformers.AutoModelForSequenceClassification.from_pretrained(self.teacher_path)
        except Exception as error:
            raise ValueError(f"{where}: {one_line(error)}") from None
        student = model.config
        if teacher.config.num_labels != student.num_labels:
            raise ValueError(f"{where}: the teacher has {teacher.config.num_labels} labels, the student "
                             f"{student.num_labels}")
        names = [dict(config.id2label) for config in (teacher.config, student)]
        generic = [all(str(label).startswith("LABEL_") for label in labels.values()) for labels in names]
        if not any(generic) and {int(k): v for k, v in names[0].items()} != {int(k): v for k, v in names[1].items()}:
            raise ValueError(f"{where}: the teacher's labels {names[0]} are not the student's {names[1]}")
        self.teacher = teacher.eval().requires_grad_(False)
        return model

    def training_loss(self, loss, outputs, batch, model):
        logits = outputs.logits
        if next(self.teacher.parameters()).device != logits.device:
            self.teacher.to(logits.device)
        with torch.no_grad():
            teacher_logits = self.teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return self.alpha * distillation_loss(logits, teacher_logits, self.temperature) + (1 - self.alpha) * loss

    def config(self):
        return {"teacher_name_or_path": self.teacher_path, "distillation_temperature": self.temperature,
                "distillation_alpha": self.alpha}

    def card_info(self):
        return self.config()
