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

/// Peak resident memory of this test's process, MiB (nextest runs each test in its own).
fn peak_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

/// Reads a shard whole, as the loader and `mosic shards verify` do.
fn read_whole(path: &std::path::Path) -> std::thread::Result<mosic::Result<usize>> {
    std::panic::catch_unwind(|| {
        let r = ShardReader::open(path)?;
        let _ = r.spec().clone();
        Ok(r.read_all(true)?.len())
    })
}

/// A shard that trips the Parquet decoder's own asserts is refused with an error naming it, and
/// the caught assert is not printed as a crash. Run in a child process of this test binary,
/// where the panic hook writes to the real stderr.
#[test]
fn a_decoder_assert_is_an_error_not_a_printed_crash() {
    let name = "a_decoder_assert_is_an_error_not_a_printed_crash";
    let input = repo_root().join("tests/fixtures/fuzz/shard/dictionary-page-missing.parquet");
    if std::env::var_os("MOSIC_DECODER_CHILD").is_some() {
        let e = read_whole(&input).expect("no panic escapes").unwrap_err().to_string();
        assert!(
            e.contains("the Parquet decoder failed") && e.contains("dictionary-page-missing"),
            "{e}"
        );
        // Panics elsewhere still reach the hook.
        let _ = std::panic::catch_unwind(|| panic!("outside the decoder"));
        return;
    }
    let o = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .env("MOSIC_DECODER_CHILD", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", text(&o));
    assert!(err.contains("outside the decoder"), "{err}");
    assert_eq!(err.matches("panicked").count(), 1, "{err}");
}

/// Shards mutated at random (bit flips, overwritten runs, cuts, inserted bytes, in the footer
/// and the pages), from a fresh shard and from the corpus in `tests/fixtures/fuzz/shard`
/// (inputs kept because they once failed): every read ends in clips or an error, never a
/// panic, within a time and a memory bound. MOSIC_FUZZ_SECONDS sets the time spent (20 s).
#[test]
fn mutated_shards_are_read_or_refused_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh");
    write_dir(&fresh, &spec(3, 3, 32), 3, 1);
    let mut seeds = vec![std::fs::read(fresh.join("shard-00000.parquet")).unwrap()];
    let corpus = repo_root().join("tests/fixtures/fuzz/shard");
    let mut names: Vec<_> =
        std::fs::read_dir(&corpus).unwrap().flatten().map(|e| e.path()).collect();
    names.sort();
    seeds.extend(names.iter().map(|p| std::fs::read(p).unwrap()));
    let budget: f64 =
        std::env::var("MOSIC_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20.0);
    let mut rng = mosic::rng::SplitMix64::new(11);
    let path = dir.path().join("m.parquet");
    let (mut ok, mut refused, mut cases, mut kept) = (0, 0, 0, 0);
    let start = std::time::Instant::now();
    // The corpus as it is first, then mutations of every seed in turn.
    for s in &seeds[1..] {
        std::fs::write(&path, s).unwrap();
        assert!(read_whole(&path).is_ok(), "a corpus input panicked");
    }
    while start.elapsed().as_secs_f64() < budget {
        let mut v = seeds[cases % seeds.len()].clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(v.len().max(1) as u64) as usize;
            match rng.below(6) {
                _ if v.is_empty() => v.push(rng.below(256) as u8),
                0 => v[i] ^= 1 << rng.below(8),
                1 => v[i] = rng.below(256) as u8,
                2 => v.truncate(i),
                3 => v.insert(i, rng.below(256) as u8),
                // The footer (metadata, page index) is where sizes live.
                4 => {
                    let j = v.len() - 1 - rng.below(v.len().min(512) as u64) as usize;
                    v[j] = rng.below(256) as u8;
                }
                _ => {
                    let n = (1 + rng.below(8) as usize).min(v.len() - i);
                    v[i..i + n].iter_mut().for_each(|b| *b = rng.below(256) as u8);
                }
            }
        }
        std::fs::write(&path, &v).unwrap();
        let t0 = std::time::Instant::now();
        match read_whole(&path) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                refused += 1;
                // Inputs that reach the decoder's own asserts are worth keeping in the corpus
                // (the first few: thousands reach them in a run).
                if e.to_string().contains("the Parquet decoder failed") && kept < 16 {
                    kept += 1;
                    let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                        .join(format!("decoder-{cases}.parquet"));
                    std::fs::copy(&path, &keep).unwrap();
                    println!("kept {} ({e})", keep.display());
                }
            }
            Err(_) => {
                let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("panic-{cases}.parquet"));
                std::fs::copy(&path, &keep).unwrap();
                panic!(
                    "case {cases}: the reader panicked (input kept at {}; add it to {})",
                    keep.display(),
                    corpus.display()
                );
            }
        }
        assert!(t0.elapsed().as_secs_f64() < 5.0, "case {cases} took {:?}", t0.elapsed());
        cases += 1;
    }
    let peak = peak_mib();
    println!("{cases} mutated shards: {ok} read, {refused} refused, peak {peak:.0} MiB");
    assert!(cases > 100 && refused > 0);
    assert!(peak < 1024.0, "peak {peak} MiB");
}
