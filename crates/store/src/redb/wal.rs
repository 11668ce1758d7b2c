//! The redb store's write-ahead journal: append-only segment files of checksummed frames.
//!
//! A frame is one group commit: every event of a batch of appends, written with one `write`
//! and made durable with one `fdatasync`. A file keeps only whole frames that were synced, a
//! torn tail, or (after a crash in the middle of a write) nothing of the last frame, so a frame
//! is replayed whole or not at all and a multi-event append never half lands.
//!
//! Frame layout (little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `BJF1` |
//! | 4 | body length |
//! | 4 | CRC-32 of the body |
//! | n | body: records of execution id (16) and an event ([`push_event`]) |
//!
//! Segments are named `journal-<number>.wal` with the number zero-padded, so they sort in the
//! order they were written. A segment is deleted once its events are folded into redb.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: [u8; 4] = *b"BJF1";
const HEADER: usize = 12;
/// An event's sequence (8 bytes) and length (4) before its JSON.
const EVENT_HEADER: usize = 8 + 4;
const PREFIX: &str = "journal-";
const SUFFIX: &str = ".wal";

/// One journal event as the log keeps it: execution id (as a number), sequence, JSON.
pub(crate) type Record = (u128, u64, Vec<u8>);

/// The segment being written.
#[derive(Debug)]
pub(crate) struct Segment {
    #[cfg(test)]
    path: PathBuf,
    file: File,
    frame: Vec<u8>,
}

impl Segment {
    /// Creates segment `number` in `dir`, durable in the directory before any frame is
    /// acknowledged from it.
    pub(crate) fn create(dir: &Path, number: u64) -> io::Result<Self> {
        let path = segment_path(dir, number);
        let file = File::options().write(true).create_new(true).open(&path)?;
        sync_dir(dir)?;
        Ok(Self {
            #[cfg(test)]
            path,
            file,
            frame: Vec::new(),
        })
    }

    /// Starts a frame, dropping whatever an unfinished one held.
    pub(crate) fn begin_frame(&mut self) {
        self.frame.clear();
        self.frame.extend_from_slice(&[0; HEADER]);
    }

    /// Adds one event of execution `id` to the frame being built.
    pub(crate) fn push(&mut self, id: u128, sequence: u64, json: &[u8]) {
        self.frame.reserve(16 + EVENT_HEADER + json.len());
        self.frame.extend_from_slice(&id.to_le_bytes());
        push_event(&mut self.frame, sequence, json);
    }

    /// Writes the frame and waits until it is on disk.
    pub(crate) fn write_frame(&mut self) -> io::Result<()> {
        let body = &self.frame[HEADER..];
        let length = u32::try_from(body.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a journal frame is larger than 4 GiB"))?;
        let checksum = crc32fast::hash(body);
        self.frame[0..4].copy_from_slice(&MAGIC);
        self.frame[4..8].copy_from_slice(&length.to_le_bytes());
        self.frame[8..12].copy_from_slice(&checksum.to_le_bytes());
        self.file.write_all(&self.frame)?;
        self.file.sync_data()
    }

    /// The segment's file.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Adds an event to `bytes`: its sequence (8 bytes), length (4) and JSON, little endian. Log
/// frames and redb's journal chunks both hold events so.
pub(crate) fn push_event(bytes: &mut Vec<u8>, sequence: u64, json: &[u8]) {
    // Events are bounded far below 4 GiB by the engine's output limit and the frame length.
    let len = u32::try_from(json.len()).expect("a journal event is smaller than 4 GiB");
    bytes.extend_from_slice(&sequence.to_le_bytes());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(json);
}

/// The event [`push_event`] wrote at the start of `bytes` (sequence and JSON) and the bytes
/// after it, or `None` when they are cut short.
pub(crate) fn next_event(bytes: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let head = bytes.get(..EVENT_HEADER)?;
    let sequence = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    let end = usize::try_from(u32_at(head, 8)).ok()?.checked_add(EVENT_HEADER)?;
    let json = bytes.get(EVENT_HEADER..end)?;
    Some((sequence, json, &bytes[end..]))
}

/// The segment file `number` in `dir`.
pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{number:020}{SUFFIX}"))
}

/// The segments in `dir`, oldest first.
pub(crate) fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|name| name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.parse().ok())
        else {
            continue;
        };
        found.push((number, entry.path()));
    }
    found.sort_unstable_by_key(|(number, _)| *number);
    Ok(found)
}

/// What a segment held: its whole frames' events in order, and why reading stopped early when
/// it did (a torn or damaged frame; nothing after it is trusted).
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub(crate) records: Vec<Record>,
    pub(crate) stopped: Option<String>,
}

