# PyTorch training on the vGPU, deterministic so that a native run and a run through our stack
# print identical RESULT lines: (a) an MLP 256-512-512-10 trained 300 steps with SGD + momentum,
# (b) a small CNN (2 conv + BatchNorm + max-pool, linear head) trained 200 steps with Adam, both
# on fixed synthetic batches made on the CPU with a seeded generator.
#
# Prints `RESULT mlp_loss_<step>=...` / `RESULT cnn_loss_<step>=...` every step (loss.item(),
# so every step synchronises), a parameter checksum and an evaluation count after each run, and
# TIME lines in ms: the mean step after 20 warm-up steps, and the whole script after `import
# torch` (CUDA initialisation included). Exits non-zero on an error or if training diverges.
#
# TORCH_TEST_DEVICE (default cuda) exists only for a dry run of the script on a machine
# without a GPU.
import os

# cuBLAS is deterministic only with a fixed workspace; this must precede the first cuBLAS call
# and is read when torch initialises CUDA, so it is set before `import torch`.
os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"

import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

T_START = time.perf_counter()
DEV = os.environ.get("TORCH_TEST_DEVICE", "cuda")
SEED = 1234
WARMUP = 20


def deterministic():
    torch.manual_seed(SEED)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True)


def clustered(gen, nbatches, batch, shape, classes, spread):
    """Fixed batches of points around one random centre per class; one-hot float targets.

    Only the generator and elementwise arithmetic on the CPU: no BLAS, so the data does not
    depend on the CPU's thread count. Targets are class probabilities, so cross_entropy is
    log_softmax * target (deterministic on CUDA; the class-index path's nll_loss backward is
    not guaranteed to be)."""
    centres = torch.randn((classes, *shape), generator=gen)
    out = []
    for _ in range(nbatches):
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + spread * torch.randn((batch, *shape), generator=gen)
        t = F.one_hot(y, classes).to(torch.float32)
        out.append((x.to(DEV), t.to(DEV), y.to(DEV)))
    return out


def sync():
    if DEV.startswith("cuda"):
        torch.cuda.synchronize()


def train(key, model, opt, batches, steps):
    """Trains `steps` steps over the batches in turn; prints every loss; returns the step
    times in ms (each includes the .item() that waits for the step)."""
    model.train()
    times, losses = [], []
    for step in range(steps):
        x, t, _ = batches[step % len(batches)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        v = loss.item()
        times.append((time.perf_counter() - t0) * 1e3)
        losses.append(v)
        print(f"RESULT {key}_loss_{step + 1}={v:.8e}")
    with torch.no_grad():
        psum = sum(p.double().sum() for p in model.parameters()).item()
        pabs = sum(p.double().abs().sum() for p in model.parameters()).item()
        model.eval()
        correct = sum(int((model(x).argmax(1) == y).sum().item()) for x, _, y in batches)
    total = sum(x.shape[0] for x, _, _ in batches)
    print(f"RESULT {key}_param_sum={psum:.8e}")
    print(f"RESULT {key}_param_abs_sum={pabs:.8e}")
    print(f"RESULT {key}_eval_correct={correct}/{total}")
    check(key, losses)
    return times


def check(key, losses):
    bad = [i + 1 for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        sys.exit(f"FAIL {key}: loss not finite at steps {bad[:5]}")
    first, last = losses[0], sum(losses[-10:]) / 10
    if not last < 0.5 * first:
        sys.exit(f"FAIL {key}: loss did not fall (first {first:.4e}, mean of last 10 {last:.4e})")


def mean_after_warmup(times):
    rest = times[WARMUP:]
    return sum(rest) / len(rest)


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
        )
        self.head = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def main():
    deterministic()
    gen = torch.Generator().manual_seed(SEED)

    # (a) MLP: 8 fixed batches of 256 x 256 features, 10 classes.
    mlp_batches = clustered(gen, 8, 256, (256,), 10, spread=3.0)
    torch.manual_seed(SEED)  # parameters initialised on the CPU, then moved
    mlp = nn.Sequential(
        nn.Linear(256, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    ).to(DEV)
    opt = torch.optim.SGD(mlp.parameters(), lr=0.01, momentum=0.9)
    mlp_times = train("mlp", mlp, opt, mlp_batches, 300)

    # (b) CNN: 4 fixed batches of 64 one-channel 28x28 images, 10 classes.
    cnn_batches = clustered(gen, 4, 64, (1, 28, 28), 10, spread=2.0)
    torch.manual_seed(SEED + 1)
    cnn = Cnn().to(DEV)
    opt = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    cnn_times = train("cnn", cnn, opt, cnn_batches, 200)

    sync()
    print(f"TIME mlp_step_ms={mean_after_warmup(mlp_times):.4f}")
    print(f"TIME cnn_step_ms={mean_after_warmup(cnn_times):.4f}")
    print(f"TIME torch_train_ms={(time.perf_counter() - T_START) * 1e3:.1f}")


if __name__ == "__main__":
    main()
