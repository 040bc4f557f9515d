//! The backend compiled in, chosen by cargo feature: `flex` (default), `ndarray`, `wgpu`
//! or `cuda`. When several are enabled the first of cuda, wgpu, ndarray, flex wins.

#[cfg(feature = "cuda")]
mod chosen {
    pub type Inference = burn::backend::Cuda;
    pub const NAME: &str = "cuda";

    /// CUDA device `index`.
    pub fn device_at(index: usize) -> anyhow::Result<burn::backend::cuda::CudaDevice> {
        Ok(burn::backend::cuda::CudaDevice::new(index))
    }
}

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
mod chosen {
    pub type Inference = burn::backend::Wgpu;
    pub const NAME: &str = "wgpu";

    /// wgpu device `index`: the default adapter for 0, else the index-th discrete GPU.
    pub fn device_at(index: usize) -> anyhow::Result<burn::backend::wgpu::WgpuDevice> {
        Ok(match index {
            0 => burn::backend::wgpu::WgpuDevice::DefaultDevice,
            i => burn::backend::wgpu::WgpuDevice::DiscreteGpu(i),
        })
    }
}

#[cfg(all(feature = "ndarray", not(any(feature = "cuda", feature = "wgpu"))))]
mod chosen {
    pub type Inference = burn::backend::NdArray;
    pub const NAME: &str = "ndarray";
    pub use super::cpu_device_at as device_at;
}

#[cfg(all(
    feature = "flex",
    not(any(feature = "cuda", feature = "wgpu", feature = "ndarray"))
))]
mod chosen {
    pub type Inference = burn::backend::Flex;
    pub const NAME: &str = "flex (CPU)";
    pub use super::cpu_device_at as device_at;
}

#[cfg(not(any(
    feature = "flex",
    feature = "ndarray",
    feature = "wgpu",
    feature = "cuda"
)))]
compile_error!("enable one backend feature: flex, ndarray, wgpu or cuda");

pub use chosen::{device_at, Inference, NAME};

/// Training: the chosen backend under autodiff.
pub type Training = burn::backend::Autodiff<Inference>;

/// Training with Burn's gradient checkpointing (`train.gradient_checkpointing`).
pub type Checkpointed = burn::backend::Autodiff<
    Inference,
    burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
>;

/// The device type of the chosen backend.
pub type Device = <Inference as burn::tensor::backend::BackendTypes>::Device;

/// The CPU backends have one device; every index names it, so that `--devices 0,1`
/// runs two data-parallel workers on the one CPU (for testing the plumbing).
#[allow(dead_code)]
pub fn cpu_device_at(_index: usize) -> anyhow::Result<Device> {
    Ok(Default::default())
}

/// The device chosen with `--device`, once per invocation.
static SELECTED: std::sync::OnceLock<Device> = std::sync::OnceLock::new();

/// Chooses this invocation's device (`--device N`): the N-th GPU on CUDA and wgpu. The CPU
/// backends have one device, 0; a higher index is an error that says so.
pub fn select(index: usize) -> anyhow::Result<()> {
    let gpu = cfg!(any(feature = "cuda", feature = "wgpu"));
    if !gpu && index > 0 {
        anyhow::bail!(
            "--device {index}: the {NAME} backend has one device, 0 (GPU indices need a build with `--features cuda` or `--features wgpu`)"
        );
    }
    let device = device_at(index)?;
    // A second call (tests calling `run` twice) keeps the first choice.
    let _ = SELECTED.set(device);
    Ok(())
}

/// The device of this invocation: the one chosen with `--device`, else the backend's
/// default.
// The GPU backends' devices are `Clone` only.
#[allow(clippy::cloned_instead_of_copied)]
pub fn device() -> Device {
    SELECTED.get().cloned().unwrap_or_default()
}

/// Runs `work` (a command's whole training, evaluation or sampling loop) on one of rayon's
/// worker threads when the backend computes on the CPU, and returns its result; the GPU
/// backends run it where it is.
///
/// The CPU kernels (realnvp-conv's convolutions and normalisations, Flex's reductions) split
/// each operation across rayon's pool. From the main thread, every such operation is
/// injected into the pool from outside: it wakes a worker, puts the main thread to sleep
/// until the pool is done and wakes it again, three threads taking turns on the cores, tens
/// of thousands of times a second on small images. From a worker thread the same operation
/// is a `join`: this thread does one part and the other workers steal the rest. On the
/// digits benchmark (2 cores) training runs about 1.2 times, evaluation and sampling about
/// 1.3 times as fast.
pub fn on_compute_threads<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if cfg!(any(feature = "cuda", feature = "wgpu")) {
        return work();
    }
    // Called from outside the pool, `scope` runs its body on a worker and waits for it.
    rayon::scope(|_| work())
}
