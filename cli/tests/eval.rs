//! The evaluation commands end to end on small synthetic data: `mosic features`, `mosic eval
//! video|cluster|linear|incontext`, their JSON output and protocol cards, bad input, and
//! in-loop validation. (Agreement with the reference implementations is tested in the eval
//! crate, on the reference goldens.)

mod common;
mod sets;

use common::*;
use sets::*;
use std::path::Path;

/// A random tiny ViT: the commands are tested, not the features.
const MODEL: [&str; 5] = ["--random", "3", "--preset", "vit_tiny_test", "--batch=8"];

fn scores(path: &Path) -> Vec<(String, f64, Vec<f64>)> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let per =
                s["per_seed"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            (s["name"].as_str().unwrap().to_string(), s["mean"].as_f64().unwrap(), per)
        })
        .collect()
}

#[test]
fn features_are_written_as_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data, 0);
    let out = tmp.path().join("f.safetensors");
    let frames = data.join("JPEGImages");
    let mut a = vec![
        "features",
        "--input",
        frames.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--size",
        "56",
    ];
    a.extend(MODEL);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    let (maps, names) = mosic_trainer::eval::features::load_features(&out).unwrap();
    // 2 videos x 24 frames, 56 px / patch 14 = 4x4 tokens of 64 channels.
    assert_eq!(maps.len(), 48);
    assert_eq!((maps[0].height, maps[0].width, maps[0].dim), (4, 4, 64));
    assert_eq!(names[0], "synth_0000/00000.jpg");
    assert!(maps[0].data.iter().all(|v| v.is_finite()));
    // The same images give the same features as the library call.
    let vit = mosic_trainer::eval::features::load_backbone::<burn::backend::NdArray<f32>>(
        &mosic_trainer::eval::features::Weights::Random { preset: "vit_tiny_test".into(), seed: 3 },
        Some(56),
        &Default::default(),
    )
    .unwrap();
    let img =
        mosic_trainer::eval::features::read_image(&data.join("JPEGImages/synth_0000/00000.jpg"))
            .unwrap();
    let direct = mosic_trainer::eval::features::extract(&vit, &[img], 1);
    let d =
        direct[0].data.iter().zip(&maps[0].data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(d < 1e-5, "{d}");

    // Video files: every n-th decoded frame, named FILE#FRAME.
    let vids = tmp.path().join("vids");
    synth_videos(&vids, 1, 24, (160, 96), &[]);
    let out2 = tmp.path().join("v.safetensors");
    let videos = vids.join("videos");
    let mut a = vec![
        "features",
        "--input",
        videos.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
        "--size",
        "56",
        "--every",
        "6",
    ];
    a.extend(MODEL);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    let (maps, names) = mosic_trainer::eval::features::load_features(&out2).unwrap();
    assert_eq!(
        names,
        [
            "synth_0000.mp4#00000",
            "synth_0000.mp4#00006",
            "synth_0000.mp4#00012",
            "synth_0000.mp4#00018"
        ]
    );
    assert_eq!(maps.len(), 4);

    let o = run(&[
        "features",
        "--input",
        tmp.path().join("nothing").to_str().unwrap(),
        "--out",
        "x.safetensors",
        "--random",
        "0",
        "--preset",
        "vit_tiny_test",
    ]);
    assert!(!o.status.success() && text(&o).contains("nothing"), "{}", text(&o));
}

#[test]
fn video_protocols_report_every_level() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    synth(&data, 0);
    let json = tmp.path().join("video.json");
    let mut a = vec![
        "eval",
        "video",
        "--data",
        data.to_str().unwrap(),
        "--size",
        "56",
        "--mask-size",
        "32",
        "--every",
        "4",
        "--seeds",
        "1,2",
        "--over-dataset",
        "20",
        "--dataset-size",
        "28",
        "--json",
        json.to_str().unwrap(),
    ];
    a.extend(MODEL);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    let s = scores(&json);
    let names: Vec<&str> = s.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names[..2], ["F hungarian", "C hungarian"]);
    assert!(names[2].starts_with("D hungarian"));
    assert_eq!(names[3..], ["F over K=10", "C over K=10", "D over K=20"]);
    for (name, mean, per) in &s {
        assert_eq!(per.len(), 2, "{name}");
        assert!((0.0..=1.0).contains(mean) && *mean > 0.0, "{name}: {mean}");
    }
    // Overclustering can only help: many-to-one matching of finer clusters.
    assert!(s[4].1 >= s[1].1 - 0.05, "{s:?}");
    assert!(text(&o).contains("C hungarian"));
    card(&json, "TimeT", 56, 32, &[1, 2]);
    assert!(text(&o).contains("SMSD75/Timetuning@"), "{}", text(&o));
}

