//! TensorBoard event files: scalars and PNG images of a run, written as training goes,
//! for `tensorboard --logdir runs` and `wandb sync --sync-tensorboard`.
//!
//! Written by hand on `prost` (the protobuf messages, declared here with its derive
//! macros, no `protoc`) and `crc32c` (the record checksums): the crates that write the
//! format are unmaintained (tensorboard-rs: protobuf 2 and image 0.23), scalar-only
//! (syntaxdot-summary) or heavy (tfrecord); the format itself is small and stable.
//!
//! A file is a sequence of TFRecords, each `length: u64 LE`, `masked crc32c(length):
//! u32 LE`, `data`, `masked crc32c(data): u32 LE`; each record's data is one `Event`
//! message of TensorFlow's `event.proto`. The first event names the file version.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::error::TrainError;

/// `tensorflow.Event`: one record of an event file.
#[derive(Clone, PartialEq, Message)]
struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    what: Option<What>,
}

/// What an event carries (`Event.what`), of the kinds written here.
#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    /// `"brain.Event:2"`, in a file's first event.
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.Summary`: tagged values at one step.
#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(oneof = "Payload", tags = "2, 4")]
    payload: Option<Payload>,
}

/// `Summary.Value.value`, of the kinds written here.
#[derive(Clone, PartialEq, prost::Oneof)]
enum Payload {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(SummaryImage),
}

/// `tensorflow.Summary.Image`: an encoded (PNG) image.
#[derive(Clone, PartialEq, Message)]
struct SummaryImage {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    /// 1 grey, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

/// `tensorflow.SessionLog`; a `START` at step `s` tells readers to drop the events of
/// steps `s` and later written before it (a resumed run's repeated steps).
#[derive(Clone, PartialEq, Message)]
struct SessionLog {
    /// `SessionLog.SessionStatus`: 1 is `START`.
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `SessionLog.SessionStatus.START`.
const SESSION_START: i32 = 1;

/// TFRecord's checksum: CRC-32C, rotated right by 15 bits, plus a constant.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord holding `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The largest `<seconds>` among the event files already in `dir`.
fn latest_seconds(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("events.out.tfevents.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .max()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An event file being written: one per training session of a run, named as TensorBoard
/// expects (`events.out.tfevents.<seconds>.<host>.<pid>.realnvp`); every write is flushed,
/// so that a killed run keeps all it logged. Readers take the files of a folder in name
/// order, so a session's `<seconds>` is later than every earlier file's, even within one
/// second.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Starts a new event file in `dir` (created if missing). `resumed_at` is the step a
    /// resumed run continues from: readers then drop what an earlier session logged after
    /// it.
    pub fn create(dir: &Path, resumed_at: Option<u64>) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty() && !h.contains(['/', '\\']))
            .unwrap_or_else(|| "localhost".into());
        let seconds = (now() as u64).max(latest_seconds(dir).map_or(0, |s| s + 1));
        let name = format!(
            "events.out.tfevents.{seconds}.{host}.{}.realnvp",
            std::process::id()
        );
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut writer = Self { file, path };
        writer.write(0, What::FileVersion("brain.Event:2".into()))?;
        if let Some(step) = resumed_at {
            // Drops what earlier sessions logged after the checkpoint this one resumes.
            writer.write(
                step + 1,
                What::SessionLog(SessionLog {
                    status: SESSION_START,
                }),
            )?;
        }
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs scalars `(tag, value)` at `step`, in one event.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<(), TrainError> {
        let value = values
            .iter()
            .map(|&(tag, v)| SummaryValue {
                tag: tag.into(),
                payload: Some(Payload::SimpleValue(v as f32)),
            })
            .collect();
        self.write(step, What::Summary(Summary { value }))
    }

    /// Logs a PNG image (`png`: the encoded file, `width` x `height` pixels with
    /// `channels` channels) under `tag` at `step`.
    pub fn image(
        &mut self,
        step: u64,
        tag: &str,
        png: Vec<u8>,
        (width, height, channels): (u32, u32, u8),
    ) -> Result<(), TrainError> {
        let image = SummaryImage {
            height: height as i32,
            width: width as i32,
            colorspace: i32::from(channels),
            encoded_image_string: png,
        };
        let value = vec![SummaryValue {
            tag: tag.into(),
            payload: Some(Payload::Image(image)),
        }];
        self.write(step, What::Summary(Summary { value }))
    }

    /// Appends one event and flushes it to the file.
    fn write(&mut self, step: u64, what: What) -> Result<(), TrainError> {
        let event = Event {
            wall_time: now(),
            step: step as i64,
            what: Some(what),
        };
        self.file
            .write_all(&record(&event.encode_to_vec()))
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the records of an event file back, checking both checksums of each.
    fn read_records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (length, tail) = rest.split_at(8);
            let n = u64::from_le_bytes(length.try_into().unwrap()) as usize;
            assert_eq!(masked_crc(length).to_le_bytes(), tail[..4]);
            let data = &tail[4..4 + n];
            assert_eq!(masked_crc(data).to_le_bytes(), tail[4 + n..8 + n]);
            records.push(data.to_vec());
            rest = &tail[8 + n..];
        }
        records
    }

    #[test]
    fn the_masked_checksum_is_tfrecords() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720's check value); masked as
        // TFRecord does: rotate right by 15, add 0xa282ead8.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let expected = 0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8);
        assert_eq!(masked_crc(b"123456789"), expected);
        assert_ne!(masked_crc(b"123456780"), expected);
    }

    #[test]
    fn a_later_session_file_sorts_after_the_earlier_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let far = now() as u64 + 1000;
        std::fs::write(
            dir.path().join(format!("events.out.tfevents.{far}.h.1")),
            b"",
        )
        .expect("writable");
        let writer = EventWriter::create(dir.path(), None).expect("writable");
        let name = writer
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(
            name.starts_with(&format!("events.out.tfevents.{}.", far + 1)),
            "{name}"
        );
    }

    #[test]
    fn events_are_framed_records_read_back_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut writer = EventWriter::create(dir.path(), Some(7)).expect("writable");
        writer
            .scalars(8, &[("bits_per_dim/train", 3.5), ("learning_rate", 1e-3)])
            .expect("writable");
        writer
            .image(8, "samples", vec![1, 2, 3], (4, 5, 3))
            .expect("writable");
        let name = writer
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let records = read_records(&std::fs::read(writer.path()).expect("readable"));
        let events: Vec<Event> = records
            .iter()
            .map(|r| Event::decode(r.as_slice()).expect("an Event"))
            .collect();
        assert_eq!(events.len(), 4);
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        assert_eq!(events[1].step, 8);
        assert_eq!(
            events[1].what,
            Some(What::SessionLog(SessionLog {
                status: SESSION_START
            }))
        );
        let Some(What::Summary(summary)) = &events[2].what else {
            panic!("a summary: {:?}", events[2]);
        };
        assert_eq!(events[2].step, 8);
        assert_eq!(summary.value[0].tag, "bits_per_dim/train");
        assert_eq!(summary.value[0].payload, Some(Payload::SimpleValue(3.5)));
        assert_eq!(summary.value[1].payload, Some(Payload::SimpleValue(1e-3)));
        let Some(What::Summary(summary)) = &events[3].what else {
            panic!("a summary: {:?}", events[3]);
        };
        let Some(Payload::Image(image)) = &summary.value[0].payload else {
            panic!("an image: {summary:?}");
        };
        assert_eq!((image.width, image.height, image.colorspace), (4, 5, 3));
        assert_eq!(image.encoded_image_string, vec![1, 2, 3]);
    }
}
