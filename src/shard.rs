//! Reading and writing track shards (Parquet, zstd, schema v1).

use crate::clip::{Clip, ShardSpec};
use crate::error::{Error, Result};
use crate::fsutil::{sync_dir, temp_path, HashingWriter};
use crate::manifest::ShardEntry;
use crate::schema::{self, col};
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, FixedSizeListArray, Float32Array, RecordBatch,
    StringArray, UInt16Array, UInt32Array, UInt8Array,
};
use arrow::datatypes::{Float32Type, SchemaRef, UInt32Type, UInt8Type};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Clips per row group: the unit a streaming reader loads at once (~200 KB per clip).
    pub rows_per_group: usize,
    pub zstd_level: i32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { rows_per_group: 32, zstd_level: 3 }
    }
}

/// Writes one shard under a temporary name; [`ShardWriter::finish`] renames it into place,
/// so a shard path either holds a complete file or nothing.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    spec: ShardSpec,
    schema: SchemaRef,
    writer: Option<ArrowWriter<HashingWriter<File>>>,
    pending: Vec<Clip>,
    rows: usize,
    rows_per_group: usize,
}

impl ShardWriter {
    pub fn create(path: &Path, spec: &ShardSpec, opts: &WriteOptions) -> Result<Self> {
        let tmp = temp_path(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let schema = Arc::new(schema::arrow_schema(spec));
        let kv =
            schema::file_metadata(spec).into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        let level =
            ZstdLevel::try_new(opts.zstd_level).map_err(|e| Error::invalid(path, e.to_string()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(opts.rows_per_group.max(1)))
            .set_key_value_metadata(Some(kv))
            .build();
        let writer = ArrowWriter::try_new(HashingWriter::new(file), schema.clone(), Some(props))
            .map_err(|e| Error::parquet(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            spec: spec.clone(),
            schema,
            writer: Some(writer),
            pending: Vec::new(),
            rows: 0,
            rows_per_group: opts.rows_per_group.max(1),
        })
    }

    pub fn spec(&self) -> &ShardSpec {
        &self.spec
    }

    pub fn rows(&self) -> usize {
        self.rows + self.pending.len()
    }

    pub fn write(&mut self, clip: Clip) -> Result<()> {
        check_clip(&clip, &self.spec)
            .map_err(|m| Error::invalid(&self.path, format!("clip {}: {m}", clip.id())))?;
        self.pending.push(clip);
        if self.pending.len() >= self.rows_per_group {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = to_batch(&self.pending, &self.spec, self.schema.clone())
            .map_err(|e| Error::parquet(&self.path, e))?;
        let w = self.writer.as_mut().expect("writer open until finish");
        w.write(&batch).map_err(|e| Error::parquet(&self.path, e))?;
        w.flush().map_err(|e| Error::parquet(&self.path, e))?;
        self.rows += self.pending.len();
        self.pending.clear();
        Ok(())
    }

    /// Completes the file and moves it into place; returns its manifest entry.
    pub fn finish(mut self) -> Result<ShardEntry> {
        self.flush()?;
        let w = self.writer.take().expect("writer open until finish");
        let hashing = w.into_inner().map_err(|e| Error::parquet(&self.path, e))?;
        let (file, sha256, bytes) = hashing.finish();
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        sync_dir(&self.path);
        let name =
            self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(ShardEntry { file: name, rows: self.rows as u64, sha256, bytes })
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // Not finished: an abandoned temporary file must not look like a shard.
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Checks a clip against the spec; the message says what is off.
pub fn check_clip(c: &Clip, spec: &ShardSpec) -> Result<(), String> {
    let (t, n) = (spec.t(), spec.num_points());
    let lens = [
        ("frame_indices", c.frame_indices.len(), t),
        ("frames", c.frames.len(), t),
        ("queries", c.queries.len(), n),
        ("tracks", c.tracks.len(), t * n),
        ("visibility", c.visibility.len(), t * n),
    ];
    for (what, got, want) in lens {
        if got != want {
            return Err(format!("{what} has {got} entries, the shard spec needs {want}"));
        }
    }
    if let Some(p) =
        c.tracks.iter().chain(&c.queries).find(|p| !p[0].is_finite() || !p[1].is_finite())
    {
        return Err(format!("non-finite coordinate {p:?}"));
    }
    Ok(())
}

fn fixed<A: Array + 'static>(
    values: A,
    dt: arrow::datatypes::DataType,
    len: usize,
) -> std::result::Result<ArrayRef, arrow::error::ArrowError> {
    let field = Arc::new(arrow::datatypes::Field::new("item", dt, true));
    Ok(Arc::new(FixedSizeListArray::try_new(field, len as i32, Arc::new(values), None)?))
}

fn to_batch(
    clips: &[Clip],
    spec: &ShardSpec,
    schema: SchemaRef,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::datatypes::DataType as D;
    let (t, n) = (spec.t(), spec.num_points());
    let params = spec.tracker.params.to_string();
    let strs = |f: &dyn Fn(&Clip) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(clips.iter().map(f)))
    };
    let rep =
        |s: &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(clips.iter().map(|_| s))) };
    let u16s = |v: u32| -> ArrayRef {
        Arc::new(UInt16Array::from_iter_values(clips.iter().map(|_| v as u16)))
    };
    let flat2 = |f: &dyn Fn(&Clip) -> &[[f32; 2]]| {
        Float32Array::from_iter_values(clips.iter().flat_map(|c| f(c).iter().flatten().copied()))
    };
    let columns: Vec<ArrayRef> = vec![
        strs(&|c| &c.dataset),
        strs(&|c| &c.video_id),
        Arc::new(UInt32Array::from_iter_values(clips.iter().map(|c| c.clip_index))),
        fixed(
            UInt32Array::from_iter_values(
                clips.iter().flat_map(|c| c.frame_indices.iter().copied()),
            ),
            D::UInt32,
            t,
        )?,
        Arc::new(Float32Array::from_iter_values(clips.iter().map(|c| c.source_fps))),
        u16s(spec.width),
        u16s(spec.height),
        fixed(
            BinaryArray::from_iter_values(clips.iter().flat_map(|c| c.frames.iter())),
            D::Binary,
            t,
        )?,
        u16s(spec.query_frame),
        u16s(spec.grid_size),
        fixed(flat2(&|c| &c.queries), D::Float32, n * 2)?,
        fixed(flat2(&|c| &c.tracks), D::Float32, t * n * 2)?,
        fixed(
            UInt8Array::from_iter_values(
                clips.iter().flat_map(|c| c.visibility.iter().map(|&v| v as u8)),
            ),
            D::UInt8,
            t * n,
        )?,
        rep(&spec.tracker.name),
        rep(&spec.tracker.model_sha256),
        rep(&params),
    ];
    RecordBatch::try_new(schema, columns)
}

