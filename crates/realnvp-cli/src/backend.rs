//! The backend compiled in, chosen by cargo feature: `flex` (default), `ndarray`, `wgpu`
//! or `cuda`. When several are enabled the first of cuda, wgpu, ndarray, flex wins.

#[cfg(feature = "cuda")]
mod chosen {
    pub type Inference = burn::backend::Cuda;
    pub const NAME: &str = "cuda";
}

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
mod chosen {
    pub type Inference = burn::backend::Wgpu;
    pub const NAME: &str = "wgpu";
}

#[cfg(all(feature = "ndarray", not(any(feature = "cuda", feature = "wgpu"))))]
mod chosen {
    pub type Inference = burn::backend::NdArray;
    pub const NAME: &str = "ndarray";
}

#[cfg(all(
    feature = "flex",
    not(any(feature = "cuda", feature = "wgpu", feature = "ndarray"))
))]
mod chosen {
    pub type Inference = burn::backend::Flex;
    pub const NAME: &str = "flex (CPU)";
}

#[cfg(not(any(
    feature = "flex",
    feature = "ndarray",
    feature = "wgpu",
    feature = "cuda"
)))]
compile_error!("enable one backend feature: flex, ndarray, wgpu or cuda");

pub use chosen::{Inference, NAME};

/// The default device of the chosen backend.
pub fn device() -> <Inference as burn::tensor::backend::BackendTypes>::Device {
    Default::default()
}
