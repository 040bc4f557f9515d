//! The float type the s/t networks' convolutions compute in: `f32`, or `bf16` / `f16` to
//! use a GPU's half-precision tensor cores and halve the activations those convolutions
//! keep for the backward pass.
//!
//! Only the convolutions change. Their input, weight and bias are cast to the chosen type
//! and their output is cast back to the input's type, so the batch norms between them, the
//! couplings' arithmetic, the log-determinants and the prior stay in `f32`; the weights
//! (and Adam's state) stay `f32` too. A coupling's inverse computes `s` and `t` from the
//! conditioning half it is handed back, with the same kernels: where that half is bitwise
//! the forward pass's the round trip is as exact as in `f32`; where a flow batch norm's
//! inverse hands it back with `f32` rounding, one half-precision rounding of `s` or `t` can
//! move by a unit, so the round trip holds to the type's precision (about 1e-3). The model
//! and its checkpoints do not change: evaluate or sample in `f32` (the default) for exact
//! inversion.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{backend::Backend, DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The float type of the s/t networks' convolutions (`f32`, `bf16` or `f16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvPrecision {
    /// 32-bit floats. (On CUDA, Burn 0.21's tensor-core convolution kernels still read
    /// `f32` operands as TF32 when its autotuner picks them; there is no switch for that.)
    #[default]
    F32,
    /// bfloat16: `f32`'s exponent range with an 8-bit significand. Gradients as small as
    /// the bits/dim loss gives cannot underflow, so it trains without loss scaling.
    Bf16,
    /// IEEE half: an 11-bit significand, but nothing below 6e-8. Closer to `f32` than
    /// `bf16` in evaluation; the smallest training gradients round to zero.
    F16,
}

impl ConvPrecision {
    /// Every precision, in the order the CLI lists them.
    pub const ALL: [ConvPrecision; 3] = [Self::F32, Self::Bf16, Self::F16];

