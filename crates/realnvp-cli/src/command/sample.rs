//! `realnvp sample`: a grid of samples, at one temperature or one row per temperature.

use std::path::PathBuf;

use anyhow::bail;
use realnvp_core::Flow;
use realnvp_train::kind::model_of_kind;
use realnvp_train::{with_kind, write_samples, FlowKind, KindVisitor, RunDir, TrainError};

use crate::backend::{self, Device, Inference};
use crate::latent;

// The flags of `realnvp sample`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Standard deviation of the prior (0 < T <= 1 sharpens samples).
    #[arg(long, default_value_t = 1.0, conflicts_with = "temperatures")]
    temperature: f64,
    /// A grid instead: one row per temperature, the same noise in every row, e.g.
    /// `0,0.5,0.7,1` (image models).
    #[arg(long, value_delimiter = ',')]
    temperatures: Vec<f64>,
    /// Draw from this class's prior (class-conditional models); without it a
    /// conditional model's samples cycle through the classes.
    #[arg(long)]
    class: Option<usize>,
    /// Seed of the draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

impl Args {
    /// Draws the grid (or, for a 2-D vector model, the scatter density) into `--out`.
    pub fn run(self) -> anyhow::Result<()> {
        if !self.temperatures.is_empty() || self.class.is_some() {
            let temperatures = match self.temperatures.is_empty() {
                true => vec![self.temperature],
                false => self.temperatures.clone(),
            };
            let run = RunDir::at(&self.run);
            return latent::sample_grid(
                &run,
                self.n,
                &temperatures,
                self.class,
                self.seed,
                &self.out,
            );
        }
        let (n, temperature) = (self.n, self.temperature);
        if temperature.is_nan() || temperature < 0.0 || n == 0 {
            bail!("--n must be positive and --temperature >= 0 (got {n}, {temperature})");
        }
        let device = backend::device();
        let (model, flow_config) = RunDir::at(&self.run).load_model::<Inference>(&device)?;
        eprintln!("backend: {}", backend::NAME);
        let draw = Draw {
            args: &self,
            model,
            device,
        };
        match with_kind(flow_config, draw) {
            Err(e @ TrainError::TooManySamples { .. }) => Err(anyhow::Error::new(e).context("--n")),
            result => Ok(result?),
        }?;
        println!("{}", self.out.display());
        Ok(())
    }
}

/// The sample picture of a loaded model, once its kind is known.
struct Draw<'a> {
    args: &'a Args,
    model: Flow<Inference>,
    device: Device,
}

impl KindVisitor for Draw<'_> {
    type Output = Result<(), TrainError>;

    fn visit<K: FlowKind>(self, _settings: K::Settings) -> Self::Output {
        let model = model_of_kind::<K, Inference>(self.model)?;
        let Args {
            n,
            temperature,
            seed,
            out,
            ..
        } = self.args;
        write_samples::<K, Inference>(&model, out, *n, *temperature, *seed, &self.device)
    }
}