/// An open shard: metadata checked, rows not yet read.
pub struct ShardReader {
    path: PathBuf,
    spec: ShardSpec,
    builder: ParquetRecordBatchReaderBuilder<File>,
}

impl ShardReader {
    /// Opens a shard and checks its schema version and spec before anything is decoded.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let builder = decoder(path, || ParquetRecordBatchReaderBuilder::try_new(file))?
            .map_err(|e| Error::parquet(path, e))?;
        check_layout(path, builder.metadata(), len)?;
        let kv = builder.metadata().file_metadata().key_value_metadata();
        let get = |key: &str| {
            kv.and_then(|kv| kv.iter().find(|e| e.key == key)).and_then(|e| e.value.clone())
        };
        let version = get(schema::KEY_VERSION).ok_or_else(|| {
            Error::invalid(
                path,
                format!("no '{}' in the file metadata: not a mosic shard", schema::KEY_VERSION),
            )
        })?;
        match schema::parse_version(&version) {
            Some((major, _)) if major == schema::SCHEMA_MAJOR => {}
            _ => {
                return Err(Error::Version {
                    path: path.to_path_buf(),
                    found: version,
                    supported: schema::SCHEMA_MAJOR,
                })
            }
        }
        let spec_json = get(schema::KEY_SPEC).ok_or_else(|| {
            Error::invalid(path, format!("no '{}' in the file metadata", schema::KEY_SPEC))
        })?;
        let spec: ShardSpec = serde_json::from_str(&spec_json)
            .map_err(|e| Error::invalid(path, format!("malformed '{}': {e}", schema::KEY_SPEC)))?;
        let want = schema::arrow_schema(&spec);
        let got = builder.schema();
        if got.fields().len() != want.fields().len()
            || got
                .fields()
                .iter()
                .zip(want.fields())
                .any(|(a, b)| a.name() != b.name() || a.data_type() != b.data_type())
        {
            return Err(Error::invalid(
                path,
                "columns do not match schema v1 for the spec in the file metadata",
            ));
        }
        Ok(Self { path: path.to_path_buf(), spec, builder })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn spec(&self) -> &ShardSpec {
        &self.spec
    }
    pub fn num_rows(&self) -> u64 {
        self.builder.metadata().file_metadata().num_rows().max(0) as u64
    }
    pub fn num_row_groups(&self) -> usize {
        self.builder.metadata().num_row_groups()
    }