/// The protocol card: protocol, reference (repository@commit), sizes and seeds.
fn card(path: &Path, protocol: &str, input: u64, mask: u64, seeds: &[u64]) -> serde_json::Value {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let c = doc["card"].clone();
    assert!(c["protocol"].as_str().unwrap().contains(protocol), "{c}");
    assert!(c["reference"].as_str().unwrap().contains('@'), "{c}");
    assert_eq!(
        (c["input_size"].as_u64(), c["mask_size"].as_u64()),
        (Some(input), Some(mask)),
        "{c}"
    );
    let got: Vec<u64> =
        c["seeds"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(got, seeds, "{c}");
    c
}

#[test]
fn image_protocols_run_on_a_plain_layout() {
    let tmp = tempfile::tempdir().unwrap();
    image_set(tmp.path());
    let set = tmp.path().join("set");
    let common = |cmd: &'static str, json: &Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "eval",
            cmd,
            "--data",
            set.to_str().unwrap(),
            "--size",
            "56",
            "--json",
            json.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if cmd != "incontext" {
            a.extend(["--mask-size", "24"].map(String::from));
        }
        a.extend(MODEL.iter().map(|s| s.to_string()));
        a
    };
    let json = tmp.path().join("cluster.json");
    let mut a = common("cluster", &json);
    a.extend(["--k", "0,12", "--seeds", "3", "--split", "val"].map(String::from));
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let s = scores(&json);
    assert!(s[0].0.ends_with("hungarian") && s[1].0 == "K=12 overclustering", "{s:?}");
    assert!(s.iter().all(|x| x.2.len() == 3 && x.1 > 0.0 && x.1 <= 1.0), "{s:?}");
    card(&json, "Leopart", 56, 24, &[0, 1, 2]);

    let json = tmp.path().join("linear.json");
    let mut a = common("linear", &json);
    a.extend(
        ["--epochs", "3", "--batch-size", "4", "--train-split", "train", "--lr-drops", "2"]
            .map(String::from),
    );
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("linear probe epoch 3/3") && text(&o).contains("lr 1.0e-3"),
        "{}",
        text(&o)
    );
    let s = scores(&json);
    assert!(s[0].1 > 0.0 && s[0].1 <= 1.0, "{s:?}");
    let c = card(&json, "linear", 56, 24, &[0]);
    assert!(c["settings"]["augment"].as_str().unwrap().contains("RandomResizedCrop"), "{c}");
    // The default training split is VOC's trainaug: a plain set without trainaug.txt is refused by name.
    let mut a = common("linear", &json);
    a.extend(["--epochs", "1"].map(String::from));
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success() && text(&o).contains("trainaug.txt"), "{}", text(&o));

    let json = tmp.path().join("incontext.json");
    let mut a = common("incontext", &json);
    a.extend(
        [
            "--fractions",
            "1,2",
            "--seeds",
            "3,4",
            "--neighbours",
            "5",
            "--train-split",
            "train",
            "--memory-size",
            "200",
        ]
        .map(String::from),
    );
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let s = scores(&json);
    assert_eq!(
        s.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        ["fraction 1/1", "fraction 1/2"]
    );
    assert_eq!((s[0].2.len(), s[1].2.len()), (1, 2), "{s:?}");
    let c = card(&json, "Hummingbird", 56, 56, &[3, 4]);
    assert_eq!(c["bank_size"].as_str(), Some("200"), "{c}");
    assert!(text(&o).contains("(0 B of features on disk)"), "{}", text(&o));
    // A memory budget a fraction of the features' size: at 448 px every image has 1,024
    // patches, so the whole bank (8 images, one pass) and the validation set are 8,192 rows
    // each, the smallest chunk a store writes; under a 20 KB budget both go to disk, and the
    // scores stay the same to the last bit.
    let big = |json: &Path, budget: Option<&str>| -> Vec<String> {
        let mut b = common("incontext", json);
        let at = b.iter().position(|x| x.as_str() == "56").unwrap();
        b[at] = "448".into();
        b.extend(
            [
                "--fractions",
                "1",
                "--seeds",
                "3",
                "--neighbours",
                "5",
                "--train-split",
                "train",
                "--memory-size",
                "0",
                "--no-augment",
            ]
            .map(String::from),
        );
        if let Some(gb) = budget {
            b.extend(["--memory-gb".to_string(), gb.to_string()]);
        }
        b
    };
    let (whole, small) = (tmp.path().join("incontext-448.json"), tmp.path().join("small.json"));
    let o = run(&big(&whole, None).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("8192 bank patches (0 B of features on disk)"), "{}", text(&o));
    let o = run(&big(&small, Some("0.00002")).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("8192 bank patches (4.0 MB of features on disk)"), "{}", text(&o));
    assert_eq!(scores(&small), scores(&whole), "scores with features on disk");
    // 8 images x 2 passes share 200 patches: 12 per image, 192 in all.
    assert!(c["settings"]["bank"].as_str().unwrap().contains("1/1: 192"), "{c}");
    // Published lists: names resolved in the training split, a missing list named.
    let sets = tmp.path().join("file_sets");
    std::fs::create_dir_all(sets.join("1_div_2")).unwrap();
    std::fs::write(sets.join("1_div_2/train_2_3.txt"), "synth_0050_00000\nsynth_0050_00003\n")
        .unwrap();
    let mut a = common("incontext", &json);
    a.extend(
        [
            "--fractions",
            "2",
            "--seeds",
            "3",
            "--neighbours",
            "5",
            "--train-split",
            "train",
            "--no-augment",
            "--memory-size",
            "0",
            "--file-sets",
        ]
        .map(String::from),
    );
    a.push(sets.to_str().unwrap().to_string());
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    // Two images of 4x4 patches, unbounded bank.
    assert!(
        card(&json, "Hummingbird", 56, 56, &[3])["settings"]["bank"]
            .as_str()
            .unwrap()
            .contains("1/2: 32"),
        "{}",
        text(&o)
    );
    let last = a.len() - 1;
    a.insert(last - 1, "--seeds".into());
    a.insert(last, "4".into());
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success() && text(&o).contains("_2_4.txt"), "{}", text(&o));

    // Bad input names the file.
    let o = run(&[
        "eval",
        "cluster",
        "--data",
        set.to_str().unwrap(),
        "--run",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success() && text(&o).contains("not a run directory"), "{}", text(&o));
    std::fs::remove_file(set.join("masks/synth_0051_00003.png")).unwrap();
    let mut a = common("cluster", &tmp.path().join("x.json"));
    a.extend(["--split", "val"].map(String::from));
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success() && text(&o).contains("synth_0051_00003.png"), "{}", text(&o));
}

