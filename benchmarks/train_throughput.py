"""Training throughput of lib.train against the common DataLoader + per-image-transform pipeline.

Both sides train the same model (same architecture, batch size, optimiser and augmentation:
random flip and 2-pixel translation) on the same CIFAR-10 images, in the same run, on the same
machine, and report images per second; the ratio is the speed-up of the library's on-device batch
pipeline (channels_last, whole-batch augmentation; bfloat16 autocast on CUDA).

    python benchmarks/train_throughput.py --arch myrtle_cnn --width 0.25 --images 4096
"""

import argparse
import time

import torch
import torchvision.transforms as T
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from lib import data as D
from lib import models, train
from lib.config import get_device


class PILDataset(Dataset):
    """The common way: uint8 arrays -> PIL image -> per-image transforms -> tensor."""

    def __init__(self, x, y):
        self.x, self.y = x.numpy(), y
        self.tf = T.Compose(
            [
                T.RandomCrop(32, padding=2),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize([m / 255 for m in D.MEAN], [s / 255 for s in D.STD]),
            ]
        )

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        from PIL import Image

        return self.tf(Image.fromarray(self.x[i])), self.y[i]


def baseline(model, x, y, batch_size, device, workers):
    loader = DataLoader(PILDataset(x, y), batch_size=batch_size, shuffle=True, num_workers=workers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    model.to(device).train()
    t0, n = time.perf_counter(), 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(xb)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def library(model, data, n, batch_size, device):
    r = train.recipe("fast", epochs=1, batch_size=batch_size, lr=0.05, n_train=n, n_test=batch_size)
    hist = train.train(model, data, r, seed=0, device=device, progress=False)
    return n / hist[0]["seconds"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="myrtle_cnn", choices=list(models.ARCHITECTURES))
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--images", type=int, default=4096, help="training images per measurement")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (baseline)")
    p.add_argument("--device", default=None)
    args = p.parse_args()
    device = get_device(args.device)
    data = D.load_cifar10()
    x, y = D.subset(data.x_train, data.y_train, args.images)
    arch = dict(arch=args.arch, width=args.width)
    # Warm-up runs so that neither side pays one-off start-up costs in its measurement.
    library(models.build(arch, seed=0), data, args.batch_size * 2, args.batch_size, device)
    base = baseline(models.build(arch, seed=0), x, y, args.batch_size, device, args.workers)
    lib_ips = library(models.build(arch, seed=0), data, args.images, args.batch_size, device)
    print(
        f"{args.arch} width {args.width}, {args.images} images, batch {args.batch_size}, "
        f"device {device}, {torch.get_num_threads()} threads"
    )
    print(f"baseline (DataLoader + PIL transforms, {args.workers} workers): {base:8.0f} images/s")
    print(f"lib.train (on-device batches, channels_last):        {lib_ips:8.0f} images/s")
    print(f"ratio lib / baseline: {lib_ips / base:.2f}x")


if __name__ == "__main__":
    main()
