"""DeepSpeed's JIT op builder (FusedAdam, built on the first optimizer step of a GPU run) reads
TORCH_CUDA_ARCH_LIST; the Hopper images set `9.0a`, which it cannot parse (seen on an H200).
The training launch rewrites the list; this drives DeepSpeed's own parser with both values."""

import pytest

from nyx_tasks.training.deepspeed_config import deepspeed_arch_list, launch_env


def _capability_args(monkeypatch, arch: str):
    from deepspeed.ops.op_builder.builder import CUDAOpBuilder

    class Probe(CUDAOpBuilder):
        BUILD_VAR, NAME = "DS_BUILD_NYX_PROBE", "nyx_probe"

        def __init__(self):
            super().__init__(name=self.NAME)

        def absolute_name(self):
            return self.NAME

        def sources(self):
            return []

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch)
    probe = Probe()
    probe.jit_mode = True
    return probe.compute_capability_args()


def test_deepspeed_refuses_the_hopper_suffix_and_reads_the_rewritten_list(monkeypatch):
    with pytest.raises(ValueError, match="0a"):
        _capability_args(monkeypatch, "8.0;9.0a")
    _capability_args(monkeypatch, deepspeed_arch_list("8.0;9.0a"))  # no error


@pytest.mark.parametrize("raw, fixed", [("9.0a", "9.0"), ("8.0;9.0a+PTX", "8.0;9.0+PTX"), ("10.0f 12.0", "10.0 12.0"),
                                        ("7.5 8.6", "7.5 8.6")])
def test_arch_list_rewrite(raw, fixed):
    assert deepspeed_arch_list(raw) == fixed
    assert launch_env({"TORCH_CUDA_ARCH_LIST": raw}) == {"TORCH_CUDA_ARCH_LIST": fixed}
    assert launch_env({}) == {}
