//! The gate: an MLP from an utterance's pooled Whisper embedding to expert logits.
//!
//! The input scaler (per-dimension mean and 1/std of the training embeddings) is part of the
//! module, as two frozen parameters, so every user of the gate (pretraining, joint training,
//! inference) standardises embeddings the same way.
//!
//! Saved as `gate.safetensors` + `gate_config.json`. Tensor names and layouts (f32):
//! - `scaler.mean` [input_dim], `scaler.inv_std` [input_dim]
//! - `layers.{i}.weight` [out, in] (PyTorch's nn.Linear layout), `layers.{i}.bias` [out]
//!
//! for layers 0..=hidden.len(), the last one producing the logits. In PyTorch the gate is
//! `nn.Sequential(Linear, act, Dropout, ..., Linear)` applied to `(x - mean) * inv_std`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::{Distribution, activation};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

pub const WEIGHTS_FILE: &str = "gate.safetensors";
pub const CONFIG_FILE: &str = "gate_config.json";
pub const ACTIVATIONS: [&str; 4] = ["relu", "gelu", "tanh", "silu"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateConfig {
    pub input_dim: usize,
    pub hidden: Vec<usize>,
    pub experts: usize,
    /// relu | gelu | tanh | silu
    pub activation: String,
    pub dropout: f64,
}

impl GateConfig {
    pub fn check(&self) -> Result<()> {
        if self.input_dim == 0 || self.experts == 0 || self.hidden.contains(&0) {
            bail!("gate: input_dim, experts and hidden sizes must be > 0 (got {self:?})");
        }
        if !ACTIVATIONS.contains(&self.activation.as_str()) {
            bail!("gate: activation `{}` is not one of {}", self.activation, ACTIVATIONS.join(", "));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("gate: dropout {} must be in [0, 1)", self.dropout);
        }
        Ok(())
    }

    /// (d_in, d_out) of each linear layer, the last one giving the logits.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        let mut sizes = vec![self.input_dim];
        sizes.extend(&self.hidden);
        sizes.push(self.experts);
        sizes.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Tensor names and shapes in the safetensors file, in file order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = vec![
            ("scaler.mean".to_string(), vec![self.input_dim]),
            ("scaler.inv_std".to_string(), vec![self.input_dim]),
        ];
        for (i, (din, dout)) in self.layer_dims().into_iter().enumerate() {
            v.push((format!("layers.{i}.weight"), vec![dout, din]));
            v.push((format!("layers.{i}.bias"), vec![dout]));
        }
        v
    }
}

#[derive(Module, Debug)]
pub struct Gate {
    pub layers: Vec<Linear>,
    /// Frozen: subtracted from the input.
    pub mean: Param<Tensor<1>>,
    /// Frozen: multiplies the centred input.
    pub inv_std: Param<Tensor<1>>,
    #[module(skip)]
    cfg: GateConfig,
}

fn frozen(values: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let n = values.len();
    Param::from_tensor(Tensor::<1>::from_data(TensorData::new(values, [n]), device)).set_require_grad(false)
}

fn activate(x: Tensor<2>, name: &str) -> Tensor<2> {
    match name {
        "relu" => activation::relu(x),
        "gelu" => activation::gelu(x),
        "tanh" => activation::tanh(x),
        "silu" => activation::silu(x),
        other => unreachable!("activation `{other}` passed GateConfig::check"),
    }
}

impl Gate {
    /// A freshly initialised gate (burn's Kaiming-uniform Linear init, drawn from the device's
    /// RNG: call `device.seed(..)` first for a reproducible one). `std` entries <= 1e-12 are
    /// treated as 1. Panics on an invalid config or scaler length (see [`GateConfig::check`]).
    pub fn new(cfg: &GateConfig, mean: Vec<f32>, std: Vec<f32>, device: &Device) -> Gate {
        cfg.check().expect("valid gate config");
        assert_eq!(
            mean.len(),
            cfg.input_dim,
            "gate: scaler mean has {} values for input_dim {}",
            mean.len(),
            cfg.input_dim
        );
        assert_eq!(
            std.len(),
            cfg.input_dim,
            "gate: scaler std has {} values for input_dim {}",
            std.len(),
            cfg.input_dim
        );
        let inv: Vec<f32> = std.iter().map(|&s| if s > 1e-12 { 1.0 / s } else { 1.0 }).collect();
        let layers: Vec<Linear> =
            cfg.layer_dims().into_iter().map(|(i, o)| LinearConfig::new(i, o).init(device)).collect();
        // burn initialises parameters lazily, on first use; draw them now, so that the values
        // depend only on the RNG state at construction and clones share them.
        for l in &layers {
            let _ = l.weight.val();
            if let Some(b) = &l.bias {
                let _ = b.val();
            }
        }
        Gate { layers, mean: frozen(mean, device), inv_std: frozen(inv, device), cfg: cfg.clone() }
    }

