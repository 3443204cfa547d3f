//! Shard files and manifests, including every kind of bad input.

use mosic::manifest::Manifest;
use mosic::testing::*;
use mosic::ShardReader;

#[test]
fn write_then_read_gives_back_every_clip() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(12, 4, 32);
    let m = write_dir(tmp.path(), &spec, 10, 2);
    assert_eq!(m.total_rows(), 10);
    let mut read = Vec::new();
    for e in &m.shards {
        let r = ShardReader::open(&Manifest::shard_path(tmp.path(), e)).unwrap();
        assert_eq!(r.spec(), &spec);
        assert_eq!(r.num_rows(), e.rows);
        assert_eq!(r.num_row_groups(), 2); // 5 rows in groups of 4
        read.extend(r.read_all(true).unwrap());
    }
    let want: Vec<_> = (0..10).map(|i| clip(i, &spec)).collect();
    assert_eq!(read, want);

    // Without frames: same tracks, the JPEG column is not read.
    let r = ShardReader::open(&tmp.path().join("shard-00001.parquet")).unwrap();
    let light = r.read_all(false).unwrap();
    assert!(light.iter().all(|c| c.frames.is_empty()));
    assert_eq!(light[2].tracks, want[7].tracks);
    assert_eq!(light[2].visibility, want[7].visibility);

    // Atomic writes leave no temporary files behind.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn writer_rejects_clips_that_do_not_fit_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(4, 2, 16);
    let path = tmp.path().join("s.parquet");
    let mut w = mosic::ShardWriter::create(&path, &spec, &Default::default()).unwrap();
    let mut c = clip(0, &spec);
    c.tracks.pop();
    let e = w.write(c).unwrap_err().to_string();
    assert!(
        e.contains("s.parquet") && e.contains("tracks has 15 entries, the shard spec needs 16"),
        "{e}"
    );
    let mut c = clip(0, &spec);
    c.tracks[3][1] = f32::NAN;
    assert!(w.write(c).unwrap_err().to_string().contains("non-finite"));
    drop(w);
    // An abandoned writer leaves nothing: no shard and no temporary file.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn python_reads_shards_without_our_code() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), &spec(12, 16, 64), 5, 2);
    if let Some(o) = python_tool("interop/check_shards.py", &[tmp.path().to_str().unwrap()]) {
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("ok: 2 shards, 5 clips"), "{}", text(&o));
    }
}
