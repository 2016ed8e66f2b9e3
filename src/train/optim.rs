//! AdamW over the trainable parameters of any burn module, with state keyed by parameter path
//! (so it survives a reload, unlike burn's optimizers whose state is keyed by random ids),
//! PyTorch's defaults and decoupled weight decay, global gradient-norm clipping and
//! gradient accumulation. Reference: torch.optim.AdamW; torch.nn.utils.clip_grad_norm_.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Gradients;

/// Gradients of a module's trainable parameters, flattened, by path (`decoder.layers.0...`).
#[derive(Debug, Clone, Default)]
pub struct GradMap(pub BTreeMap<String, Tensor<1>>);

struct Collect<'a> {
    grads: &'a Gradients,
    path: Vec<String>,
    out: BTreeMap<String, Tensor<1>>,
}

impl ModuleVisitor for Collect<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        if let Some(g) = param.val().grad(self.grads) {
            let n = g.shape().num_elements();
            self.out.insert(self.path.join("."), g.reshape([n]));
        }
    }
}

impl GradMap {
    /// The gradients `grads` holds for `module`'s trainable parameters.
    pub fn of<M: Module>(module: &M, grads: &Gradients) -> GradMap {
        let mut c = Collect { grads, path: Vec::new(), out: BTreeMap::new() };
        module.visit(&mut c);
        GradMap(c.out)
    }

    /// Add another micro-batch's gradients.
    pub fn accumulate(&mut self, other: GradMap) {
        for (k, g) in other.0 {
            match self.0.remove(&k) {
                Some(a) => self.0.insert(k, a + g),
                None => self.0.insert(k, g),
            };
        }
    }

    pub fn scale(&mut self, s: f32) {
        for g in self.0.values_mut() {
            *g = g.clone() * s;
        }
    }

    /// The global L2 norm over all gradients.
    pub fn norm(&self) -> f32 {
        self.0.values().map(|g| g.clone().powf_scalar(2.0).sum().into_scalar::<f32>() as f64).sum::<f64>().sqrt() as f32
    }

    /// Rescale so the global norm is at most `max` (as clip_grad_norm_); returns the norm before.
    pub fn clip(&mut self, max: f32) -> f32 {
        let n = self.norm();
        if max > 0.0 && n > max {
            self.scale(max / (n + 1e-6));
        }
        n
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Dynamic loss scaling for training through an f16 base model, as torch's `GradScaler`: the
/// loss is multiplied by `scale` before the backward pass (so that small gradients do not
/// underflow in f16) and the gradients divided by it; a step whose gradients are not finite is
/// skipped and the scale halved, and after `growth_interval` good steps in a row it doubles.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    pub scale: f32,
    pub good_steps: u32,
    pub growth_interval: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler { scale: 65536.0, good_steps: 0, growth_interval: 2000 }
    }
}

impl LossScaler {
    /// After a step's gradients were unscaled: take the step (true) or skip it.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.scale = (self.scale * 2.0).min(2f32.powi(24));
            self.good_steps = 0;
        }
        true
    }
}

/// AdamW with per-parameter moments (flattened, on the parameters' device).
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    /// Loss scaling, when the model computes in f16 (saved and resumed with the moments).
    pub loss_scale: Option<LossScaler>,
    m: HashMap<String, Tensor<1>>,
    v: HashMap<String, Tensor<1>>,
}

struct Apply<'a> {
    opt: &'a mut AdamW,
    grads: &'a GradMap,
    lr: &'a dyn Fn(&str) -> f64,
    path: Vec<String>,
}

impl ModuleMapper for Apply<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = self.path.join(".");
        let Some(g) = self.grads.0.get(&key) else { return param };
        let c = self.opt.config;
        let t = self.opt.step as i32;
        let lr = (self.lr)(&key);
        let value = param.val();
        let shape = value.shape();
        let n = shape.num_elements();
        let device = g.device();
        let p = value.inner_detached(n, &device);
        let g = g.clone();
        let m = self.opt.m.remove(&key).unwrap_or_else(|| Tensor::zeros([n], &device));
        let v = self.opt.v.remove(&key).unwrap_or_else(|| Tensor::zeros([n], &device));
        let m = m * c.beta1 + g.clone() * (1.0 - c.beta1);
        let v = v * c.beta2 + g.powf_scalar(2.0) * (1.0 - c.beta2);
        let m_hat = m.clone() / (1.0 - c.beta1.powi(t));
        let v_hat = v.clone() / (1.0 - c.beta2.powi(t));
        let p = p * (1.0 - lr * c.weight_decay) - m_hat / (v_hat.sqrt() + c.eps) * lr;
        self.opt.m.insert(key.clone(), m);
        self.opt.v.insert(key, v);
        let new: Tensor<D> = p.reshape(shape);
        let new = if param.is_require_grad() && param.val().is_autodiff() {
            Tensor::from_data(new.into_data(), &param.val().device()).require_grad()
        } else {
            Tensor::from_data(new.into_data(), &param.val().device())
        };
        Param::initialized(param.id, new)
    }
}

