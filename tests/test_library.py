"""The build and the torch.library integration: info(), opcheck, torch.compile, CPU instruction sets."""
import pytest
import torch

import lossval_fast
from lossval_fast import ops
from backends import cpu_capabilities
from problems import problem


def test_extension_was_built_and_info_reports_it():
    info = lossval_fast.info()
    assert info["extension"] == "loaded", info["extension"]
    assert info["backends_built"]["cpp"] is True
    assert info["build"]["torch_version"].split("+")[0].rsplit(".", 1)[0] == torch.__version__.split("+")[0].rsplit(".", 1)[0]
    assert info["dispatch"]["cpu"]["softmin"].startswith("cpp")
    assert info["cpu_capability"] in ("generic", "avx2", "avx512")
    for op in ("softmin", "softmin_barycenter", "plan_colsum", "nearest", "softmin_stored"):
        assert op in info["dispatch"]["cpu"]
    assert set(info["cpu_steps"].values()) == {"built"}


def test_cli_info_prints_json(capsys):
    from lossval_fast.cli import main
    assert main(["info"]) == 0
    assert '"backends_built"' in capsys.readouterr().out


@pytest.mark.parametrize("name,args", [
    ("softmin", lambda x, y, h: (x, y, h, 0.3)),
    ("softmin_barycenter", lambda x, y, h: (x, y, h, 0.3)),
    ("plan_colsum", lambda x, y, h: (x, y, h, torch.zeros(x.shape[0]), torch.ones(x.shape[0]), 0.3)),
    ("nearest", lambda x, y, h: (x, y, True)),
    ("softmin_stored", lambda x, y, h: (ops.half_sqdist(x, y), h, 0.3)),
])
def test_opcheck(name, args):
    from lossval_fast import op_autograd
    op_autograd.register_cpp()
    x, y, h = (t.float() for t in problem(9, 13, 4))
    op = getattr(torch.ops.lossval_fast, name)
    result = torch.library.opcheck(op, args(x, y, h))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_softmin_under_torch_compile_with_autograd():
    x, y, h = (t.float().requires_grad_() for t in problem(9, 13, 4))

    def loss(x, y, h):
        return (ops.pairwise_softmin(x, y, h, 0.3, validate=False) ** 2).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    eager_grads = torch.autograd.grad(loss(x, y, h), (x, y, h))
    compiled_grads = torch.autograd.grad(compiled(x, y, h), (x, y, h))
    for a, b in zip(eager_grads, compiled_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cpu_capability_switch_and_errors():
    for cap in cpu_capabilities():
        assert torch.ops.lossval_fast.set_cpu_capability(cap) == cap
    with pytest.raises(ValueError, match="unknown cpu capability"):
        torch.ops.lossval_fast.set_cpu_capability("sse9")
    assert torch.ops.lossval_fast.set_cpu_capability("auto") == torch.ops.lossval_fast.best_cpu_capability()


def test_reference_backend_and_auto_agree():
    x, y, h = problem(20, 30, 5)
    a = ops.pairwise_softmin(x, y, h, 0.2, backend="torch")
    b = ops.pairwise_softmin(x, y, h, 0.2)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_unavailable_backends_say_why():
    x, y, h = problem(3, 4, 2)
    with pytest.raises(ValueError, match="backend='cuda' runs on CUDA tensors"):
        ops.pairwise_softmin(x, y, h, 1.0, backend="cuda")


def test_cost_mode_choice():
    cpu = torch.device("cpu")
    assert ops.choose_cost_mode("auto", 100, 100, 32, 4, cpu, passes=1) == "online"
    assert ops.choose_cost_mode("auto", 100, 100, 32, 4, cpu, passes=20) == "stored"
    assert ops.choose_cost_mode("auto", 100, 100, 32, 4, cpu, passes=20, memory_budget=1000) == "online"
    assert ops.choose_cost_mode("online", 100, 100, 32, 4, cpu, passes=20) == "online"


def test_kernels_split_their_work_over_torch_threads():
    """at::parallel_for inside the extension hands work to as many threads as torch.get_num_threads() (it is an
    inline OpenMP loop that silently runs on one thread if the extension is built without OpenMP)."""
    import os

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.ops.lossval_fast.parallel_threads(64) == 1
        if (os.cpu_count() or 1) >= 2:
            torch.set_num_threads(2)
            assert torch.ops.lossval_fast.parallel_threads(64) == 2
            assert lossval_fast.info()["kernel_threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_finiteness_check_finds_a_single_bad_value_in_a_large_tensor():
    x = torch.randn(300, 40)
    y = torch.randn(50, 40)
    for bad in (float("nan"), float("inf"), -float("inf")):
        z = x.clone()
        z[123, 7] = bad
        with pytest.raises(ValueError, match="x contains 1 NaN or inf"):
            ops.nearest(z, y)
    z = x.clone()
    z[0, 0], z[1, 0] = 3e38, 3e38  # finite, but the sum overflows: the element-wise scan decides
    ops.nearest(z, y)
