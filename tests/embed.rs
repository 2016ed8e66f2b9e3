//! Stage embed end to end: dataset formats, rejected inputs, sharding, and the HF reference.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use whisper_moe::artifacts::{Embeddings, Rejected, write_dataset};
use whisper_moe::audio::write_wav_i16;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wm-embed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A speech-like test signal: a few harmonics with a slow envelope and a little noise.
fn signal(freq: f32, secs: f32, rate: u32, seed: u32) -> Vec<f32> {
    let n = (secs * rate as f32) as usize;
    let mut s = seed.wrapping_mul(2654435761);
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let noise = (s as f32 / u32::MAX as f32 - 0.5) * 0.02;
            let env = 0.5 + 0.5 * (2.0 * std::f32::consts::PI * 3.0 * t).sin();
            env * 0.2
                * ((2.0 * std::f32::consts::PI * freq * t).sin() + 0.5 * (4.0 * std::f32::consts::PI * freq * t).sin())
                + noise
        })
        .collect()
}

fn tiny_model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    whisper_moe::whisper::testing::write_checkpoint(&m, 3, &[], &[]).unwrap();
    m
}

fn embed(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stage-embed")).args(args).output().expect("run stage-embed")
}

fn embed_ok(args: &[&str]) {
    let out = embed(args);
    assert!(out.status.success(), "stage-embed {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Good clips of several formats (wav at two rates, mp3 8 kHz stereo, ogg 22 kHz).
fn good_clips(dir: &Path) -> Vec<(String, String, String)> {
    write_wav_i16(&dir.join("a.wav"), &[signal(220.0, 2.0, 16_000, 1)], 16_000).unwrap();
    write_wav_i16(&dir.join("b.wav"), &[signal(330.0, 3.0, 44_100, 2)], 44_100).unwrap();
    std::fs::copy(data_dir().join("stereo_8k.mp3"), dir.join("c.mp3")).unwrap();
    std::fs::copy(data_dir().join("speech_22k.ogg"), dir.join("d.ogg")).unwrap();
    vec![
        ("a.wav".into(), "the cat sat".into(), "x".into()),
        ("b.wav".into(), "a big dog".into(), "y".into()),
        ("c.mp3".into(), "the cat sat on the mat".into(), "x".into()),
        ("d.ogg".into(), "we go to the house".into(), "y".into()),
    ]
}

fn write_csv(path: &Path, rows: &[(String, String, String)]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(["file_name", "transcription", "domain"]).unwrap();
    for (f, t, d) in rows {
        w.write_record([f, t, d]).unwrap();
    }
    w.flush().unwrap();
}

/// One record batch as HF datasets exports audio: an `audio` struct of the files' bytes and
/// paths, a `sentence` column (`sentences`, null where None) and, with `domain`, the domain.
fn hf_parquet_batch(
    dir: &Path,
    rows: &[(String, String, String)],
    sentences: &[Option<&str>],
    domain: bool,
) -> RecordBatch {
    let bytes: Vec<Vec<u8>> = rows.iter().map(|(f, _, _)| std::fs::read(dir.join(f)).unwrap()).collect();
    let audio_fields =
        Fields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)]);
    let audio = StructArray::new(
        audio_fields.clone(),
        vec![
            Arc::new(BinaryArray::from_iter_values(bytes.iter())) as ArrayRef,
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.as_str()))),
        ],
        None,
    );
    let mut fields =
        vec![Field::new("audio", DataType::Struct(audio_fields), true), Field::new("sentence", DataType::Utf8, true)];
    let mut columns: Vec<ArrayRef> =
        vec![Arc::new(audio), Arc::new(sentences.iter().copied().collect::<StringArray>())];
    if domain {
        fields.push(Field::new("domain", DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2.as_str()))));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