trait InnerDetached {
    fn inner_detached(self, n: usize, device: &Device) -> Tensor<1>;
}

impl<const D: usize> InnerDetached for Tensor<D> {
    /// The value as a plain (non-autodiff) flat tensor on `device`.
    fn inner_detached(self, n: usize, device: &Device) -> Tensor<1> {
        Tensor::from_data(self.reshape([n]).into_data(), device)
    }
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> AdamW {
        AdamW { config, step: 0, loss_scale: None, m: HashMap::new(), v: HashMap::new() }
    }

    /// One update of every parameter that has a gradient in `grads`.
    pub fn step<M: Module>(&mut self, module: M, grads: &GradMap, lr: f64) -> M {
        self.step_with(module, grads, &|_| lr)
    }

    /// One update with a learning rate per parameter path (parameter groups).
    pub fn step_with<M: Module>(&mut self, module: M, grads: &GradMap, lr: &dyn Fn(&str) -> f64) -> M {
        self.step += 1;
        let mut a = Apply { opt: self, grads, lr, path: Vec::new() };
        module.map(&mut a)
    }

    /// Save the moments and the step count (safetensors, f32).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for (k, t) in
            self.m.iter().map(|(k, t)| (format!("m.{k}"), t)).chain(self.v.iter().map(|(k, t)| (format!("v.{k}"), t)))
        {
            tensors.insert(k, t.clone().into_data().try_into_vec_as()?);
        }
        let bytes: BTreeMap<String, Vec<u8>> =
            tensors.iter().map(|(k, v)| (k.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(k, b)| {
                Ok((k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![b.len() / 4], b)?))
            })
            .collect::<Result<_>>()?;
        let mut meta = HashMap::from([
            ("step".to_string(), self.step.to_string()),
            ("config".to_string(), serde_json::to_string(&self.config)?),
        ]);
        if let Some(s) = &self.loss_scale {
            meta.insert("loss_scale".to_string(), serde_json::to_string(s)?);
        }
        safetensors::serialize_to_file(views, Some(meta), path)?;
        Ok(())
    }

    pub fn load(path: &Path, device: &Device) -> Result<AdamW> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let step: u64 = meta.get("step").and_then(|s| s.parse().ok()).context("optimizer state without step")?;
        let config: AdamWConfig = serde_json::from_str(meta.get("config").context("optimizer state without config")?)?;
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        let mut opt = AdamW::new(config);
        opt.step = step;
        opt.loss_scale = meta.get("loss_scale").map(|s| serde_json::from_str(s)).transpose()?;
        for (k, v) in st.tensors() {
            let vals: Vec<f32> = v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            let n = vals.len();
            let t = Tensor::<1>::from_data(TensorData::new(vals, [n]), device);
            match k.split_once('.') {
                Some(("m", rest)) => opt.m.insert(rest.to_string(), t),
                Some(("v", rest)) => opt.v.insert(rest.to_string(), t),
                _ => bail!("{}: unexpected tensor {k}", path.display()),
            };
        }
        Ok(opt)
    }
}

