"""Every setting of the library and the book, in one place.

One commented literal per scale (:data:`SCALES`), in the spirit of airbench's ``hyp`` dict: how big
each experiment is, which recipe trains the zoo, where a family departs from it, and how stitching
layers are trained. Beside them, the literals the scales refer to: the two training recipes
(:data:`RECIPES`), the departures for networks without BatchNorm and for the ConvNeXt-style
network, the two stitching protocols, and the book's model families (:func:`model_families`).

Chapters read their defaults from here (``scale_settings(scale)``) and override them in their own
``parameters`` cell; the library never hides a number anywhere else.
"""
from __future__ import annotations

import dataclasses
import os

from .config import check_choice

__all__ = ["Scale", "SCALES", "DEFAULT_SCALE", "BUDGET_SECONDS", "RECIPES", "NOBN_RECIPE", "CONVNEXT_CPU",
           "CONVNEXT_PAPER", "STITCH_FAST", "STITCH_PAPER", "FINETUNE_FAST", "FINETUNE_PAPER", "RESNET_LAYERS",
           "SLOPE_LAYERS", "SUBSET_SEED", "resolve_scale", "scale_settings", "model_families"]


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big every experiment is at one scale, and how its models and stitching layers are trained.

    ``smoke`` runs each chapter in well under a minute on 2 CPU cores (tests); ``cpu`` is the default
    of the book build (the whole book from empty caches within 2 h on 2 cores); ``gpu`` is full width
    with a fast recipe, for one GPU; ``paper`` is the paper's published protocol (a GPU, hours).
    Fields holding images or epochs are counts; ``None`` means "all" (50,000 training or 10,000 test
    images). Widths are multipliers of the paper's channel counts.
    """

    name: str
    # -- the model zoo --------------------------------------------------------------------------
    recipe: str                    # training recipe, a key of RECIPES
    epochs: int                    # training epochs per model
    n_train: int | None            # training images (None: all 50,000)
    n_test: int | None             # test images for accuracies (None: all 10,000)
    myrtle_width: float            # width multiplier of the Myrtle CNN (1.0: c = 64)
    resnet_width: float            # width multiplier of ResNet20 (1.0: 16/32/64 channels)
    n_pairs: int                   # distinct-seed model pairs per experiment
    nobn_recipe: dict              # recipe fields replaced for networks without BatchNorm
    convnext_arch: dict            # the ConvNeXt-style network's architecture ("arch" and fields) besides its width
    convnext_recipe: dict          # recipe fields replaced for the ConvNeXt-style network
    # -- similarity (Section 5) -------------------------------------------------------------------
    n_feature_images: int          # test images whose features are compared
    # -- stitching (Section 4) and the rotation penalty (Section 3.3) -----------------------------
    stitch: dict                   # the stitching protocol: the fields of lib.stitching.StitchSettings
    stitch_images: int             # training images for the stitching layer
    fig1: dict                     # Fig. 1 (Myrtle, chapter 05) replacements of stitch, stitch_images and
                                   # eval_images: the central experiment gets the data and steps to converge
    eval_images: int | None        # test images for stitched accuracies (None: all)
    rotation_trials: int           # random transforms per layer (paper: 10)
    finetune_epochs: int           # fine-tuning epochs after the transform (paper: 50)
    finetune_images: int | None    # training images for the fine-tuning (None: all 50,000)
    finetune_eval_images: int | None  # test images for the fine-tuned accuracies (None: all 10,000)
    finetune: dict                 # how the tail is fine-tuned: batch size, lr, its schedule, evaluations per epoch
    slopes: tuple                  # LeakyReLU negative slopes of the appendix D.3 sweep
    slope_width: float             # ResNet20 width used in the slope sweep
    slope_epochs: int              # training epochs of each slope-sweep model
    slope_pairs: int               # model pairs per slope (each is stitched)
    slope_layers: tuple | str      # ResNet20 layers of the slope sweep ("all": the 19 ReLU layers)
    # -- ResNet20 stitching (appendix D.3) -----------------------------------------------------------
    resnet_layers: tuple | str     # ReLU layers stitched ("all": the 19 of them)
    resnet_variants: tuple         # stitching layers (lib.stitching.stitch_experiment's variant names)
    resnet_pairs: int              # ResNet20 pairs stitched (paper: 16; the zoo trains n_pairs)
    convnext_width: float          # width multiplier of the ConvNeXt-style network of Section 6
    dissection_width: float        # width of Section 6's two ResNet20s (with and without residual ReLU)
    # -- network dissection (Section 6) ---------------------------------------------------------
    dissection_images: int         # images of the concept dataset
    n_rotations: int               # random rotations per alpha
    alphas: tuple                  # geodesic positions between I and Q


#: The training recipes by name, each with the fields of lib.train.Recipe besides its name
#: (lib.train.recipe builds one).
RECIPES = {
    # The authors' recipe (implementation notes): 50 epochs of Adam, StepLR 12/0.5, batch 32.
    "paper": dict(epochs=50, batch_size=32, optimizer="adam", lr=1e-3, momentum=0.0, weight_decay=1e-4,
                  schedule="step", step_size=12, gamma=0.5, warmup=0.0, label_smoothing=0.0, flip=True,
                  translate=2, keep_best=True),
    # A fast recipe for small budgets: large batches, Nesterov SGD, one-cycle, label smoothing.
    "fast": dict(epochs=10, batch_size=512, optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=5e-4,
                 schedule="onecycle", step_size=0, gamma=1.0, warmup=0.2, label_smoothing=0.1, flip=True,
                 translate=2, keep_best=False),
}

#: Networks without BatchNorm (the Myrtle CNN without it; LayerNorm ConvNeXt) barely move under the
#: fast recipe's Nesterov SGD in a few epochs (measured: chance accuracy after 2 epochs on 10,000
#: images), while Adam trains them; the paper recipe is Adam already.
NOBN_RECIPE = dict(optimizer="adam", lr=2e-3, weight_decay=5e-5)

#: The ConvNeXt-style network of Section 6 at `paper` scale: LayerNorm, 7x7 depthwise kernels, layer
#: scale (the chapter itself dissects torchvision's ImageNet ConvNeXt-T there)...
CONVNEXT_PAPER = dict(arch="convnext_cifar", layer_scale=0.1)
#: ...and at the small scales lib.models.convnext20, laid out like ResNet20 (16/32/64 channels times
#: the width, 3 blocks per stage, BatchNorm, 3x3 depthwise kernels, no layer scale), trained with the
#: ResNets' recipe in its bfloat16 precision ("bulk", measured faster for it on the CPU: 464 against
#: 293 images/s). Measured at `cpu` (width 0.25, 8 epochs): 64.2 % against the ResNets' 66.9 and 68.6 %;
#: the LayerNorm/7x7 network had reached 54 %. No activation follows its residual additions either
#: way, which is what Section 6 compares.
CONVNEXT_CPU = dict(arch="convnext20")

#: How a stitching layer is trained (the fields of lib.stitching.StitchSettings); each scale adds its
#: epochs (paper: 20).
STITCH_FAST = dict(
    optimizer="adam",         # "adam" or "sgd" (plain, the authors')
    lr=1e-3,                  # peak learning rate per step
    lr_decay=True,            # decay linearly to 0 over all steps (the last epochs settle); False: constant
    momentum=0.0,             # SGD momentum (authors: none)
    weight_decay=1e-4,        # L2 coefficient per step; for grelu on D only
    batch_size=128,           # images per step (authors: 32, 3-4x slower per image on CPUs)
    alpha=0.1,                # weight of the vertex penalty -alpha * ||P||_F (grelu)
    sinkhorn_rounds=16,       # row/column normalisations after every step (grelu)
    p_only_fraction=0.5,      # fraction of the epochs that train P alone (grelu)
    bn_adapt=True,            # B's BatchNorms after the stitch in train mode (running stats adapt)
    init="closed_form",       # default start of every variant: "closed_form" or "random" (paper)
    grelu_p="birkhoff",       # G_ReLU's permutation: trained by the Birkhoff optimiser, or "fixed" at its start
    grelu_lr=None,            # learning rate of the G_ReLU layer (None: lr)
    precision="bulk",         # lib.config precision of training and evaluation ("float32": exact)
    fronts="cached",          # A's front: computed once on clean images ("cached"), or per batch from
                              # flipped and translated ones ("augmented", the authors' data loader)
    bn_epoch="none",          # which layer kinds get the authors' --bn_epoch pass before each
                              # evaluation: "none", "grelu" (the authors' runs) or "all"
    random_bias=False,        # random starts of full/rank layers get a bias (closed-form starts always
                              # fit one); the authors' layers have none (Stitcher(bias=False))
    evals_per_epoch=1,        # test evaluations per epoch (2 puts a point at 75 % of a 2-epoch run)
)
#: The authors' protocol, from the implementation notes and their release (stitch_*.slurm), is plain
#: SGD at a constant lr 1e-3, batch 32, random starts without bias, A's front recomputed per batch
#: from augmented images, and the --bn_epoch pass for G_ReLU layers.
STITCH_PAPER = dict(STITCH_FAST, optimizer="sgd", lr_decay=False, batch_size=32, init="random",
                    fronts="augmented", bn_epoch="grelu")

#: How the tail is fine-tuned after the transform of the sanity test (Fig. 4), Adam with lr 1e-3:
#: batches of 256 and a rate decaying linearly to 0 for few epochs...
FINETUNE_FAST = dict(batch_size=256, lr=1e-3, schedule="linear", step_size=0, gamma=1.0, evals_per_epoch=1)
#: ...and the authors' recipe, batch 32 with StepLR halving the rate every 12 epochs.
FINETUNE_PAPER = dict(batch_size=32, lr=1e-3, schedule="step", step_size=12, gamma=0.5, evals_per_epoch=1)

#: The ResNet20 layers stitched below `paper` scale are the stem, the first block's inner ReLU of stages
#: 1 and 2, and the last block outputs of stages 2 and 3 (5 of the 19, both kinds represented)...
RESNET_LAYERS = ("act1", "layer1.0.act1", "layer2.0.act1", "layer2.2.act2", "layer3.2.act2")
#: ...and those of the slope sweep, a block output and an in-block ReLU.
SLOPE_LAYERS = ("layer2.2.act2", "layer3.0.act1")

#: The seed of the one fixed shuffle from which every chapter draws its image subsets (lib.data.subset).
SUBSET_SEED = 20221128


#: Every scale's settings, one commented literal each (see :class:`lib.settings.Scale`).
SCALES: dict[str, Scale] = {
    # Seconds per chapter on 2 CPU cores: what the tests run. Its numbers mean nothing.
    "smoke": Scale(
        name="smoke",
        # the zoo: 1 epoch on 512 images, an eighth (Myrtle) and a quarter (ResNet20) of the width
        recipe="fast", epochs=1, n_train=512, n_test=512, myrtle_width=0.125, resnet_width=0.25, n_pairs=1,
        nobn_recipe=NOBN_RECIPE, convnext_arch=CONVNEXT_CPU, convnext_recipe={},
        # similarity
        n_feature_images=128,
        # stitching and the rotation penalty
        stitch=dict(STITCH_FAST, epochs=1), stitch_images=256, fig1={}, eval_images=512, rotation_trials=1,
        finetune_epochs=1, finetune_images=256, finetune_eval_images=512, finetune=FINETUNE_FAST,
        slopes=(0.0, 1.0), slope_width=0.25, slope_epochs=1, slope_pairs=1, slope_layers=SLOPE_LAYERS,
        resnet_layers=RESNET_LAYERS, resnet_variants=("full", "rank1", "grelu", "matching"), resnet_pairs=1,
        convnext_width=0.25,
        dissection_width=0.25,
        # dissection
        dissection_images=64, n_rotations=2, alphas=(0.0, 0.5, 1.0),
    ),
    # The default of the book build: the whole book within 2 h on 2 CPU cores from empty caches.
    "cpu": Scale(
        name="cpu",
        recipe="fast", epochs=8, n_train=None, n_test=None, myrtle_width=0.25, resnet_width=0.5, n_pairs=1,
        nobn_recipe=NOBN_RECIPE, convnext_arch=CONVNEXT_CPU, convnext_recipe={},
        n_feature_images=2000,
        # Fig. 1 converges with all 50,000 fronts, a 10x larger peak lr decayed to 0 over 2 epochs, and the
        # G_ReLU layer's permutation fixed at activation matching (Adam on P blurs it: 31 pp against 15.6
        # for matching at act4); penalties on all 10,000 test images (2,000 leave +-0.7 pp of noise),
        # twice per epoch so that the last 25 % of the steps (epoch 1.5 to 2) can be measured.
        stitch=dict(STITCH_FAST, epochs=4), stitch_images=5000, eval_images=2000, rotation_trials=3,
        fig1=dict(stitch_images=50000, eval_images=None, epochs=2, lr=1e-2, grelu_p="fixed", grelu_lr=3e-3,
                  evals_per_epoch=2),
        # Fig. 4's fine-tune at a third of the notes' rate: 1e-3 knocked the exact refit start of a G_ReLU
        # transform 3 pp off in the first epoch. Four evaluations per epoch on all 10,000 test images measure
        # the last 25 % of it (2,000 images left the curves jumping by +-0.7 pp between evaluations).
        finetune_epochs=3, finetune_images=5000, finetune_eval_images=None,
        finetune=dict(FINETUNE_FAST, lr=3e-4, evals_per_epoch=4),
        slopes=(0.0, 0.9, 1.0), slope_width=0.25, slope_epochs=8, slope_pairs=1, slope_layers=SLOPE_LAYERS,
        resnet_layers=RESNET_LAYERS, resnet_variants=("full", "rank1", "grelu", "matching"), resnet_pairs=1,
        convnext_width=0.25,
        dissection_width=0.25,
        dissection_images=1000, n_rotations=5, alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    ),
    # Full width with the fast recipe on one GPU. Not yet run on a GPU: its cost is a projection from
    # throughputs measured on an H200 (see the README's "On a GPU").
    "gpu": Scale(
        name="gpu",
        recipe="fast", epochs=16, n_train=None, n_test=None, myrtle_width=1.0, resnet_width=1.0, n_pairs=4,
        nobn_recipe=NOBN_RECIPE, convnext_arch=CONVNEXT_CPU, convnext_recipe={},
        n_feature_images=10000,
        stitch=dict(STITCH_FAST, epochs=5), stitch_images=50000, fig1={}, eval_images=None, rotation_trials=5,
        finetune_epochs=5, finetune_images=None, finetune_eval_images=None, finetune=FINETUNE_FAST,
        slopes=(0.0, 0.01, 0.1, 0.5, 0.9, 1.0), slope_width=1.0, slope_epochs=8, slope_pairs=3,
        slope_layers=SLOPE_LAYERS, resnet_layers=RESNET_LAYERS, resnet_variants=("full", "rank1", "grelu", "matching"),
        resnet_pairs=4, convnext_width=1.0, dissection_width=1.0,
        dissection_images=10000, n_rotations=10, alphas=tuple(i / 10 for i in range(11)),
    ),
    # The paper's protocol: the authors' recipe (Adam for every network) and widths, their ConvNeXt,
    # their stitching and fine-tuning protocols, 32 Myrtle pairs, and appendix D.3 in full (16 ResNet20
    # pairs, all 19 layers, every stitching layer; the slope sweep at every layer). A GPU, hours.
    "paper": Scale(
        name="paper",
        recipe="paper", epochs=50, n_train=None, n_test=None, myrtle_width=1.0, resnet_width=1.0, n_pairs=32,
        nobn_recipe={}, convnext_arch=CONVNEXT_PAPER, convnext_recipe={},
        n_feature_images=10000,
        stitch=dict(STITCH_PAPER, epochs=20), stitch_images=50000, fig1={}, eval_images=None, rotation_trials=10,
        finetune_epochs=50, finetune_images=None, finetune_eval_images=None, finetune=FINETUNE_PAPER,
        slopes=(0.0, 0.01, 0.1, 0.5, 0.9, 1.0), slope_width=1.0, slope_epochs=50, slope_pairs=3,
        slope_layers="all", resnet_layers="all",
        resnet_variants=("full", "rank1", "rank2", "rank4", "grelu", "matching"), resnet_pairs=16,
        convnext_width=1.0, dissection_width=1.0,
        dissection_images=10000, n_rotations=10, alphas=tuple(i / 10 for i in range(11)),
    ),
}

#: Wall-clock budget of a whole book build from empty caches, in seconds, where one is set (the
#: design card: the `cpu` book within 2 h on 2 CPU cores). tests/test_budget.py guards it.
BUDGET_SECONDS = {"cpu": 2 * 3600}

#: The scale a chapter runs at when neither its parameters nor $SYMMETRIES_SCALE name one.
DEFAULT_SCALE = "cpu"


def resolve_scale(scale: str | None = None) -> str:
    """The name of the scale to run at: ``scale`` if given, else ``$SYMMETRIES_SCALE``, else ``"cpu"``.

    Every chapter's parameters cell says ``scale = None`` and calls this right after it, so that one
    environment variable sets the scale of the whole book while papermill's ``-p scale smoke`` (which
    injects a literal after the parameters cell) still wins for one chapter.

    Parameters
    ----------
    scale : str or None
        A name in :data:`SCALES`, or ``None`` to read ``$SYMMETRIES_SCALE`` (unset or empty: ``"cpu"``).

    Returns
    -------
    str
        A key of :data:`SCALES`.

    Raises
    ------
    ValueError
        If the chosen name is not a scale; the message names where it came from and lists the scales.
    """
    if scale is not None:
        check_choice("scale", scale, SCALES)
        return scale
    env = os.environ.get("SYMMETRIES_SCALE", "").strip()
    if not env:
        return DEFAULT_SCALE
    # Named as the variable, so that a typo in the environment is not mistaken for one in a chapter.
    check_choice("scale from $SYMMETRIES_SCALE", env, SCALES)
    return env


def scale_settings(scale: str) -> Scale:
    """The settings of one scale.

    Parameters
    ----------
    scale : str
        A key of :data:`SCALES` (``"smoke"``, ``"cpu"``, ``"gpu"`` or ``"paper"``).

    Returns
    -------
    Scale

    Raises
    ------
    ValueError
        If ``scale`` is not a key of :data:`SCALES`.
    """
    check_choice("scale", scale, SCALES)
    return SCALES[scale]


def model_families(s: Scale) -> dict:
    """The book's model families at scale ``s``, as plain data.

    The zoo step (``python -m lib.zoo train``) trains all of them; every chapter asks for the same
    entries (:func:`lib.zoo.book_models` turns these into recipes and seeds).

    Parameters
    ----------
    s : Scale
        The scale's settings (:func:`scale_settings`).

    Returns
    -------
    dict
        ``{name: dict(arch, recipe, models, paper_acc)}``: ``arch`` is a dict for
        :func:`lib.models.build`; ``recipe`` the fields replaced in the scale's recipe; ``models`` the
        number of models one replicate trains; ``paper_acc`` the clean accuracy the paper reports,
        ``(mean, std)`` in percent (``None`` where it reports none).
    """
    pairs, none = 2 * s.n_pairs, (None, None)
    out = {
        "myrtle": dict(arch=dict(arch="myrtle_cnn", width=s.myrtle_width), recipe={}, models=pairs,
                       paper_acc=(91.3, 0.2)),
        # Half the width, to report accuracy against width.
        "myrtle_narrow": dict(arch=dict(arch="myrtle_cnn", width=s.myrtle_width / 2), recipe={}, models=pairs,
                              paper_acc=none),
        # Section 3.3 fine-tunes one network without BatchNorm.
        "myrtle_nobn": dict(arch=dict(arch="myrtle_cnn", width=s.myrtle_width, batchnorm=False),
                            recipe=s.nobn_recipe, models=1, paper_acc=(87.4, None)),
        "resnet20": dict(arch=dict(arch="resnet20", width=s.resnet_width), recipe={}, models=pairs,
                         paper_acc=(89.9, None)),
        # Section 6's trio: ResNet20 with a ReLU after each residual addition, the same without it, and
        # ConvNeXt-style; one model each. The ResNets have their own width, dissection_width: at `cpu`
        # it is the slope sweep's 0.25, so the ReLU model is the slope sweep's first model (one zoo
        # entry, trained once); at gpu/paper it is resnet_width and the "resnet20" model.
        "resnet20_dissection": dict(arch=dict(arch="resnet20", width=s.dissection_width), recipe={}, models=1,
                                    paper_acc=none),
        "resnet20_noresrelu": dict(arch=dict(arch="resnet20", width=s.dissection_width, residual_activation=False),
                                   recipe={}, models=1, paper_acc=none),
        "convnext": dict(arch=dict(s.convnext_arch, width=s.convnext_width),
                         recipe=s.convnext_recipe, models=1, paper_acc=none),
    }
    # Appendix D.3: ResNet20 with LeakyReLU of each negative slope (slope 0 is the ReLU network).
    for slope in s.slopes:
        leaky = {} if slope == 0 else dict(activation="leaky_relu", negative_slope=slope)
        out[f"resnet20_slope{slope:g}"] = dict(arch=dict(arch="resnet20", width=s.slope_width, **leaky),
                                               recipe=dict(epochs=s.slope_epochs), models=2 * s.slope_pairs,
                                               paper_acc=none)
    return out