/// Reads every whole, intact frame of the segment at `path`.
pub(crate) fn replay(path: &Path) -> io::Result<Replayed> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(replay_bytes(&bytes))
}

fn replay_bytes(bytes: &[u8]) -> Replayed {
    let mut replayed = Replayed::default();
    let mut at = 0;
    while at < bytes.len() {
        match frame_at(bytes, at) {
            Ok((records, next)) => {
                replayed.records.extend(records);
                at = next;
            }
            Err(reason) => {
                replayed.stopped = Some(format!("the frame at byte {at} {reason}"));
                break;
            }
        }
    }
    replayed
}

/// The records of the frame starting at `at` and where the next one starts.
fn frame_at(bytes: &[u8], at: usize) -> Result<(Vec<Record>, usize), &'static str> {
    let header = bytes.get(at..at + HEADER).ok_or("is cut short in its header")?;
    if header[0..4] != MAGIC {
        return Err("does not start with the frame magic");
    }
    let length = usize::try_from(u32_at(header, 4)).map_err(|_| "is longer than memory")?;
    let checksum = u32_at(header, 8);
    let body = bytes.get(at + HEADER..at + HEADER + length).ok_or("is cut short in its body")?;
    if crc32fast::hash(body) != checksum {
        return Err("fails its checksum");
    }
    let mut records = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let id = rest.get(..16).ok_or("holds a cut record")?;
        let id = u128::from_le_bytes(id.try_into().expect("16 bytes"));
        let (sequence, json, after) = next_event(&rest[16..]).ok_or("holds a cut record")?;
        records.push((id, sequence, json.to_vec()));
        rest = after;
    }
    Ok((records, at + HEADER + length))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Makes creations and removals of files in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(frames: &[&[Record]]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::TempDir::new().unwrap();
        let mut segment = Segment::create(dir.path(), 7).unwrap();
        for frame in frames {
            segment.begin_frame();
            for (id, sequence, json) in *frame {
                segment.push(*id, *sequence, json);
            }
            segment.write_frame().unwrap();
        }
        let path = segment.path().to_path_buf();
        (dir, path)
    }

    fn record(id: u128, sequence: u64) -> Record {
        (id, sequence, format!("{{\"n\":{sequence}}}").into_bytes())
    }

    #[test]
    fn frames_read_back_in_order() {
        let first = [record(1, 1), record(2, 1)];
        let second = [record(1, 2)];
        let (dir, path) = written(&[&first, &second]);
        let replayed = replay(&path).unwrap();
        assert_eq!(replayed.records, vec![record(1, 1), record(2, 1), record(1, 2)]);
        assert_eq!(replayed.stopped, None);
        assert_eq!(segments(dir.path()).unwrap(), vec![(7, path)]);
    }

    /// A crash in the middle of a write leaves any prefix of the last frame: none of it is
    /// replayed, and every earlier frame is.
    #[test]
    fn a_torn_last_frame_is_dropped_whole_at_every_cut() {
        let (_dir, path) = written(&[&[record(1, 1)], &[record(1, 2), record(1, 3)]]);
        let bytes = std::fs::read(&path).unwrap();
        let first_frame = HEADER + 16 + EVENT_HEADER + record(1, 1).2.len();
        for cut in first_frame..bytes.len() {
            let replayed = replay_bytes(&bytes[..cut]);
            assert_eq!(replayed.records, vec![record(1, 1)], "cut at {cut}");
            assert_eq!(replayed.stopped.is_some(), cut > first_frame, "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_stops_the_replay_at_its_frame() {
        let (_dir, path) = written(&[&[record(1, 1)], &[record(1, 2)], &[record(1, 3)]]);
        let mut bytes = std::fs::read(&path).unwrap();
        let frame = HEADER + 16 + EVENT_HEADER + record(1, 1).2.len();
        bytes[frame + HEADER + 20] ^= 0x10;
        let replayed = replay_bytes(&bytes);
        assert_eq!(replayed.records, vec![record(1, 1)]);
        assert_eq!(replayed.stopped.unwrap(), format!("the frame at byte {frame} fails its checksum"));
    }

    #[test]
    fn other_files_are_not_segments_and_numbers_sort_as_numbers() {
        let dir = tempfile::TempDir::new().unwrap();
        for number in [10, 9, 100] {
            Segment::create(dir.path(), number).unwrap();
        }
        std::fs::write(dir.path().join("baton.redb"), b"").unwrap();
        std::fs::write(dir.path().join("journal-x.wal"), b"").unwrap();
        let numbers: Vec<u64> = segments(dir.path()).unwrap().into_iter().map(|(number, _)| number).collect();
        assert_eq!(numbers, vec![9, 10, 100]);
        assert!(Segment::create(dir.path(), 9).is_err(), "a segment is never reused");
    }
}
