"""Library behind the reproduction of "On the Symmetries of Deep Learning Models and their Internal
Representations" (Godfrey, Brown, Emerson, Kvinge, NeurIPS 2022).

One module or subpackage per concept; callers import from where the code lives::

    lib/
      settings/        every setting in one place: protocols (recipes, stitching, fine-tuning),
                       scales (one dataclass per concern), the paper's reference numbers, lookup
      config.py        device, precision policy (autocast, exact_mode), cache folders, atomic writes
      cache.py         checksummed files, the memo of expensive results, model fingerprints
      activations.py   the elementwise activations (Table 1's sigma), by name
      groups.py        their intertwiner groups (Section 3.1)
      intertwining.py  intertwiner groups found numerically, Theorem 3.3's ray check
      symmetry.py      the groups' action on weights (Section 3.2)
      models/          spec (SymmetrySpec, Site), myrtle, resnet, mlp, convnext, registry (the
                       ARCHITECTURES registry, split)
      data.py          CIFAR-10 as tensors, on-device augmentation, a synthetic stand-in for tests
      datafile.py      the CIFAR-10 file read by content (checksums, npy headers), its download
      train.py         the Recipe type and the training loop
      zoo/             trained models cached on disk (store) and the book's families (book);
                       python -m lib.zoo train
      stitching/       matching, layers, surgery, training, experiment, sanity, finetune (3.3, 4)
      metrics/         similarity measures (Section 5) on arrays, importing nothing from lib but
                       config: registry (MEASURES), inputs, hsic, normalization, preprocessing,
                       gram, cka, procrustes, layers; psd (a PSD G_ReLU-invariant CKA), indefinite
                       (the max kernel's spectrum)
      similarity.py    features of models, all layer pairs of two models compared and cached
      grounding/       the sensitivity, specificity and shift tests of Ding et al. (2021)
      dissection/      network dissection: iou, broden, synthetic, study (Section 6)
      results.py       recorded numbers, tables, python -m lib.results compare
      claims/          the paper's claims, the one rule that decides them, each claim's effect
      plotting.py      figures
      sweep.py         a chapter run per parameter combination (papermill, Dask)
      devicecheck.py   the project's own check on a GPU machine
"""

__version__ = "0.1.0"
