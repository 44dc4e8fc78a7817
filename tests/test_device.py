"""train.precision auto: bf16 only where the device has bf16 matmul units."""

import pytest
import torch

from textvae.core import device as device_lib
from textvae.core.device import autocast, bf16_units, cpu_name, resolve_precision

CPU = torch.device("cpu")
ICE_LAKE = "model name\t: Intel Xeon\nflags\t\t: fpu sse avx512f avx512bw avx512_vnni avx512_bitalg\n"
SAPPHIRE_RAPIDS = "model name\t: Intel Xeon\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_bf16_units_are_read_from_the_flags_line():
    assert bf16_units(ICE_LAKE) == ()
    assert bf16_units(SAPPHIRE_RAPIDS) == ("amx_bf16", "avx512_bf16")
    assert bf16_units("model name\t: avx512_bf16 in a name only\nflags\t\t: fpu\n") == ()


def test_the_cpu_is_named_with_its_cores_and_matmul_units():
    def two_cores(text):
        return "processor\t: 0\n" + text + "\nprocessor\t: 1\n" + text

    assert cpu_name(two_cores(ICE_LAKE)) == "Intel Xeon, 2 cores (avx512, no bf16 matmul units)"
    assert cpu_name(two_cores(SAPPHIRE_RAPIDS)) == "Intel Xeon, 2 cores (amx_bf16, avx512_bf16)"
    zen3 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma\n"
    assert cpu_name(zen3) == "AMD EPYC, 1 core (avx2, no bf16 matmul units)"


@pytest.mark.parametrize("units, expected", [((), "fp32"), (("avx512_bf16",), "bf16"), (("amx_bf16",), "bf16")])
def test_auto_is_bf16_only_on_a_cpu_with_bf16_units(monkeypatch, units, expected):
    monkeypatch.setattr(device_lib, "cpu_bf16_units", lambda: units)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(CPU, "auto"):
        product = a @ b
    assert product.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_an_explicit_bf16_without_bf16_units_is_warned_about(monkeypatch, caplog):
    monkeypatch.setattr(device_lib, "cpu_bf16_units", lambda: ())
    with caplog.at_level("INFO", logger="textvae.core.device"):
        assert device_lib.report_precision("bf16", CPU) == "bf16"
        assert device_lib.report_precision("auto", CPU) == "fp32"
    warnings = [record for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "without bf16 matmul units" in warnings[0].getMessage()
    assert "training in fp32" in caplog.records[-1].getMessage()