    /// Streams the clips, one row group at a time. Without frames the JPEG column is not read.
    pub fn clips(self, with_frames: bool) -> Result<Clips> {
        self.clips_in(with_frames, None)
    }

    /// Streams the clips of the given row groups only (for readers that interleave shards).
    pub fn clips_in(self, with_frames: bool, row_groups: Option<Vec<usize>>) -> Result<Clips> {
        let path = self.path.clone();
        let spec = self.spec.clone();
        let batch = self
            .builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as usize)
            .max()
            .unwrap_or(1)
            .max(1);
        let mut b = self.builder.with_batch_size(batch);
        if !with_frames {
            let frames = b.schema().index_of(col::FRAMES).map_err(|e| Error::parquet(&path, e))?;
            let roots = (0..b.schema().fields().len()).filter(|&i| i != frames);
            let mask = ProjectionMask::roots(b.parquet_schema(), roots);
            b = b.with_projection(mask);
        }
        if let Some(groups) = row_groups {
            b = b.with_row_groups(groups);
        }
        let reader = b.build().map_err(|e| Error::parquet(&path, e))?;
        Ok(Clips { path, spec, reader, buffered: Vec::new().into_iter() })
    }

    /// Reads every clip at once.
    pub fn read_all(self, with_frames: bool) -> Result<Vec<Clip>> {
        self.clips(with_frames)?.collect()
    }

    /// `dataset/video_id` of every row, by row group; only those two columns are read.
    pub fn video_keys(self) -> Result<Vec<Vec<String>>> {
        let path = self.path.clone();
        let groups: Vec<usize> =
            self.builder.metadata().row_groups().iter().map(|g| g.num_rows() as usize).collect();
        let schema = self.builder.schema().clone();
        let roots = [col::DATASET, col::VIDEO_ID]
            .map(|c| schema.index_of(c).map_err(|e| Error::parquet(&path, e)));
        let [ds, vid] = roots;
        let mask = ProjectionMask::roots(self.builder.parquet_schema(), [ds?, vid?]);
        let reader =
            self.builder.with_projection(mask).build().map_err(|e| Error::parquet(&path, e))?;
        let mut keys = Vec::new();
        let mut reader = reader;
        while let Some(batch) = decoder(&path, || reader.next())? {
            let batch = batch.map_err(|e| Error::parquet(&path, e))?;
            let strs = |name: &str| -> Result<&StringArray> {
                column(&batch, name)
                    .and_then(|c| {
                        c.as_string_opt::<i32>()
                            .ok_or_else(|| format!("column '{name}' is not a string column"))
                    })
                    .map_err(|m| Error::invalid(&path, m))
            };
            let (d, v) = (strs(col::DATASET)?, strs(col::VIDEO_ID)?);
            keys.extend((0..batch.num_rows()).map(|r| format!("{}/{}", d.value(r), v.value(r))));
        }
        if keys.len() != groups.iter().sum::<usize>() {
            return Err(Error::invalid(
                &path,
                format!(
                    "{} rows read, the row groups hold {}",
                    keys.len(),
                    groups.iter().sum::<usize>()
                ),
            ));
        }
        let mut it = keys.into_iter();
        Ok(groups.iter().map(|&n| it.by_ref().take(n).collect()).collect())
    }
}

