//! Strict loading of Hugging Face safetensors checkpoints (single file or sharded with
//! `model.safetensors.index.json`), in f32/f16/bf16, converted to f32.
//!
//! The loader hands out tensors by their HF names and keeps track: a name asked for and not in
//! the file, a shape that differs, or a tensor in the file that nothing used, all end up in one
//! error listing every problem.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

/// The tensors of a checkpoint, memory-mapped.
pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    /// name -> index into `files`
    index: HashMap<String, usize>,
}

impl Checkpoint {
    /// Open `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let single = dir.join("model.safetensors");
        let index_file = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if single.exists() {
            vec!["model.safetensors".into()]
        } else if index_file.exists() {
            let text = std::fs::read_to_string(&index_file)?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index_file.display()))?;
            let map =
                v["weight_map"].as_object().with_context(|| format!("{}: no weight_map", index_file.display()))?;
            let set: BTreeSet<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
            set.into_iter().collect()
        } else {
            bail!(
                "{} has neither model.safetensors nor model.safetensors.index.json (PyTorch .bin checkpoints are not supported; convert them with `save_pretrained(safe_serialization=True)`)",
                dir.display()
            );
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for name in shard_names {
            let path = dir.join(&name);
            let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the checkpoint is read-only input; we never write through the map.
            let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
            let st = SafeTensors::deserialize(&mmap)
                .with_context(|| format!("{} is not a safetensors file", path.display()))?;
            for n in st.names() {
                index.insert(n.to_string(), files.len());
            }
            drop(st);
            files.push((path, mmap));
        }
        Ok(Checkpoint { files, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The tensor's shape and f32 values.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let &i = self.index.get(name).with_context(|| format!("no tensor `{name}`"))?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap)?;
        let view = st.tensor(name).with_context(|| format!("{}: `{name}`", path.display()))?;
        let bytes = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => bail!("{}: tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16", path.display()),
        };
        Ok((view.shape().to_vec(), values))
    }
}

/// Hands out tensors by name and records every problem for one final report.
pub struct Loader<'a> {
    /// None: random weights ([`Loader::random`]).
    ckpt: Option<&'a Checkpoint>,
    rng: rand::rngs::StdRng,
    device: Device,
    used: BTreeSet<String>,
    missing: Vec<String>,
    wrong_shape: Vec<String>,
    other: Vec<String>,
}

impl<'a> Loader<'a> {
    pub fn new(ckpt: &'a Checkpoint, device: &Device) -> Loader<'a> {
        Self::with(Some(ckpt), 0, device)
    }

    /// Random weights for a model of any size without a file (`gpu-check`): layer-norm gains
    /// 1 and shifts 0, every other tensor uniform with standard deviation 0.02.
    pub fn random(seed: u64, device: &Device) -> Loader<'static> {
        Loader::with(None, seed, device)
    }

    fn with(ckpt: Option<&'a Checkpoint>, seed: u64, device: &Device) -> Loader<'a> {
        Loader {
            ckpt,
            rng: rand::SeedableRng::seed_from_u64(seed),
            device: device.clone(),
            used: BTreeSet::new(),
            missing: Vec::new(),
            wrong_shape: Vec::new(),
            other: Vec::new(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn values(&mut self, name: &str, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let Some(ckpt) = self.ckpt else {
            use rand::Rng;
            let norm = name.contains("layer_norm.");
            return match (norm, name.ends_with(".weight")) {
                (true, true) => vec![1.0; n],
                (true, false) => vec![0.0; n],
                _ => {
                    let a = 0.02 * 3f32.sqrt();
                    (0..n).map(|_| self.rng.random_range(-a..a)).collect()
                }
            };
        };
        if !ckpt.contains(name) {
            self.missing.push(name.to_string());
            return vec![0.0; n];
        }
        self.used.insert(name.to_string());
        match ckpt.read_f32(name) {
            Ok((s, v)) if s == shape => v,
            Ok((s, _)) => {
                self.wrong_shape.push(format!("{name}: {s:?} in the file, {shape:?} expected"));
                vec![0.0; n]
            }
            Err(e) => {
                self.other.push(format!("{e:#}"));
                vec![0.0; n]
            }
        }
    }

    /// A tensor stored as-is.
    pub fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Tensor<D> {
        let v = self.values(name, &shape);
        Tensor::from_data(TensorData::new(v, shape), &self.device)
    }

    /// A torch Linear weight [out, in], returned as [in, out] (burn's layout).
    pub fn linear_weight(&mut self, name: &str, d_in: usize, d_out: usize) -> Tensor<2> {
        let v = self.values(name, &[d_out, d_in]);
        let mut t = vec![0.0f32; v.len()];
        for o in 0..d_out {
            for i in 0..d_in {
                t[i * d_out + o] = v[o * d_in + i];
            }
        }
        Tensor::from_data(TensorData::new(t, [d_in, d_out]), &self.device)
    }

    /// Fail with every problem at once: missing and mis-shaped tensors, and tensors in the
    /// file that nothing used (except those in `ignorable`).
    pub fn finish(self, ignorable: &[&str]) -> Result<()> {
        let Some(ckpt) = self.ckpt else { return Ok(()) };
        let unexpected: Vec<&String> = ckpt
            .names()
            .filter(|n| !self.used.contains(*n) && !ignorable.contains(&n.as_str()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if self.missing.is_empty() && self.wrong_shape.is_empty() && unexpected.is_empty() && self.other.is_empty() {
            return Ok(());
        }
        let mut msg = String::from("the checkpoint does not match the model:");
        let list = |msg: &mut String, what: &str, items: &[String]| {
            if !items.is_empty() {
                msg.push_str(&format!("\n  {what} ({}): {}", items.len(), items.join(", ")));
            }
        };
        list(&mut msg, "missing tensors", &self.missing);
        list(&mut msg, "wrong shapes", &self.wrong_shape);
        list(&mut msg, "unexpected tensors", &unexpected.into_iter().cloned().collect::<Vec<_>>());
        list(&mut msg, "unreadable", &self.other);
        bail!(msg)
    }
}
