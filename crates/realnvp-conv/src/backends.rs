//! `ConvBackend` and `NormReluBackend` for the backends realnvp-rs ships, each behind its
//! cargo feature. All but Flex keep Burn's own operations (the traits' default bodies).

#[cfg(feature = "ndarray")]
impl<E, I, Q> crate::NormReluBackend for burn_ndarray::NdArray<E, I, Q>
where
    E: burn_ndarray::FloatNdArrayElement,
    I: burn_ndarray::IntNdArrayElement,
    Q: burn_ndarray::QuantElement,
    burn_ndarray::NdArrayTensor: From<burn_ndarray::SharedArray<E>>,
    burn_ndarray::NdArrayTensor: From<burn_ndarray::SharedArray<I>>,
{
}

#[cfg(feature = "ndarray")]
impl<E, I, Q> crate::ConvBackend for burn_ndarray::NdArray<E, I, Q>
where
    E: burn_ndarray::FloatNdArrayElement,
    I: burn_ndarray::IntNdArrayElement,
    Q: burn_ndarray::QuantElement,
    burn_ndarray::NdArrayTensor: From<burn_ndarray::SharedArray<E>>,
    burn_ndarray::NdArrayTensor: From<burn_ndarray::SharedArray<I>>,
{
}

#[cfg(feature = "wgpu")]
impl crate::ConvBackend for burn_wgpu::Wgpu {}
#[cfg(feature = "wgpu")]
impl crate::NormReluBackend for burn_wgpu::Wgpu {}

#[cfg(feature = "cuda")]
impl crate::ConvBackend for burn_cuda::Cuda {}
#[cfg(feature = "cuda")]
impl crate::NormReluBackend for burn_cuda::Cuda {}