    pub fn config(&self) -> &GateConfig {
        &self.cfg
    }

    /// The device the gate's parameters are on.
    pub fn device(&self) -> Device {
        self.mean.val().device()
    }

    /// Logits [b, experts] for raw (unscaled) embeddings [b, input_dim]. Dropout after each
    /// hidden activation only when `train`.
    pub fn forward(&self, x: Tensor<2>, train: bool) -> Tensor<2> {
        let [_, d] = x.dims();
        assert_eq!(d, self.cfg.input_dim, "gate: input has {d} features, the gate expects {}", self.cfg.input_dim);
        let mut h = (x - self.mean.val().unsqueeze::<2>()) * self.inv_std.val().unsqueeze::<2>(); // [b, d]
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h); // [b, d_out]
            if i < last {
                h = activate(h, &self.cfg.activation);
                if train && self.cfg.dropout > 0.0 {
                    let keep = 1.0 - self.cfg.dropout;
                    let mask = h.random_like(Distribution::Bernoulli(keep));
                    h = h * mask / keep;
                }
            }
        }
        h // [b, experts]
    }

    /// The tensors under their file names, in file layout.
    fn tensors(&self) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
        let vec1 = |t: Tensor<1>| -> Result<Vec<f32>> { Ok(t.into_data().try_into_vec_as::<f32>()?) };
        let d = self.cfg.input_dim;
        let mut out = vec![
            ("scaler.mean".to_string(), vec![d], vec1(self.mean.val())?),
            ("scaler.inv_std".to_string(), vec![d], vec1(self.inv_std.val())?),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            let w = l.weight.val().transpose(); // [out, in]
            let [o, n] = w.dims();
            out.push((format!("layers.{i}.weight"), vec![o, n], w.into_data().try_into_vec_as::<f32>()?));
            let b = match &l.bias {
                Some(b) => vec1(b.val())?,
                None => vec![0.0; o],
            };
            out.push((format!("layers.{i}.bias"), vec![o], b));
        }
        Ok(out)
    }

    /// Write `dir/gate.safetensors` and `dir/gate_config.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_with_metadata(dir, &BTreeMap::new())
    }

    /// As [`Gate::save`], with extra string metadata in the safetensors header (e.g. the
    /// checkpoint hash and pooling of the embeddings it was trained on). The header's keys are
    /// sorted: the same gate gives the same bytes.
    pub fn save_with_metadata(&self, dir: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut info = metadata.clone();
        info.insert("format".into(), "pt".into());
        crate::util::write_safetensors(&dir.join(WEIGHTS_FILE), &self.tensors()?, &info)?;
        crate::util::write_json(&dir.join(CONFIG_FILE), &self.cfg)
    }

    /// Load a gate saved by [`Gate::save`]. Every expected tensor must be present with its
    /// shape, and nothing else may be in the file. On an autodiff device the layers are
    /// trainable; the scaler stays frozen.
    pub fn load(dir: &Path, device: &Device) -> Result<Gate> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?;
        let cfg: GateConfig =
            serde_json::from_str(&text).with_context(|| format!("{} is not a gate config", cfg_path.display()))?;
        cfg.check().with_context(|| cfg_path.display().to_string())?;
        let path = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let expected = cfg.tensor_shapes();
        let mut problems = Vec::new();
        let mut values: HashMap<String, Vec<f32>> = HashMap::new();
        for (name, shape) in &expected {
            match st.tensor(name) {
                Err(_) => problems.push(format!("missing tensor `{name}` {shape:?}")),
                Ok(v) if v.shape() != shape.as_slice() => {
                    problems.push(format!("`{name}` has shape {:?}, the config implies {shape:?}", v.shape()))
                }
                Ok(v) if v.dtype() != Dtype::F32 => problems.push(format!("`{name}` is {:?}, expected F32", v.dtype())),
                Ok(v) => {
                    values.insert(
                        name.clone(),
                        v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                    );
                }
            }
        }
        let known: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut unknown: Vec<String> =
            st.names().into_iter().filter(|n| !known.contains(*n)).map(str::to_string).collect();
        unknown.sort();
        if !unknown.is_empty() {
            problems.push(format!("unexpected tensors {unknown:?}"));
        }
        if !problems.is_empty() {
            bail!("{} does not match {}: {}", path.display(), cfg_path.display(), problems.join("; "));
        }
        let mut take = |n: &str| values.remove(n).expect("checked above");
        let layers = cfg
            .layer_dims()
            .into_iter()
            .enumerate()
            .map(|(i, (din, dout))| {
                // [out, in] in the file -> burn's contiguous [in, out] (a transposed view would
                // change the matmul's summation order and the logits in the last bit).
                let w_file = take(&format!("layers.{i}.weight"));
                let w: Vec<f32> = (0..din * dout).map(|t| w_file[(t % dout) * din + t / dout]).collect();
                let w = Tensor::<2>::from_data(TensorData::new(w, [din, dout]), device);
                let b = Tensor::<1>::from_data(TensorData::new(take(&format!("layers.{i}.bias")), [dout]), device);
                Linear { weight: Param::from_tensor(w), bias: Some(Param::from_tensor(b)) }
            })
            .collect();
        let mean = frozen(take("scaler.mean"), device);
        let inv_std = frozen(take("scaler.inv_std"), device);
        Ok(Gate { layers, mean, inv_std, cfg })
    }

    /// The string metadata in a saved gate's safetensors header.
    pub fn read_metadata(dir: &Path) -> Result<BTreeMap<String, String>> {
        let path = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).with_context(|| format!("{}", path.display()))?;
        Ok(meta.metadata().clone().unwrap_or_default().into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GateConfig {
        GateConfig { input_dim: 6, hidden: vec![8, 5], experts: 3, activation: "gelu".into(), dropout: 0.2 }
    }

    fn input(dev: &Device) -> Tensor<2> {
        let v: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        Tensor::from_data(TensorData::new(v, [4, 6]), dev)
    }

    fn logits(g: &Gate, dev: &Device) -> Vec<f32> {
        g.forward(input(dev), false).into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn save_load_round_trip_gives_identical_logits() {
        let dev = Device::flex();
        dev.seed(1);
        let mean: Vec<f32> = (0..6).map(|i| i as f32 * 0.1).collect();
        let std: Vec<f32> = vec![1.0, 2.0, 0.5, 0.0, 1.5, 3.0];
        let g = Gate::new(&cfg(), mean, std, &dev);
        let dir = std::env::temp_dir().join(format!("wm-gate-{}", std::process::id()));
        let meta = BTreeMap::from([("checkpoint_hash".to_string(), "abc".to_string())]);
        g.save_with_metadata(&dir, &meta).unwrap();
        let back = Gate::load(&dir, &dev).unwrap();
        assert_eq!(back.config(), g.config());
        assert_eq!(logits(&g, &dev), logits(&back, &dev));
        assert_eq!(Gate::read_metadata(&dir).unwrap().get("checkpoint_hash").map(String::as_str), Some("abc"));
        // On an autodiff device the layers train and the scaler does not.
        let ad = Device::flex().autodiff();
        let t = Gate::load(&dir, &ad).unwrap();
        let loss = t.forward(input(&ad), true).sum();
        let grads = loss.backward();
        assert!(t.layers[0].weight.val().grad(&grads).is_some());
        assert!(t.mean.val().grad(&grads).is_none() && t.inv_std.val().grad(&grads).is_none());
        // Without train, the forward is deterministic (no dropout); with it, it is not.
        assert_eq!(logits(&t.valid(), &dev), logits(&g, &dev));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn scaler_standardises_the_input() {
        // One linear layer with identity weights: logits = (x - mean) * inv_std.
        let dev = Device::flex();
        let c = GateConfig { input_dim: 2, hidden: vec![], experts: 2, activation: "relu".into(), dropout: 0.0 };
        let mut g = Gate::new(&c, vec![1.0, -1.0], vec![2.0, 4.0], &dev);
        g.layers[0].weight = Param::from_tensor(Tensor::<2>::eye(2, &dev));
        g.layers[0].bias = Some(Param::from_tensor(Tensor::<1>::zeros([2], &dev)));
        let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 7.0], [1, 2]), &dev);
        let y: Vec<f32> = g.forward(x, false).into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(y, vec![1.0, 2.0]);
    }

    #[test]
    fn load_names_what_is_wrong() {
        let dev = Device::flex();
        let g = Gate::new(&cfg(), vec![0.0; 6], vec![1.0; 6], &dev);
        let dir = std::env::temp_dir().join(format!("wm-gate-bad-{}", std::process::id()));
        g.save(&dir).unwrap();
        // A config that disagrees with the weights.
        let mut c = cfg();
        c.hidden = vec![8, 4];
        crate::util::write_json(&dir.join(CONFIG_FILE), &c).unwrap();
        let err = format!("{:#}", Gate::load(&dir, &dev).unwrap_err());
        assert!(err.contains("layers.1.weight") && err.contains("[5, 8]") && err.contains("[4, 8]"), "{err}");
        c.activation = "swish".into();
        crate::util::write_json(&dir.join(CONFIG_FILE), &c).unwrap();
        assert!(format!("{:#}", Gate::load(&dir, &dev).unwrap_err()).contains("swish"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
