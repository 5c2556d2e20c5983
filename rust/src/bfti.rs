//! The `.bfti` file (docs/formats.md, "The index (.bfti)"): one versioned file, opened by mmap.
//!
//! ```text
//! 0   8  magic  b"\x89BFTI\r\n\x1a" (binary, and broken by text-mode copies)
//! 8   4  u32 format version
//! 12  4  u32 reserved (0)
//! 16  8  u64 length of the JSON header
//! 24  8  u64 xxh3-64 checksum of every byte from offset 32 to the end
//! 32  .  JSON header, padded with spaces to a multiple of 8
//! .   .  per label, little-endian: bucket_count u64[B], bucket_bf_realised u64[B],
//!        bucket_sums f64[B*4], token_occ u64[B*V], token_bf u64[B*V],
//!        token_member u64[B*V], token_log_ratio f64[B*V]
//! ```
//! Written to a temporary file beside the target, synced, then renamed over it: a crash or a
//! full disk leaves the previous index intact.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::Mmap;
use xxhash_rust::xxh3::Xxh3;

use crate::index::{Header, IndexData, LabelStats, BUCKET_SUMS, FORMAT, VERSION};
use crate::query::{IndexQuery, LabelView};
use crate::Error;

#[cfg(target_endian = "big")]
compile_error!("the .bfti format is read in place as little-endian arrays");

pub const MAGIC: [u8; 8] = *b"\x89BFTI\r\n\x1a";
const PREFIX: usize = 32;

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, &e)
}

fn label_bytes(buckets: usize, vocab: usize) -> usize {
    8 * (2 * buckets + BUCKET_SUMS.len() * buckets + 4 * buckets * vocab)
}

/// The temporary sibling a write fills first: `.NAME.tmp-PID-RANDOM`, the scheme of the Python
/// package's `files.temp_path`, so its sweep of dead writers' leftovers finds these too, and two
/// threads or processes never share one.
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seed = format!("{}:{nanos}:{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let random = xxhash_rust::xxh3::xxh3_64(seed.as_bytes()) as u32;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.join(format!(".{name}.tmp-{}-{random:08x}", std::process::id()))
}

/// Write `index` to `path` atomically (temporary file, fsync, rename).
pub fn write(index: &IndexData, path: &Path) -> Result<(), Error> {
    write_via(index, path, &temp_path(path))
}