#[test]
fn three_dataset_formats_give_the_same_table() {
    let dir = tmp("formats");
    let model = tiny_model(&dir);
    let rows = good_clips(&dir);
    write_csv(&dir.join("metadata.csv"), &rows);
    let jsonl: String = rows
        .iter()
        .map(|(f, t, d)| {
            serde_json::json!({"audio_filepath": f, "text": t, "duration": 1.0, "domain": d}).to_string() + "\n"
        })
        .collect();
    std::fs::write(dir.join("manifest.jsonl"), jsonl).unwrap();
    // HF datasets' Parquet export: an audio struct of bytes and path, a `sentence` column.
    let sentences: Vec<Option<&str>> = rows.iter().map(|r| Some(r.1.as_str())).collect();
    let batch = hf_parquet_batch(&dir, &rows, &sentences, true);
    std::fs::create_dir_all(dir.join("hf")).unwrap();
    write_dataset(&dir.join("hf/train"), &[batch], &Default::default()).unwrap();

    let m = model.to_str().unwrap();
    let mut tables = Vec::new();
    for (name, ds) in [("csv", "metadata.csv"), ("jsonl", "manifest.jsonl"), ("parquet", "hf/train")] {
        let out = dir.join(format!("out-{name}"));
        let rej = dir.join(format!("rej-{name}"));
        let ds = dir.join(ds);
        embed_ok(&[
            "--dataset",
            ds.to_str().unwrap(),
            "--model",
            m,
            "--out",
            out.to_str().unwrap(),
            "--rejected",
            rej.to_str().unwrap(),
        ]);
        let (e, meta) = Embeddings::read(&out).unwrap();
        assert_eq!(e.len(), 4, "{name}: all four clips embedded");
        assert_eq!(meta["pooling"], "mean_valid");
        tables.push(e);
    }
    assert_eq!(tables[0].ids, vec!["a.wav", "b.wav", "c.mp3", "d.ogg"]);
    assert_eq!(tables[0].column("domain").unwrap()[1].as_deref(), Some("y"));
    // The mp3 is 8 kHz stereo of ~3.4 s, resampled to 16 kHz mono.
    assert!((tables[0].durations[2] - 3.4).abs() < 0.5, "{:?}", tables[0].durations);
    assert_eq!(tables[0], tables[1], "csv and jsonl differ");
    assert_eq!(tables[0], tables[2], "csv and parquet differ");
}

