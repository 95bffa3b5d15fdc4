# PyTorch on the vGPU: an elementwise kernel, a cuBLAS matrix multiply, and a few training
# steps of a small MLP with a fixed seed. Prints RESULT lines compared with native.
import time
import torch

torch.manual_seed(0)
dev = "cuda"
z = torch.arange(1000, device=dev, dtype=torch.float32)
print(f"RESULT torch_elementwise={(z * 2 + 1).sum().item()}")
x = torch.randn(256, 256, device=dev)
print(f"RESULT torch_matmul_sum={(x @ x).sum().item():.4f}")
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
data = torch.randn(512, 64, device=dev)
target = torch.randint(0, 10, (512,), device=dev)
torch.cuda.synchronize()
t0 = time.time()
for step in range(200):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(data), target)
    loss.backward()
    opt.step()
torch.cuda.synchronize()
t1 = time.time()
print(f"RESULT torch_mlp_loss_200={loss.item():.6f}")
print(f"TIME torch_mlp_step_ms={(t1 - t0) / 200 * 1e3:.3f}")
