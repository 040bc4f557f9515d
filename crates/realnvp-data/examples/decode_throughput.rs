//! Measures decoding throughput of the CelebA preset (178x218 JPEG -> centre crop 148 ->
//! 64x64) on all cores: `cargo run --release -p realnvp-data --example decode_throughput
//! [images]`. Writes CelebA-sized JPEGs made from a real photograph to a temporary folder.

use std::path::Path;
use std::time::Instant;

use image::imageops::FilterType;
use realnvp_data::folder::{FolderPreset, ImageFolder, ImageFolderConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(2048);
    let photo =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/photos/objects/astronaut.jpg");
    let celeba_sized = image::open(&photo)?.resize_exact(178, 218, FilterType::Triangle);
    let dir = tempfile::tempdir()?;
    let first = dir.path().join("000000.jpg");
    celeba_sized.save(&first)?;
    for i in 1..n {
        std::fs::copy(&first, dir.path().join(format!("{i:06}.jpg")))?;
    }
    let folder = ImageFolder::scan(ImageFolderConfig {
        path: dir.path().into(),
        preset: FolderPreset::Celeba,
        channels: 3,
    })?;
    let indices: Vec<usize> = (0..n).collect();
    // Warm-up (page cache, thread pool).
    folder.decode_batch(&indices[..64.min(n)], None, &[])?;
    let start = Instant::now();
    for batch in indices.chunks(64) {
        folder.decode_batch(batch, None, &[])?;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"preset\": \"celeba\", \"images\": {n}, \"threads\": {}, \"seconds\": {seconds:.3}, \"images_per_second\": {:.1}}}",
        rayon::current_num_threads(),
        n as f64 / seconds
    );
    Ok(())
}
