//! The `mosic shards` commands on good and bad shard directories: every kind of damage is
//! reported by file (and clip) name.

mod common;

use common::*;
use mosic::manifest::Manifest;
use mosic::{Error, ShardReader};
use std::path::Path;

#[test]
fn verify_and_stats_on_a_good_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    write_dir(tmp.path(), &spec(6, 4, 32), 6, 2);
    let o = run(&["shards", "verify", dir]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ok: 2 shards, 6 clips"), "{}", text(&o));

    let o = run(&["shards", "stats", dir, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["clips"], 6);
    assert_eq!(s["videos"], 3);
    // Every point but one moves 1 px a frame (until it reaches the border); one is hidden on odd frames.
    let vis = s["visible_fraction"].as_f64().unwrap();
    assert!((vis - (1.0 - 3.0 / (6.0 * 16.0))).abs() < 1e-9, "{vis}");
    assert!((s["step_displacement_px"]["p50"].as_f64().unwrap() - 1.0).abs() <= 0.05);
}

fn verify_fails_with(dir: &Path, needles: &[&str]) {
    let o = run(&["shards", "verify", dir.to_str().unwrap()]);
    let out = text(&o);
    assert!(!o.status.success(), "verify passed:\n{out}");
    assert!(!out.contains("panicked"), "{out}");
    for n in needles {
        assert!(out.contains(n), "missing '{n}' in:\n{out}");
    }
}

#[test]
fn a_directory_without_manifest_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&["shards", "verify", tmp.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("manifest.json: No such file"), "{}", text(&o));
}

#[test]
fn truncated_shard_is_reported_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), &spec(6, 4, 32), 4, 1);
    let path = tmp.path().join("shard-00000.parquet");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = ShardReader::open(&path).err().unwrap();
    assert!(matches!(e, Error::Parquet { .. }), "{e}");
    assert!(e.to_string().contains("shard-00000.parquet: not a readable shard"), "{e}");
    verify_fails_with(tmp.path(), &["shard-00000.parquet", "checksum mismatch"]);
}

#[test]
fn bit_flip_is_caught_by_the_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), &spec(6, 4, 32), 4, 2);
    let path = tmp.path().join("shard-00001.parquet");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    verify_fails_with(tmp.path(), &["shard-00001.parquet", "checksum mismatch", "1 problem(s)"]);
}

#[test]
fn manifest_paths_may_not_leave_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = write_dir(tmp.path(), &spec(6, 4, 32), 2, 1);
    m.shards[0].file = "../outside.parquet".into();
    m.save(tmp.path()).unwrap();
    let e = Manifest::load(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("manifest.json")
            && e.contains("'../outside.parquet' leaves the manifest's directory"),
        "{e}"
    );
    verify_fails_with(tmp.path(), &["manifest.json", "leaves the manifest's directory"]);
}

#[test]
fn schema_major_version_from_the_future_is_refused() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;

    let tmp = tempfile::tempdir().unwrap();
    let m = write_dir(tmp.path(), &spec(6, 4, 32), 2, 1);
    // Rewrite the shard as a v2.3 writer would label it.
    let path = tmp.path().join("shard-00000.parquet");
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
    let kv: Vec<KeyValue> = b
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|e| {
            if e.key == "mosic.schema_version" {
                KeyValue::new(e.key.clone(), "2.3".to_string())
            } else {
                e.clone()
            }
        })
        .collect();
    let schema = b.schema().clone();
    let batches: Vec<_> = b.build().unwrap().map(|r| r.unwrap()).collect();
    let future = tmp.path().join("future.parquet");
    let props = WriterProperties::builder().set_key_value_metadata(Some(kv)).build();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&future).unwrap(), schema, Some(props)).unwrap();
    for batch in &batches {
        w.write(batch).unwrap();
    }
    w.close().unwrap();
    let e = ShardReader::open(&future).err().unwrap().to_string();
    assert!(
        e.contains("future.parquet") && e.contains("version 2.3") && e.contains("major version 1"),
        "{e}"
    );

    // The same refusal at the manifest level.
    let mut m2 = m.clone();
    m2.schema_version = "2.0".into();
    m2.save(tmp.path()).unwrap();
    verify_fails_with(tmp.path(), &["manifest.json", "version 2.0", "major version 1"]);
}

#[test]
fn missing_shard_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), &spec(6, 4, 32), 4, 2);
    std::fs::remove_file(tmp.path().join("shard-00000.parquet")).unwrap();
    verify_fails_with(tmp.path(), &["shard-00000.parquet: listed in the manifest but missing"]);
}

