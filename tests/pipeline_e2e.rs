//! The whole pipeline (model, embed, cluster, gate, experts, joint, dense, evaluate) on a
//! tiny random Whisper and a synthetic three-domain dataset; then what users do next:
//! status, changing the clustering (only cluster and downstream rerun), transcribe with the
//! mixture.

use std::path::Path;
use std::process::Command;

use whisper_moe::audio::write_wav_i16;
use whisper_moe::whisper::testing::{WORDS, domain_tone as tone, tiny_demo_manifest, write_checkpoint};

fn pipeline(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pipeline")).args(args).current_dir(dir).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ran(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("▶ running "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn the_whole_pipeline_runs_and_reruns_only_what_changed() {
    let dir = std::env::temp_dir().join(format!("wm-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data/audio")).unwrap();
    write_checkpoint(&dir.join("tiny-model"), 21, &[], &[]).unwrap();
    let mut csv = String::from("file_name,transcription,domain\n");
    for kind in 0..3 {
        for i in 0..8 {
            let f = format!("audio/d{kind}_{i}.wav");
            write_wav_i16(&dir.join("data").join(&f), &[tone(kind, i)], 16_000).unwrap();
            let words: Vec<&str> = (0..3 + i % 3).map(|w| WORDS[(kind * 7 + i * 3 + w) % WORDS.len()]).collect();
            csv.push_str(&format!("{f},{},domain{kind}\n", words.join(" ")));
        }
    }
    std::fs::write(dir.join("data/metadata.csv"), csv).unwrap();
    // A held-out set: other clips of the same kinds, in another format (NeMo JSONL).
    std::fs::create_dir_all(dir.join("heldout")).unwrap();
    let mut jsonl = String::new();
    for kind in 0..3 {
        for i in 8..10 {
            let f = format!("h{kind}_{i}.wav");
            write_wav_i16(&dir.join("heldout").join(&f), &[tone(kind, i)], 16_000).unwrap();
            let words: Vec<&str> = (0..3).map(|w| WORDS[(kind * 5 + i + w) % WORDS.len()]).collect();
            let line = serde_json::json!({"audio_filepath": f, "text": words.join(" "), "duration": 1.0, "domain": format!("domain{kind}")});
            jsonl.push_str(&format!("{line}\n"));
        }
    }
    std::fs::write(dir.join("heldout/manifest.jsonl"), jsonl).unwrap();
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.yaml")).unwrap();
    // The demo manifest itself, with short training for the tiny model.
    let manifest = tiny_demo_manifest(&manifest, 1);
    assert!(manifest.contains(r"encoder\.layers\.1") && manifest.contains("freeze_encoder_adapters: true"));
    assert!(manifest.contains("k: 3") && manifest.contains("model: tiny-model"));
    std::fs::write(dir.join("pipeline.yaml"), &manifest).unwrap();

    let (ok, out, err) = pipeline(&dir, &["run", "all"]);
    assert!(ok, "pipeline run all failed:\n{err}\n{out}");
    assert_eq!(ran(&err), ["model", "embed", "cluster", "gate", "experts", "joint", "dense", "evaluate"]);
    for f in [
        "artifacts/embeddings/part-00000.parquet",
        "artifacts/clusters/summary.json",
        "artifacts/gate/gate.safetensors",
        "artifacts/experts/expert_2/adapter_model.safetensors",
        "artifacts/joint/mixture/routing.json",
        "artifacts/joint/log_steps/part-00000.parquet",
        "artifacts/joint/routing/part-00000.parquet",
        "artifacts/dense/adapter/adapter_config.json",
        "artifacts/evaluate/predictions/part-00000.parquet",
        "artifacts/evaluate/report/index.html",
        "artifacts/evaluate/report/plots/wer_by_group.png",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    // The report says how the mixture decoded (the manifest's evaluate.fallback_below: 0.8).
    let report = std::fs::read_to_string(dir.join("artifacts/evaluate/report/index.html")).unwrap();
    assert!(report.contains("(where its probability is below 0.8, the average of the experts)"));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("artifacts/evaluate/metrics.json")).unwrap()).unwrap();
    let systems: Vec<&str> =
        metrics["results"].as_array().unwrap().iter().map(|r| r["system"].as_str().unwrap()).collect();
    let sets: Vec<&str> = metrics["results"].as_array().unwrap().iter().map(|r| r["split"].as_str().unwrap()).collect();
    assert_eq!(systems.len(), 12, "{metrics}");
    for (set, rows) in [("test", 0..4), ("val", 4..8), ("heldout", 8..12)] {
        assert!(sets[rows.clone()].iter().all(|s| *s == set), "{sets:?}");
        assert_eq!(systems[rows], ["base", "mixture", "oracle", "dense"]);
    }
    assert!(err.contains("wall time") && err.contains("total"), "the runner prints wall times");
    check_values(&dir, &metrics);

    let (_, status, _) = pipeline(&dir, &["status"]);
    assert!(status.contains("everything is up to date"), "{status}");
    let (_, shown, _) = pipeline(&dir, &["show", "artifacts/clusters/clusters", "-n", "3"]);
    assert!(shown.contains("probs: FixedSizeList<Float32, 3>") && shown.contains("first 3 rows"), "{shown}");

    let metrics_k3 = std::fs::read(dir.join("artifacts/evaluate/metrics.json")).unwrap();

    // Changing the clustering reruns cluster and everything downstream, not embed.
    std::fs::write(dir.join("pipeline.yaml"), manifest.replace("k: 3", "k: 2")).unwrap();
    let (_, status, _) = pipeline(&dir, &["status"]);
    assert!(status.contains("params cluster.k changed 3 -> 2"), "{status}");
    let (ok, out, err) = pipeline(&dir, &["run", "all"]);
    assert!(ok, "{err}\n{out}");
    assert_eq!(ran(&err), ["cluster", "gate", "experts", "joint", "dense", "evaluate"]);

    // Transcribe new audio with the mixture: transcript, chosen expert and gate probabilities.
    let (ok, out, err) = pipeline(
        &dir,
        &["transcribe", "--mixture", "artifacts/joint/mixture", "--json", "data/audio/d0_1.wav", "data/audio/d2_3.wav"],
    );
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let p: Vec<f64> = l["probs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(p.len(), 2);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        let e = l["expert"].as_u64().unwrap() as usize;
        assert!(p[e] >= p[1 - e], "the chosen expert has the highest probability");
        assert!(l["text"].is_string());
    }

    // Evaluate's mixture is `pipeline transcribe --mixture`: on the held-out clips (in the
    // manifest's order, as evaluate takes them, with its decoding settings) the same texts
    // and experts, bit for bit.
    let files: Vec<String> = (0..3).flat_map(|k| (8..10).map(move |i| format!("heldout/h{k}_{i}.wav"))).collect();
    let mut args = vec!["transcribe", "--mixture", "artifacts/joint/mixture", "--json", "--fallback-below", "0.8"];
    args.extend(["--max-new-tokens", "8", "--batch-size", "8"]);
    args.extend(files.iter().map(String::as_str));
    let (ok, out, err) = pipeline(&dir, &args);
    assert!(ok, "{err}");
    let cli: Vec<(String, u64)> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|l| (l["text"].as_str().unwrap().to_string(), l["expert"].as_u64().unwrap()))
        .collect();
    assert_eq!(cli, mixture_rows(&dir, "heldout"), "transcribe --mixture differs from evaluate's mixture");
    // `pipeline compare` on evaluate's predictions gives evaluate's own comparison (same draws).
    let pred = "artifacts/evaluate/predictions";
    let (ok, out, err) = pipeline(&dir, &["compare", pred, "--against", "dense", "--split", "heldout", "--json"]);
    assert!(ok, "{err}");
    let cli: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("artifacts/evaluate/metrics.json")).unwrap()).unwrap();
    let own = metrics["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["a"] == "mixture" && c["b"] == "dense" && c["split"] == "heldout" && c["group"].is_null());
    assert_eq!(Some(&cli), own, "{metrics}");

    // Going back to k = 3 restores every stage from the run cache: nothing is trained again,
    // and the outs are the ones the k = 3 run wrote.
    std::fs::write(dir.join("pipeline.yaml"), &manifest).unwrap();
    let (ok, out, err) = pipeline(&dir, &["run", "all"]);
    assert!(ok, "{err}\n{out}");
    assert!(ran(&err).is_empty(), "{err}");
    let restored: Vec<&str> =
        err.lines().filter_map(|l| l.strip_prefix("↺ restored ")).map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(restored, ["cluster", "gate", "experts", "joint", "dense", "evaluate"]);
    assert_eq!(std::fs::read(dir.join("artifacts/evaluate/metrics.json")).unwrap(), metrics_k3);
    let (_, status, _) = pipeline(&dir, &["status"]);
    assert!(status.contains("everything is up to date"), "{status}");
}