pub struct Clips {
    path: PathBuf,
    spec: ShardSpec,
    reader: ParquetRecordBatchReader,
    buffered: std::vec::IntoIter<Clip>,
}

impl Iterator for Clips {
    type Item = Result<Clip>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = self.buffered.next() {
                return Some(Ok(c));
            }
            let next = decoder(&self.path, || self.reader.next());
            let next = match next {
                Ok(n) => n?,
                Err(e) => return Some(Err(e)),
            };
            match next {
                Ok(batch) => match from_batch(&batch, &self.spec) {
                    Ok(clips) => self.buffered = clips.into_iter(),
                    Err(m) => return Some(Err(Error::invalid(&self.path, m))),
                },
                Err(e) => return Some(Err(Error::parquet(&self.path, e))),
            }
        }
    }
}

thread_local! {
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a step of the Parquet decoder, whose asserts on corrupt input become this file's
/// error (shards come from other machines; a bad one must not bring down a run).
fn decoder<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T> {
    // The panic hook would print the decoder's assert as a crash above the error that says
    // what happened: panics inside the decoder are kept quiet, all others reach the hook that
    // was installed before.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !DECODING.with(|d| d.get()) {
                previous(info)
            }
        }));
    });
    DECODING.with(|d| d.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    DECODING.with(|d| d.set(false));
    r.map_err(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Error::parquet(path, format!("the Parquet decoder failed on this file ({why}): corrupt"))
    })
}

