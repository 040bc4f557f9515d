//! Integer images in memory, and what every image data set reports about itself.

use serde::{Deserialize, Serialize};

/// What a data set tells the trainer so it can build a matching model and compute
/// bits/dim without the user repeating it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Short name, e.g. `digits` or `fashion-mnist`.
    pub name: String,
    /// Image shape `[channels, height, width]`.
    pub shape: [usize; 3],
    /// Grey levels per channel (pixel values are `0..levels`).
    pub levels: u32,
    /// Examples in the training split.
    pub train: usize,
    /// Examples in the held-out test split.
    pub test: usize,
    /// Number of classes when the data set has labels.
    pub classes: Option<usize>,
}

/// Integer images `[n, channels, height, width]` held in memory, one byte per pixel
/// (values `0..levels`), with optional class labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArray {
    /// `[channels, height, width]` of every image.
    pub shape: [usize; 3],
    /// Grey levels per channel.
    pub levels: u32,
    /// Pixels of all images, image after image, each in `[c, h, w]` order.
    pub pixels: Vec<u8>,
    /// One label per image, if the data set has them.
    pub labels: Option<Vec<u16>>,
}

impl ImageArray {
    /// Pixels per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_len().max(1)
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pixels of image `index`, `[c, h, w]` order.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[index * n..(index + 1) * n]
    }

    /// The label of image `index`, if any.
    pub fn label(&self, index: usize) -> Option<u16> {
        self.labels.as_ref().map(|labels| labels[index])
    }

    /// Number of classes (largest label + 1), if labelled.
    pub fn classes(&self) -> Option<usize> {
        self.labels
            .as_ref()
            .map(|labels| labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0))
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageArray {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        ImageArray {
            shape: self.shape,
            levels: self.levels,
            pixels,
            labels: self
                .labels
                .as_ref()
                .map(|labels| indices.iter().map(|&i| labels[i]).collect()),
        }
    }
}

/// Mirrors an image `[c, h, w]` left to right, in place.
pub fn flip_horizontally(pixels: &mut [u8], shape: [usize; 3]) {
    let width = shape[2];
    for row in pixels.chunks_mut(width) {
        row.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_reverses_every_row_of_every_channel() {
        let mut pixels: Vec<u8> = (0..12).collect();
        flip_horizontally(&mut pixels, [2, 2, 3]);
        assert_eq!(pixels, vec![2, 1, 0, 5, 4, 3, 8, 7, 6, 11, 10, 9]);
    }

    #[test]
    fn select_keeps_pixels_and_labels_together() {
        let images = ImageArray {
            shape: [1, 1, 2],
            levels: 4,
            pixels: vec![0, 1, 2, 3, 1, 1],
            labels: Some(vec![7, 8, 9]),
        };
        let picked = images.select(&[2, 0]);
        assert_eq!(picked.pixels, vec![1, 1, 0, 1]);
        assert_eq!(picked.labels, Some(vec![9, 7]));
        assert_eq!(images.classes(), Some(10));
    }
}
