//! Scored shards in Arrow IPC (shard format version 2), read without decoding.
//!
//! A shard is an Arrow IPC file, uncompressed: its columns are the index builder's arrays as they
//! lie in the file, so the file is memory-mapped and each record batch's columns are slices of
//! the map (arrow-ipc's `FileDecoder` over a `Buffer` that owns the map: no copy, no decode; the
//! top-k columns are fixed-size lists, one flat array of n x k values). The file's xxh3-128 is
//! computed on the way, block by block in file order, so damage is caught without a second read.

use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::types::{Float32Type, UInt16Type, UInt32Type};
use arrow_array::{Array, ArrowPrimitiveType, DictionaryArray, FixedSizeListArray, PrimitiveArray, RecordBatch, StringArray};
use arrow_buffer::Buffer;
use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::reader::{read_footer_length, FileDecoder};
use arrow_ipc::root_as_footer;
use memmap2::Mmap;

use crate::{Batch, Error, IndexBuilder};

/// What one shard gave the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRead {
    pub rows: u64,
    pub batches: usize,
    /// xxh3-128 of the whole file.
    pub digest: u128,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::BadShard(format!("{}: {why}", path.display()))
}

/// The xxh3-128 of a file's bytes (what a shard's checksum file holds), through a memory map.
pub fn file_digest(path: &Path) -> Result<u128, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, &e))?;
    if file.metadata().map_err(|e| Error::io(path, &e))?.len() == 0 {
        return Ok(xxhash_rust::xxh3::xxh3_128(&[]));
    }
    // SAFETY: a shard is written once (temporary file, then rename) and never changed in place
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, &e))?;
    Ok(xxhash_rust::xxh3::xxh3_128(&map))
}

/// Add every record batch of the IPC shard at `path` to `builder` (k values per row in the top-k
/// columns). With `expect`, the file's xxh3-128 must equal it (checked once the file is read: a
/// damaged shard fails the build, whose index is then never written).
pub fn add_ipc_shard(builder: &mut IndexBuilder, path: &Path, k: usize, expect: Option<u128>) -> Result<ShardRead, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, &e))?;
    let len = file.metadata().map_err(|e| Error::io(path, &e))?.len() as usize;
    if len < 10 {
        return Err(bad(path, "too short for an Arrow IPC file"));
    }
    // SAFETY: as in `file_digest`
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, &e))?);
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    let ptr = NonNull::new(map.as_ptr() as *mut u8).ok_or_else(|| bad(path, "empty map"))?;
    // SAFETY: the buffer views the map's bytes and holds the map alive as its owner
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, len, map.clone()) };
    let trailer: [u8; 10] = buffer[len - 10..].try_into().expect("10 bytes");
    let footer_len = read_footer_length(trailer).map_err(|e| bad(path, e))?;
    if footer_len + 10 > len {
        return Err(bad(path, "footer longer than the file"));
    }
    let footer = root_as_footer(&buffer[len - 10 - footer_len..len - 10]).map_err(|e| bad(path, e))?;
    let schema = try_fb_to_schema(footer.schema().ok_or_else(|| bad(path, "no schema in the footer"))?).map_err(|e| bad(path, e))?;
    let mut decoder = FileDecoder::new(Arc::new(schema), footer.version()).with_require_alignment(true);
    // The file's hash runs beside the counting (one pass each over the mapped bytes): on two
    // cores the counting's second thread would otherwise wait for a serial hash.
    let (digest, counted) = rayon::join(
        || xxhash_rust::xxh3::xxh3_128(&map),
        || -> Result<ShardRead, Error> {
            let block_range = |block: &arrow_ipc::Block| -> Result<(usize, usize), Error> {
                let start = usize::try_from(block.offset()).map_err(|_| bad(path, "negative block offset"))?;
                let size = usize::try_from(block.metaDataLength()).ok().zip(usize::try_from(block.bodyLength()).ok());
                let end = size.and_then(|(m, b)| start.checked_add(m)?.checked_add(b));
                match end {
                    Some(end) if end <= len => Ok((start, end)),
                    _ => Err(bad(path, "a block reaches past the end of the file")),
                }
            };
            for block in footer.dictionaries().iter().flatten() {
                let (start, end) = block_range(block)?;
                check_block(path, &map[start..end], block.metaDataLength())?;
                let data = buffer.slice_with_length(start, end - start);
                decoding(path, || decoder.read_dictionary(block, &data))?;
            }
            let mut read = ShardRead { rows: 0, batches: 0, digest: 0 };
            for block in footer.recordBatches().iter().flatten() {
                let (start, end) = block_range(block)?;
                check_block(path, &map[start..end], block.metaDataLength())?;
                let data = buffer.slice_with_length(start, end - start);
                let batch = decoding(path, || decoder.read_record_batch(block, &data))?
                    .ok_or_else(|| bad(path, "a record batch block holds no record batch"))?;
                add_record_batch(builder, &batch, k).map_err(|e| match e {
                    Error::BadBatch(why) => bad(path, why),
                    other => other,
                })?;
                read.rows += batch.num_rows() as u64;
                read.batches += 1;
            }
            Ok(read)
        },
    );
    // a damaged file is named as damaged first, whatever the decoder made of its bytes
    if expect.is_some_and(|want| want != digest) {
        return Err(bad(path, "checksum mismatch (the file changed after it was written: damaged?)"));
    }
    let mut read = counted?;
    read.digest = digest;
    Ok(read)
}

