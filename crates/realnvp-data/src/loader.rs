//! Image sources, seeded resumable shuffling, augmentation and batching into Burn tensors.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::folder::{FolderPreset, ImageFolder};
use crate::images::{flip_horizontally, ImageArray};

/// Where the images of one split come from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// Decoded images in memory (digits, IDX, CIFAR-10).
    Memory(Arc<ImageArray>),
    /// Files decoded on demand, in parallel (image folders), restricted to `indices`.
    Folder {
        /// The scanned folder.
        folder: Arc<ImageFolder>,
        /// The folder's images that belong to this split.
        indices: Arc<Vec<usize>>,
    },
}

impl ImageSource {
    /// Number of images.
    pub fn len(&self) -> usize {
        match self {
            ImageSource::Memory(images) => images.len(),
            ImageSource::Folder { indices, .. } => indices.len(),
        }
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        match self {
            ImageSource::Memory(images) => images.shape,
            ImageSource::Folder { folder, .. } => folder.shape(),
        }
    }

    /// The images at `indices`; `crop_seeds` draw random crops (training, LSUN preset),
    /// `flips` mirror chosen images.
    pub fn fetch(
        &self,
        indices: &[usize],
        crop_seeds: Option<&[u64]>,
        flips: &[bool],
    ) -> Result<ImageArray, DataError> {
        match self {
            ImageSource::Memory(images) => {
                let mut batch = images.select(indices);
                let n = batch.image_len();
                for (k, _) in flips.iter().enumerate().filter(|(_, &f)| f) {
                    flip_horizontally(&mut batch.pixels[k * n..(k + 1) * n], batch.shape);
                }
                Ok(batch)
            }
            ImageSource::Folder {
                folder,
                indices: split,
            } => {
                let files: Vec<usize> = indices.iter().map(|&i| split[i]).collect();
                let random_crops = matches!(folder.preset(), FolderPreset::Lsun);
                folder.decode_batch(&files, crop_seeds.filter(|_| random_crops), flips)
            }
        }
    }
}

/// A split that can hand out examples by index: images or vectors.
pub trait Fetch {
    /// What a batch of examples is.
    type Batch;

    /// Number of examples.
    fn len(&self) -> usize;

    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`; `crop_seeds` draw random crops (training), `flips`
    /// mirror chosen images (ignored by vectors).
    fn fetch(
        &self,
        indices: &[usize],
        crop_seeds: Option<&[u64]>,
        flips: &[bool],
    ) -> Result<Self::Batch, DataError>;
}

impl Fetch for ImageSource {
    type Batch = ImageArray;

    fn len(&self) -> usize {
        ImageSource::len(self)
    }

    fn fetch(
        &self,
        indices: &[usize],
        crop_seeds: Option<&[u64]>,
        flips: &[bool],
    ) -> Result<ImageArray, DataError> {
        ImageSource::fetch(self, indices, crop_seeds, flips)
    }
}

/// Real vectors `[n, dims]` in memory (toy and tabular data).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorArray {
    /// Dimensions per vector.
    pub dims: usize,
    /// Values, vector after vector.
    pub values: Vec<f32>,
}

impl VectorArray {
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.values.len() / self.dims.max(1)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// As a tensor `[n, dims]`.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(self.values.clone(), [self.len(), self.dims]),
            device,
        )
    }
}

impl Fetch for VectorArray {
    type Batch = VectorArray;

    fn len(&self) -> usize {
        VectorArray::len(self)
    }

    fn fetch(
        &self,
        indices: &[usize],
        _: Option<&[u64]>,
        _: &[bool],
    ) -> Result<VectorArray, DataError> {
        let d = self.dims;
        let values = indices
            .iter()
            .flat_map(|&i| self.values[i * d..(i + 1) * d].iter().copied())
            .collect();
        Ok(VectorArray { dims: d, values })
    }
}

/// Position of a training stream: which epoch, and how many examples of its (seeded)
/// order have been used. Saved in checkpoints so that a resumed run sees the same batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Examples of this epoch already used.
    pub offset: usize,
}

/// Settings of a training stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Examples per batch.
    pub batch_size: usize,
    /// Seed of the shuffling and augmentation.
    pub seed: u64,
    /// Mirror each training image with probability 1/2.
    pub flip: bool,
}

/// Which part of every training batch one worker reads: the `index`-th of `count` equal,
/// contiguous parts (the batch size must be a multiple of `count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This worker's part, from 0.
    pub index: usize,
    /// Number of parts (workers).
    pub count: usize,
}

impl Shard {
    /// The whole batch (one worker).
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// The rows of a batch of `batch_size` this shard covers.
    pub fn range(&self, batch_size: usize) -> std::ops::Range<usize> {
        let per = batch_size / self.count.max(1);
        self.index * per..(self.index + 1) * per
    }
}

/// An endless, seeded, resumable stream of shuffled training batches: every epoch is a
/// fresh permutation drawn from `(seed, epoch)`, the incomplete last batch of an epoch is
/// dropped, and flips and crops are drawn from `(seed, epoch, offset)` alone, so that the
/// same position always gives the same batch.
#[derive(Debug, Clone)]
pub struct TrainStream<S> {
    source: S,
    config: StreamConfig,
}