#[test]
fn training_validates_in_the_loop_and_evaluates_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train");
    synth_videos(&data, 2, 100, (160, 96), &["--no-mp4"]);
    let val = tmp.path().join("val");
    synth(&val, 100);
    let out = tmp.path().join("run");
    let o = run(&[
        "train",
        "--out",
        out.to_str().unwrap(),
        "--set",
        "model.preset=vit_tiny_test",
        "--set",
        "model.img_size=56",
        "--set",
        "head.hidden=[32]",
        "--set",
        "head.prototypes=8",
        "--set",
        "data.batch_size=2",
        "--set",
        "data.workers=1",
        "--set",
        "data.shuffle_buffer=4",
        "--set",
        "run.steps=4",
        "--set",
        &format!("data.shards={}", data.join("gt").display()),
        "--set",
        "objective.motion=identity",
        "--set",
        "validation.every=2",
        "--set",
        &format!("validation.data={}", val.display()),
        "--set",
        "validation.max_images=8",
        "--set",
        "validation.overclustering=6",
        "--set",
        "run.log_every=1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("validation mIoU"), "{}", text(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let validated: Vec<u64> = lines
        .iter()
        .filter(|l| l.get("validation").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(validated, [2, 4]);
    let v = lines[3]["validation"]["C hungarian"].as_f64().unwrap();
    assert!(v > 0.0 && v <= 1.0, "{v}");
    assert!(lines[3]["validation"]["C over K=6"].is_number());
    assert!(out.join("validation.png").is_file());

    // The run's checkpoint and its initial weights can be evaluated directly.
    for extra in [None, Some("--initial")] {
        let mut a = vec![
            "eval",
            "video",
            "--data",
            val.to_str().unwrap(),
            "--run",
            out.to_str().unwrap(),
            "--size",
            "56",
            "--mask-size",
            "24",
            "--seeds",
            "1",
            "--over-dataset",
            "0",
        ];
        a.extend(extra);
        let o = run(&a);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains(if extra.is_some() {
                "initial weights"
            } else {
                "newest checkpoint"
            }),
            "{}",
            text(&o)
        );
    }
    // A missing validation set stops the run before training, naming it.
    let o = run(&[
        "train",
        "--out",
        tmp.path().join("run2").to_str().unwrap(),
        "--set",
        "model.preset=vit_tiny_test",
        "--set",
        "model.img_size=56",
        "--set",
        "data.batch_size=2",
        "--set",
        &format!("data.shards={}", data.join("gt").display()),
        "--set",
        "validation.every=2",
        "--set",
        "validation.data=/nonexistent/val",
    ]);
    assert!(!o.status.success() && text(&o).contains("/nonexistent/val"), "{}", text(&o));
}

/// The scratch folder of an evaluation: checked before any work (a file, an unwritable folder,
/// a negative budget are refused by name), private while features spill there, removed on
/// Ctrl-C, and swept on the next run when a killed evaluation left one behind.
#[test]
fn scratch_is_checked_private_and_removed_on_interrupt() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    image_set(tmp.path());
    let set = tmp.path().join("set");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let args = |scratch: &Path, gb: &str| -> Vec<String> {
        let mut a = incontext_spill_args(&set, scratch);
        a.push(format!("--memory-gb={gb}"));
        a
    };
    fn refs(a: &[String]) -> Vec<&str> {
        a.iter().map(String::as_str).collect()
    }
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for (a, want) in [
        (args(&file, "1"), "not a folder"),
        (args(Path::new("/proc"), "1"), "cannot write there"),
        (args(&scratch, "-1"), "--memory-gb must be a positive number"),
    ] {
        let o = run(&refs(&a));
        assert!(!o.status.success());
        assert!(text(&o).contains(want) && !text(&o).contains("embedded"), "{}", text(&o));
    }
    // A folder a killed evaluation left behind is swept by the next one.
    let stale = scratch.join("mosic-eval-4194305-abc");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("chunk-000000.f32"), vec![0u8; 4096]).unwrap();
    let mut child = mosic()
        .args(refs(&args(&scratch, "0.00002")))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let spill = loop {
        let found = std::fs::read_dir(&scratch).unwrap().flatten().map(|e| e.path()).find(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("mosic-eval-") && p != &stale
        });
        if let Some(d) = found.filter(|d| std::fs::read_dir(d).unwrap().next().is_some()) {
            break d;
        }
        assert!(t0.elapsed().as_secs() < 120 && child.try_wait().unwrap().is_none(), "no spill");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!stale.exists(), "the stale folder was not swept");
    assert_eq!(std::fs::metadata(&spill).unwrap().permissions().mode() & 0o777, 0o700);
    // SAFETY: sends SIGINT to a process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(text(&o).contains("scratch files are removed"), "{}", text(&o));
    assert!(text(&o).contains("left by an evaluation that was killed"), "{}", text(&o));
    assert!(!spill.exists(), "{} is left after Ctrl-C", spill.display());
}
