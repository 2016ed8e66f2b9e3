//! Who trains which expert with what weight, per phase of the curriculum
//! (../shared/docs/spec.md, "Joint training"): gate probabilities with exploration noise and
//! temperature, top-k selection, the min_expert_usage_fraction rescue, and the row weights
//! (soft p_e; renormalised q_e; hard 1/k with a straight-through gradient).

use burn::prelude::*;
use burn::tensor::activation::{softmax, softplus};
use serde::{Deserialize, Serialize};

use super::schedule::Phase;
use super::stats::top_k;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoiseKind {
    #[default]
    None,
    Gaussian,
    Gumbel,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoiseConfig {
    pub kind: NoiseKind,
    /// Standard deviation of gaussian noise (or the scale of gumbel noise).
    pub std: f64,
    /// Anneal the std linearly to zero with the temperature's progress.
    pub anneal: bool,
    /// Learn a per-input std through softplus (noisy top-k gating, Shazeer et al. 2017).
    pub learned: bool,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        NoiseConfig { kind: NoiseKind::None, std: 1.0, anneal: false, learned: false }
    }
}

/// Exploration noise for logits [B, E] (training only). `learned_std` is softplus input [B, E]
/// from the noise network when `learned`.
pub fn noise(
    cfg: &NoiseConfig,
    shape: [usize; 2],
    progress: f64,
    learned_std: Option<Tensor<2>>,
    device: &Device,
) -> Option<Tensor<2>> {
    let scale = if cfg.anneal { cfg.std * (1.0 - progress) } else { cfg.std };
    match cfg.kind {
        NoiseKind::None => None,
        NoiseKind::Gaussian => {
            let n = Tensor::<2>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), device);
            Some(match (cfg.learned, learned_std) {
                (true, Some(raw)) => n * softplus(raw, 1.0),
                _ => n * scale,
            })
        }
        NoiseKind::Gumbel => {
            let u = Tensor::<2>::random(shape, burn::tensor::Distribution::Uniform(1e-6, 1.0 - 1e-6), device);
            Some(u.log().neg().log().neg() * scale)
        }
    }
}

/// p = softmax((z + noise) / T).
pub fn gate_probs(z: Tensor<2>, noise: Option<Tensor<2>>, temperature: f64) -> Tensor<2> {
    let z = match noise {
        Some(n) => z + n,
        None => z,
    };
    softmax(z / temperature, 1)
}

/// The rows of a batch: (utterance, expert) pairs and what the statistics need.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub rows: Vec<(usize, usize)>,
    /// Experts each utterance is routed to (top-k, then rescues).
    pub assigned: Vec<Vec<usize>>,
    /// Each utterance's top-k experts (without rescues): the renormalisation set.
    pub topk: Vec<Vec<usize>>,
    pub rescued: usize,
}

/// Choose rows for a batch from probability values `p` [B, E].
pub fn route(p: &[f32], experts: usize, phase: Phase, k: usize, min_usage_fraction: f64, skip_below: f32) -> Routing {
    let b = p.len() / experts;
    let row = |i: usize| &p[i * experts..(i + 1) * experts];
    if phase == Phase::Soft {
        // Every expert, except those the whole batch gives (almost) no weight.
        let keep: Vec<usize> =
            (0..experts).filter(|&e| (0..b).map(|i| row(i)[e]).sum::<f32>() / b as f32 >= skip_below).collect();
        let rows = (0..b).flat_map(|i| keep.iter().map(move |&e| (i, e))).collect();
        return Routing { rows, assigned: vec![keep.clone(); b], topk: vec![keep; b], rescued: 0 };
    }
    let k = k.clamp(1, experts);
    let topk: Vec<Vec<usize>> = (0..b).map(|i| top_k(row(i), k)).collect();
    let mut assigned = topk.clone();
    let need = ((min_usage_fraction * b as f64).ceil() as usize).min(b);
    let mut rescued = 0;
    for e in 0..experts {
        let have = assigned.iter().filter(|a| a.contains(&e)).count();
        if have >= need {
            continue;
        }
        let mut candidates: Vec<usize> = (0..b).filter(|&i| !assigned[i].contains(&e)).collect();
        candidates.sort_by(|&x, &y| row(y)[e].total_cmp(&row(x)[e]).then(x.cmp(&y)));
        for &i in candidates.iter().take(need - have) {
            assigned[i].push(e);
            rescued += 1;
        }
    }
    let rows = assigned.iter().enumerate().flat_map(|(i, a)| a.iter().map(move |&e| (i, e))).collect();
    Routing { rows, assigned, topk, rescued }
}

