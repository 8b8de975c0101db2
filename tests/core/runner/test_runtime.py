"""The one runtime dataclass: from flags, dicts or nothing to a Trainer's arguments, never part of a key."""

import argparse

import pytest
import torch

from eca_core.runner import distributed
from eca_core.runner.runtime import Runtime


def test_flags_parse_into_one_runtime():
    parser = argparse.ArgumentParser()
    Runtime.add_arguments(parser)
    rt = Runtime.from_args(parser.parse_args(["--accelerator", "cpu", "--devices", "0,1", "--strategy", "ddp", "--num-workers", "3"]))
    assert rt == Runtime("cpu", "0,1", 1, "ddp", 3)
    assert rt.device_list == [0, 1] and Runtime(devices="2").device_list == 2 and Runtime().device_list == "auto"
    assert rt.trainer_kwargs() == {"accelerator": "cpu", "devices": [0, 1], "num_nodes": 1, "strategy": "ddp"}
    assert Runtime.from_args(parser.parse_args([])) == Runtime()


def test_of_takes_a_runtime_a_mapping_or_nothing():
    assert Runtime.of(None) == Runtime()
    assert Runtime.of({"accelerator": "cpu", "devices": 1, "num_workers": None}) == Runtime("cpu", 1)  # None keeps the default
    rt = Runtime("cpu")
    assert Runtime.of(rt) is rt
    with pytest.raises(ValueError, match=r"unknown runtime option\(s\) \['gpus'\]"):
        Runtime.of({"gpus": 2})


def test_workers_and_devices():
    assert Runtime().workers(2) == 2 and Runtime(num_workers=0).workers(2) == 0
    assert Runtime("cpu", "auto").single_cpu_process() and not Runtime("cpu", 2).single_cpu_process()
    assert Runtime("gpu", 4, 2, "ddp").on_device("gpu", 3) == Runtime("gpu", [3], 1, "auto")
    assert Runtime("cpu", 2, 1, "ddp").on_device("cpu", 1) == Runtime("cpu", 1, 1, "auto")
    assert distributed.on_this_rank({"accelerator": "cpu", "devices": 2}) == Runtime("cpu", 2)  # one process: unchanged
    assert distributed.torch_device(Runtime("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert distributed.torch_device(Runtime("auto")) == torch.device("cpu")
        with pytest.raises(Exception, match="--accelerator gpu: no CUDA device is visible"):
            distributed.torch_device(Runtime("gpu"))