impl<S: Fetch> TrainStream<S> {
    /// A stream over `source`.
    pub fn new(source: S, config: StreamConfig) -> Result<Self, DataError> {
        if config.batch_size == 0 || config.batch_size > source.len() {
            return Err(DataError::Dataset {
                path: "training split".into(),
                message: format!(
                    "batch size {} must be between 1 and the {} training examples",
                    config.batch_size,
                    source.len()
                ),
            });
        }
        Ok(Self { source, config })
    }

    /// The order of the examples in `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.source.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
            self.config.seed,
            epoch,
            u64::MAX,
        )));
        order
    }

    /// The batch at `position`, and the position after it.
    pub fn batch_at(
        &self,
        position: StreamPosition,
    ) -> Result<(S::Batch, StreamPosition), DataError> {
        self.shard_at(position, Shard::WHOLE)
    }

    /// One worker's part of the batch at `position` (data-parallel training), and the
    /// position after the whole batch. The shards of all workers, in worker order, are
    /// exactly the batch `batch_at` gives (same examples, flips and crops).
    pub fn shard_at(
        &self,
        position: StreamPosition,
        shard: Shard,
    ) -> Result<(S::Batch, StreamPosition), DataError> {
        let b = self.config.batch_size;
        let position = if position.offset + b > self.source.len() {
            StreamPosition {
                epoch: position.epoch + 1,
                offset: 0,
            }
        } else {
            position
        };
        let order = self.order(position.epoch);
        let indices = &order[position.offset..position.offset + b];
        let mut rng = ChaCha8Rng::seed_from_u64(mix(
            self.config.seed,
            position.epoch,
            position.offset as u64,
        ));
        let flips: Vec<bool> = (0..b)
            .map(|_| self.config.flip && rng.random::<bool>())
            .collect();
        let crops: Vec<u64> = (0..b).map(|_| rng.random()).collect();
        let part = shard.range(b);
        let batch = self.source.fetch(
            &indices[part.clone()],
            Some(&crops[part.clone()]),
            &flips[part],
        )?;
        Ok((
            batch,
            StreamPosition {
                epoch: position.epoch,
                offset: position.offset + b,
            },
        ))
    }

    /// Examples in one epoch.
    pub fn epoch_len(&self) -> usize {
        self.source.len()
    }
}

/// SplitMix64-style mixing of a seed with two counters.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every example of a split once, in order, in batches of at most `batch_size` (for
/// evaluation: no shuffling, no flips, centre crops).
pub fn eval_batches<S: Fetch>(
    source: &S,
    batch_size: usize,
) -> impl Iterator<Item = Result<S::Batch, DataError>> + '_ {
    let n = source.len();
    (0..n).step_by(batch_size.max(1)).map(move |start| {
        let indices: Vec<usize> = (start..(start + batch_size).min(n)).collect();
        source.fetch(&indices, None, &[])
    })
}

/// A batch on a device: integer-valued pixels (dequantisation belongs to the model).
#[derive(Debug, Clone)]
pub struct PixelBatch<B: Backend> {
    /// Pixel levels as floats, `[batch, channels, height, width]`.
    pub pixels: Tensor<B, 4>,
    /// Class labels `[batch]`, when the data set has them.
    pub labels: Option<Tensor<B, 1, Int>>,
}

impl ImageArray {
    /// The pixels as a float tensor `[n, c, h, w]` of levels `0..levels`.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4> {
        let [c, h, w] = self.shape;
        let values: Vec<f32> = self.pixels.iter().map(|&p| p as f32).collect();
        Tensor::from_data(TensorData::new(values, [self.len(), c, h, w]), device)
    }

    /// Pixels and labels on `device`.
    pub fn to_batch<B: Backend>(&self, device: &B::Device) -> PixelBatch<B> {
        PixelBatch {
            pixels: self.to_tensor(device),
            labels: self.labels.as_ref().map(|labels| {
                let values: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
                Tensor::from_data(TensorData::new(values, [labels.len()]), device)
            }),
        }
    }
}

/// Burn's batcher interface over single images `(pixels [c, h, w], label)`.
#[derive(Debug, Clone, Copy)]
pub struct PixelBatcher {
    /// `[channels, height, width]` of every item.
    pub shape: [usize; 3],
    /// Grey levels.
    pub levels: u32,
}

