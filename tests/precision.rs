//! `precision:` through the stages: the demo manifest on the tiny test checkpoint with its base
//! model in bf16 (embed, experts, gate, joint, dense, evaluate; every op of training and
//! decoding, with no mixed-dtype operation, which the CPU backend refuses), then the experts
//! stage in f16 with dynamic loss scaling, and `pipeline transcribe --precision`. (That the
//! adapters stay fp32 in memory is a unit test of `whisper::model`.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use whisper_moe::whisper::testing::tiny_workspace;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wm-precision-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn pipeline(dir: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pipeline")).args(args).current_dir(dir).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn adapter_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path().join("adapter_model.safetensors");
        if p.exists() {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_demo_manifest_trains_and_decodes_with_a_bf16_or_f16_base_model() {
    let dir = tmp("stages");
    tiny_workspace(&dir, 1).unwrap();
    // `precision: bf16` in the params of every stage that loads the model.
    let manifest = fs::read_to_string(dir.join("pipeline.yaml")).unwrap();
    let (stages, params) = manifest.split_once("\nparams:\n").unwrap();
    let mut params = params.to_string();
    for stage in ["embed", "experts", "joint", "evaluate"] {
        let key = format!("\n  {stage}:\n");
        assert!(params.contains(&key) || params.starts_with(&key[1..]), "{stage}");
        params = format!("\n{params}").replacen(&key, &format!("{key}    precision: bf16\n"), 1)[1..].to_string();
    }
    fs::write(dir.join("pipeline.yaml"), format!("{stages}\nparams:\n{params}")).unwrap();
    let (ok, out) = pipeline(&dir, &["run", "all"]);
    assert!(ok, "{out}");
    let params = fs::read_to_string(dir.join(".pipeline/params/dense.json")).unwrap();
    assert!(params.contains("\"precision\": \"bf16\""), "dense trains as the experts do: {params}");
    for adapters in [dir.join("artifacts/experts"), dir.join("artifacts/joint/mixture"), dir.join("artifacts/dense")] {
        assert!(!adapter_files(&adapters).is_empty(), "no adapters in {}", adapters.display());
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("artifacts/evaluate/metrics.json")).unwrap()).unwrap();
    assert!(metrics.to_string().contains("heldout"), "{metrics}");

    // f16: the training loop scales the loss; the experts still come out fp32 and finite.
    let (ok, out) = pipeline(&dir, &["run", "experts", "--set", "experts.precision=f16"]);
    assert!(ok, "{out}");
    assert!(out.contains("the base model computes in f16: dynamic loss scaling from 65536"), "{out}");
    // Every expert's val loss is a number (serde writes NaN and infinities as null).
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("artifacts/experts/experts.json")).unwrap()).unwrap();
    let experts = summary["summary"].as_array().unwrap();
    assert!(!experts.is_empty());
    for e in experts {
        assert!(e["val_loss"].as_f64().is_some_and(f64::is_finite), "{e}");
    }
    let files = adapter_files(&dir.join("artifacts/experts"));
    assert!(!files.is_empty());
    for f in files {
        let bytes = fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (k, v) in st.tensors() {
            let finite = v.data().chunks_exact(4).all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite());
            assert!(finite, "{}: {k} is not finite", f.display());
        }
    }

    // transcribe in each precision decodes every file (the texts may differ: a random
    // checkpoint's logits are close together).
    let clips: Vec<String> = ["heldout/h0_8.wav", "heldout/h1_9.wav"].iter().map(|s| s.to_string()).collect();
    for precision in ["fp32", "bf16", "f16"] {
        let mut args = vec!["transcribe", "--mixture", "artifacts/joint/mixture", "--json", "--precision", precision];
        args.extend(clips.iter().map(String::as_str));
        let o = Command::new(env!("CARGO_BIN_EXE_pipeline")).args(&args).current_dir(&dir).output().unwrap();
        assert!(o.status.success(), "{precision}: {}", String::from_utf8_lossy(&o.stderr));
        let lines = String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with('{')).count();
        assert_eq!(lines, clips.len(), "{precision}: {}", String::from_utf8_lossy(&o.stdout));
    }
    let _ = fs::remove_dir_all(&dir);
}