#[test]
fn out_of_range_points_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(6, 4, 32);
    let path = tmp.path().join("shard-00000.parquet");
    let mut w = mosic::ShardWriter::create(&path, &spec, &Default::default()).unwrap();
    let mut c = clip(0, &spec);
    c.tracks[20] = [40.0, 3.0]; // frame 1, point 4: visible and past the right border
    w.write(c).unwrap();
    let mut m = Manifest::new(spec, serde_json::json!({}));
    m.shards.push(w.finish().unwrap());
    m.save(tmp.path()).unwrap();
    verify_fails_with(
        tmp.path(),
        &["shard-00000.parquet", "visible point 4 at frame 1 lies outside the 32x32 frame"],
    );
}

/// Rewrites `dir`'s first shard with column `name` replaced by `f(old column)`, keeping the file
/// metadata, and updates the manifest's checksum so that only the content is at fault.
fn rewrite_column(
    dir: &Path,
    name: &str,
    f: impl Fn(&arrow::array::ArrayRef) -> arrow::array::ArrayRef,
) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    let path = dir.join("shard-00000.parquet");
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
    let kv = b.metadata().file_metadata().key_value_metadata().cloned();
    let schema = b.schema().clone();
    let batches: Vec<_> = b.build().unwrap().map(|r| r.unwrap()).collect();
    let idx = schema.index_of(name).unwrap();
    let props = WriterProperties::builder().set_key_value_metadata(kv).build();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema.clone(), Some(props))
            .unwrap();
    for batch in &batches {
        let mut cols = batch.columns().to_vec();
        cols[idx] = f(&cols[idx]);
        w.write(&arrow::array::RecordBatch::try_new(schema.clone(), cols).unwrap()).unwrap();
    }
    w.close().unwrap();
    let mut m = Manifest::load(dir).unwrap();
    m.shards[0].sha256 = mosic::fsutil::sha256_file(&path).unwrap();
    m.shards[0].bytes = std::fs::metadata(&path).unwrap().len();
    m.save(dir).unwrap();
}

/// The fixed-size list `list` with its values replaced.
fn with_values(
    list: &arrow::array::ArrayRef,
    values: arrow::array::ArrayRef,
) -> arrow::array::ArrayRef {
    use arrow::array::{Array, AsArray};
    let l = list.as_fixed_size_list();
    let field = match l.data_type() {
        arrow::datatypes::DataType::FixedSizeList(f, _) => f.clone(),
        _ => unreachable!(),
    };
    std::sync::Arc::new(
        arrow::array::FixedSizeListArray::try_new(field, l.value_length(), values, None).unwrap(),
    )
}

#[test]
fn visibility_other_than_0_or_1_is_reported_with_the_clip() {
    use arrow::array::{AsArray, UInt8Array};
    use arrow::datatypes::UInt8Type;
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(6, 4, 32);
    write_dir(tmp.path(), &spec, 3, 1);
    // Clip 1 (video_000#1), frame 2, point 5 becomes 2.
    rewrite_column(tmp.path(), "visibility", |a| {
        let mut v: Vec<u8> =
            a.as_fixed_size_list().values().as_primitive::<UInt8Type>().values().to_vec();
        v[16 * 6 + 2 * 16 + 5] = 2;
        with_values(a, std::sync::Arc::new(UInt8Array::from(v)))
    });
    let e = ShardReader::open(&tmp.path().join("shard-00000.parquet"))
        .unwrap()
        .read_all(false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("clip test/video_000#1: visibility value 2 at frame 2, point 5"), "{e}");
    verify_fails_with(
        tmp.path(),
        &["shard-00000.parquet", "clip test/video_000#1", "visibility value 2"],
    );
}

#[test]
fn nulls_inside_list_columns_are_reported_with_the_clip() {
    use arrow::array::{AsArray, Float32Array};
    use arrow::datatypes::Float32Type;
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(6, 4, 32);
    write_dir(tmp.path(), &spec, 3, 1);
    // One coordinate of clip 2 (video_001#0) becomes null.
    rewrite_column(tmp.path(), "tracks", |a| {
        let v = a.as_fixed_size_list().values().as_primitive::<Float32Type>();
        let k = 2 * 6 * 16 * 2 + 7;
        let vals: Float32Array = (0..v.len()).map(|i| (i != k).then(|| v.value(i))).collect();
        with_values(a, std::sync::Arc::new(vals))
    });
    verify_fails_with(
        tmp.path(),
        &["shard-00000.parquet", "clip test/video_001#0: column 'tracks' has a null at item 7"],
    );
}
