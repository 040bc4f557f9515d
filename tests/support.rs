//! Shared helpers of the workspace's end-to-end and cross-backend tests.

use burn::module::Module;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;

/// Copies the parameters and running statistics of `module` (on backend `A`) into
/// `target`, a module of the same architecture on backend `B`, through burn's binary
/// record format.
pub fn transfer<A: Backend, B: Backend, MA: Module<A>, MB: Module<B>>(
    module: MA,
    target: MB,
    device: &B::Device,
) -> MB {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder
        .record(module.into_record(), ())
        .expect("a module record serialises");
    let record = recorder
        .load(bytes, device)
        .expect("the same architecture deserialises on any backend");
    target.load_record(record)
}

/// Whether the environment demands that optional backends run rather than skip
/// (`REALNVP_REQUIRE_WGPU=1`, set by CI).
pub fn wgpu_required() -> bool {
    std::env::var("REALNVP_REQUIRE_WGPU").is_ok_and(|v| v == "1")
}
