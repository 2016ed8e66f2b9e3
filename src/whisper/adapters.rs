//! LoRA adapters on Whisper's linear layers: which projections there are (by their HF module
//! names), attaching fresh multi-expert adapters to those `target_modules` match (PEFT's
//! rules, `crate::lora::Targets`), and what is attached.

use anyhow::{Result, bail};
use burn::prelude::*;

use super::model::{Proj, Whisper};
use crate::lora::{LoraConfig, MultiLora, trainable};

impl Whisper {
    /// Every linear projection with its HF module name (`model.decoder.layers.0.self_attn.q_proj`).
    pub fn projs_mut(&mut self) -> Vec<(String, &mut Proj)> {
        fn attention<'a>(out: &mut Vec<(String, &'a mut Proj)>, p: &str, a: &'a mut super::model::Attention) {
            out.push((format!("{p}.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.out_proj"), &mut a.out_proj));
        }
        let mut out: Vec<(String, &mut Proj)> = Vec::new();
        for (i, l) in self.encoder.layers.iter_mut().enumerate() {
            let p = format!("model.encoder.layers.{i}");
            attention(&mut out, &format!("{p}.self_attn"), &mut l.self_attn);
            out.push((format!("{p}.fc1"), &mut l.fc1));
            out.push((format!("{p}.fc2"), &mut l.fc2));
        }
        for (i, l) in self.decoder.layers.iter_mut().enumerate() {
            let p = format!("model.decoder.layers.{i}");
            attention(&mut out, &format!("{p}.self_attn"), &mut l.self_attn);
            attention(&mut out, &format!("{p}.encoder_attn"), &mut l.encoder_attn);
            out.push((format!("{p}.fc1"), &mut l.fc1));
            out.push((format!("{p}.fc2"), &mut l.fc2));
        }
        out
    }

    /// The adapters attached so far, by module name.
    pub fn loras(&self) -> Vec<(String, MultiLora)> {
        let mut m = self.clone();
        m.projs_mut().into_iter().filter_map(|(n, p)| p.lora.clone().map(|l| (n, l))).collect()
    }

    /// Are adapters attached anywhere?
    pub fn has_adapters(&self) -> bool {
        !self.loras().is_empty()
    }

    /// Does any adapter touch the encoder? If not, the encoder is shared by all experts and
    /// runs without gradients.
    pub fn encoder_has_adapters(&self) -> bool {
        self.first_adapted_encoder_layer().is_some()
    }

    /// The first encoder layer an adapter touches: the layers below it are the base model's
    /// for every expert, and their output can be computed once per utterance.
    pub fn first_adapted_encoder_layer(&self) -> Option<usize> {
        self.loras()
            .iter()
            .filter_map(|(n, _)| n.strip_prefix("model.encoder.layers.")?.split('.').next()?.parse::<usize>().ok())
            .min()
    }

    /// Attach fresh adapters for `experts` experts to every targeted projection: A uniform in
    /// ±1/sqrt(d_in) (PEFT's kaiming_uniform with a = sqrt(5)), B zero, so an untrained adapter
    /// is exactly the base model. Returns the targeted module names.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, experts: usize, device: &Device) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for (name, proj) in self.projs_mut() {
            if !cfg.target_modules.matches(&name) {
                continue;
            }
            let (d_in, d_out) = (proj.d_in(), proj.d_out());
            let bound = 1.0 / (d_in as f64).sqrt();
            let a =
                Tensor::<3>::random([experts, d_in, cfg.r], burn::tensor::Distribution::Uniform(-bound, bound), device);
            let b = Tensor::<3>::zeros([experts, cfg.r, d_out], device);
            proj.lora = Some(MultiLora {
                a: trainable(&format!("{name}.lora_A"), a),
                b: trainable(&format!("{name}.lora_B"), b),
                scale: cfg.scale(),
                dropout: cfg.dropout,
            });
            names.push(name);
        }
        if names.is_empty() {
            bail!("LoRA target_modules {:?} match no linear layer of this Whisper", cfg.target_modules);
        }
        Ok(names)
    }
}

