//! One small dataset of every artifact schema, with the values it holds, so that other tools
//! (pyarrow, polars, duckdb) can be checked against it: `pipeline interop-samples --out DIR`
//! and scripts/check_interop.sh.

use std::path::Path;

use anyhow::Result;
use serde_json::{Value as J, json};

use super::table::{Table, Value};
use super::{Clusters, Embeddings, Rejected, Splits, standard_metadata, write_dataset};

/// Write the samples under `dir` and return {dataset: {column: values}}.
pub fn write_samples(dir: &Path) -> Result<J> {
    let meta = standard_metadata("samples", Some("0123abcd"));
    let e = Embeddings {
        ids: vec!["spk1/a.flac".into(), "spk2/b.flac".into(), "spk2/c.flac".into()],
        audio_paths: vec!["spk1/a.flac".into(), "spk2/b.flac".into(), "spk2/c.flac".into()],
        durations: vec![1.5, 2.25, 3.125],
        transcriptions: vec!["hello world".into(), "Ünïcödé, quotes \"x\"".into(), "".into()],
        extra: vec![
            ("domain".into(), vec![Some("us".into()), None, Some("scot".into())]),
            ("language".into(), vec![Some("en".into()), Some("de".into()), None]),
        ],
        numbers: vec![("language_prob".into(), vec![Some(0.9375), Some(0.5), None])],
        dim: 4,
        values: vec![0.5, -1.0, 2.0, 0.125, 3.0, 4.0, -5.5, 6.0, 1e-3, -2e-3, 1e6, -7.0],
    };
    write_dataset(&dir.join("embeddings"), &[e.to_batch()?], &meta)?;
    let mut r = Rejected::default();
    r.push("x.wav", "x.wav", "too_long", "45.0 s is longer than 30 s");
    write_dataset(&dir.join("rejected"), &[r.to_batch()?], &meta)?;
    let c = Clusters {
        ids: e.ids.clone(),
        cluster: vec![0, 2, -1],
        k: 3,
        probs: vec![0.7, 0.2, 0.1, 0.0, 0.25, 0.75, 0.3, 0.3, 0.4],
        is_noise: vec![false, false, true],
    };
    write_dataset(&dir.join("clusters"), &[c.to_batch()?], &meta)?;
    let s = Splits { ids: e.ids.clone(), split: vec!["test".into(), "val".into(), "expert_pretrain".into()] };
    write_dataset(&dir.join("splits"), &[s.to_batch()?], &meta)?;
    let mut t = Table::default();
    t.push(vec![
        ("step", 1usize.into()),
        ("loss", 0.5f64.into()),
        ("phase", "soft".into()),
        ("dead", false.into()),
        ("load", vec![0.25f32, 0.75].into()),
    ])?;
    t.push(vec![
        ("step", 2usize.into()),
        ("loss", Value::Null),
        ("phase", "topk_hard".into()),
        ("dead", true.into()),
        ("load", vec![1.0f32, 0.0].into()),
    ])?;
    t.write(&dir.join("log"), &meta)?;
    let rows =
        |n: usize, d: usize, v: &[f32]| -> Vec<Vec<f32>> { (0..n).map(|i| v[i * d..(i + 1) * d].to_vec()).collect() };
    let expected = json!({
        "embeddings": {
            "id": e.ids, "audio_path": e.audio_paths, "duration": e.durations, "transcription": e.transcriptions,
            "domain": e.extra[0].1, "language": e.extra[1].1, "language_prob": e.numbers[0].1,
            "embedding": rows(3, 4, &e.values),
        },
        "rejected": {"id": r.ids, "audio_path": r.audio_paths, "reason": r.reasons, "detail": r.details},
        "clusters": {"id": c.ids, "cluster": c.cluster, "probs": rows(3, 3, &c.probs), "is_noise": c.is_noise},
        "splits": {"id": s.ids, "split": s.split},
        "log": {"step": [1, 2], "loss": [0.5, null], "phase": ["soft", "topk_hard"], "dead": [false, true], "load": [[0.25, 0.75], [1.0, 0.0]]},
        "_metadata": {"producer": "samples", "checkpoint_hash": "0123abcd"},
    });
    std::fs::write(dir.join("expected.json"), serde_json::to_string_pretty(&expected)?)?;
    Ok(expected)
}