/// Every row group and column chunk lies inside the file, with sizes that are not negative:
/// checked before anything is read, so that sizes from a corrupt footer never drive a read
/// or an allocation.
fn check_layout(
    path: &Path,
    meta: &parquet::file::metadata::ParquetMetaData,
    len: u64,
) -> Result<()> {
    for (g, rg) in meta.row_groups().iter().enumerate() {
        if rg.num_rows() < 0 {
            return Err(Error::invalid(
                path,
                format!("row group {g} has {} rows (corrupt)", rg.num_rows()),
            ));
        }
        for (c, col) in rg.columns().iter().enumerate() {
            let start = col.dictionary_page_offset().unwrap_or(col.data_page_offset());
            let size = col.compressed_size();
            let inside = start >= 0
                && size >= 0
                && (start as u64).checked_add(size as u64).is_some_and(|end| end <= len);
            if !inside {
                return Err(Error::invalid(
                    path,
                    format!(
                        "column chunk {c} of row group {g} ({size} bytes at {start}) lies outside the file of {len} bytes (corrupt)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    batch.column_by_name(name).ok_or_else(|| format!("missing column '{name}'"))
}

/// Values of a fixed-size list column as one flat primitive slice with the list length.
fn flat<'a, T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
    len: usize,
) -> Result<&'a [T::Native], String> {
    let list = column(batch, name)?
        .as_fixed_size_list_opt()
        .ok_or_else(|| format!("column '{name}' is not a fixed-size list"))?;
    if list.value_length() as usize != len {
        return Err(format!(
            "column '{name}' holds lists of {}, expected {len}",
            list.value_length()
        ));
    }
    let values = list
        .values()
        .as_primitive_opt::<T>()
        .ok_or_else(|| format!("column '{name}' has the wrong element type"))?;
    let start = list.offset() * len;
    Ok(&values.values()[start..start + list.len() * len])
}

/// Where a row fails the checks of [`from_batch`]: the clip's id when its key columns are readable.
fn row_name(batch: &RecordBatch, r: usize) -> String {
    let key = |name: &str| batch.column_by_name(name).filter(|a| a.is_valid(r));
    match (key(col::DATASET), key(col::VIDEO_ID), key(col::CLIP_INDEX)) {
        (Some(d), Some(v), Some(c)) => match (
            d.as_string_opt::<i32>(),
            v.as_string_opt::<i32>(),
            c.as_primitive_opt::<UInt32Type>(),
        ) {
            (Some(d), Some(v), Some(c)) => {
                format!("clip {}/{}#{}", d.value(r), v.value(r), c.value(r))
            }
            _ => format!("row {r}"),
        },
        _ => format!("row {r}"),
    }
}

/// Nulls anywhere in a column (rows or list items): the schema's lists have nullable items
/// for pyarrow's sake, but a shard never holds a null.
fn check_nulls(batch: &RecordBatch) -> Result<(), String> {
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        if let Some(r) = (0..array.len()).find(|&r| array.is_null(r)) {
            return Err(format!("{}: column '{}' is null", row_name(batch, r), field.name()));
        }
        if let Some(list) = array.as_fixed_size_list_opt() {
            let (values, len) = (list.values(), list.value_length().max(1) as usize);
            if values.null_count() > 0 {
                let start = list.offset() * len;
                if let Some(i) = (start..start + list.len() * len).find(|&i| values.is_null(i)) {
                    let r = (i - start) / len;
                    return Err(format!(
                        "{}: column '{}' has a null at item {}",
                        row_name(batch, r),
                        field.name(),
                        (i - start) % len
                    ));
                }
            }
        }
    }
    Ok(())
}

fn from_batch(batch: &RecordBatch, spec: &ShardSpec) -> Result<Vec<Clip>, String> {
    let (t, n) = (spec.t(), spec.num_points());
    let rows = batch.num_rows();
    check_nulls(batch)?;
    let strs = |name: &str| -> Result<&StringArray, String> {
        column(batch, name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("column '{name}' is not a string column"))
    };
    let dataset = strs(col::DATASET)?;
    let video = strs(col::VIDEO_ID)?;
    let clip_index = column(batch, col::CLIP_INDEX)?
        .as_primitive_opt::<UInt32Type>()
        .ok_or("clip_index is not uint32")?;
    let fps = column(batch, col::SOURCE_FPS)?
        .as_primitive_opt::<Float32Type>()
        .ok_or("source_fps is not float32")?;
    let frame_indices = flat::<UInt32Type>(batch, col::FRAME_INDICES, t)?;
    let queries = flat::<Float32Type>(batch, col::QUERIES, n * 2)?;
    let tracks = flat::<Float32Type>(batch, col::TRACKS, t * n * 2)?;
    let vis = flat::<UInt8Type>(batch, col::VISIBILITY, t * n)?;
    // Anything but 0 and 1 is a writer's bug, not "visible".
    if let Some(i) = vis.iter().position(|&v| v > 1) {
        let (r, e) = (i / (t * n), i % (t * n));
        return Err(format!(
            "{}: visibility value {} at frame {}, point {} (only 0 and 1 are allowed)",
            row_name(batch, r),
            vis[i],
            e / n,
            e % n
        ));
    }
    let frames = match batch.column_by_name(col::FRAMES) {
        Some(a) => Some(a.as_fixed_size_list_opt().ok_or("frames is not a fixed-size list")?),
        None => None,
    };
    let pairs = |s: &[f32]| s.chunks_exact(2).map(|p| [p[0], p[1]]).collect::<Vec<_>>();
    let mut out = Vec::with_capacity(rows);
    for r in 0..rows {
        let frames = match frames {
            Some(list) => {
                let v = list.value(r);
                let bin = v.as_binary_opt::<i32>().ok_or("frames holds no binary values")?;
                (0..bin.len()).map(|i| bin.value(i).to_vec()).collect()
            }
            None => Vec::new(),
        };
        out.push(Clip {
            dataset: dataset.value(r).to_string(),
            video_id: video.value(r).to_string(),
            clip_index: clip_index.value(r),
            frame_indices: frame_indices[r * t..(r + 1) * t].to_vec(),
            source_fps: fps.value(r),
            frames,
            queries: pairs(&queries[r * n * 2..(r + 1) * n * 2]),
            tracks: pairs(&tracks[r * t * n * 2..(r + 1) * t * n * 2]),
            visibility: vis[r * t * n..(r + 1) * t * n].iter().map(|&v| v == 1).collect(),
        });
    }
    Ok(out)
}