/// Evaluate's mixture rows of `set`, in its order: (hypothesis, expert).
fn mixture_rows(dir: &Path, set: &str) -> Vec<(String, u64)> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let pred =
        whisper_moe::artifacts::read_dataset(&dir.join("artifacts/evaluate/predictions")).unwrap().concat().unwrap();
    let col =
        |c: &str| arrow::compute::cast(pred.column_by_name(c).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
    let (system, split, hyp) = (col("system"), col("split"), col("hypothesis"));
    let expert =
        arrow::compute::cast(pred.column_by_name("expert").unwrap(), &arrow::datatypes::DataType::Int64).unwrap();
    let (system, split, hyp) = (system.as_string::<i32>(), split.as_string::<i32>(), hyp.as_string::<i32>());
    let expert = expert.as_primitive::<Int64Type>();
    let rows: Vec<(String, u64)> = (0..pred.num_rows())
        .filter(|&i| system.value(i) == "mixture" && split.value(i) == set)
        .map(|i| (hyp.value(i).to_string(), expert.value(i) as u64))
        .collect();
    assert_eq!(rows.len(), 6, "evaluate's held-out rows");
    rows
}

/// The numbers agree with each other: every WER in metrics.json is the (S + I + D) / N of its
/// rows in predictions/; the oracle decodes each test/val utterance with its cluster's expert
/// (the clusters table), the mixture's routing accuracy counts the rows whose expert is the
/// cluster; the dense baseline took exactly the mixture's optimizer steps.
fn check_values(dir: &Path, metrics: &serde_json::Value) {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    let pred =
        whisper_moe::artifacts::read_dataset(&dir.join("artifacts/evaluate/predictions")).unwrap().concat().unwrap();
    let strs = |c: &str| -> Vec<String> {
        let a = arrow::compute::cast(pred.column_by_name(c).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
        a.as_string::<i32>().iter().map(|s| s.unwrap_or("").to_string()).collect()
    };
    let ints = |c: &str| -> Vec<Option<i64>> {
        let a = arrow::compute::cast(pred.column_by_name(c).unwrap(), &arrow::datatypes::DataType::Int64).unwrap();
        let a = a.as_primitive::<Int64Type>().clone();
        (0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect()
    };
    let (system, split, id) = (strs("system"), strs("split"), strs("id"));
    let (sub, ins, del, words) = (ints("substitutions"), ints("insertions"), ints("deletions"), ints("words"));
    let (expert, cluster) = (ints("expert"), ints("cluster"));
    for r in metrics["results"].as_array().unwrap() {
        let (sys, set) = (r["system"].as_str().unwrap(), r["split"].as_str().unwrap());
        let rows: Vec<usize> = (0..system.len()).filter(|&i| system[i] == sys && split[i] == set).collect();
        assert!(!rows.is_empty(), "{sys} on {set} has no predictions");
        let errors: i64 = rows.iter().map(|&i| sub[i].unwrap() + ins[i].unwrap() + del[i].unwrap()).sum();
        let n: i64 = rows.iter().map(|&i| words[i].unwrap()).sum();
        assert_eq!(r["words"].as_i64().unwrap(), n, "{sys} {set}");
        let wer = r["wer"].as_f64().unwrap();
        assert!((wer - errors as f64 / n as f64).abs() < 1e-12, "{sys} {set}: {wer} vs {errors}/{n}");
        if sys == "base" {
            assert!(rows.iter().all(|&i| expert[i].is_none()), "the base model has no expert");
        }
    }
    // The clusters table: id -> cluster, the oracle's expert on the pipeline's own splits.
    let (clusters, _) = whisper_moe::artifacts::Clusters::read(&dir.join("artifacts/clusters/clusters")).unwrap();
    let of: std::collections::HashMap<&str, i64> =
        clusters.ids.iter().map(String::as_str).zip(clusters.cluster.iter().map(|&c| c as i64)).collect();
    let oracle: Vec<usize> = (0..system.len()).filter(|&i| system[i] == "oracle" && split[i] != "heldout").collect();
    assert!(!oracle.is_empty());
    for &i in &oracle {
        assert_eq!(expert[i], Some(of[id[i].as_str()]), "oracle row {} must use its cluster's expert", id[i]);
        assert_eq!(cluster[i], Some(of[id[i].as_str()]));
    }
    let mix_test: Vec<usize> = (0..system.len()).filter(|&i| system[i] == "mixture" && split[i] == "test").collect();
    let correct = mix_test.iter().filter(|&&i| expert[i] == cluster[i]).count();
    let acc = metrics["routing_accuracy_by_set"]["test"].as_f64().unwrap();
    assert!((acc - correct as f64 / mix_test.len() as f64).abs() < 1e-12, "routing accuracy {acc}");
    let json = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
    };
    let (experts, joint, dense) = (
        json("artifacts/experts/experts.json"),
        json("artifacts/joint/summary.json"),
        json("artifacts/dense/dense.json"),
    );
    let budget = experts["optimizer_steps"].as_u64().unwrap()
        + experts["shared_steps"].as_u64().unwrap()
        + joint["optimizer_steps"].as_u64().unwrap();
    assert!(budget > 0);
    assert_eq!(dense["budget"].as_u64().unwrap(), budget, "{dense}");
    // Early stopping (`patience`, as the experts have) may end it before the budget is spent.
    let steps = dense["optimizer_steps"].as_u64().unwrap();
    assert!(steps > 0 && steps <= budget, "dense took {steps} steps of a budget of {budget}");
}
