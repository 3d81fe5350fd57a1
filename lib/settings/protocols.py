"""How things are trained and measured: the protocols that the scales (:mod:`lib.settings.scales`)
pick.

The two training recipes of the zoo (:data:`RECIPES`) and the departures of two families from them,
the protocol of a stitching layer (:class:`StitchSettings`) and of the fine-tuning after a transform
(:class:`FinetuneSettings`), NetDissect's two constants, and the seed of the book's image subsets.
Every number here is defined once; the rest of the library and the chapters read it from here.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "RECIPES",
    "NOBN_RECIPE",
    "CONVNEXT_CPU",
    "CONVNEXT_PAPER",
    "StitchSettings",
    "STITCH_PAPER",
    "FinetuneSettings",
    "FINETUNE_PAPER",
    "NETDISSECT_QUANTILE",
    "NETDISSECT_IOU_THRESHOLD",
    "RESNET_LAYERS",
    "SLOPE_LAYERS",
    "SUBSET_SEED",
]

#: The training recipes by name, each with the fields of lib.train.Recipe besides its name
#: (lib.train.recipe builds one and checks the fields; lib.train sits above this module, so the
#: recipes stay plain data here).
RECIPES = {
    # The authors' recipe (implementation notes): 50 epochs of Adam, StepLR 12/0.5, batch 32.
    "paper": dict(
        epochs=50,
        batch_size=32,
        optimizer="adam",
        lr=1e-3,
        momentum=0.0,
        weight_decay=1e-4,
        schedule="step",
        step_size=12,
        gamma=0.5,
        warmup=0.0,
        label_smoothing=0.0,
        flip=True,
        translate=2,
        keep_best=True,
    ),
    # A fast recipe for small budgets: large batches, Nesterov SGD, one-cycle, label smoothing.
    "fast": dict(
        epochs=10,
        batch_size=512,
        optimizer="sgd",
        lr=0.2,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="onecycle",
        step_size=0,
        gamma=1.0,
        warmup=0.2,
        label_smoothing=0.1,
        flip=True,
        translate=2,
        keep_best=False,
    ),
}

#: Networks without BatchNorm (the Myrtle CNN without it; LayerNorm ConvNeXt) barely move under the
#: fast recipe's Nesterov SGD in a few epochs (measured: chance accuracy after 2 epochs on 10,000
#: images), while Adam trains them; the paper recipe is Adam already. The fields of lib.train.Recipe
#: replaced for them.
NOBN_RECIPE = dict(optimizer="adam", lr=2e-3, weight_decay=5e-5)

#: The ConvNeXt-style network of Section 6 at `paper` scale (a lib.models.build spec besides its
#: width): LayerNorm, 7x7 depthwise kernels, layer scale (the chapter itself dissects torchvision's
#: ImageNet ConvNeXt-T there)...
CONVNEXT_PAPER = dict(arch="convnext_cifar", layer_scale=0.1)
#: ...and at the small scales lib.models.convnext20, laid out like ResNet20 (16/32/64 channels times
#: the width, 3 blocks per stage, BatchNorm, 3x3 depthwise kernels, no layer scale), trained with
#: the ResNets' recipe in its bfloat16 precision ("bulk", measured faster for it on the CPU: 464
#: against 293 images/s). Measured at `cpu` (width 0.25, 8 epochs): 64.2 % against the ResNets' 66.9
#: and 68.6 %; the LayerNorm/7x7 network had reached 54 %. No activation follows its residual
#: additions either way, which is what Section 6 compares.
CONVNEXT_CPU = dict(arch="convnext20")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StitchSettings:
    """How a stitching layer is trained (Section 4).

    Every field but ``epochs`` defaults to the ``fast`` protocol, which the ``smoke``, ``cpu`` and
    ``gpu`` scales share (each with its own epochs); :data:`STITCH_PAPER` is the authors' protocol.
    ``epochs`` has no default, so that no protocol is chosen silently: a scale's protocol is
    ``lib.settings.SCALES[name].stitching.protocol`` (``lib.stitching.settings_for_scale``). Every
    field is part of a stitching result's memo key (``dataclasses.asdict``).

    Parameters
    ----------
    epochs : int
        Passes over the stitching images (paper: 20); 0 evaluates the start.
    optimizer : str
        ``"adam"`` or ``"sgd"`` (plain, the authors').
    lr : float
        Peak learning rate per step.
    lr_decay : bool
        Decay linearly to 0 over all steps (the last epochs settle); False: constant (paper).
    momentum : float
        SGD momentum (authors: none).
    weight_decay : float
        L2 coefficient per step; for grelu on D only.
    batch_size : int
        Images per step (authors: 32, 3-4x slower per image on CPUs).
    alpha : float
        Weight of the vertex penalty ``-alpha * ||P||_F`` (grelu).
    sinkhorn_rounds : int
        Row/column normalisations after every step (grelu).
    p_only_fraction : float
        Fraction of the epochs that train P alone (grelu).
    bn_adapt : bool
        B's BatchNorms after the stitch in train mode (running statistics adapt).
    init : str
        Default start of every variant: ``"closed_form"`` or ``"random"`` (paper).
    grelu_p : str
        ``"birkhoff"``: G_ReLU's permutation P is trained on the Birkhoff polytope (the paper's
        optimiser); ``"fixed"``: P stays at its start (activation matching) and only the scales D
        train. A random start always uses the Birkhoff optimiser.
    grelu_lr : float or None
        Learning rate of the G_ReLU layer (None: ``lr``).
    precision : str
        ``lib.config`` precision of training and evaluation (``"float32"``: exact).
    fronts : str
        ``"cached"``: A's front computed once on the clean training images; ``"augmented"`` (the
        authors'): computed per batch, under ``no_grad``, from images flipped and translated as in
        the paper recipe (``RECIPES["paper"]``).
    bn_epoch : str
        Which layer kinds get the authors' ``--bn_epoch`` pass before each evaluation
        (``lib.stitching.bn_epoch_stats``): ``"none"``, ``"grelu"`` (the authors' runs) or
        ``"all"``.
    random_bias : bool
        Random starts of full and rank layers get a trainable bias (the paper's word "affine"); the
        authors' released layers have none. Closed-form starts always fit one.
    evals_per_epoch : int
        Test evaluations per epoch, evenly spaced in steps (1: at the end of each epoch). With two
        epochs, 2 gives a row at epoch 1.5, so that the last 25 % of training can be measured
        (``lib.stitching.last_quarter_change``).
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    lr_decay: bool = True
    momentum: float = 0.0
    weight_decay: float = 1e-4
    epochs: int
    batch_size: int = 128
    alpha: float = 0.1
    sinkhorn_rounds: int = 16
    p_only_fraction: float = 0.5
    bn_adapt: bool = True
    init: str = "closed_form"
    grelu_p: str = "birkhoff"
    grelu_lr: float | None = None
    precision: str = "bulk"
    fronts: str = "cached"
    bn_epoch: str = "none"
    random_bias: bool = False
    evals_per_epoch: int = 1

    @classmethod
    def paper(cls) -> "StitchSettings":
        """The authors' protocol, :data:`STITCH_PAPER`."""
        return STITCH_PAPER


#: The authors' protocol, from the implementation notes and their release (stitch_*.slurm), is
#: plain SGD at a constant lr 1e-3, batch 32, 20 epochs, random starts without bias, A's front
#: recomputed per batch from augmented images, and the --bn_epoch pass for G_ReLU layers.
STITCH_PAPER = StitchSettings(
    epochs=20,
    optimizer="sgd",
    lr_decay=False,
    batch_size=32,
    init="random",
    fronts="augmented",
    bn_epoch="grelu",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneSettings:
    """The sanity test of Section 3.3 (Fig. 4): how many transforms, and how the tail is fine-tuned.

    The tail is trained with Adam (``lib.stitching.finetune.finetune_tail``). The recipe fields
    default to the ``fast`` one: batches of 256 and a rate of 1e-3 decaying linearly to 0;
    :data:`FINETUNE_PAPER` is the authors'. The sizes have no default: a scale states them. Every
    field is part of a rotation penalty's memo key (``dataclasses.asdict``); the fields are checked
    by ``lib.stitching.finetune.check_finetune``.

    Parameters
    ----------
    trials : int
        Random transforms per layer and kind (paper: 10).
    epochs : int
        Fine-tuning epochs after the transform (paper: 50).
    images : int or None
        Training images of the fine-tuning (None: all 50,000).
    eval_images : int or None
        Test images of the fine-tuned accuracies (None: all 10,000).
    start : str
        Where the fine-tuning starts: ``"refit"`` (the next convolution refitted by least squares
        first) or ``"transformed"`` (the paper's: the trained weights), as
        ``lib.stitching.finetune.ROTATION_STARTS``.
    batch_size : int
        Images per step (paper: 32).
    lr : float
        Adam's learning rate (the notes: 1e-3).
    weight_decay : float
        Adam's L2 coefficient on the parameters named ``weight``.
    precision : str
        ``lib.config`` precision of the fine-tuning and its evaluations (``"float32"``: exact).
    schedule : str
        ``"linear"``, ``"constant"`` or ``"step"`` (``lib.stitching.finetune.SCHEDULES``).
    step_size : int
        Epochs between decays of the ``"step"`` schedule.
    gamma : float
        Factor per decay of the ``"step"`` schedule.
    evals_per_epoch : int
        Test evaluations per epoch, evenly spaced in steps.
    """

    trials: int
    epochs: int
    images: int | None
    eval_images: int | None
    start: str = "refit"
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    precision: str = "bulk"
    schedule: str = "linear"
    step_size: int = 0
    gamma: float = 1.0
    evals_per_epoch: int = 1

    def schedule_fields(self) -> dict:
        """The schedule's keyword arguments of ``lib.stitching.sanity.cached_rotation_penalty``:
        ``schedule``, ``step_size``, ``gamma`` and ``evals_per_epoch``."""
        return dict(
            schedule=self.schedule,
            step_size=self.step_size,
            gamma=self.gamma,
            evals_per_epoch=self.evals_per_epoch,
        )


#: The authors' fine-tuning is 10 trials, 50 epochs on all images, batch 32 with StepLR halving the
#: rate every 12 epochs.
FINETUNE_PAPER = FinetuneSettings(
    trials=10,
    epochs=50,
    images=None,
    eval_images=None,
    batch_size=32,
    schedule="step",
    step_size=12,
    gamma=0.5,
)

#: NetDissect's settings (Bau et al. 2017), as in the paper; a unit's threshold leaves this fraction
#: of its activations above it...
NETDISSECT_QUANTILE = 0.005
#: ...and a unit detects its best concept if their IoU exceeds this.
NETDISSECT_IOU_THRESHOLD = 0.04

#: The ResNet20 layers stitched below `paper` scale are the stem, the first block's inner ReLU of
#: stages 1 and 2, and the last block outputs of stages 2 and 3 (5 of the 19, both kinds
#: represented)...
RESNET_LAYERS = ("act1", "layer1.0.act1", "layer2.0.act1", "layer2.2.act2", "layer3.2.act2")
#: ...and those of the slope sweep, a block output and an in-block ReLU.
SLOPE_LAYERS = ("layer2.2.act2", "layer3.0.act1")

#: The seed of the one fixed shuffle from which every chapter draws its image subsets
#: (lib.data.subset).
SUBSET_SEED = 20221128
