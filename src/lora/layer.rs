//! The multi-expert LoRA layer: every expert's A and B in one module, applied row by row.

use burn::module::Param;
use burn::prelude::*;

/// Which expert's adapter each row of a batch uses.
#[derive(Debug, Clone)]
pub struct Route {
    /// [rows] expert index per row (0 for rows without an expert; `active` masks them out).
    pub expert: Tensor<1, Int>,
    /// [rows, 1, 1]: 1.0 where the row uses its expert, 0.0 for the base model.
    pub active: Option<Tensor<3>>,
    /// Apply LoRA dropout (training only).
    pub train: bool,
}

impl Route {
    /// Every row uses expert `e`.
    pub fn all(e: usize, rows: usize, device: &Device) -> Route {
        Route::per_row(&vec![Some(e); rows], device)
    }

    /// Row i uses `experts[i]`, or the base model when None.
    pub fn per_row(experts: &[Option<usize>], device: &Device) -> Route {
        let idx: Vec<i64> = experts.iter().map(|e| e.unwrap_or(0) as i64).collect();
        let any_base = experts.iter().any(Option::is_none);
        let active = any_base.then(|| {
            let m: Vec<f32> = experts.iter().map(|e| if e.is_some() { 1.0 } else { 0.0 }).collect();
            Tensor::<1>::from_data(TensorData::new(m, [experts.len()]), device).reshape([experts.len(), 1, 1])
        });
        Route { expert: Tensor::from_data(TensorData::new(idx, [experts.len()]), device), active, train: false }
    }

    pub fn training(mut self, train: bool) -> Route {
        self.train = train;
        self
    }

    /// The route of rows `index` (e.g. the rows sharing one encoder pass).
    pub fn select(&self, index: Tensor<1, Int>) -> Route {
        Route {
            expert: self.expert.clone().select(0, index.clone()),
            active: self.active.clone().map(|a| a.select(0, index)),
            train: self.train,
        }
    }
}

/// LoRA adapters of `E` experts for one linear layer: delta(x) = scale * (drop(x) A_e) B_e.
#[derive(Module, Debug)]
pub struct MultiLora {
    /// [E, d_in, r]
    pub a: Param<Tensor<3>>,
    /// [E, r, d_out]
    pub b: Param<Tensor<3>>,
    pub scale: f64,
    pub dropout: f64,
}

impl MultiLora {
    pub fn experts(&self) -> usize {
        self.a.dims()[0]
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[2]
    }

    /// The adapters' contribution for x [rows, T, d_in] -> [rows, T, d_out].
    pub fn delta(&self, x: Tensor<3>, route: &Route) -> Tensor<3> {
        let x = if route.train && self.dropout > 0.0 {
            let keep = x.random_like(burn::tensor::Distribution::Bernoulli(1.0 - self.dropout));
            x * keep / (1.0 - self.dropout)
        } else {
            x
        };
        let a = self.a.val().select(0, route.expert.clone()); // [rows, d_in, r]
        let b = self.b.val().select(0, route.expert.clone()); // [rows, r, d_out]
        let d = x.matmul(a).matmul(b) * self.scale; // [rows, T, d_out]
        match &route.active {
            Some(m) => d * m.clone(),
            None => d,
        }
    }

    /// The contribution for rows that share inputs: x_u [U, T, d_in] holds each utterance once
    /// and row i uses utterance `row_utt[i]` through its expert. x_u A_e is computed for every
    /// (utterance, expert) pair (rank-r, cheap) instead of copying x_u per row; dropout is
    /// drawn once per utterance and shared by its rows.
    pub fn delta_shared(&self, x_u: Tensor<3>, row_utt: &Tensor<1, Int>, route: &Route) -> Tensor<3> {
        let [u, t, d_in] = x_u.dims();
        let [e, _, r] = self.a.dims();
        let x_u = if route.train && self.dropout > 0.0 {
            let keep = x_u.random_like(burn::tensor::Distribution::Bernoulli(1.0 - self.dropout));
            x_u * keep / (1.0 - self.dropout)
        } else {
            x_u
        };
        let a = self.a.val().swap_dims(0, 1).reshape([d_in, e * r]); // [d_in, E*r]
        let xa = x_u.reshape([u * t, d_in]).matmul(a).reshape([u, t, e, r]).swap_dims(1, 2).reshape([u * e, t, r]);
        let pair = row_utt.clone() * e as i64 + route.expert.clone(); // [rows] index into U*E
        let xa = xa.select(0, pair); // [rows, T, r]
        let b = self.b.val().select(0, route.expert.clone()); // [rows, r, d_out]
        let d = xa.matmul(b) * self.scale;
        match &route.active {
            Some(m) => d * m.clone(),
            None => d,
        }
    }
}
