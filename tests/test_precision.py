"""Hardware -> dtype policy, and the fp16 loss-scaled step really running on CPU."""
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from hf_nanochat.train import precision
from hf_nanochat.train.precision import LossScaledStep, newton_schulz_dtype, resolve_precision


@pytest.fixture
def gpu(monkeypatch):
    """Pretend to be a CUDA device of a given compute capability."""

    def make(cap, name):
        monkeypatch.setattr(precision, "cuda_capability", lambda d: cap if d.type == "cuda" else None)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)
        return torch.device("cuda")

    return make


@pytest.mark.parametrize(
    "cap,name,mode",
    [((9, 0), "NVIDIA H100", "bf16"), ((8, 0), "NVIDIA A100", "bf16"), ((7, 5), "Tesla T4", "fp16"), ((7, 0), "Tesla V100", "fp16"), ((6, 0), "Tesla P100", "fp16"), ((5, 2), "Tesla M60", "fp32")],
)
def test_auto_picks_by_compute_capability(gpu, cap, name, mode):
    plan = resolve_precision("auto", gpu(cap, name))
    assert plan.mode == mode and not plan.explicit_fp16
    assert plan.accelerate_mixed_precision == ("no" if mode == "fp32" else mode)
    assert name in plan.reason


def test_cpu_is_fp32_and_fp16_on_cpu_is_done_explicitly():
    assert resolve_precision("auto", torch.device("cpu")).mode == "fp32"
    plan = resolve_precision("fp16", torch.device("cpu"))
    assert plan.mode == "fp16" and plan.explicit_fp16 and plan.accelerate_mixed_precision == "no"
    assert resolve_precision("bf16", torch.device("cpu")).accelerate_mixed_precision == "bf16"


def test_bf16_without_hardware_support_is_a_clear_error(gpu):
    with pytest.raises(ValueError, match=r"compute capability >= 8.0.*fp16"):
        resolve_precision("bf16", gpu((7, 0), "Tesla V100"))
    # ... also when it comes from the accelerate config (single_gpu.yaml on a P100).
    with pytest.raises(ValueError, match="accelerate config"):
        resolve_precision("auto", gpu((6, 0), "Tesla P100"), launcher_choice="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", torch.device("cpu"))


def test_launcher_choice_honoured_under_auto_and_overridden_by_explicit(gpu):
    dev = gpu((9, 0), "NVIDIA H100")
    assert resolve_precision("auto", dev, launcher_choice="fp16").mode == "fp16"
    assert resolve_precision("bf16", dev, launcher_choice="fp16").mode == "bf16"


def test_newton_schulz_never_bf16_on_gpus_without_it(gpu):
    assert newton_schulz_dtype(gpu((8, 6), "RTX 3090")) == torch.bfloat16
    assert newton_schulz_dtype(gpu((6, 0), "Tesla P100")) == torch.float32
    assert newton_schulz_dtype(torch.device("cpu")) == torch.float32


@pytest.fixture
def accelerator():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_fp16_overflow_step_is_skipped_counted_and_scale_backs_off(accelerator):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    plan = resolve_precision("fp16", accelerator.device)
    # 2**40 times any non-trivial gradient is far beyond fp16's 65504: a guaranteed overflow.
    stepper = LossScaledStep(accelerator, plan, init_scale=2.0**40)
    x = torch.randn(8, 16)
    before = [p.detach().clone() for p in model.parameters()]
    with stepper.autocast():
        out = model(x)
        assert out.dtype == torch.float16  # really fp16 compute on CPU
        loss = out.float().pow(2).mean()
    stepper.backward(loss)
    _, applied = stepper.clip_and_step(opt, model.parameters(), 1.0)
    opt.zero_grad()
    assert not applied and stepper.skipped_steps == 1
    assert stepper.loss_scale() == 2.0**39
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # never applied
    # A sane scale: the step is applied and changes the weights.
    stepper.scaler.update(new_scale=1024.0)
    with stepper.autocast():
        loss = model(x).float().pow(2).mean()
    stepper.backward(loss)
    norm, applied = stepper.clip_and_step(opt, model.parameters(), 1.0)
    assert applied and stepper.skipped_steps == 1 and torch.isfinite(torch.tensor(norm))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
