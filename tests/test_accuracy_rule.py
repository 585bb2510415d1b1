"""The accuracy rule itself (tests/helpers.py): it passes the plain path and fails a path with four times its
error (in the max), or one worse everywhere (in the RMS); the last-place term, non-finite values, pooling, and
the op form (`assert_error_at_most_twice_torchs`)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import AccuracyRuleSamples, assert_error_at_most_twice_torchs, assert_within_accuracy_rule


def _sums(dtype):
    """Running sums of 256 terms rounded to `dtype` at each step, and the same sums in fp64 on the same
    (dtype-exact) terms: a plain path whose error is many units in the last place, and its oracle."""
    terms = torch.randn(256, 48).to(dtype)
    total = torch.zeros(48, dtype=dtype)
    for row in terms:
        total = total + row
    return total, terms.double().sum(0)


def _scaled_error(plain, exact, factor):
    """A path with `factor` times the plain path's error, in the plain path's dtype."""
    return (exact + factor * (plain.double() - exact)).to(plain.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_plain_path_passes_and_four_times_its_error_fails(dtype):
    plain, exact = _sums(dtype)
    assert (plain.double() - exact).abs().max() > 0
    assert_within_accuracy_rule(plain, plain, exact, "plain")
    assert_within_accuracy_rule(_scaled_error(plain, exact, 1.5), plain, exact, "1.5 x")
    with pytest.raises(AssertionError, match=r"4 x: max error against fp64 .* > bound .*2 x the plain path's"):
        assert_within_accuracy_rule(_scaled_error(plain, exact, 4.0), plain, exact, "4 x")


def test_a_path_worse_everywhere_fails_on_the_rms_alone():
    """Its worst value is the plain path's worst, so only the RMS can see it."""
    exact = torch.linspace(1.0, 2.0, 1000, dtype=torch.float64)
    plain_error = torch.full_like(exact, 1e-7)
    plain_error[0] = 1e-5
    worse = torch.full_like(exact, 1e-5)
    with pytest.raises(AssertionError, match="rms error"):
        assert_within_accuracy_rule((exact + worse).float(), (exact + plain_error).float(), exact, "everywhere")


def test_one_last_place_is_allowed_where_the_plain_path_is_exact():
    exact = torch.linspace(-3.0, 3.0, 101, dtype=torch.float64).float().double()  # exact in fp32
    plain = exact.float()
    one_ulp = torch.nextafter(plain, torch.full_like(plain, float("inf")))
    assert_within_accuracy_rule(one_ulp, plain, exact, "one ulp off")
    three_ulps = plain + 3 * (one_ulp - plain)
    with pytest.raises(AssertionError, match="three ulps off: max error"):
        assert_within_accuracy_rule(three_ulps, plain, exact, "three ulps off")


def test_the_last_place_is_that_of_the_given_dtype():
    """A path whose result is fp32 but whose precision is bf16's (say, probas rounded to bf16 and back)."""
    exact = torch.linspace(0.1, 0.9, 50, dtype=torch.float64)
    coarse = exact.to(torch.bfloat16).float()
    with pytest.raises(AssertionError):
        assert_within_accuracy_rule(coarse, exact.float(), exact)
    assert_within_accuracy_rule(coarse, exact.float(), exact, dtype=torch.bfloat16)


def test_non_finite_oracle_values_must_be_matched():
    exact = torch.tensor([1.0, float("inf"), float("nan"), -float("inf")], dtype=torch.float64)
    plain = exact.float()
    assert_within_accuracy_rule(plain.clone(), plain, exact, "matched")
    for wrong in ([1.0, 3.0e38, float("nan"), -float("inf")], [1.0, float("inf"), 0.0, -float("inf")]):
        with pytest.raises(AssertionError, match="where the fp64 oracle gives"):
            assert_within_accuracy_rule(torch.tensor(wrong), plain, exact, "unmatched")
    finite, overflowed = torch.ones(2, dtype=torch.float64), torch.tensor([1.0, float("inf")])
    with pytest.raises(AssertionError, match="the plain path is not finite"):
        assert_within_accuracy_rule(torch.ones(2), overflowed, finite)
    with pytest.raises(AssertionError, match="max error against fp64 inf"):  # the path under test overflowed
        assert_within_accuracy_rule(overflowed, torch.ones(2), finite)


def test_shapes_must_agree():
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_within_accuracy_rule(torch.ones(3), torch.ones(3), torch.ones(1, 3, dtype=torch.float64))


def test_pooled_samples_fail_as_a_whole_and_name_the_worst_part():
    samples = AccuracyRuleSamples()
    for part in ("first", "second", "third"):
        plain, exact = _sums(torch.float32)
        samples.add("gradient", plain.clone(), plain, exact, part=part)
    samples.check()
    plain, exact = _sums(torch.float32)
    samples.add("gradient", _scaled_error(plain, exact, 8.0), plain, exact, part="fourth")
    with pytest.raises(AssertionError, match="gradient: max error .* worst part: fourth"):
        samples.check()


def test_the_op_form_passes_the_torch_path_and_fails_four_times_its_error():
    weight = torch.randn(96, 40)

    def op(x, backend, factor):
        out = x @ weight.to(x.dtype)
        if backend == "torch":
            return out
        exact = x.detach().double() @ weight.double()
        return out + (factor - 1) * (out.detach().double() - exact).to(out.dtype)  # the output's error x factor

    x, grad = torch.randn(32, 96), torch.randn(32, 40)
    assert_error_at_most_twice_torchs(lambda x, backend: op(x, backend, 1.0), (x,), grad, torch.float32)
    with pytest.raises(AssertionError, match="triton output: max error"):
        assert_error_at_most_twice_torchs(lambda x, backend: op(x, backend, 4.0), (x,), grad, torch.float32)
