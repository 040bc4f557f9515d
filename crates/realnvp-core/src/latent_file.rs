//! Latents on disk: one safetensors file holding every scale's latents (`scale0` finest,
//! `[batch, channels, height, width]`, f32) and, in its metadata, the name of each example
//! (`names`, one per line) and the dequantisation used to encode them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::model::Latents;

/// A latents file that cannot be written or read; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct LatentFileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Latents with the names of their examples (e.g. the encoded image files).
#[derive(Debug, Clone)]
pub struct NamedLatents<B: Backend> {
    /// The latents of every scale.
    pub latents: Latents<B>,
    /// One name per example, in batch order.
    pub names: Vec<String>,
}

/// Writes `latents` and one name per example to a safetensors file at `path`.
pub fn save_latents<B: Backend>(
    path: &Path,
    latents: &NamedLatents<B>,
) -> Result<(), LatentFileError> {
    let error = |message: String| LatentFileError {
        path: path.to_path_buf(),
        message,
    };
    if latents.names.len() != latents.latents.len() {
        return Err(error(format!(
            "{} names for {} examples",
            latents.names.len(),
            latents.latents.len()
        )));
    }
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = latents
        .latents
        .scales
        .iter()
        .enumerate()
        .map(|(i, z)| {
            let data = z.clone().into_data().convert::<f32>();
            let bytes = data
                .to_vec::<f32>()
                .unwrap_or_default()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (format!("scale{i}"), z.dims().to_vec(), bytes)
        })
        .collect();
    let views = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| error(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([
        ("format".to_string(), "realnvp-latents".to_string()),
        ("names".to_string(), latents.names.join("\n")),
    ]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| error(e.to_string()))
}

/// Reads a file written by [`save_latents`] onto `device`.
pub fn load_latents<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<NamedLatents<B>, LatentFileError> {
    let error = |message: String| LatentFileError {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| error(format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| error(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get("format").map(String::as_str) != Some("realnvp-latents") {
        return Err(error(
            "not a latents file written by `realnvp encode` (no format = realnvp-latents)".into(),
        ));
    }
    let mut scales = Vec::new();
    while let Ok(view) = file.tensor(&format!("scale{}", scales.len())) {
        let name = format!("scale{}", scales.len());
        if view.dtype() != Dtype::F32 || view.shape().len() != 4 {
            return Err(error(format!(
                "tensor {name} is {:?} {:?}; expected f32 [batch, channels, height, width]",
                view.dtype(),
                view.shape()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let shape: [usize; 4] = view.shape().try_into().expect("rank checked");
        scales.push(Tensor::<B, 4>::from_data(
            TensorData::new(values, shape),
            device,
        ));
    }
    if scales.is_empty() {
        return Err(error("no tensor scale0".into()));
    }
    let latents = Latents { scales };
    let batch = latents.len();
    if latents.scales.iter().any(|z| z.dims()[0] != batch) {
        return Err(error("scales hold different numbers of examples".into()));
    }
    let names: Vec<String> = match metadata.get("names") {
        Some(names) if batch > 0 => names.split('\n').map(str::to_string).collect(),
        _ => Vec::new(),
    };
    if names.len() != batch {
        return Err(error(format!(
            "{} names in the metadata for {batch} examples",
            names.len()
        )));
    }
    Ok(NamedLatents { latents, names })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn latents_survive_a_round_trip_through_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("z.safetensors");
        let latents = NamedLatents {
            latents: Latents::<Cpu> {
                scales: vec![
                    uniform([2, 2, 4, 4], -3.0, 3.0, 1),
                    uniform([2, 8, 2, 2], -3.0, 3.0, 2),
                ],
            },
            names: vec!["a.png".into(), "b/c.png".into()],
        };
        save_latents(&path, &latents).expect("written");
        let back = load_latents::<Cpu>(&path, &Default::default()).expect("read");
        assert_eq!(back.names, latents.names);
        assert_eq!(back.latents.shapes(), latents.latents.shapes());
        assert_eq!(
            values(back.latents.flatten()),
            values(latents.latents.flatten())
        );

        std::fs::write(&path, b"not a tensor file").expect("write");
        let err = load_latents::<Cpu>(&path, &Default::default())
            .expect_err("garbage")
            .to_string();
        assert!(
            err.contains("z.safetensors") && err.contains("safetensors"),
            "{err}"
        );
        let missing = dir.path().join("missing.safetensors");
        let err = load_latents::<Cpu>(&missing, &Default::default())
            .expect_err("missing")
            .to_string();
        assert!(err.contains("missing.safetensors"), "{err}");
    }
}
