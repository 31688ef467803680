"""The lean backward pass through the frozen UNet: the same gradients as autograd, fewer kept activations."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

from medti.models.lean_backward import LeanConv2d, make_backward_lean


def kept_bytes(output: torch.Tensor, exclude: set[int]) -> dict[str, int]:
    """Bytes of the distinct storages the autograd graph behind ``output`` keeps, by node type (weights excluded)."""
    seen, by_node, stack, visited = set(), collections.Counter(), [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for name in dir(node):
            if not (name.startswith("_saved_") or name == "saved_tensors"):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:
                continue
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(t, torch.Tensor):
                    key = t.untyped_storage().data_ptr()
                    if key not in exclude and key not in seen:
                        seen.add(key)
                        by_node[type(node).__name__] += t.untyped_storage().nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return dict(by_node)


def text_gradient(model, lean: bool):
    """The text conditioning's gradient through the frozen UNet, and what the graph kept to compute it."""
    unet = model.unet
    if lean:
        assert make_backward_lean(unet) > 0
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g).requires_grad_(True)
    out = unet(latents, torch.tensor([10, 700]), context).sample
    weights = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    kept = kept_bytes(out, weights)
    out.float().pow(2).mean().backward()
    return context.grad, kept


def test_same_gradient_with_a_quarter_fewer_kept_activations(tiny_model_dir):
    from medti.models import load_base_model

    plain_grad, plain = text_gradient(load_base_model(str(tiny_model_dir)), lean=False)
    lean_grad, lean = text_gradient(load_base_model(str(tiny_model_dir)), lean=True)
    assert torch.equal(lean_grad, plain_grad)  # the same kernels compute the same numbers
    assert "ConvolutionBackward0" in plain and "ConvolutionBackward0" not in lean  # no conv input kept
    assert sum(lean.values()) <= 0.85 * sum(plain.values()), (lean, plain)


def test_modules_stay_what_they_were_for_everything_else(tiny_model_dir):
    from diffusers.models.activations import GEGLU

    from medti.models import load_base_model

    model = load_base_model(str(tiny_model_dir))
    state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    counts = collections.Counter(type(m) for m in model.unet.modules())
    assert make_backward_lean(model.unet) == counts[nn.Conv2d] + counts[GEGLU]
    convs = [m for m in model.unet.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is LeanConv2d for m in convs)
    assert all(isinstance(m, GEGLU) and type(m) is not GEGLU for m in model.unet.modules() if isinstance(m, GEGLU))
    assert model.unet.state_dict().keys() == state.keys()
    assert all(torch.equal(model.unet.state_dict()[k], v) for k, v in state.items())
    assert make_backward_lean(model.unet) == 0  # already lean


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_conv_and_geglu_gradients_under_autocast(weight_dtype):
    """fp32 activations into bf16 weights under autocast (as on a GPU): gradients come back in the input's
    dtype and match autograd's; a conv whose weight trains keeps the ordinary path."""
    from diffusers.models.activations import GEGLU

    torch.manual_seed(0)
    conv, geglu = nn.Conv2d(8, 16, 3, padding=1, stride=2), GEGLU(16, 8)
    conv.requires_grad_(False).to(weight_dtype)
    geglu.requires_grad_(False).to(weight_dtype)
    x = torch.randn(2, 8, 12, 12)

    def run(lean):
        if lean:
            make_backward_lean(conv)
            make_backward_lean(geglu)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=weight_dtype == torch.bfloat16):
            y = geglu(conv(xi).flatten(2).transpose(1, 2))
        y.float().square().sum().backward()
        return y.detach(), xi.grad

    y0, g0 = run(False)
    y1, g1 = run(True)
    assert g1.dtype == torch.float32
    assert torch.equal(y1, y0)
    torch.testing.assert_close(g1, g0, rtol=0, atol=0 if weight_dtype == torch.float32 else 1e-2)

    trainable = nn.Conv2d(3, 4, 3)
    make_backward_lean(trainable)
    trainable(torch.randn(1, 3, 5, 5)).sum().backward()
    assert trainable.weight.grad is not None


@pytest.mark.slow
def test_torch_compile_traces_the_lean_unet_in_one_graph(tiny_model_dir):
    """``compile: true`` keeps working: the lean modules trace without graph breaks, same gradient."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from medti.models import load_base_model

    eager_grad, _ = text_gradient(load_base_model(str(tiny_model_dir)), lean=False)
    model = load_base_model(str(tiny_model_dir))
    make_backward_lean(model.unet)
    torch._dynamo.reset()
    counters.clear()
    model.unet = torch.compile(model.unet)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, model.unet.config.cross_attention_dim, generator=g).requires_grad_(True)
    model.unet(latents, torch.tensor([10, 700]), context).sample.float().pow(2).mean().backward()
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(context.grad, eager_grad, rtol=1e-4, atol=1e-8)


def compiled_text_gradient(model, budget: float):
    import torch._dynamo
    import torch._functorch.config as functorch_config

    torch._dynamo.reset()
    make_backward_lean(model.unet)
    model.unet = torch.compile(model.unet)
    with functorch_config.patch(activation_memory_budget=budget):
        return text_gradient(model, lean=False)  # already lean


@pytest.mark.slow
def test_a_compile_memory_budget_recomputes_instead_of_keeping(tiny_model_dir):
    """``compile_memory_budget`` below 1 keeps far fewer activations for the same gradient (on `small` at
    256 px: 160 -> 39 MB at 0.3, for about 10 % more time on the CPU; docs/performance.md)."""
    from medti.models import load_base_model

    full_grad, full = compiled_text_gradient(load_base_model(str(tiny_model_dir)), 1.0)
    lean_grad, lean = compiled_text_gradient(load_base_model(str(tiny_model_dir)), 0.3)
    assert sum(full.values()) > 100_000 and sum(lean.values()) <= 0.6 * sum(full.values()), (lean, full)
    torch.testing.assert_close(lean_grad, full_grad, rtol=1e-4, atol=1e-8)


def test_compile_memory_budget_is_validated_and_reaches_the_compiler(tiny_model_dir):
    import torch._functorch.config as functorch_config

    from medti.errors import ConfigError
    from medti.models import load_base_model
    from medti.textual_inversion.settings import TrainSettings
    from medti.textual_inversion.trainer import EmbeddingTrainer
    from medti.toydata import draw_shapes

    for bad, why in ((0.0, "less than or equal to the minimum of 0"), (1.5, "greater than the maximum of 1")):
        with pytest.raises(ConfigError, match=rf"train_embedding\.compile_memory_budget: {bad} is {why}"):
            TrainSettings(token="<t>", init_words="disc", compile_memory_budget=bad).validate()
    settings = TrainSettings(token="<t>", init_words="disc", resolution=32, steps=1, validation_images=0,
                             compile=True, compile_memory_budget=0.4).validate()
    assert "compile_memory_budget" not in settings.result_key()  # memory only: resumable with another budget
    pixels = torch.from_numpy(draw_shapes("disc", 2, 0)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    before = functorch_config.activation_memory_budget
    try:
        trainer = EmbeddingTrainer(load_base_model(str(tiny_model_dir)), settings, pixels, torch.device("cpu"),
                                   torch.float32)
        assert functorch_config.activation_memory_budget == 0.4
        assert trainer.unet is not trainer.model.unet  # the compiled wrapper (compiles lazily, at the first step)
    finally:
        functorch_config.activation_memory_budget = before