/// Weight of each row [R], differentiable through `p` [B, E]:
/// soft: p_e; topk_soft: q_e = p_e / sum over the utterance's top-k; topk_hard: 1/k forward
/// with the gradient of q_e (w = (q - stop_gradient(q)) + 1/k, which is exactly 1/k forward).
pub fn row_weights(p: Tensor<2>, routing: &Routing, phase: Phase, k: usize) -> Tensor<1> {
    let [b, e] = p.dims();
    let device = p.device();
    let idx: Vec<i64> = routing.rows.iter().map(|&(i, x)| (i * e + x) as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [routing.rows.len()]), &device);
    if phase == Phase::Soft {
        return p.reshape([b * e]).select(0, idx);
    }
    let mut mask = vec![0.0f32; b * e];
    for (i, t) in routing.topk.iter().enumerate() {
        for &x in t {
            mask[i * e + x] = 1.0;
        }
    }
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, e]), &device);
    let denom = (p.clone() * mask).sum_dim(1); // [B, 1]
    let q = (p / denom).reshape([b * e]).select(0, idx); // [R]
    match phase {
        Phase::TopkSoft => q,
        _ => (q.clone() - q.detach()) + 1.0 / k.min(e) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_rows_and_renormalised_weights() {
        let p = [0.5f32, 0.3, 0.2, 0.1, 0.1, 0.8];
        let r = route(&p, 3, Phase::TopkSoft, 2, 0.0, 1e-4);
        assert_eq!(r.rows, vec![(0, 0), (0, 1), (1, 2), (1, 0)]);
        let t = Tensor::<2>::from_data(TensorData::new(p.to_vec(), [2, 3]), &Device::flex());
        let w: Vec<f32> = row_weights(t.clone(), &r, Phase::TopkSoft, 2).into_data().try_into_vec_as().unwrap();
        let want = [0.5 / 0.8, 0.3 / 0.8, 0.8 / 0.9, 0.1 / 0.9];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        let soft = route(&p, 3, Phase::Soft, 2, 0.0, 1e-4);
        assert_eq!(soft.rows.len(), 6);
        let w: Vec<f32> = row_weights(t, &soft, Phase::Soft, 2).into_data().try_into_vec_as().unwrap();
        assert_eq!(w, p.to_vec());
    }

    #[test]
    fn rescue_gives_every_expert_its_share() {
        // A gate biased to expert 0: softmax of (5, 0, 0, 0) for 8 utterances, k = 1.
        let row = {
            let ex: Vec<f32> = [5.0f32, 0.0, 0.0, 0.0].iter().map(|z| z.exp()).collect();
            let s: f32 = ex.iter().sum();
            ex.into_iter().map(|x| x / s).collect::<Vec<f32>>()
        };
        let p: Vec<f32> = (0..8).flat_map(|i| row.iter().map(move |v| v + i as f32 * 1e-4)).collect();
        let r = route(&p, 4, Phase::TopkHard, 1, 0.25, 1e-4);
        for e in 0..4 {
            let n = r.assigned.iter().filter(|a| a.contains(&e)).count();
            assert!(n >= 2, "expert {e} has {n} of 8 utterances");
        }
        assert_eq!(r.rescued, 6);
        let none = route(&p, 4, Phase::TopkHard, 1, 0.0, 1e-4);
        assert_eq!(none.rescued, 0);
        assert!(none.assigned.iter().all(|a| a == &vec![0]));
    }
}