/// Linear warmup to `lr` over `warmup` steps, then constant (the source recipe's schedule).
pub fn warmup_lr(lr: f64, warmup: u64, step: u64) -> f64 {
    if warmup == 0 || step >= warmup { lr } else { lr * (step + 1) as f64 / warmup as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Module, Debug)]
    struct Tiny {
        w: Param<Tensor<1>>,
    }

    #[test]
    fn adamw_matches_the_pytorch_formula() {
        let dev = Device::flex().autodiff();
        let mut m = Tiny { w: Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32, -2.0], [2]), &dev)) };
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(cfg);
        // loss = sum(w^2) -> grad = 2w. Two steps, compared with the formula computed by hand in f64.
        let (mut w, mut mm, mut vv) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        let lr = 0.01;
        for t in 1..=2 {
            let loss = m.w.val().powf_scalar(2.0).sum();
            let g = GradMap::of(&m, &loss.backward());
            m = opt.step(m, &g, lr);
            for i in 0..2 {
                let gi = 2.0 * w[i];
                mm[i] = 0.9 * mm[i] + 0.1 * gi;
                vv[i] = 0.999 * vv[i] + 0.001 * gi * gi;
                let (mh, vh) = (mm[i] / (1.0 - 0.9f64.powi(t)), vv[i] / (1.0 - 0.999f64.powi(t)));
                w[i] = w[i] * (1.0 - lr * 0.1) - lr * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f32> = m.w.val().into_data().try_into_vec_as().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - w[i]).abs() < 1e-6, "{got:?} vs {w:?}");
        }
        // The updated parameter still receives gradients.
        let g = GradMap::of(&m, &m.w.val().sum().backward());
        assert_eq!(g.0.len(), 1);
    }

    #[test]
    fn clipping_and_state_round_trip() {
        let dev = Device::flex();
        let mut g = GradMap(BTreeMap::from([
            ("a".to_string(), Tensor::<1>::from_data(TensorData::new(vec![3.0f32], [1]), &dev)),
            ("b".to_string(), Tensor::<1>::from_data(TensorData::new(vec![4.0f32], [1]), &dev)),
        ]));
        assert!((g.clip(1.0) - 5.0).abs() < 1e-6);
        assert!((g.norm() - 1.0).abs() < 1e-5);
        let mut opt = AdamW::new(AdamWConfig::default());
        opt.step = 7;
        opt.m.insert("x.y".into(), Tensor::from_data(TensorData::new(vec![0.5f32, 1.5], [2]), &dev));
        opt.v.insert("x.y".into(), Tensor::from_data(TensorData::new(vec![2.5f32, 3.5], [2]), &dev));
        let p = std::env::temp_dir().join(format!("wm-optim-{}.safetensors", std::process::id()));
        opt.save(&p).unwrap();
        let back = AdamW::load(&p, &dev).unwrap();
        assert_eq!(back.step, 7);
        let v: Vec<f32> = back.v["x.y"].clone().into_data().try_into_vec_as().unwrap();
        assert_eq!(v, vec![2.5, 3.5]);
        assert_eq!(warmup_lr(1.0, 4, 0), 0.25);
        assert_eq!(warmup_lr(1.0, 4, 9), 1.0);
        assert_eq!(back.loss_scale, None);
        // The loss scaler's state travels with the moments.
        opt.loss_scale = Some(LossScaler { scale: 512.0, good_steps: 3, growth_interval: 2000 });
        opt.save(&p).unwrap();
        assert_eq!(AdamW::load(&p, &dev).unwrap().loss_scale, opt.loss_scale);
    }

    #[test]
    fn loss_scaler_halves_and_skips_on_overflow_and_grows_after_good_steps() {
        let mut s = LossScaler { scale: 8.0, good_steps: 0, growth_interval: 3 };
        assert!(!s.update(false), "an overflow skips the step");
        assert_eq!((s.scale, s.good_steps), (4.0, 0));
        assert!(s.update(true) && s.update(true));
        assert_eq!((s.scale, s.good_steps), (4.0, 2));
        assert!(s.update(true), "the third good step is taken and doubles the scale");
        assert_eq!((s.scale, s.good_steps), (8.0, 0));
        assert!(s.update(true));
        assert!(!s.update(false), "an overflow resets the run of good steps");
        assert_eq!((s.scale, s.good_steps), (4.0, 0));
        let mut floor = LossScaler { scale: 1.0, good_steps: 0, growth_interval: 1 };
        assert!(!floor.update(false));
        assert_eq!(floor.scale, 1.0, "never below 1");
        let mut cap = LossScaler { scale: 2f32.powi(24), good_steps: 0, growth_interval: 1 };
        assert!(cap.update(true));
        assert_eq!(cap.scale, 2f32.powi(24), "never above 2^24");
        assert_eq!(LossScaler::default(), LossScaler { scale: 65536.0, good_steps: 0, growth_interval: 2000 });
    }
}