/// Every buffer a block's message names lies inside the block's body: arrow-ipc slices them
/// without asking (a damaged offset would panic there).
fn check_block(path: &Path, block: &[u8], meta_len: i32) -> Result<(), Error> {
    let meta_len = usize::try_from(meta_len).ok().filter(|&m| (8..=block.len()).contains(&m));
    let meta_len = meta_len.ok_or_else(|| bad(path, "a block's metadata length is out of range"))?;
    let flatbuffer = if block[..4] == [0xff; 4] { &block[8..meta_len] } else { &block[4..meta_len] };
    let message = arrow_ipc::root_as_message(flatbuffer).map_err(|e| bad(path, format!("unreadable message ({e})")))?;
    let body = (block.len() - meta_len) as i64;
    let buffers = match message.header_as_record_batch() {
        Some(batch) => batch.buffers(),
        None => message.header_as_dictionary_batch().and_then(|d| d.data()).and_then(|b| b.buffers()),
    };
    for b in buffers.iter().flatten() {
        let end = b.offset().checked_add(b.length());
        if b.offset() < 0 || b.length() < 0 || end.is_none_or(|e| e > body) {
            return Err(bad(path, "a column's buffer lies outside its record batch (damaged?)"));
        }
    }
    Ok(())
}

/// A decoder call, with anything arrow-ipc does not check itself turned into an error, never a
/// panic across the core's boundary.
fn decoding<T>(path: &Path, f: impl FnOnce() -> Result<T, arrow_schema::ArrowError>) -> Result<T, Error> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(got) => got.map_err(|e| bad(path, e)),
        Err(_) => Err(bad(path, "unreadable Arrow IPC (the decoder gave up on it: damaged?)")),
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, Error> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| Error::BadBatch(format!("missing column {name}")))?;
    if col.null_count() > 0 {
        return Err(Error::BadBatch(format!("column {name} has missing values")));
    }
    Ok(col.as_ref())
}

fn primitive<'a, T: ArrowPrimitiveType>(array: &'a dyn Array, name: &str) -> Result<&'a [T::Native], Error> {
    let typed = array.as_any().downcast_ref::<PrimitiveArray<T>>().ok_or_else(|| {
        Error::BadBatch(format!(
            "column {name} holds {}, a scored shard holds {}",
            array.data_type(),
            T::DATA_TYPE
        ))
    })?;
    Ok(typed.values().as_ref())
}

fn values<'a, T: ArrowPrimitiveType>(batch: &'a RecordBatch, name: &str) -> Result<&'a [T::Native], Error> {
    primitive::<T>(column(batch, name)?, name)
}

