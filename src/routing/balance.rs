//! Load-balancing losses on gate probabilities p [B, E] and the router z-loss.
//! kl_uniform: sum_e u log(u / (P_e + 1e-8) + 1e-8), u = 1/E, P = batch mean of p (spec).
//! switch: E * sum_e f_e P_e, f_e = share of the batch whose top-1 is e (Switch Transformer).
//! cv2: Var(P) / (mean(P)^2 + 1e-10) with the unbiased variance, as in Shazeer et al.'s
//! noisy top-k gating code (`cv_squared`).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    KlUniform,
    Switch,
    Cv2,
    None,
}

/// The balance loss of a batch (a one-element tensor, differentiable through `p`).
pub fn balance_loss(kind: Balance, p: Tensor<2>) -> Tensor<1> {
    let [b, e] = p.dims();
    let device = p.device();
    let mean = p.clone().mean_dim(0).reshape([e]); // P [E]
    match kind {
        Balance::None => Tensor::zeros([1], &device),
        Balance::KlUniform => {
            let u = 1.0 / e as f64;
            ((mean + 1e-8).recip() * u + 1e-8).log().sum() * u
        }
        Balance::Switch => {
            let top1: Vec<i64> = p.clone().argmax(1).into_data().try_into_vec_as().expect("argmax");
            let mut f = vec![0.0f32; e];
            for t in top1 {
                f[t as usize] += 1.0 / b as f32;
            }
            let f = Tensor::<1>::from_data(TensorData::new(f, [e]), &device);
            (f * mean).sum() * e as f64
        }
        Balance::Cv2 => {
            if e < 2 {
                return Tensor::zeros([1], &device);
            }
            let m = mean.clone().mean();
            let var = (mean - m.clone()).powf_scalar(2.0).sum() / (e as f64 - 1.0);
            var / (m.powf_scalar(2.0) + 1e-10)
        }
    }
}

/// mean over the batch of logsumexp(z)^2 (ST-MoE's router z-loss), z = raw gate logits.
pub fn z_loss(z: Tensor<2>) -> Tensor<1> {
    let [b, _] = z.dims();
    let m = z.clone().max_dim(1).detach(); // [B, 1]
    let lse = (z - m.clone()).exp().sum_dim(1).log() + m; // [B, 1]
    lse.powf_scalar(2.0).reshape([b]).mean()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Vec<f32>, b: usize, e: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, [b, e]), &Device::flex())
    }
    fn s(x: Tensor<1>) -> f64 {
        x.into_scalar::<f32>() as f64
    }

    #[test]
    fn balance_losses_by_hand() {
        // p = [[0.7, 0.3], [0.5, 0.5]] -> P = (0.6, 0.4), top-1 = (0, 0 on tie) -> f = (1, 0).
        let p = || t(vec![0.7, 0.3, 0.5, 0.5], 2, 2);
        let kl = 0.5 * ((0.5f64 / (0.6 + 1e-8) + 1e-8).ln() + (0.5f64 / (0.4 + 1e-8) + 1e-8).ln());
        assert!((s(balance_loss(Balance::KlUniform, p())) - kl).abs() < 1e-6);
        assert!((s(balance_loss(Balance::Switch, p())) - 2.0 * 0.6).abs() < 1e-6);
        // Var(0.6, 0.4) unbiased = 0.02, mean 0.5 -> 0.08.
        assert!((s(balance_loss(Balance::Cv2, p())) - 0.08).abs() < 1e-6);
        // A uniform batch has (almost) no balance loss.
        let u = t(vec![0.25; 8], 2, 4);
        assert!(s(balance_loss(Balance::KlUniform, u.clone())).abs() < 1e-6);
        assert!(s(balance_loss(Balance::Cv2, u.clone())).abs() < 1e-9);
        assert!((s(balance_loss(Balance::Switch, u)) - 1.0).abs() < 1e-6, "switch is 1 when balanced");
    }

    #[test]
    fn z_loss_by_hand() {
        // logsumexp(0, ln 3) = ln 4; logsumexp(1, 1) = 1 + ln 2.
        let z = t(vec![0.0, 3f32.ln(), 1.0, 1.0], 2, 2);
        let want = (4f64.ln().powi(2) + (1.0 + 2f64.ln()).powi(2)) / 2.0;
        assert!((s(z_loss(z)) - want).abs() < 1e-5);
    }
}
