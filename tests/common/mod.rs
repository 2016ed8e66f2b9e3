//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// ../shared (fixtures and checkpoint), from WHISPER_MOE_SHARED; None (and a loud note) when unset.
pub fn shared(test: &str) -> Option<PathBuf> {
    match std::env::var_os("WHISPER_MOE_SHARED") {
        Some(p) if PathBuf::from(&p).join("fixtures").is_dir() => Some(PathBuf::from(p)),
        _ => {
            eprintln!(
                "\n*** SKIPPED {test}: set WHISPER_MOE_SHARED to the shared/ directory (fixtures, models) to run it; .ci/run does ***\n"
            );
            None
        }
    }
}

pub struct Fixture {
    pub id: String,
    pub wav: PathBuf,
    pub json: serde_json::Value,
    pub tensors: Vec<u8>,
    /// transformers' greedy transcript (manifest.json).
    pub generated_text: String,
}

impl Fixture {
    pub fn f32s(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        let v = st.tensor(key).unwrap_or_else(|_| panic!("fixture {} lacks {key}", self.id));
        assert_eq!(v.dtype(), safetensors::Dtype::F32);
        let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        (v.shape().to_vec(), data)
    }

    pub fn i64s(&self, key: &str) -> (Vec<usize>, Vec<i64>) {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        let v = st.tensor(key).unwrap_or_else(|_| panic!("fixture {} lacks {key}", self.id));
        assert_eq!(v.dtype(), safetensors::Dtype::I64);
        let data = v.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        (v.shape().to_vec(), data)
    }
}

/// Every clip of the whisper-tiny.en fixtures.
pub fn fixtures(shared: &std::path::Path) -> Vec<Fixture> {
    let dir = shared.join("fixtures/whisper-tiny.en");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let clips = manifest["clips"].as_array().unwrap();
    assert!(!clips.is_empty());
    clips
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap().to_string();
            Fixture {
                wav: dir.join(format!("{id}.wav")),
                json: serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{id}.json"))).unwrap()).unwrap(),
                tensors: std::fs::read(dir.join(format!("{id}.safetensors"))).unwrap(),
                generated_text: c["generated_text"].as_str().unwrap().to_string(),
                id,
            }
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