fn bad_dataset(dir: &Path) -> Vec<(String, String, String)> {
    let mut rows = good_clips(dir);
    std::fs::write(dir.join("corrupt.wav"), b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunkjunkjunk").unwrap();
    write_wav_i16(&dir.join("long.wav"), &[signal(200.0, 45.0, 16_000, 3)], 16_000).unwrap();
    write_wav_i16(&dir.join("silent.wav"), &[vec![0.0; 32_000]], 16_000).unwrap();
    write_wav_i16(&dir.join("notext.wav"), &[signal(250.0, 1.0, 16_000, 4)], 16_000).unwrap();
    let bad = [
        ("corrupt.wav", "some words", "z"),
        ("missing.wav", "some words", "z"),
        ("notext.wav", "", "z"),
        ("long.wav", "a long one", "z"),
        ("silent.wav", "nothing", "z"),
    ];
    // Interleave: good, bad, good, bad ...
    let mut all = Vec::new();
    for i in 0..bad.len().max(rows.len()) {
        if i < rows.len() {
            all.push(rows[i].clone());
        }
        if i < bad.len() {
            all.push((bad[i].0.into(), bad[i].1.into(), bad[i].2.into()));
        }
    }
    rows.clear();
    all
}

#[test]
fn bad_inputs_are_rejected_with_reasons_and_do_not_stop_the_stage() {
    let dir = tmp("bad");
    let model = tiny_model(&dir);
    let rows = bad_dataset(&dir);
    write_csv(&dir.join("metadata.csv"), &rows);
    let (out, rej) = (dir.join("emb"), dir.join("rej"));
    let args = |extra: &[&str]| {
        let mut a: Vec<String> =
            ["--dataset", "metadata.csv", "--model", model.to_str().unwrap(), "--out", "emb", "--rejected", "rej"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_stage-embed")).args(args(extra)).current_dir(&dir).output().unwrap()
    };

    let o = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (e, _) = Embeddings::read(&out).unwrap();
    assert_eq!(
        e.ids,
        vec!["a.wav", "b.wav", "c.mp3", "d.ogg"],
        "the good ones (the 8 kHz stereo mp3 included) are embedded"
    );
    let (r, _) = Rejected::read(&rej).unwrap();
    let got: Vec<(&str, &str)> = r.ids.iter().map(String::as_str).zip(r.reasons.iter().map(String::as_str)).collect();
    assert_eq!(
        got,
        vec![
            ("corrupt.wav", "unreadable"),
            ("missing.wav", "missing"),
            ("notext.wav", "no_transcript"),
            ("long.wav", "too_long"),
            ("silent.wav", "silent")
        ]
    );

    // on_error: fail stops at the first bad row, names it, and leaves no embeddings dataset.
    std::fs::remove_dir_all(&out).unwrap();
    let o = run(&["--set", "on_error=fail"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("metadata.csv row 3 (id corrupt.wav)") && err.contains("unreadable"), "{err}");
    assert!(!out.exists(), "no embeddings dataset may appear");
    assert!(
        std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".emb")),
        "no temporary left"
    );
}

#[test]
fn shards_together_equal_the_unsharded_output() {
    let dir = tmp("shards");
    let model = tiny_model(&dir);
    let mut rows = good_clips(&dir);
    for i in 0..3 {
        let f = format!("extra{i}.wav");
        write_wav_i16(&dir.join(&f), &[signal(180.0 + 40.0 * i as f32, 1.5, 16_000, 10 + i)], 16_000).unwrap();
        rows.push((f, "one two".into(), "z".into()));
    }
    write_csv(&dir.join("metadata.csv"), &rows);
    let ds = dir.join("metadata.csv");
    let m = model.to_str().unwrap();
    let run = |out: &str, shard: Option<&str>| {
        let mut a = vec!["--dataset", ds.to_str().unwrap(), "--model", m, "--out", out, "--rejected"];
        let rej = format!("{out}-rej");
        a.push(&rej);
        if let Some(s) = shard {
            a.extend(["--shard", s]);
        }
        embed_ok(&a);
    };
    let whole = dir.join("whole");
    let sharded = dir.join("sharded");
    run(whole.to_str().unwrap(), None);
    run(sharded.to_str().unwrap(), Some("1/2"));
    run(sharded.to_str().unwrap(), Some("0/2"));
    let parts: Vec<String> =
        std::fs::read_dir(&sharded).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(parts.len(), 2, "{parts:?}");
    let (a, _) = Embeddings::read(&whole).unwrap();
    let (b, _) = Embeddings::read(&sharded).unwrap();
    assert_eq!(a.len(), 7);
    assert_eq!(a, b);
}

#[test]
fn mean_pooling_matches_transformers_encoder_mean() {
    let Some(shared) = common::shared("mean_pooling_matches_transformers_encoder_mean") else { return };
    let dir = tmp("fixtures");
    let fx = common::fixtures(&shared);
    let rows: Vec<(String, String, String)> = fx
        .iter()
        .map(|f| (f.wav.to_string_lossy().into_owned(), f.json["text"].as_str().unwrap().to_string(), "d".into()))
        .collect();
    write_csv(&dir.join("metadata.csv"), &rows);
    let model = shared.join("models/whisper-tiny.en");
    let (out, rej) = (dir.join("emb"), dir.join("rej"));
    embed_ok(&[
        "--dataset",
        dir.join("metadata.csv").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--rejected",
        rej.to_str().unwrap(),
        "--set",
        "pooling=mean",
        "--set",
        "batch_size=2",
    ]);
    let (e, meta) = Embeddings::read(&out).unwrap();
    assert_eq!(meta["pooling"], "mean");
    assert_eq!(e.len(), fx.len());
    for (i, f) in fx.iter().enumerate() {
        let (_, want) = f.f32s("encoder_mean");
        let d = common::max_abs_diff(e.row(i), &want);
        eprintln!("{}: embedding vs encoder_mean max |diff| = {d:.3e}", f.id);
        assert!(d <= 5e-3, "{}: {d}", f.id);
    }
}

#[test]
fn manifest_problems_are_named_and_null_transcripts_are_rejected_alone() {
    let dir = tmp("manifests");
    let model = tiny_model(&dir);
    let rows = good_clips(&dir);
    let m = model.to_str().unwrap();
    let run = |ds: &str, out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_stage-embed"))
            .args(["--dataset", ds, "--model", m, "--out", out, "--rejected", &format!("{out}-rej")])
            .current_dir(&dir)
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let fails_naming = |ds: &str, words: &[&str]| {
        let (ok, err) = run(ds, &format!("out-{ds}"));
        assert!(!ok, "{ds} must be refused");
        for w in words {
            assert!(err.contains(w), "{ds}: the error must name {w:?}:\n{err}");
        }
        assert!(!dir.join(format!("out-{ds}")).exists(), "{ds}: nothing written");
    };

    // CSV without its audio column, and without a transcript column.
    std::fs::write(dir.join("noaudio.csv"), "path,transcription\na.wav,the cat sat\n").unwrap();
    fails_naming("noaudio.csv", &["noaudio.csv", "no `file_name` column", "path, transcription"]);
    std::fs::write(dir.join("notext.csv"), "file_name,words\na.wav,the cat sat\n").unwrap();
    fails_naming("notext.csv", &["notext.csv", "no transcript column", "`transcription`", "file_name, words"]);
    // JSONL: a malformed line, a manifest without transcripts, one without audio paths.
    let line = |f: &str, t: serde_json::Value| serde_json::json!({"audio_filepath": f, "text": t}).to_string();
    let good = line("a.wav", "the cat sat".into());
    std::fs::write(dir.join("broken.jsonl"), format!("{good}\n{good}\n{{\"audio_filepath\": \"b.wav\", \"text\": \n"))
        .unwrap();
    fails_naming("broken.jsonl", &["broken.jsonl line 3", "not a JSON object"]);
    std::fs::write(dir.join("notext.jsonl"), "{\"audio_filepath\": \"a.wav\", \"words\": \"x\"}\n").unwrap();
    fails_naming("notext.jsonl", &["notext.jsonl", "no transcript column", "audio_filepath, words"]);
    std::fs::write(dir.join("noaudio.jsonl"), "{\"file\": \"a.wav\", \"text\": \"x\"}\n").unwrap();
    fails_naming("noaudio.jsonl", &["noaudio.jsonl", "`audio_filepath`", "file, text"]);

    // A CSV of binary junk: the error names the file.
    let junk: Vec<u8> = (0..4000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(dir.join("junk.csv"), junk).unwrap();
    fails_naming("junk.csv", &["junk.csv"]);
    // A transcript that is not UTF-8 and one without words: those rows only are rejected.
    let mut csv = b"file_name,transcription\na.wav,the cat sat\nb.wav,a big \xff\xfe dog\n".to_vec();
    csv.extend_from_slice(b"c.mp3,\"?! ...\"\nd.ogg,we go to the house\n");
    std::fs::write(dir.join("text.csv"), csv).unwrap();
    let (ok, err) = run("text.csv", "out-text");
    assert!(ok, "{err}");
    let (e, _) = Embeddings::read(&dir.join("out-text")).unwrap();
    assert_eq!(e.ids, vec!["a.wav", "d.ogg"]);
    let (r, _) = Rejected::read(&dir.join("out-text-rej")).unwrap();
    assert_eq!(r.ids, vec!["b.wav", "c.mp3"]);
    assert_eq!(r.reasons, vec!["bad_text", "no_words"]);
    assert!(r.details[0].contains("`transcription` is not UTF-8"), "{:?}", r.details);

    // A null transcript rejects that row only, in JSONL and in Parquet.
    let texts: Vec<serde_json::Value> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| if i == 1 { serde_json::Value::Null } else { r.1.clone().into() })
        .collect();
    let jsonl: String = rows.iter().zip(&texts).map(|(r, t)| line(&r.0, t.clone()) + "\n").collect();
    std::fs::write(dir.join("null.jsonl"), jsonl).unwrap();
    let sentences: Vec<Option<&str>> = texts.iter().map(|t| t.as_str()).collect();
    let batch = hf_parquet_batch(&dir, &rows, &sentences, false);
    write_dataset(&dir.join("null-parquet"), &[batch], &Default::default()).unwrap();
    for ds in ["null.jsonl", "null-parquet"] {
        let out = format!("out-{ds}");
        let (ok, err) = run(ds, &out);
        assert!(ok, "{ds}: {err}");
        let (e, _) = Embeddings::read(&dir.join(&out)).unwrap();
        assert_eq!(e.ids, vec!["a.wav", "c.mp3", "d.ogg"], "{ds}: every good row is kept");
        let (r, _) = Rejected::read(&dir.join(format!("{out}-rej"))).unwrap();
        assert_eq!((r.ids.clone(), r.reasons.clone()), (vec!["b.wav".to_string()], vec!["no_transcript".to_string()]));
    }
}

#[test]
fn artifacts_of_another_checkpoint_are_refused_by_name() {
    let dir = tmp("hash");
    let (a, b) = (dir.join("a"), dir.join("b"));
    whisper_moe::whisper::testing::write_checkpoint(&a, 3, &[], &[]).unwrap();
    whisper_moe::whisper::testing::write_checkpoint(&b, 4, &[], &[]).unwrap();
    let rows = good_clips(&dir);
    write_csv(&dir.join("metadata.csv"), &rows);
    let emb = dir.join("emb");
    embed_ok(&[
        "--dataset",
        dir.join("metadata.csv").to_str().unwrap(),
        "--model",
        a.to_str().unwrap(),
        "--out",
        emb.to_str().unwrap(),
        "--rejected",
        dir.join("rej").to_str().unwrap(),
    ]);
    let (_, meta) = Embeddings::read(&emb).unwrap();
    let dev = burn::prelude::Device::flex();
    let ck_a = whisper_moe::whisper::Checkpoint::load_dir(&a, &dev).unwrap();
    let ck_b = whisper_moe::whisper::Checkpoint::load_dir(&b, &dev).unwrap();
    assert_ne!(ck_a.hash, ck_b.hash);
    whisper_moe::stage::embed::check_same_checkpoint(&emb, &meta, &ck_a, "a").unwrap();
    let err = whisper_moe::stage::embed::check_same_checkpoint(&emb, &meta, &ck_b, "b").unwrap_err().to_string();
    assert!(
        err.contains(emb.to_str().unwrap()) && err.contains("another checkpoint") && err.contains(&ck_b.hash),
        "{err}"
    );
}

#[test]
fn the_model_stage_refuses_a_truncated_checkpoint() {
    let dir = tmp("truncated");
    let model = tiny_model(&dir);
    let fetch = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(["model", "fetch", model.to_str().unwrap(), "--out", dir.join(out).to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = fetch("good");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w = model.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 1000]).unwrap();
    let o = fetch("bad");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not load") && err.contains("model.safetensors"), "{err}");
}
