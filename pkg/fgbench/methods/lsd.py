"""LSD: listwise self-distillation (Zeng et al., arXiv 2206.08880) around a supervised
embedding loss of ``metric_learning``."""

import copy

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..distributed import global_batch
from .base import Method, build_method, get_method_class, list_methods, register_method
from .metric_learning import EmbeddingMethod


def base_losses() -> list:
    """Registered methods LSD can wrap: supervised, one-view ``EmbeddingMethod``s."""
    return [name for name in list_methods()
            if issubclass(cls := get_method_class(name), EmbeddingMethod) and cls.labels == "supervised" and cls.views == 1]


def listwise_kl(student, teacher, tau: float):
    """mean_i KL(p_i || q_i), p_i = softmax(T_i / tau), q_i = softmax(S_i / tau), where S and T
    are the (B, B) similarity matrices ``student @ student.T`` and ``teacher @ teacher.T`` (cosines
    for unit embeddings; self included). The teacher side carries no gradient."""
    log_q = F.log_softmax(student @ student.T / tau, dim=1)
    log_p = F.log_softmax((teacher @ teacher.T / tau).detach(), dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


@register_method("lsd")
class LSD(Method):
    """Listwise self-distillation on top of a supervised embedding loss:

        L = L_base + (e / E) alpha tau^2 mean_i KL(p_i || q_i)

    with e the 0-based epoch, E the number of epochs, p_i and q_i the softmax over row i of the
    teacher's and the student's cosine-similarity matrices of the batch (see ``listwise_kl``).
    The teacher is the student frozen at the end of the previous epoch, run under ``no_grad`` on
    the same augmented batch; at epoch 0 the weight is 0 and no teacher is needed.

    The teacher is an in-memory copy taken by ``on_epoch_start``, not a submodule: it is in
    neither ``state_dict`` nor ``parameters``. A resumed run stays exact: the copy taken at the
    start of epoch e is the end of epoch e - 1, which the checkpoint holds.

    Args:
        num_classes: training classes, for the base loss. epochs: E, the configured epochs.
        base_loss: the wrapped method (``base_losses()``), default ``triplet``.
        base_params: its constructor parameters (None: its defaults).
        alpha: 50 (LSD's README example; its ``parameters.py`` default is 200). tau: 1.

    Layers, embeddings and parameter groups are the base method's; state-dict keys start with
    ``base.``.
    """

    labels = "supervised"
    meta = {"paper": "Zeng et al., arXiv 2206.08880 (LSD)",
            "code": "ZelongZeng/Improving-Generalization-of-Metric-Learning-via-Listwise-Self-distillation",
            "deviations": [
                "the teacher is an in-memory copy of the student taken at each epoch start, not the "
                "checkpoint net_{e-1}.pth reloaded from disk (same weights); at epoch 0 there is none "
                "(LSD's is an unused random network, weight 0)",
                "the 'standard' listwise KD (the code's undefined f_distillation_standard taken as "
                "True, kd_beta as 1)",
                "with a proxynca base, the KD uses the unit embeddings on both sides (LSD's "
                "proxynca_lsd scales the student's by 3 but not the teacher's)",
                "plus the deviations of the base loss"]}

    def __init__(self, backbone, *, num_classes: int, epochs: int = 150, base_loss: str = "triplet",
                 base_params: dict = None, alpha: float = 50.0, tau: float = 1.0):
        valid = base_losses()
        if base_loss not in valid:
            raise ConfigError(f"methods.lsd.params.base_loss is '{base_loss}'; valid base losses: {', '.join(valid)}")
        super(Method, self).__init__()  # not Method's: the backbone is registered once, in the base
        self.base = build_method(base_loss, backbone, num_classes=num_classes, num_samples=0, epochs=epochs,
                                 params=base_params)
        self.layers, self.default_layer = self.base.layers, self.base.default_layer
        self.epochs, self.alpha, self.tau = epochs, alpha, tau
        self.epoch = 0
        object.__setattr__(self, "teacher", None)  # plain attribute: not a submodule

    @property
    def backbone(self):
        return self.base.backbone

    def ramp(self) -> float:
        """e / E: the distillation ramp of the current epoch."""
        return self.epoch / self.epochs

    def on_epoch_start(self, epoch, batches):
        self.epoch = epoch
        teacher = None
        if epoch > 0:
            teacher = copy.deepcopy(self.base)
            for p in teacher.parameters():
                p.requires_grad_(False)
                p.grad = None
        object.__setattr__(self, "teacher", teacher)

    def training_step(self, batch):
        images = batch["images"]
        # under DDP the base loss and the (B, B) similarity lists are those of the global batch
        student, labels = global_batch(self.base(images).float(), batch["labels"])
        base = self.base.loss_fn(student, labels)
        weight = self.ramp() * self.alpha * self.tau**2
        if weight == 0:
            return base, {"base_loss": base.item(), "kd_loss": 0.0, "kd_weight": 0.0}
        self.teacher.train(self.training)  # as the student: LSD never switches its teacher to eval
        with torch.no_grad():
            teacher = global_batch(self.teacher(images).float())
        kd = listwise_kl(student, teacher, self.tau)
        return base + weight * kd, {"base_loss": base.item(), "kd_loss": kd.item(), "kd_weight": weight}

    def embed(self, images, layer=None):
        return self.base.embed(images, self.check_layer(layer))

    def param_groups(self):
        return self.base.param_groups()