/// A fixed-size-list column as its flat values, k per row.
fn top_k<'a, T: ArrowPrimitiveType>(batch: &'a RecordBatch, name: &str, k: usize) -> Result<&'a [T::Native], Error> {
    let col = column(batch, name)?;
    let list = col
        .as_any()
        .downcast_ref::<FixedSizeListArray>()
        .ok_or_else(|| Error::BadBatch(format!("column {name} holds {}, not a fixed-size list", col.data_type())))?;
    if list.value_length() as usize != k {
        return Err(Error::BadBatch(format!("column {name} holds {} values per row, not k={k}", list.value_length())));
    }
    let inner = list.values();
    if inner.null_count() > 0 {
        return Err(Error::BadBatch(format!("column {name} has missing values")));
    }
    let flat = primitive::<T>(inner.as_ref(), name)?;
    let start = list.value_offset_at(0);
    flat.get(start..start + list.len() * k)
        .ok_or_else(|| Error::BadBatch(format!("column {name} is shorter than its rows")))
}

/// One decoded record batch into the builder: every column a view of the map.
fn add_record_batch(builder: &mut IndexBuilder, batch: &RecordBatch, k: usize) -> Result<(), Error> {
    let labels = column(batch, "label")?;
    let dict = labels
        .as_any()
        .downcast_ref::<DictionaryArray<UInt16Type>>()
        .ok_or_else(|| Error::BadBatch(format!("column label holds {}, not dictionary<uint16, utf8>", labels.data_type())))?;
    let names = dict
        .values()
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::BadBatch("column label's dictionary holds no strings".into()))?;
    if names.null_count() > 0 {
        return Err(Error::BadBatch("column label's dictionary has missing values".into()));
    }
    let label_names: Vec<String> = names.iter().map(|s| s.unwrap_or_default().to_string()).collect();
    builder.add_batch(&Batch {
        tokens: values::<UInt32Type>(batch, "token")?,
        positions: values::<UInt32Type>(batch, "pos")?,
        lp_base: values::<Float32Type>(batch, "lp_base")?,
        lp_aligned: values::<Float32Type>(batch, "lp_aligned")?,
        kl: values::<Float32Type>(batch, "kl")?,
        bf_mass: values::<Float32Type>(batch, "bf_mass")?,
        retain: values::<Float32Type>(batch, "retain")?,
        label_codes: dict.keys().values().as_ref(),
        label_names: &label_names,
        topk_token: top_k::<UInt32Type>(batch, "topk_token", k)?,
        topk_lp_base: top_k::<Float32Type>(batch, "topk_lp_base", k)?,
        topk_lp_aligned: top_k::<Float32Type>(batch, "topk_lp_aligned", k)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::{builder, random, Owned};
    use arrow_array::{ArrayRef, Float32Array, UInt16Array, UInt32Array, UInt64Array};
    use arrow_ipc::writer::FileWriter;
    use arrow_schema::{DataType, Field};

    fn list(values: ArrayRef, k: usize) -> ArrayRef {
        let field = Arc::new(Field::new("item", values.data_type().clone(), false));
        Arc::new(FixedSizeListArray::new(field, k as i32, values, None))
    }

    /// Owned rows as an IPC file of record batches of `per` rows, as `bftcore score` writes one.
    fn write_ipc(o: &Owned, k: usize, per: usize, path: &Path) {
        let n = o.tokens.len();
        let mut writer: Option<FileWriter<std::fs::File>> = None;
        for lo in (0..n).step_by(per) {
            let s = o.slice(lo, (lo + per).min(n), k);
            let names = StringArray::from(s.label_names.iter().map(String::as_str).collect::<Vec<_>>());
            let labels = DictionaryArray::<UInt16Type>::try_new(UInt16Array::from(s.label_codes.clone()), Arc::new(names)).unwrap();
            let batch = RecordBatch::try_from_iter([
                ("doc_id", Arc::new(UInt64Array::from(vec![7u64; s.tokens.len()])) as ArrayRef),
                ("pos", Arc::new(UInt32Array::from(s.positions.clone())) as ArrayRef),
                ("token", Arc::new(UInt32Array::from(s.tokens.clone())) as ArrayRef),
                ("lp_base", Arc::new(Float32Array::from(s.lp_base.clone())) as ArrayRef),
                ("lp_aligned", Arc::new(Float32Array::from(s.lp_aligned.clone())) as ArrayRef),
                ("kl", Arc::new(Float32Array::from(s.kl.clone())) as ArrayRef),
                ("bf_mass", Arc::new(Float32Array::from(s.bf_mass.clone())) as ArrayRef),
                ("retain", Arc::new(Float32Array::from(s.retain.clone())) as ArrayRef),
                ("label", Arc::new(labels) as ArrayRef),
                ("topk_token", list(Arc::new(UInt32Array::from(s.topk_token.clone())), k)),
                ("topk_lp_base", list(Arc::new(Float32Array::from(s.topk_lp_base.clone())), k)),
                ("topk_lp_aligned", list(Arc::new(Float32Array::from(s.topk_lp_aligned.clone())), k)),
            ])
            .unwrap();
            let w = writer.get_or_insert_with(|| FileWriter::try_new(std::fs::File::create(path).unwrap(), &batch.schema()).unwrap());
            w.write(&batch).unwrap();
        }
        writer.unwrap().finish().unwrap();
    }

    #[test]
    fn an_ipc_shard_gives_the_index_of_its_rows() {
        let (k, vocab) = (5, 97);
        let o = random(2500, k, vocab as u32, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-00000.arrow");
        write_ipc(&o, k, 1000, &path);
        let mut direct = builder(vocab, k);
        direct.add_batch(&o.batch()).unwrap();
        let mut from_file = builder(vocab, k);
        let digest = file_digest(&path).unwrap();
        let read = add_ipc_shard(&mut from_file, &path, k, Some(digest)).unwrap();
        assert_eq!(read, ShardRead { rows: 2500, batches: 3, digest });
        assert_eq!(from_file.finish(), direct.finish());
    }

    #[test]
    fn damage_and_foreign_files_are_refused() {
        let (k, vocab) = (4, 50);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.arrow");
        write_ipc(&random(300, k, vocab as u32, 1), k, 100, &path);
        let digest = file_digest(&path).unwrap();
        // one flipped bit in the data: caught by the checksum
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        let damaged = dir.path().join("damaged.arrow");
        std::fs::write(&damaged, &bytes).unwrap();
        let err = add_ipc_shard(&mut builder(vocab, k), &damaged, k, Some(digest)).unwrap_err();
        assert!(matches!(err, Error::BadShard(_)), "{err:?}");
        // another k; a file that is not Arrow IPC; a truncated one
        let err = add_ipc_shard(&mut builder(vocab, 3), &path, 3, None).unwrap_err();
        assert!(err.to_string().contains("not k=3"), "{err}");
        let text = dir.path().join("t.arrow");
        std::fs::write(&text, b"not an arrow file at all, just text").unwrap();
        assert!(matches!(add_ipc_shard(&mut builder(vocab, k), &text, k, None), Err(Error::BadShard(_))));
        std::fs::write(&text, &bytes[..bytes.len() - 100]).unwrap();
        assert!(matches!(add_ipc_shard(&mut builder(vocab, k), &text, k, None), Err(Error::BadShard(_))));
        assert!(matches!(add_ipc_shard(&mut builder(vocab, k), &dir.path().join("none.arrow"), k, None), Err(Error::Io { .. })));
    }

    #[test]
    fn wrong_types_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.arrow");
        let batch = RecordBatch::try_from_iter([("token", Arc::new(Float32Array::from(vec![1.0f32])) as ArrayRef)]).unwrap();
        let mut w = FileWriter::try_new(std::fs::File::create(&path).unwrap(), &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let err = add_ipc_shard(&mut builder(10, 2), &path, 2, None).unwrap_err().to_string();
        assert!(err.contains("missing column label"), "{err}");
        let _ = DataType::UInt32;
    }
}