fn write_via(index: &IndexData, path: &Path, tmp: &Path) -> Result<(), Error> {
    let header = serde_json::to_vec(&index.header).map_err(|e| Error::Corrupt(e.to_string()))?;
    let padded = header.len().div_ceil(8) * 8;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let result = (|| -> Result<(), Error> {
        let file = File::create(tmp).map_err(|e| io_err(tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Xxh3::new();
        let mut put = |w: &mut BufWriter<File>, bytes: &[u8]| -> Result<(), Error> {
            hasher.update(bytes);
            w.write_all(bytes).map_err(|e| io_err(tmp, e))
        };
        w.write_all(&MAGIC).map_err(|e| io_err(tmp, e))?;
        w.write_all(&VERSION.to_le_bytes()).map_err(|e| io_err(tmp, e))?;
        w.write_all(&0u32.to_le_bytes()).map_err(|e| io_err(tmp, e))?;
        w.write_all(&(padded as u64).to_le_bytes()).map_err(|e| io_err(tmp, e))?;
        w.write_all(&0u64.to_le_bytes()).map_err(|e| io_err(tmp, e))?; // checksum, set below
        put(&mut w, &header)?;
        put(&mut w, &vec![b' '; padded - header.len()])?;
        for s in &index.stats {
            put(&mut w, bytemuck::cast_slice(&s.bucket_count))?;
            put(&mut w, bytemuck::cast_slice(&s.bucket_bf_realised))?;
            put(&mut w, bytemuck::cast_slice(&s.bucket_sums))?;
            put(&mut w, bytemuck::cast_slice(&s.token_occ))?;
            put(&mut w, bytemuck::cast_slice(&s.token_bf))?;
            put(&mut w, bytemuck::cast_slice(&s.token_member))?;
            put(&mut w, bytemuck::cast_slice(&s.token_log_ratio))?;
        }
        let mut file = w.into_inner().map_err(|e| io_err(tmp, e.into_error()))?;
        file.seek(SeekFrom::Start(24)).map_err(|e| io_err(tmp, e))?;
        file.write_all(&hasher.digest().to_le_bytes()).map_err(|e| io_err(tmp, e))?;
        file.sync_all().map_err(|e| io_err(tmp, e))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    fs::rename(tmp, path).map_err(|e| {
        let _ = fs::remove_file(tmp);
        io_err(path, e)
    })?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all(); // make the rename durable
    }
    Ok(())
}

/// An index opened by mmap: the header parsed, the arrays read in place.
pub struct MappedIndex {
    map: Mmap,
    pub header: Header,
    arrays_at: usize,
}

impl MappedIndex {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        // A directory opens on Unix, and mapping it fails with ENODEV ("no such device");
        // reading it fails with EISDIR, which names the problem.
        file.read(&mut [0u8; 8]).map_err(|e| io_err(path, e))?;
        // SAFETY: the map is read-only; a concurrent writer replaces the file by rename and
        // never rewrites it in place, so the mapped bytes do not change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        Self::from_map(map, path)
    }

    /// An index from bytes in memory (tests, fuzzing), copied into an anonymous page-aligned map
    /// so the arrays are read in place exactly as from a file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            return Err(Error::NotAnIndex("(bytes)".into()));
        }
        let anonymous = Path::new("(anonymous map)");
        let mut anon = memmap2::MmapMut::map_anon(bytes.len()).map_err(|e| io_err(anonymous, e))?;
        anon.copy_from_slice(bytes);
        let map = anon.make_read_only().map_err(|e| io_err(anonymous, e))?;
        Self::from_map(map, Path::new("(bytes)"))
    }

    fn from_map(map: Mmap, path: &Path) -> Result<Self, Error> {
        let bytes = &map[..];
        if bytes.len() < 8 || bytes[..8] != MAGIC {
            return Err(Error::NotAnIndex(path.display().to_string()));
        }
        if bytes.len() < PREFIX {
            return Err(Error::Corrupt("truncated inside the fixed header".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version > VERSION {
            return Err(Error::NewerVersion { found: version, supported: VERSION });
        }
        if version == 0 {
            return Err(Error::Corrupt("version 0".into()));
        }
        let header_len = u64_at(16);
        if header_len % 8 != 0 || header_len > (bytes.len() - PREFIX) as u64 {
            return Err(Error::Corrupt(format!(
                "header length {header_len} does not fit a file of {} bytes (truncated?)",
                bytes.len()
            )));
        }
        if xxhash_rust::xxh3::xxh3_64(&bytes[PREFIX..]) != u64_at(24) {
            return Err(Error::ChecksumMismatch);
        }
        let arrays_at = PREFIX + header_len as usize;
        let header: Header = serde_json::from_slice(bytes[PREFIX..arrays_at].trim_ascii_end())
            .map_err(|e| Error::Corrupt(format!("header: {e}")))?;
        if header.format != FORMAT || header.version != version {
            return Err(Error::Corrupt("header does not match the file's format or version".into()));
        }
        // checked: a damaged header can name sizes whose product overflows
        let (b, v) = (header.bucket_edges.len(), header.vocab_size);
        let want = b
            .checked_mul(v)
            .and_then(|bv| bv.checked_mul(4))
            .and_then(|x| x.checked_add((2 + BUCKET_SUMS.len()) * b))
            .and_then(|x| x.checked_mul(8))
            .and_then(|per| per.checked_mul(header.labels.len()))
            .and_then(|x| x.checked_add(arrays_at))
            .ok_or_else(|| Error::Corrupt("header sizes overflow".into()))?;
        if want != bytes.len() {
            return Err(Error::Corrupt(format!(
                "{} bytes, the header describes {want}",
                bytes.len()
            )));
        }
        crate::Buckets::new(header.bucket_edges.clone())?;
        Ok(MappedIndex { map, header, arrays_at })
    }

    fn array<T: bytemuck::Pod>(&self, label: usize, offset: usize, len: usize) -> &[T] {
        let base = self.arrays_at
            + label * label_bytes(self.header.bucket_edges.len(), self.header.vocab_size)
            + offset;
        bytemuck::cast_slice(&self.map[base..base + len * 8])
    }

    /// An owned copy (for merging).
    pub fn to_data(&self) -> IndexData {
        let stats = (0..self.header.labels.len())
            .map(|i| {
                let l = self.label_at(i);
                LabelStats {
                    bucket_count: l.bucket_count.to_vec(),
                    bucket_bf_realised: l.bucket_bf_realised.to_vec(),
                    bucket_sums: l.bucket_sums.to_vec(),
                    token_occ: l.token_occ.to_vec(),
                    token_bf: l.token_bf.to_vec(),
                    token_member: l.token_member.to_vec(),
                    token_log_ratio: l.token_log_ratio.to_vec(),
                }
            })
            .collect();
        IndexData { header: self.header.clone(), stats }
    }
}

impl IndexQuery for MappedIndex {
    fn header(&self) -> &Header {
        &self.header
    }

    /// Borrowed views of one label's arrays, read in place from the map.
    fn label_at(&self, i: usize) -> LabelView<'_> {
        let (b, v) = (self.header.bucket_edges.len(), self.header.vocab_size);
        let mut o = 0;
        let mut next = |len: usize| {
            let at = o;
            o += len * 8;
            (at, len)
        };
        let (c, bf, sums, occ, tbf, mem, lr) =
            (next(b), next(b), next(b * 4), next(b * v), next(b * v), next(b * v), next(b * v));
        LabelView {
            bucket_count: self.array(i, c.0, c.1),
            bucket_bf_realised: self.array(i, bf.0, bf.1),
            bucket_sums: self.array(i, sums.0, sums.1),
            token_occ: self.array(i, occ.0, occ.1),
            token_bf: self.array(i, tbf.0, tbf.1),
            token_member: self.array(i, mem.0, mem.1),
            token_log_ratio: self.array(i, lr.0, lr.1),
        }
    }
}

/// Merge index files into one, written atomically.
pub fn merge_files(inputs: &[PathBuf], out: &Path) -> Result<IndexData, Error> {
    let mut acc: Option<IndexData> = None;
    for p in inputs {
        let data = MappedIndex::open(p)?.to_data();
        acc = Some(match acc {
            None => data,
            Some(a) => a.merge(&data).map_err(|e| match e {
                Error::ShapeMismatch(why) => Error::ShapeMismatch(format!("{}: {why}", p.display())),
                other => other,
            })?,
        });
    }
    let merged = acc.ok_or(Error::NothingToMerge)?;
    write(&merged, out)?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::{assert_close, builder, random};

    fn sample() -> IndexData {
        let o = random(2000, 3, 30, 9);
        let mut b = builder(30, 3);
        b.add_batch(&o.batch()).unwrap();
        b.finish()
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bfti");
        let idx = sample();
        write(&idx, &path).unwrap();
        let m = MappedIndex::open(&path).unwrap();
        assert_close(&m.to_data(), &idx);
        // the mapped index answers every query exactly as the one in memory
        for label in &idx.header.labels {
            assert_eq!(m.bucket_table(label).unwrap(), idx.bucket_table(label).unwrap());
            assert_eq!(m.top_tokens(label, 8, 5).unwrap(), idx.top_tokens(label, 8, 5).unwrap());
            assert_eq!(m.token_histogram(label, 7).unwrap(), idx.token_histogram(label, 7).unwrap());
        }
        // nothing left behind but the index
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// The OS's own error for the same path, to compare kinds and numbers with.
    fn io_fields(e: &Error) -> (std::io::ErrorKind, Option<i32>) {
        match e {
            Error::Io { kind, errno, .. } => (*kind, *errno),
            other => panic!("not an I/O error: {other:?}"),
        }
    }

    #[test]
    fn file_system_errors_keep_their_kind_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.bfti");
        let err = MappedIndex::open(&missing).err().expect("must fail");
        assert_eq!(io_fields(&err), (std::io::ErrorKind::NotFound, fs::read(&missing).unwrap_err().raw_os_error()));
        assert!(err.to_string().contains("missing.bfti"), "{err}");

        // a directory opens on Unix; reading it gives the error that names it
        let err = MappedIndex::open(dir.path()).err().expect("must fail");
        let want = fs::read(dir.path()).unwrap_err();
        assert!(want.raw_os_error().is_some());
        assert_eq!(io_fields(&err), (want.kind(), want.raw_os_error()));

        // a path under a file: its parent is not a directory
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let under = file.join("x.bfti");
        let err = write(&sample(), &under).unwrap_err();
        let want = File::create(file.join("y")).unwrap_err();
        assert_eq!(io_fields(&err), (want.kind(), want.raw_os_error()));
        assert_ne!(want.kind(), std::io::ErrorKind::NotFound);

        assert_eq!(merge_files(&[], &dir.path().join("m.bfti")).unwrap_err(), Error::NothingToMerge);
    }

    #[test]
    fn damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bfti");
        write(&sample(), &path).unwrap();
        let good = fs::read(&path).unwrap();
        let try_bytes = |bytes: &[u8]| {
            let p = dir.path().join("bad.bfti");
            fs::write(&p, bytes).unwrap();
            MappedIndex::open(&p).err().expect("must fail")
        };
        assert!(matches!(try_bytes(b"PAR1 not an index at all"), Error::NotAnIndex(_)));
        assert!(matches!(try_bytes(&good[..good.len() - 8]), Error::ChecksumMismatch | Error::Corrupt(_)));
        assert!(matches!(try_bytes(&good[..20]), Error::Corrupt(_)));
        let mut flipped = good.clone();
        let at = flipped.len() - 100;
        flipped[at] ^= 0x10;
        assert_eq!(try_bytes(&flipped), Error::ChecksumMismatch);
        let mut newer = good.clone();
        newer[8] = 2;
        assert!(matches!(try_bytes(&newer), Error::NewerVersion { found: 2, supported: 1 }));
        assert!(matches!(try_bytes(b""), Error::NotAnIndex(_)));
    }

    #[test]
    fn failed_write_keeps_the_previous_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bfti");
        write(&sample(), &path).unwrap();
        let before = fs::read(&path).unwrap();
        // a directory where the temporary file would go makes the write fail
        let blocker = temp_path(&path);
        fs::create_dir(&blocker).unwrap();
        assert!(write_via(&sample(), &path, &blocker).is_err());
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    /// Every accessor on an index that opened: none may panic, whatever the bytes said.
    fn exercise(m: &MappedIndex) {
        let d = m.to_data();
        let vocab = u32::try_from(d.header.vocab_size).unwrap_or(u32::MAX);
        for label in &d.header.labels {
            let _ = m.bucket_table(label);
            for b in 0..=d.header.bucket_edges.len() {
                let _ = m.top_tokens(label, b, 5);
            }
            for token in [0, vocab.saturating_sub(1), vocab] {
                let _ = m.token_histogram(label, token);
            }
        }
        let _ = m.top_tokens("no such label", 0, 5);
    }

    /// Rewrite the checksum so a mutation reaches the parser behind it.
    fn reseal(bytes: &mut [u8]) {
        if bytes.len() >= PREFIX {
            let sum = xxhash_rust::xxh3::xxh3_64(&bytes[PREFIX..]);
            bytes[24..32].copy_from_slice(&sum.to_le_bytes());
        }
    }

    /// Cases per fuzz property: BFTCORE_FUZZ_CASES (make test sets it; default small for `cargo test`).
    fn fuzz_cases() -> u32 {
        std::env::var("BFTCORE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
    }

    fn fuzz_config() -> proptest::test_runner::Config {
        proptest::test_runner::Config { cases: fuzz_cases(), failure_persistence: None, ..Default::default() }
    }

    static FUZZED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn open_any(bytes: &[u8]) {
        FUZZED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(m) = MappedIndex::from_bytes(bytes) {
            exercise(&m);
        }
    }

    fn valid_bytes() -> Vec<u8> {
        static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        GOOD.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.bfti");
            write(&sample(), &path).unwrap();
            fs::read(&path).unwrap()
        })
        .clone()
    }

    proptest::proptest! {
        #![proptest_config(fuzz_config())]

        /// Arbitrary bytes, with and without the magic in front.
        #[test]
        fn fuzz_arbitrary_bytes(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
                                magic in proptest::bool::ANY) {
            if magic && bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&MAGIC);
                reseal(&mut bytes);
            }
            open_any(&bytes);
        }

        /// A valid index with bytes flipped, cut or extended, resealed or not.
        #[test]
        fn fuzz_mutated_index(flips in proptest::collection::vec((proptest::num::usize::ANY, 1u8..=255), 0..8),
                              cut in proptest::option::of(proptest::num::usize::ANY),
                              extra in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
                              seal in proptest::bool::ANY) {
            let mut bytes = valid_bytes();
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            if let Some(c) = cut {
                let n = bytes.len();
                bytes.truncate(c % (n + 1));
            }
            bytes.extend_from_slice(&extra);
            if seal {
                reseal(&mut bytes);
            }
            open_any(&bytes);
        }

        /// A valid index whose JSON header says something else (sizes, edges, labels), resealed:
        /// the parser must check every size against the file and never index past it.
        #[test]
        fn fuzz_header_fields(vocab in proptest::num::usize::ANY, edges in proptest::collection::vec(proptest::num::u32::ANY, 0..12),
                              labels in 0usize..5, which in 0u8..4) {
            let good = valid_bytes();
            let hl = u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
            let mut header: serde_json::Value = serde_json::from_slice(good[PREFIX..PREFIX + hl].trim_ascii_end()).unwrap();
            match which {
                0 => header["vocab_size"] = serde_json::json!(vocab % 4096),
                1 => header["vocab_size"] = serde_json::json!(vocab),
                2 => header["bucket_edges"] = serde_json::json!(edges),
                _ => header["labels"] = serde_json::json!((0..labels).map(|i| format!("l{i}")).collect::<Vec<_>>()),
            }
            let text = serde_json::to_vec(&header).unwrap();
            let padded = text.len().div_ceil(8) * 8;
            let mut bytes = good[..PREFIX].to_vec();
            bytes[16..24].copy_from_slice(&(padded as u64).to_le_bytes());
            bytes.extend_from_slice(&text);
            bytes.resize(PREFIX + padded, b' ');
            bytes.extend_from_slice(&good[PREFIX + hl..]);
            reseal(&mut bytes);
            open_any(&bytes);
        }
    }

    #[test]
    fn fuzz_report() {
        // the count of inputs fuzzed in this process (the properties above run beside this one)
        eprintln!("bfti fuzz: {} cases per property", fuzz_cases());
    }
}