    /// The name used in configs and on the command line: `f32`, `bf16` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// Burn's float type for the convolutions; `None` for `f32` (no casts at all).
    pub fn dtype(self) -> Option<FloatDType> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(FloatDType::BF16),
            Self::F16 => Some(FloatDType::F16),
        }
    }

    /// Checks that `device` computes in this type (Burn's `supports_dtype`): wgpu has no
    /// `bf16`, and `f16` only where the adapter has shader-f16.
    pub fn check<B: Backend>(self, device: &B::Device) -> Result<(), ConfigError> {
        match self.dtype() {
            Some(dtype) if !B::supports_dtype(device, DType::from(dtype)) => {
                Err(ConfigError::invalid(
                    "conv_precision",
                    self,
                    format!(
                        "a float type this backend computes in on {device:?}: {} does not \
                         support {}; use f32{}",
                        B::name(device),
                        self,
                        match self {
                            Self::Bf16 => " or f16",
                            _ => "",
                        }
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// `conv(x, weight, bias)` computed in this precision, returned in `x`'s type.
    pub fn apply<B: Backend>(
        self,
        x: Tensor<B, 4>,
        weight: Tensor<B, 4>,
        bias: Option<Tensor<B, 1>>,
        conv: impl FnOnce(Tensor<B, 4>, Tensor<B, 4>, Option<Tensor<B, 1>>) -> Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let Some(low) = self.dtype() else {
            return conv(x, weight, bias);
        };
        let back: FloatDType = x.dtype().into();
        let out = conv(
            x.cast(low),
            weight.cast(low),
            bias.map(|bias| bias.cast(low)),
        );
        out.cast(back)
    }
}

impl fmt::Display for ConvPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ConvPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown convolution precision `{s}`: use f32, bf16 or f16"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;

    fn same_conv(
        x: Tensor<Cpu, 4>,
        w: Tensor<Cpu, 4>,
        b: Option<Tensor<Cpu, 1>>,
    ) -> Tensor<Cpu, 4> {
        conv2d(x, w, b, ConvOptions::new([1, 1], [1, 1], [1, 1], 1))
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in ConvPrecision::ALL {
            assert_eq!(p.name().parse::<ConvPrecision>(), Ok(p));
        }
        let err = "fp16".parse::<ConvPrecision>().unwrap_err();
        assert!(err.contains("fp16") && err.contains("bf16"), "{err}");
    }

    /// Half precision rounds the convolution (so its output differs from `f32`, by about
    /// the type's relative precision) but returns `f32`.
    #[test]
    fn half_precision_rounds_the_convolution_and_returns_f32() {
        let x = uniform::<Cpu, 4>([2, 3, 5, 4], -1.0, 1.0, 1);
        let w = uniform::<Cpu, 4>([4, 3, 3, 3], -0.5, 0.5, 2);
        let b = uniform::<Cpu, 1>([4], -0.5, 0.5, 3);
        let exact = same_conv(x.clone(), w.clone(), Some(b.clone()));
        let scale = values(exact.clone().abs().max())
            .into_iter()
            .next()
            .unwrap();
        for (p, epsilon) in [
            (ConvPrecision::Bf16, 2f64.powi(-8)),
            (ConvPrecision::F16, 2f64.powi(-11)),
        ] {
            let out = p.apply(x.clone(), w.clone(), Some(b.clone()), same_conv);
            assert_eq!(out.dtype(), DType::F32, "{p}");
            let diff = max_abs_diff(out, exact.clone());
            assert!(diff > 0.0, "{p}: no rounding at all");
            assert!(diff < 30.0 * epsilon * scale, "{p}: {diff} against {scale}");
        }
        let same = ConvPrecision::F32.apply(x, w, Some(b), same_conv);
        assert_eq!(max_abs_diff(same, exact), 0.0);
    }

    /// The gradients through the casts reach the `f32` input, weight and bias, within
    /// the type's rounding of `f32`'s (through the 3x3 kernel and Burn's `conv2d`).
    #[test]
    fn gradients_flow_through_the_casts_close_to_f32() {
        let x = uniform::<CpuTrain, 4>([2, 3, 6, 5], -1.0, 1.0, 1).require_grad();
        let w = uniform::<CpuTrain, 4>([4, 3, 3, 3], -0.5, 0.5, 2).require_grad();
        let b = uniform::<CpuTrain, 1>([4], -0.5, 0.5, 3).require_grad();
        let weights = uniform::<CpuTrain, 4>([2, 4, 6, 5], -1.0, 1.0, 4);
        let gradients = |precision: ConvPrecision, fast: bool| {
            let conv = |x: Tensor<CpuTrain, 4>, w, b| match fast {
                true => realnvp_conv::conv3x3(x, w, b),
                false => conv2d(x, w, b, ConvOptions::new([1, 1], [1, 1], [1, 1], 1)),
            };
            let out = precision.apply(x.clone(), w.clone(), Some(b.clone()), conv);
            let grads = (out * weights.clone()).sum().backward();
            [
                values(x.grad(&grads).expect("x")),
                values(w.grad(&grads).expect("w")),
                values(b.grad(&grads).expect("b")),
            ]
        };
        for fast in [true, false] {
            let exact = gradients(ConvPrecision::F32, fast);
            for (p, tol) in [(ConvPrecision::Bf16, 0.02), (ConvPrecision::F16, 0.003)] {
                let half = gradients(p, fast);
                for (what, (h, e)) in ["x", "w", "b"].iter().zip(half.iter().zip(&exact)) {
                    let scale = e.iter().fold(0f64, |m, v| m.max(v.abs()));
                    let diff = h.iter().zip(e).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                    assert!(
                        diff < tol * scale,
                        "{p}, fast {fast}: d/d{what} off by {diff} (scale {scale})"
                    );
                }
            }
        }
    }
}