impl<B: Backend> Batcher<B, (Vec<u8>, Option<u16>), PixelBatch<B>> for PixelBatcher {
    fn batch(&self, items: Vec<(Vec<u8>, Option<u16>)>, device: &B::Device) -> PixelBatch<B> {
        let labelled = items.iter().all(|(_, l)| l.is_some());
        let array = ImageArray {
            shape: self.shape,
            levels: self.levels,
            labels: labelled.then(|| items.iter().filter_map(|(_, l)| *l).collect()),
            pixels: items.into_iter().flat_map(|(p, _)| p).collect(),
        };
        array.to_batch(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn source(n: usize) -> ImageSource {
        ImageSource::Memory(Arc::new(ImageArray {
            shape: [1, 1, 2],
            levels: 256,
            pixels: (0..2 * n).map(|k| k as u8).collect(),
            labels: Some((0..n as u16).collect()),
        }))
    }

    fn stream(seed: u64) -> TrainStream<ImageSource> {
        TrainStream::new(
            source(10),
            StreamConfig {
                batch_size: 3,
                seed,
                flip: true,
            },
        )
        .expect("valid")
    }

    #[test]
    fn epochs_are_seeded_permutations() {
        let s = stream(1);
        let mut order = s.order(0);
        assert_eq!(order, stream(1).order(0), "same seed, same order");
        assert_ne!(order, s.order(1), "each epoch reshuffles");
        assert_ne!(order, stream(2).order(0), "the seed matters");
        order.sort_unstable();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn shards_in_worker_order_make_up_the_whole_batch() {
        let s = TrainStream::new(
            source(10),
            StreamConfig {
                batch_size: 4,
                seed: 5,
                flip: true,
            },
        )
        .expect("valid");
        let mut position = StreamPosition::default();
        for _ in 0..4 {
            let (whole, next) = s.batch_at(position).expect("batch");
            let mut pixels = Vec::new();
            let mut labels = Vec::new();
            for index in 0..2 {
                let (part, after) = s
                    .shard_at(position, Shard { index, count: 2 })
                    .expect("shard");
                assert_eq!(after, next, "every shard advances by the whole batch");
                assert_eq!(part.len(), 2);
                pixels.extend(part.pixels);
                labels.extend(part.labels.expect("labels"));
            }
            assert_eq!(pixels, whole.pixels, "same examples, flips and crops");
            assert_eq!(Some(labels), whole.labels);
            position = next;
        }
    }

    #[test]
    fn resuming_from_a_position_gives_the_same_batches() {
        let s = stream(3);
        let mut position = StreamPosition::default();
        let mut all = Vec::new();
        for _ in 0..8 {
            let (batch, next) = s.batch_at(position).expect("in memory");
            all.push((position, batch));
            position = next;
        }
        // 3 batches of 3 per epoch of 10: the fourth batch starts epoch 1.
        assert_eq!(
            all[3].0,
            StreamPosition {
                epoch: 0,
                offset: 9
            }
        );
        let (_, after) = s.batch_at(all[3].0).expect("in memory");
        assert_eq!(
            after,
            StreamPosition {
                epoch: 1,
                offset: 3
            }
        );
        for (position, batch) in &all {
            let (again, _) = stream(3).batch_at(*position).expect("in memory");
            assert_eq!(&again, batch);
        }
    }

    #[test]
    fn flips_are_seeded_and_mirror_whole_images() {
        let s = stream(4);
        let mut flipped = 0;
        let mut position = StreamPosition::default();
        for _ in 0..30 {
            let (batch, next) = s.batch_at(position).expect("in memory");
            for k in 0..3 {
                let label = batch.label(k).expect("labelled") as u8;
                let image = batch.image(k);
                if image == [2 * label + 1, 2 * label] {
                    flipped += 1;
                } else {
                    assert_eq!(image, [2 * label, 2 * label + 1]);
                }
            }
            position = next;
        }
        assert!((20..70).contains(&flipped), "{flipped} of 90 flipped");
    }

    #[test]
    fn evaluation_covers_every_example_once_in_order() {
        let src = source(7);
        let batches: Vec<ImageArray> = eval_batches(&src, 3)
            .collect::<Result<_, _>>()
            .expect("in memory");
        assert_eq!(
            batches.iter().map(ImageArray::len).collect::<Vec<_>>(),
            vec![3, 3, 1]
        );
        assert_eq!(batches[2].labels, Some(vec![6]));
    }

    #[test]
    fn batcher_builds_integer_pixel_tensors() {
        let batcher = PixelBatcher {
            shape: [1, 1, 2],
            levels: 17,
        };
        let batch: PixelBatch<Flex> = batcher.batch(
            vec![(vec![1, 16], Some(3)), (vec![0, 5], Some(4))],
            &Default::default(),
        );
        assert_eq!(batch.pixels.dims(), [2, 1, 1, 2]);
        assert_eq!(
            batch.pixels.into_data().to_vec::<f32>().expect("f32"),
            vec![1.0, 16.0, 0.0, 5.0]
        );
        let labels = batch.labels.expect("labelled").into_data().convert::<i64>();
        assert_eq!(labels.to_vec::<i64>().expect("ints"), vec![3, 4]);
    }

    #[test]
    fn oversized_batches_are_rejected() {
        let err = TrainStream::new(
            source(2),
            StreamConfig {
                batch_size: 3,
                seed: 0,
                flip: false,
            },
        )
        .expect_err("3 > 2")
        .to_string();
        assert!(err.contains("batch size 3"), "{err}");
    }
}