impl Whisper {
    /// The model with one adapter per projection whose update is the mean of its experts':
    /// every expert's A and B side by side (rank E r), B scaled by 1/E, the same scale (an
    /// inference copy: the adapters are not trainable).
    pub fn averaged_experts(&self) -> Whisper {
        let mut avg = self.clone();
        for (_, proj) in avg.projs_mut() {
            let Some(l) = proj.lora.as_mut() else { continue };
            let [e, d_in, r] = l.a.dims();
            let d_out = l.b.dims()[2];
            let a = l.a.val().swap_dims(0, 1).reshape([1, d_in, e * r]);
            let b = l.b.val().reshape([1, e * r, d_out]) / e as f64;
            l.a = burn::module::Param::from_tensor(a);
            l.b = burn::module::Param::from_tensor(b);
        }
        avg
    }

    /// Expert `e`'s adapters set to those of `from` (a model with the same adapters): how a
    /// training run keeps each expert's best epoch.
    pub fn copy_expert(&mut self, from: &Whisper, e: usize) {
        self.copy_adapter(from, e, e..e + 1);
    }

    /// Experts `dst` get expert `src` of `from` (a model with the same targets and rank, and
    /// any number of experts): e.g. every expert starting from one shared adapter.
    pub fn copy_adapter(&mut self, from: &Whisper, src: usize, dst: std::ops::Range<usize>) {
        let mut source = from.clone();
        let sources: std::collections::HashMap<String, MultiLora> =
            source.projs_mut().into_iter().filter_map(|(n, p)| p.lora.clone().map(|l| (n, l))).collect();
        for (name, proj) in self.projs_mut() {
            let (Some(l), Some(s)) = (proj.lora.as_mut(), sources.get(&name)) else { continue };
            let put = |to: &burn::module::Param<Tensor<3>>, source: &burn::module::Param<Tensor<3>>| {
                let d = to.val();
                let [_, x, y] = d.dims();
                let device = d.device();
                let rows = source.val().slice(s![src..src + 1, .., ..]).repeat_dim(0, dst.len());
                let t = Tensor::<3>::from_data(d.slice_assign(s![dst.clone(), 0..x, 0..y], rows).into_data(), &device);
                let t = if device.is_autodiff() { t.require_grad() } else { t };
                burn::module::Param::initialized(to.id, t)
            };
            l.a = put(&l.a, &s.a);
            l.b = put(&l.b, &s.b);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use crate::lora::{LoraConfig, Route};
    use crate::whisper::model::Whisper;

    /// The averaged model's update is the mean of the experts' updates, projection by
    /// projection (the base output subtracted).
    #[test]
    fn averaged_experts_update_by_the_mean_of_the_experts() {
        let dev = Device::flex();
        let cfg = crate::whisper::testing::one_layer_tiny();
        let mut m = Whisper::random(&cfg, 5, &dev);
        m.attach_lora(&LoraConfig::on(&["q_proj"], 4, 8.0), 3, &dev).unwrap();
        dev.seed(9);
        for (_, p) in m.projs_mut() {
            if let Some(l) = p.lora.as_mut() {
                let dims = l.b.dims();
                let b = Tensor::<3>::random(dims, burn::tensor::Distribution::Uniform(-0.5, 0.5), &dev);
                l.b = burn::module::Param::from_tensor(b);
            }
        }
        let avg = m.averaged_experts();
        let x = Tensor::<3>::random([2, 5, cfg.d_model], burn::tensor::Distribution::Uniform(-1.0, 1.0), &dev);
        let q = |w: &Whisper, e: usize| {
            w.decoder.layers[0].self_attn.q_proj.forward(x.clone(), Some(&Route::all(e, 2, &dev)))
        };
        let base = m.decoder.layers[0].self_attn.q_proj.forward(x.clone(), None);
        let mean = (q(&m, 0) + q(&m, 1) + q(&m, 2)) / 3.0 - base.clone();
        let got = q(&avg, 0) - base;
        let diff: f32 = (got - mean.clone()).abs().max().into_scalar();
        let size: f32 = mean.abs().max().into_scalar();
        assert!(size > 0.1 && diff < 1e-5 * size, "diff {diff} of {size}");
    }
}
